// runtime.cpp: facts about the compiled kernel library (see slime/runtime.h).
#include "slime/runtime.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#include "slime/version.h"

namespace slime {

const char* library_version() { return SLIME_VERSION_STRING; }

bool compiled_with_cuda() {
#ifdef SLIME_WITH_CUDA
  return true;
#else
  return false;
#endif
}

int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

}  // namespace slime
