// Links against slime::kernels and checks that the headers and the library agree.
#include <cstdio>
#include <cstring>

#include "slime/common.h"
#include "slime/runtime.h"
#include "slime/version.h"

int main() {
  const bool ok = std::strcmp(slime::library_version(), SLIME_VERSION_STRING) == 0 &&
                  slime::bf16_bits_to_float(slime::float_to_bf16_bits(1.5f)) == 1.5f;
  std::printf("slime_core %s, cuda %d, threads %d: %s\n", slime::library_version(),
              slime::compiled_with_cuda(), slime::max_threads(), ok ? "ok" : "MISMATCH");
  return ok ? 0 : 1;
}
