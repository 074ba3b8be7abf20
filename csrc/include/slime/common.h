// slime/common.h: what every framework-free kernel shares.
//
// The kernel library under csrc/ knows nothing about torch: an op is called with a plain
// struct of pointers, sizes and strides (all strides in elements, never bytes). The same
// header is read by g++ (CPU kernels, C++ tests) and by nvcc (CUDA kernels), so math
// shared by both backends is written once as SLIME_HD inline functions.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define SLIME_HD __host__ __device__ __forceinline__
#else
#define SLIME_HD inline
#endif

namespace slime {

// Element types a kernel may be asked to read or write. Values are stable: the torch glue
// maps at::ScalarType onto them and the C++ tests print them.
enum class DType : int32_t { F32 = 0, F16 = 1, BF16 = 2, U8 = 3, I64 = 4, I32 = 5, F64 = 6 };

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "float32";
    case DType::F16: return "float16";
    case DType::BF16: return "bfloat16";
    case DType::U8: return "uint8";
    case DType::I64: return "int64";
    case DType::I32: return "int32";
    case DType::F64: return "float64";
  }
  return "unknown";
}

// A CUDA launcher returns nullptr on success or the CUDA runtime's error string, so that
// callers without CUDA headers (the torch glue, C++ tests) can report it.
using LaunchStatus = const char*;

// ---- 16-bit float conversions on the host --------------------------------------------
// The CPU kernels store bf16/fp16 without any framework type: these are the IEEE rules
// (round to nearest, ties to even; NaN stays NaN) that torch and CUDA's intrinsics follow,
// so both backends write the same bits for the same float.

SLIME_HD uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

SLIME_HD float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

SLIME_HD uint16_t float_to_bf16_bits(float f) {
  uint32_t u = float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

SLIME_HD float bf16_bits_to_float(uint16_t h) { return bits_float(static_cast<uint32_t>(h) << 16); }

SLIME_HD uint16_t float_to_f16_bits(float f) {
  const uint32_t u = float_bits(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);  // NaN
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // overflow to inf
  if (abs < 0x38800000u) {
    // Subnormal half (or zero): shift the implicit-1 mantissa into place and round to even.
    if (abs < 0x33000000u) return static_cast<uint16_t>(sign);  // below half of the smallest
    const uint32_t exp = abs >> 23;
    const uint32_t mant = (abs & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126u - exp;  // 14..24
    uint32_t half = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1u);
    const uint32_t mid = 1u << (shift - 1u);
    if (rem > mid || (rem == mid && (half & 1u))) ++half;
    return static_cast<uint16_t>(sign | half);
  }
  // Normal: rebias the exponent (127 -> 15) and round the 13 dropped mantissa bits to even.
  uint32_t v = abs - 0x38000000u;
  v += 0xfffu + ((v >> 13) & 1u);
  return static_cast<uint16_t>(sign | (v >> 13));
}

SLIME_HD float f16_bits_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  if (exp == 0x1fu) return bits_float(sign | 0x7f800000u | (mant << 13));
  if (exp == 0) {
    if (mant == 0) return bits_float(sign);
    // Subnormal: value is mant * 2^-24, exact in float.
    const float v = static_cast<float>(mant) * 5.9604644775390625e-8f;
    return sign ? -v : v;
  }
  return bits_float(sign | ((exp + 112u) << 23) | (mant << 13));
}

// Load/store one element of a float-like type as float (CPU side; CUDA kernels use their
// native types). `p` is the base pointer, `i` the element offset.
inline float load_as_float(const void* p, int64_t i, DType t) {
  switch (t) {
    case DType::F32: return static_cast<const float*>(p)[i];
    case DType::F16: return f16_bits_to_float(static_cast<const uint16_t*>(p)[i]);
    case DType::BF16: return bf16_bits_to_float(static_cast<const uint16_t*>(p)[i]);
    case DType::U8: return static_cast<float>(static_cast<const uint8_t*>(p)[i]);
    default: return 0.0f;
  }
}

inline void store_from_float(void* p, int64_t i, DType t, float v) {
  switch (t) {
    case DType::F32: static_cast<float*>(p)[i] = v; break;
    case DType::F16: static_cast<uint16_t*>(p)[i] = float_to_f16_bits(v); break;
    case DType::BF16: static_cast<uint16_t*>(p)[i] = float_to_bf16_bits(v); break;
    default: break;
  }
}

}  // namespace slime

// Turn a runtime flag into a compile-time constant inside a lambda, the way flash-attention
// does: SLIME_BOOL_SWITCH(has_mask, kHasMask, [&] { kernel<kHasMask>(...); });
#define SLIME_BOOL_SWITCH(cond, NAME, ...) \
  [&] {                                    \
    if (cond) {                            \
      constexpr bool NAME = true;          \
      return __VA_ARGS__();                \
    } else {                               \
      constexpr bool NAME = false;         \
      return __VA_ARGS__();                \
    }                                      \
  }()
