// test_util.h: a tiny check harness for the framework-free C++ tests (no test framework
// dependency: ctest only needs an exit code).
#pragma once

#include <cstdio>
#include <cstdlib>

namespace slime_test {
inline int& failures() {
  static int n = 0;
  return n;
}
}  // namespace slime_test

#define CHECK(cond)                                                          \
  do {                                                                       \
    if (!(cond)) {                                                           \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      ++slime_test::failures();                                              \
    }                                                                        \
  } while (0)

#define TEST_MAIN_END()                                                      \
  do {                                                                       \
    if (slime_test::failures()) {                                            \
      std::fprintf(stderr, "%d check(s) failed\n", slime_test::failures());  \
      return 1;                                                              \
    }                                                                        \
    std::printf("ok\n");                                                     \
    return 0;                                                                \
  } while (0)
