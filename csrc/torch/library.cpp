// library.cpp: declares the `slime` operator namespace. Each op's schemas live in its own
// file (csrc/torch/<op>.cpp) as a TORCH_LIBRARY_FRAGMENT, so adding an op touches no other.
#include <torch/library.h>

TORCH_LIBRARY(slime, m) {}
