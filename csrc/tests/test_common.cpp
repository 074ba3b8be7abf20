// test_common.cpp: the host-side float16/bfloat16 conversions in slime/common.h must write
// the same bits as IEEE round-to-nearest-even for every float the kernels can produce.
// Ground truth: exhaustive round trips over all 65536 16-bit patterns, plus hand-checked
// rounding cases (ties to even, overflow, subnormals, NaN).
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>

#include "slime/common.h"
#include "slime/runtime.h"
#include "slime/version.h"
#include "test_util.h"

using namespace slime;

static bool is_nan_bf16(uint16_t h) { return (h & 0x7f80u) == 0x7f80u && (h & 0x7fu); }
static bool is_nan_f16(uint16_t h) { return (h & 0x7c00u) == 0x7c00u && (h & 0x3ffu); }

int main() {
  // Every 16-bit value converts to float and back to itself (NaN stays NaN).
  for (uint32_t i = 0; i < 65536; ++i) {
    const uint16_t h = static_cast<uint16_t>(i);
    const uint16_t b = float_to_bf16_bits(bf16_bits_to_float(h));
    CHECK(is_nan_bf16(h) ? is_nan_bf16(b) : b == h);
    const uint16_t f = float_to_f16_bits(f16_bits_to_float(h));
    CHECK(is_nan_f16(h) ? is_nan_f16(f) : f == h);
  }
  // Known values.
  CHECK(f16_bits_to_float(0x3c00u) == 1.0f);
  CHECK(f16_bits_to_float(0x0001u) == std::ldexp(1.0f, -24));
  CHECK(f16_bits_to_float(0x7bffu) == 65504.0f);
  CHECK(bf16_bits_to_float(0x3f80u) == 1.0f);
  // Ties to even: 1 + 2^-11 lies halfway between 1 and the next half; rounds down to 1.
  CHECK(float_to_f16_bits(1.0f + std::ldexp(1.0f, -11)) == 0x3c00u);
  // 1 + 3*2^-11 lies halfway between 1+2^-10 (odd) and 1+2^-9 (even): rounds up.
  CHECK(float_to_f16_bits(1.0f + 3 * std::ldexp(1.0f, -11)) == 0x3c02u);
  CHECK(float_to_bf16_bits(1.0f + std::ldexp(1.0f, -8)) == 0x3f80u);
  CHECK(float_to_bf16_bits(1.0f + 3 * std::ldexp(1.0f, -8)) == 0x3f82u);
  // Overflow to inf, underflow to zero, smallest subnormal rounding.
  CHECK(float_to_f16_bits(65520.0f) == 0x7c00u);
  CHECK(float_to_f16_bits(65519.0f) == 0x7bffu);
  CHECK(float_to_f16_bits(-1e10f) == 0xfc00u);
  CHECK(float_to_f16_bits(std::ldexp(1.0f, -26)) == 0x0000u);
  CHECK(float_to_f16_bits(std::ldexp(1.5f, -25)) == 0x0001u);
  CHECK(float_to_bf16_bits(std::numeric_limits<float>::infinity()) == 0x7f80u);
  CHECK(is_nan_f16(float_to_f16_bits(std::nanf(""))));
  CHECK(is_nan_bf16(float_to_bf16_bits(std::nanf(""))));
  // Generic load/store helpers agree with the conversions.
  uint16_t buf[1];
  store_from_float(buf, 0, DType::BF16, 3.140625f);
  CHECK(load_as_float(buf, 0, DType::BF16) == 3.140625f);
  // The library reports itself.
  CHECK(std::string(library_version()) == SLIME_VERSION_STRING);
  CHECK(max_threads() >= 1);
  TEST_MAIN_END();
}
