// cuda_glue.h: what the CUDA registrations (csrc/torch/*_cuda.cpp) need from torch: the
// device guard and the current stream. Compiled only in a CUDA build; CI also compiles the
// *_cuda.cpp files with -fsyntax-only against the CPU torch's c10/cuda headers.
#pragma once

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "glue.h"

namespace slime {
namespace glue {

inline cudaStream_t current_stream(const at::Tensor& t) {
  return c10::cuda::getCurrentCUDAStream(t.device().index()).stream();
}

inline void check_launch(LaunchStatus status, const char* op) {
  TORCH_CHECK(status == nullptr, "slime::", op, ": CUDA launch failed: ", status);
}

}  // namespace glue
}  // namespace slime
