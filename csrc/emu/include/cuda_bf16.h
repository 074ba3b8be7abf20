// cuda_bf16.h of the CPU emulation of CUDA: everything is in emu_cuda.h.
#pragma once
#include "emu_cuda.h"
