// slime/runtime.h: facts about the compiled kernel library, for C++ users and the tests.
#pragma once

namespace slime {

const char* library_version();  // "major.minor.patch"
bool compiled_with_cuda();      // the library holds the CUDA kernels
int max_threads();              // OpenMP threads a CPU kernel will use (1 without OpenMP)

}  // namespace slime
