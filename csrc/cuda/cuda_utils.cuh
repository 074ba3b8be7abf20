// cuda_utils.cuh: small helpers shared by the CUDA kernels (CUDA runtime headers only; no
// torch: this must compile with nvcc on a machine whose torch is a CPU build).
#pragma once

#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>

#include "slime/common.h"

namespace slime {
namespace cuda {

// Every launcher ends with this: a launch error (bad configuration, no kernel image for the
// device) is returned to the caller instead of surfacing at some later, unrelated call.
inline LaunchStatus launch_status() {
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

// Every kernel launch, so that the same sources also build as host C++ for the CPU emulation
// of CUDA (csrc/emu), which has no <<< >>>:
//   SLIME_LAUNCH(grid, block, smem_bytes, stream, kernel)(args...);
#if defined(__CUDACC__)
#define SLIME_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<grid, block, smem, stream>>>
#else
#define SLIME_LAUNCH(grid, block, smem, stream, ...) \
  ::emu::Launch(grid, block, smem, stream, __VA_ARGS__)
#endif

#define SLIME_CUDA_RETURN_IF_ERROR(expr)                      \
  do {                                                        \
    const cudaError_t slime_err_ = (expr);                    \
    if (slime_err_ != cudaSuccess) return cudaGetErrorString(slime_err_); \
  } while (0)

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace cuda
}  // namespace slime

// Runs the lambda with `scalar_t` bound to the CUDA type of a float-like DType.
#define SLIME_CUDA_FLOAT_SWITCH(dtype, scalar_t, ...)                      \
  [&]() -> ::slime::LaunchStatus {                                         \
    switch (dtype) {                                                       \
      case ::slime::DType::F32: { using scalar_t = float; return __VA_ARGS__(); }          \
      case ::slime::DType::F16: { using scalar_t = __half; return __VA_ARGS__(); }         \
      case ::slime::DType::BF16: { using scalar_t = __nv_bfloat16; return __VA_ARGS__(); } \
      default: return "slime: unsupported dtype for a CUDA kernel";        \
    }                                                                      \
  }()
