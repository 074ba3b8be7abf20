// test_emu_checks.cpp: the CUDA emulation's checker can fail. Small kernels with one
// deliberate bug each (a missing barrier, a divergent barrier, an uninitialised shared read,
// a dynamic shared access out of bounds, shuffles whose mask leaves lanes out) must raise
// exactly their finding; correct kernels with the same shapes must raise none and compute
// the right values; launch limits fail as on a device; wmma code that assumes a fragment
// mapping computes wrong values. Built like the kernels (instrumented, emulation headers).
//
//   test_emu_checks               every non-fatal case
//   test_emu_checks global_oob    a kernel writes past a device buffer: ASan's report, exit 1
//   test_emu_checks use_after_free
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cuda_utils.cuh"
#include "slime/common.h"
#include "../test_util.h"

using emu::Finding;

namespace slime {
namespace {

// ---- broken kernels ----------------------------------------------------------------------

// Each thread bumps its own element, then reads its neighbour's without a barrier between.
__global__ void broken_kernel_missing_barrier(float* out, bool fixed) {
  __shared__ float tile[64];
  tile[threadIdx.x] = float(threadIdx.x);
  __syncthreads();
  tile[threadIdx.x] += 1.0f;
  if (fixed) __syncthreads();
  out[threadIdx.x] = tile[(threadIdx.x + 1) % 64];
}

// The first warp takes an extra barrier the others never reach.
__global__ void broken_kernel_divergent_barrier(float* out) {
  __shared__ float s[64];
  s[threadIdx.x] = 1.0f;
  if (threadIdx.x < 32) __syncthreads();
  __syncthreads();
  out[threadIdx.x] = s[63 - threadIdx.x];
}

// Threads past 40 leave before a barrier the others wait at.
__global__ void broken_kernel_exit_before_barrier(float* out) {
  __shared__ float s[64];
  if (threadIdx.x >= 40) return;
  s[threadIdx.x] = 2.0f;
  __syncthreads();
  out[threadIdx.x] = s[39 - threadIdx.x];
}

// Half the block fills the array, everyone reads it.
__global__ void broken_kernel_uninit(float* out, int filled) {
  __shared__ float s[64];
  if (int(threadIdx.x) < filled) s[threadIdx.x] = 3.0f;
  __syncthreads();
  out[threadIdx.x] = s[threadIdx.x];
}

// Element n of the dynamic shared memory: one past its end when launched with n floats.
__global__ void broken_kernel_shared_oob(float* out, int n) {
  extern __shared__ float smem[];
  smem[threadIdx.x] = 1.0f;
  if (threadIdx.x == 0) smem[n] = 2.0f;
  __syncthreads();
  out[threadIdx.x] = smem[(threadIdx.x + 1) % n];
}

// A 16-lane sum whose first offset (16) reads lanes the mask leaves out.
__global__ void broken_kernel_shuffle_offset(float* out, int first) {
  float v = float(threadIdx.x);
  if (threadIdx.x < 16)
    for (int o = first; o > 0; o >>= 1) v += __shfl_xor_sync(0x0000ffffu, v, o);
  out[threadIdx.x] = v;
}

// Lanes 16..31 exit; the rest shuffle with the full mask.
__global__ void broken_kernel_exited_lanes(float* out) {
  if (threadIdx.x >= 16) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, float(threadIdx.x), 1);
}

// Lanes 0..15 wait at a block barrier, lanes 16..31 at a warp barrier: a hang on a GPU.
__global__ void broken_kernel_barrier_deadlock(float* out) {
  if (threadIdx.x < 16)
    __syncthreads();
  else
    __syncwarp();
  out[threadIdx.x] = 1.0f;
}

__global__ void broken_kernel_global_oob(float* out, int n) { out[threadIdx.x + 1] = float(n); }

// ---- correct kernels (no finding, right values) -------------------------------------------

// Block sum: warp shuffles (xor), one partial per warp through shared memory, then an
// inclusive warp scan of the partials (up), as the real kernels do it.
__global__ void block_sum_scan(const float* in, float* out) {
  __shared__ float part[32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  float v = in[blockIdx.x * blockDim.x + threadIdx.x];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  if (lane == 0) part[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float s = lane < int(blockDim.x / 32) ? part[lane] : 0.0f;
    for (int o = 1; o < 32; o <<= 1) {
      const float n = __shfl_up_sync(0xffffffffu, s, o);
      if (lane >= o) s += n;
    }
    if (lane == 31) out[blockIdx.x] = s;
  }
}

// Warp-synchronous exchange through shared memory, ordered by __syncwarp only.
__global__ void warp_exchange(float* out) {
  __shared__ float s[2][32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  s[warp][lane] = float(threadIdx.x);
  __syncwarp();
  const float v = s[warp][31 - lane];
  __syncwarp();
  s[warp][lane] = v * 2.0f;
  __syncwarp();
  out[threadIdx.x] = s[warp][(lane + 1) % 32];
}

// One 16x16x16 product through wmma, or through fragments filled assuming that lane l holds
// row l / 2 (one real layout's guess): right only with the emulation's own load.
template <typename T>
__global__ void wmma_gemm(const T* a, const T* b, float* c, bool assume_mapping) {
  using namespace nvcuda;
  __shared__ __align__(32) T as[16 * 16];
  __shared__ __align__(32) T bs[16 * 16];
  __shared__ __align__(32) float cs[16 * 16];
  for (int i = threadIdx.x; i < 256; i += 32) as[i] = a[i], bs[i] = b[i];
  __syncwarp();
  wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
  wmma::fill_fragment(acc, 0.0f);
  if (assume_mapping) {
    const int lane = threadIdx.x;
    for (int e = 0; e < fa.num_elements; ++e) {
      fa.x[e] = as[(lane / 2) * 16 + (lane % 2) * 8 + e];
      fb.x[e] = bs[(lane / 2) * 16 + (lane % 2) * 8 + e];
    }
  } else {
    wmma::load_matrix_sync(fa, as, 16);
    wmma::load_matrix_sync(fb, bs, 16);  // col_major B: element (k, n) at bs[n * 16 + k]
  }
  wmma::mma_sync(acc, fa, fb, acc);
  wmma::store_matrix_sync(cs, acc, 16, wmma::mem_row_major);
  __syncwarp();
  for (int i = threadIdx.x; i < 256; i += 32) c[i] = cs[i];
}

__global__ void empty_kernel(float*) {}

// ---- harness -------------------------------------------------------------------------------

struct DeviceBuffer {
  float* p = nullptr;
  explicit DeviceBuffer(size_t n) {
    cudaMalloc(&p, n * sizeof(float));
    cudaMemset(p, 0, n * sizeof(float));
  }
  ~DeviceBuffer() { cudaFree(p); }
  std::vector<float> host(size_t n) const {
    std::vector<float> h(n);
    cudaMemcpy(h.data(), p, n * sizeof(float), cudaMemcpyDeviceToHost);
    return h;
  }
};

int g_broken = 0, g_flagged = 0;

// Runs `launch`, then checks that exactly `kind` was found (Finding::Count: nothing).
template <typename F>
void expect(const char* name, Finding kind, F&& launch) {
  emu::reset_findings();
  launch();
  cudaGetLastError();
  const int hits = kind == Finding::Count ? 0 : emu::findings(kind);
  const bool ok = kind == Finding::Count ? emu::total_findings() == 0
                                         : hits >= 1 && emu::total_findings() == hits;
  std::printf("%-28s expects %-22s found %d of %d: %s\n", name,
              kind == Finding::Count ? "nothing" : emu::finding_name(kind), hits,
              emu::total_findings(), ok ? "ok" : "FAILED");
  CHECK(ok);
  if (kind != Finding::Count) ++g_broken, g_flagged += ok;
}

void broken_kernels() {
  DeviceBuffer out(64);
  expect("missing barrier", Finding::SharedRace, [&] {
    SLIME_LAUNCH(1, 64, 0, nullptr, broken_kernel_missing_barrier)(out.p, false);
  });
  expect("with the barrier", Finding::Count, [&] {
    SLIME_LAUNCH(1, 64, 0, nullptr, broken_kernel_missing_barrier)(out.p, true);
  });
  const auto h = out.host(64);
  for (int t = 0; t < 64; ++t) CHECK(h[t] == float((t + 1) % 64) + 1.0f);

  expect("divergent barrier", Finding::BarrierDivergence, [&] {
    SLIME_LAUNCH(1, 64, 0, nullptr, broken_kernel_divergent_barrier)(out.p);
  });
  expect("exit before barrier", Finding::BarrierDivergence, [&] {
    SLIME_LAUNCH(1, 64, 0, nullptr, broken_kernel_exit_before_barrier)(out.p);
  });
  expect("barrier/warp deadlock", Finding::BarrierDivergence, [&] {
    SLIME_LAUNCH(1, 32, 0, nullptr, broken_kernel_barrier_deadlock)(out.p);
    CHECK(cudaGetLastError() == cudaErrorLaunchFailure);  // reported, never hung
  });
  expect("uninitialised shared read", Finding::SharedUninit, [&] {
    SLIME_LAUNCH(1, 64, 0, nullptr, broken_kernel_uninit)(out.p, 32);
  });
  expect("all initialised", Finding::Count, [&] {
    SLIME_LAUNCH(1, 64, 0, nullptr, broken_kernel_uninit)(out.p, 64);
  });
  // Uninitialised means "not written in this block": a second block starts poisoned again.
  expect("poisoned per block", Finding::SharedUninit, [&] {
    SLIME_LAUNCH(1, 64, 0, nullptr, broken_kernel_uninit)(out.p, 64);
    SLIME_LAUNCH(1, 64, 0, nullptr, broken_kernel_uninit)(out.p, 63);
  });
  expect("dynamic shared OOB", Finding::SharedOutOfBounds, [&] {
    SLIME_LAUNCH(1, 32, 32 * sizeof(float), nullptr, broken_kernel_shared_oob)(out.p, 32);
  });
  expect("dynamic shared in bounds", Finding::Count, [&] {
    SLIME_LAUNCH(1, 32, 33 * sizeof(float), nullptr, broken_kernel_shared_oob)(out.p, 32);
  });
  expect("wrong shuffle offset", Finding::WarpMask, [&] {
    SLIME_LAUNCH(1, 32, 0, nullptr, broken_kernel_shuffle_offset)(out.p, 16);
  });
  expect("right shuffle offset", Finding::Count, [&] {
    SLIME_LAUNCH(1, 32, 0, nullptr, broken_kernel_shuffle_offset)(out.p, 8);
  });
  const auto s = out.host(32);
  for (int t = 0; t < 16; ++t) CHECK(s[t] == 120.0f);  // 0 + 1 + ... + 15
  expect("mask names exited lanes", Finding::WarpMask, [&] {
    SLIME_LAUNCH(1, 32, 0, nullptr, broken_kernel_exited_lanes)(out.p);
  });
}

void correct_kernels(std::mt19937& rng) {
  std::uniform_int_distribution<int> small(-8, 8);
  for (int threads : {32, 96, 1024}) {
    const int blocks = 3;
    std::vector<float> in(size_t(blocks) * threads);
    for (auto& v : in) v = float(small(rng));
    DeviceBuffer din(in.size()), dout(blocks);
    cudaMemcpy(din.p, in.data(), in.size() * sizeof(float), cudaMemcpyHostToDevice);
    expect("block sum (xor + up)", Finding::Count, [&] {
      SLIME_LAUNCH(blocks, threads, 0, nullptr, block_sum_scan)(din.p, dout.p);
    });
    const auto got = dout.host(blocks);
    for (int b = 0; b < blocks; ++b) {
      float want = 0;
      for (int t = 0; t < threads; ++t) want += in[size_t(b) * threads + t];
      CHECK(got[b] == want);
    }
  }
  DeviceBuffer out(64);
  expect("warp-synchronous exchange", Finding::Count, [&] {
    SLIME_LAUNCH(1, 64, 0, nullptr, warp_exchange)(out.p);
  });
  const auto h = out.host(64);
  for (int t = 0; t < 64; ++t) CHECK(h[t] == 2.0f * float((t / 32) * 32 + 31 - (t + 1) % 32));
}

template <typename T>
void wmma_case(std::mt19937& rng, T (*from)(float)) {
  std::uniform_int_distribution<int> small(-4, 4);
  std::vector<float> a(256), b(256);
  std::vector<T> ah(256), bh(256);
  for (int i = 0; i < 256; ++i) {
    a[i] = float(small(rng)), b[i] = float(small(rng));
    ah[i] = from(a[i]), bh[i] = from(b[i]);
  }
  std::vector<float> want(256, 0.0f);  // C = A B with B stored column-major (b[n * 16 + k])
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c)
      for (int k = 0; k < 16; ++k) want[r * 16 + c] += a[r * 16 + k] * b[c * 16 + k];
  T *da, *db;
  cudaMalloc(&da, 256 * sizeof(T));
  cudaMalloc(&db, 256 * sizeof(T));
  cudaMemcpy(da, ah.data(), 256 * sizeof(T), cudaMemcpyHostToDevice);
  cudaMemcpy(db, bh.data(), 256 * sizeof(T), cudaMemcpyHostToDevice);
  DeviceBuffer c(256);
  for (bool assume : {false, true}) {
    expect(assume ? "wmma, assumed mapping" : "wmma", Finding::Count, [&] {
      SLIME_LAUNCH(1, 32, 0, nullptr, wmma_gemm<T>)(da, db, c.p, assume);
    });
    const auto got = c.host(256);
    int wrong = 0;
    for (int i = 0; i < 256; ++i) wrong += got[i] != want[i];
    std::printf("  %d of 256 elements differ from A B\n", wrong);
    CHECK(assume ? wrong > 0 : wrong == 0);
  }
  cudaFree(da);
  cudaFree(db);
}

void launch_limits() {
  DeviceBuffer out(1);
  auto status = [&](dim3 grid, dim3 block, size_t smem) {
    cudaGetLastError();
    SLIME_LAUNCH(grid, block, smem, nullptr, empty_kernel)(out.p);
    return cudaGetLastError();
  };
  CHECK(status(1, 1024, 0) == cudaSuccess);
  CHECK(status(1, 1025, 0) == cudaErrorInvalidConfiguration);
  CHECK(status(1, dim3(1, 1, 65), 0) == cudaErrorInvalidConfiguration);
  CHECK(status(dim3(1, 65535, 1), 1, 0) == cudaSuccess);
  CHECK(status(dim3(1, 65536, 1), 1, 0) == cudaErrorInvalidConfiguration);
  CHECK(status(dim3(1, 1, 65536), 1, 0) == cudaErrorInvalidConfiguration);
  CHECK(status(dim3(0, 1, 1), 1, 0) == cudaErrorInvalidConfiguration);
  CHECK(status(1, 1, 48 * 1024) == cudaSuccess);
  CHECK(status(1, 1, 48 * 1024 + 1) == cudaErrorInvalidValue);  // no opt-in yet
  struct Arch { int sm; size_t limit; };
  for (Arch a : {Arch{80, 163 * 1024}, Arch{86, 99 * 1024}, Arch{89, 99 * 1024},
                 Arch{90, 227 * 1024}}) {
    emu::set_arch(a.sm);
    const int over = static_cast<int>(a.limit) + 1;
    CHECK(cudaFuncSetAttribute(empty_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, over) ==
          cudaErrorInvalidValue);
    cudaGetLastError();
    CHECK(cudaFuncSetAttribute(empty_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(a.limit)) == cudaSuccess);
    CHECK(status(1, 1, a.limit) == cudaSuccess);
    CHECK(status(1, 1, a.limit + 1) == cudaErrorInvalidValue);
  }
  emu::set_arch(80);
  // A grid wider than the y/z limit is allowed in x: 2^31 - 1 blocks (not run here).
  CHECK(status(dim3(0x80000000u, 1, 1), 1, 0) == cudaErrorInvalidConfiguration);
}

// CUDA's conversions (emulation) and slime/common.h's (CPU kernels) must agree bit for bit:
// two implementations of round-to-nearest-even, ties and specials included.
void conversions(std::mt19937& rng) {
  std::vector<float> xs = {0.0f, -0.0f, 1.0f + 1.0f / 256, 1.0f + 3.0f / 256, 1.0f + 1.0f / 2048,
                           2049.0f, 65504.0f, 65520.0f, 1e-8f, 6.1e-5f, 3e38f, INFINITY,
                           -INFINITY, NAN};
  std::uniform_int_distribution<uint32_t> bits;
  for (int i = 0; i < 100000; ++i) xs.push_back(bits_float(bits(rng)));
  int bad = 0;
  for (float x : xs) {
    if (std::isnan(x)) {
      bad += !std::isnan(__bfloat162float(__float2bfloat16_rn(x)));
      bad += !std::isnan(__half2float(__float2half_rn(x)));
      continue;
    }
    bad += __float2bfloat16_rn(x).bits != float_to_bf16_bits(x);
    bad += __float2half_rn(x).bits != float_to_f16_bits(x);
    const uint16_t h = static_cast<uint16_t>(float_bits(x) >> 16);
    bad += float_bits(__bfloat162float(__nv_bfloat16{h})) != float_bits(bf16_bits_to_float(h));
    if (((h >> 10) & 0x1f) != 0x1f)
      bad += float_bits(__half2float(__half{h})) != float_bits(f16_bits_to_float(h));
  }
  CHECK(__float2bfloat16_rn(1.0f + 1.0f / 256).bits == 0x3f80);  // tie to even: down
  CHECK(__float2bfloat16_rn(1.0f + 3.0f / 256).bits == 0x3f82);  // tie to even: up
  CHECK(__float2half_rn(2049.0f).bits == 0x6800);                // 2048
  CHECK(__float2half_rn(65520.0f).bits == 0x7c00);               // rounds to inf
  std::printf("conversions: %d mismatches over %zu values\n", bad, xs.size());
  CHECK(bad == 0);
}

int fatal_case(const std::string& which) {
  DeviceBuffer out(32);
  if (which == "global_oob") {
    SLIME_LAUNCH(1, 32, 0, nullptr, broken_kernel_global_oob)(out.p, 32);
  } else if (which == "use_after_free") {
    float* p;
    cudaMalloc(&p, 32 * sizeof(float));
    cudaFree(p);
    SLIME_LAUNCH(1, 32, 0, nullptr, broken_kernel_missing_barrier)(p, true);
  } else {
    std::fprintf(stderr, "unknown case %s\n", which.c_str());
    return 2;
  }
  std::printf("no report: the checker missed %s\n", which.c_str());
  return 0;  // ctest expects ASan's report
}

}  // namespace
}  // namespace slime

int main(int argc, char** argv) {
  using namespace slime;
  if (argc > 1) return fatal_case(argv[1]);
  std::mt19937 rng(std::random_device{}());
  broken_kernels();
  correct_kernels(rng);
  wmma_case<__half>(rng, __float2half_rn);
  wmma_case<__nv_bfloat16>(rng, __float2bfloat16_rn);
  launch_limits();
  conversions(rng);
  std::printf("checker: %d of %d broken kernels raised exactly their finding\n", g_flagged,
              g_broken);
  TEST_MAIN_END();
}
