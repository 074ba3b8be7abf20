// module.cpp: the Python module slime_core._C. It holds no ops (those are registered with
// the dispatcher when this library is loaded, see library.cpp); it only reports how it was
// built, so that `import slime_core` can tell a stale build from a good one and
// `python -m slime_core.info` can print it.
#include <Python.h>

#ifdef _OPENMP
#include <omp.h>
#endif
#ifdef SLIME_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

#include "slime/version.h"

#ifndef SLIME_SOURCE_HASH
#define SLIME_SOURCE_HASH "unknown"
#endif
#ifndef SLIME_TORCH_VERSION
#define SLIME_TORCH_VERSION "unknown"
#endif
#ifndef SLIME_CUDA_ARCHS
#define SLIME_CUDA_ARCHS ""
#endif
// The host compiler, for reports: a fault that only one toolchain shows names it here.
#if defined(__clang__)
#define SLIME_COMPILER "clang " __clang_version__
#elif defined(__GNUC__)
#define SLIME_COMPILER "gcc " __VERSION__
#else
#define SLIME_COMPILER "unknown"
#endif

namespace {

PyObject* build_info(PyObject*, PyObject*) {
#ifdef SLIME_WITH_CUDA
  const bool cuda = true;
  const int cuda_runtime = CUDART_VERSION;
#else
  const bool cuda = false;
  const int cuda_runtime = 0;
#endif
#ifdef _OPENMP
  const bool openmp = true;
  const int threads = omp_get_max_threads();
#else
  const bool openmp = false;
  const int threads = 1;
#endif
#ifdef SLIME_DEBUG_BUILD
  const bool debug = true;
#else
  const bool debug = false;
#endif
  return Py_BuildValue("{s:s,s:s,s:s,s:s,s:O,s:s,s:i,s:O,s:i,s:O}",                 //
                       "version", SLIME_VERSION_STRING,                            //
                       "source_hash", SLIME_SOURCE_HASH,                           //
                       "torch_version", SLIME_TORCH_VERSION,                       //
                       "compiler", SLIME_COMPILER,                                 //
                       "cuda", cuda ? Py_True : Py_False,                          //
                       "cuda_archs", SLIME_CUDA_ARCHS,                             //
                       "cuda_runtime", cuda_runtime,                               //
                       "openmp", openmp ? Py_True : Py_False,                      //
                       "omp_max_threads", threads,                                 //
                       "debug", debug ? Py_True : Py_False);
}

PyMethodDef methods[] = {
    {"build_info", build_info, METH_NOARGS, "How this extension was built (dict)."},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "slime_core compiled kernels", -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module); }
