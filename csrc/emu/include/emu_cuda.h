// emu_cuda.h: the CUDA execution model as host C++, so that csrc/cuda/*.cu compile with g++
// and run on a CPU in CI (our compute-sanitizer without a GPU). Read csrc/emu/README.md.
//
// The threads of a block run as fibers on one OS thread (csrc/emu/runtime.cpp): none passes
// __syncthreads until every live thread of the block has reached it; warp intrinsics wait
// for every lane their mask names. Shared memory is `thread_local` storage (one block runs at
// a time), so every static and dynamic __shared__ array lies in the executable's TLS segment,
// where the runtime's load/store hooks (the kernels are compiled with outlined address
// sanitizer checks) track races, uninitialised reads and out-of-bounds dynamic accesses;
// every other access is checked against AddressSanitizer's shadow (device buffers are heap
// allocations of their exact size).
//
// This header is reached through the usual names (<cuda_runtime.h>, <cuda_fp16.h>,
// <cuda_bf16.h>, <mma.h>) in csrc/emu/include, which come first on the include path.
#pragma once

#include <math.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

// ---- qualifiers -------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ thread_local
#define __align__(n) __attribute__((aligned(n)))

// ---- vector types and indices -----------------------------------------------------------
struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};

// ---- runtime API --------------------------------------------------------------------------
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorLaunchFailure = 719,
};
enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4
};
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
struct CUstream_st;
using cudaStream_t = CUstream_st*;

cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
const char* cudaGetErrorString(cudaError_t err);
cudaError_t cudaMalloc(void** ptr, size_t bytes);
cudaError_t cudaFree(void* ptr);
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t stream = nullptr);
cudaError_t cudaMemset(void* dst, int value, size_t bytes);
cudaError_t cudaMemsetAsync(void* dst, int value, size_t bytes, cudaStream_t stream = nullptr);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaDeviceSynchronize();
template <typename T>
cudaError_t cudaMalloc(T** ptr, size_t bytes) {
  return cudaMalloc(reinterpret_cast<void**>(ptr), bytes);
}

namespace emu {

// What the checks report. Each distinct (kind, site) is counted once.
enum class Finding : int {
  SharedRace = 0,     // two threads, one barrier interval, same shared byte, one writes
  SharedUninit,       // a shared byte read before any thread of the block wrote it
  SharedOutOfBounds,  // a dynamic shared access past the launch's dynamic size
  BarrierDivergence,  // a __syncthreads that not every live thread reaches
  WarpMask,           // a warp intrinsic whose mask names absent, exited or diverged lanes
  Count
};
const char* finding_name(Finding f);
int findings(Finding f);  // distinct sites reported since reset_findings()
int total_findings();
void reset_findings();
// Emulated device: 80, 86, 89 or 90 (SLIME_EMU_ARCH in the environment, default 80). It
// sets the opt-in dynamic shared memory limit per block.
void set_arch(int sm);
int arch();
size_t max_dynamic_shared(int sm);

// ---- device side (called from the kernels through the macros below) ----
struct WarpArrival;
using WarpComplete = void (*)(void* const* payloads, unsigned mask);
enum WarpOpKind : int { kSyncWarp, kShuffle, kWmmaLoad, kWmmaStore, kWmmaMma };
struct WarpArrival {
  WarpOpKind kind;
  unsigned mask;
  const void* key;  // must be equal across the lanes (wmma: the matrix pointer)
  void* payload;
  WarpComplete complete;  // run once, by the last lane to arrive, before any lane goes on
  const char* file;
  int line;
};
extern const uint3* g_thread_idx;
extern uint3 g_block_idx;
extern dim3 g_block_dim, g_grid_dim;
int lane_id();
void syncthreads(const char* file, int line);
void warp_op_unfenced(const WarpArrival& a);
inline void warp_op(const WarpArrival& a) {
  asm volatile("" ::: "memory");
  warp_op_unfenced(a);
  asm volatile("" ::: "memory");
}
void report(Finding kind, const char* file, int line, const char* fmt, ...)
    __attribute__((format(printf, 4, 5)));

// ---- launches ----
cudaError_t set_dynamic_shared_limit(const void* kernel, int bytes);
using Thunk = void (*)(const void* kernel, void* args);
void launch(dim3 grid, dim3 block, size_t smem, const void* kernel, Thunk thunk, void* args);

template <typename F>
struct Launcher;
template <typename... P>
struct Launcher<void(P...)> {
  using Kernel = void (*)(P...);
  dim3 grid, block;
  size_t smem;
  Kernel kernel;
  // Every thread calls the kernel with its own copy of the arguments, converted to the
  // parameter types once, as a launch does.
  template <typename... A>
  void operator()(A&&... a) const {
    std::tuple<std::decay_t<P>...> args(std::forward<A>(a)...);
    launch(grid, block, smem, reinterpret_cast<const void*>(kernel), &thunk, &args);
  }
  static void thunk(const void* k, void* args) {
    std::apply(reinterpret_cast<Kernel>(const_cast<void*>(k)),
               *static_cast<std::tuple<std::decay_t<P>...>*>(args));
  }
};
template <typename... P>
Launcher<void(P...)> Launch(dim3 grid, dim3 block, size_t smem, cudaStream_t,
                            void (*kernel)(P...)) {
  return Launcher<void(P...)>{grid, block, smem, kernel};
}

// ---- shuffles ----
enum ShuffleMode { kXor, kUp, kDown, kIdx };
template <typename T>
struct ShufflePayload {
  T value;
  int src;
  T out;
};
template <typename T>
void complete_shuffle(void* const* payloads, unsigned mask) {
  for (int l = 0; l < 32; ++l) {
    if (!(mask >> l & 1u)) continue;
    auto* p = static_cast<ShufflePayload<T>*>(payloads[l]);
    if (!(mask >> p->src & 1u)) {
      report(Finding::WarpMask, nullptr, 0,
             "lane %d reads lane %d, which its mask 0x%08x leaves out", l, p->src, mask);
      p->out = p->value;
      continue;
    }
    p->out = static_cast<ShufflePayload<T>*>(payloads[p->src])->value;
  }
}
template <typename T>
T shuffle(ShuffleMode mode, const char* file, int line, unsigned mask, T v, int arg,
          int width = 32) {
  static_assert(std::is_trivially_copyable<T>::value, "shuffle of a trivially copyable value");
  const int lane = lane_id(), base = lane & ~(width - 1);
  int src = lane;
  switch (mode) {
    case kXor: src = lane ^ arg; break;
    case kUp: src = lane - arg; break;
    case kDown: src = lane + arg; break;
    case kIdx: src = base + (arg % width); break;
  }
  // CUDA: a source outside the lane's group of `width` lanes returns the lane's own value.
  if (src < base || src >= base + width) src = lane;
  ShufflePayload<T> p{v, src, v};
  warp_op({kShuffle, mask, nullptr, &p, &complete_shuffle<T>, file, line});
  return p.out;
}

}  // namespace emu

#define threadIdx (*::emu::g_thread_idx)
#define blockIdx (::emu::g_block_idx)
#define blockDim (::emu::g_block_dim)
#define gridDim (::emu::g_grid_dim)
#define warpSize 32
#define __syncthreads() ::emu::syncthreads_at(__FILE__, __LINE__)
#define __syncwarp(...) ::emu::SyncWarp{__FILE__, __LINE__}(__VA_ARGS__)
#define __shfl_xor_sync(...) ::emu::shuffle(::emu::kXor, __FILE__, __LINE__, __VA_ARGS__)
#define __shfl_up_sync(...) ::emu::shuffle(::emu::kUp, __FILE__, __LINE__, __VA_ARGS__)
#define __shfl_down_sync(...) ::emu::shuffle(::emu::kDown, __FILE__, __LINE__, __VA_ARGS__)
#define __shfl_sync(...) ::emu::shuffle(::emu::kIdx, __FILE__, __LINE__, __VA_ARGS__)

namespace emu {
// Barriers and warp operations order shared memory for the compiler too: without the fence
// g++ may move an access to a __shared__ (thread_local) array, whose address never escapes,
// across the call, as no CUDA compiler would.
inline void compiler_fence() { asm volatile("" ::: "memory"); }
inline void syncthreads_at(const char* file, int line) {
  compiler_fence();
  syncthreads(file, line);
  compiler_fence();
}
struct SyncWarp {
  const char* file;
  int line;
  void operator()(unsigned mask = 0xffffffffu) const {
    warp_op({kSyncWarp, mask, nullptr, nullptr, nullptr, file, line});
  }
};
}  // namespace emu

// Integer min/max as the device library overloads them (the kernels call them unqualified).
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }

// ---- half and bfloat16 --------------------------------------------------------------------
// Storage types with CUDA's conversions: round to nearest even, NaN kept. Written here on
// their own (not slime/common.h's), so the emulation does not check our code against itself.
struct __half {
  uint16_t bits;
};
struct __nv_bfloat16 {
  uint16_t bits;
};
inline float __half2float(__half h) {
  _Float16 f;
  std::memcpy(&f, &h.bits, 2);
  return static_cast<float>(f);
}
inline __half __float2half_rn(float v) {
  const _Float16 f = static_cast<_Float16>(v);  // IEEE conversion in the current (RNE) mode
  __half h;
  std::memcpy(&h.bits, &f, 2);
  return h;
}
inline float __bfloat162float(__nv_bfloat16 b) {
  const uint32_t u = static_cast<uint32_t>(b.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline __nv_bfloat16 __float2bfloat16_rn(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  __nv_bfloat16 b;
  if (std::isnan(v)) {
    b.bits = static_cast<uint16_t>((u >> 16) | 0x40u);
  } else {
    const uint32_t lsb = (u >> 16) & 1u;
    b.bits = static_cast<uint16_t>((u + 0x7fffu + lsb) >> 16);
  }
  return b;
}

// ---- wmma (16x16x16, bf16/fp16 operands, float accumulators) --------------------------------
// A fragment holds 8 elements per lane. Which matrix element lane l's x[e] is, is a fixed
// scramble of l * 8 + e, different for A, B and the accumulator and unlike any real
// architecture's, so code that assumes one particular mapping computes wrong results here.
namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static_assert(M == 16 && N == 16 && K == 16, "the emulation has the 16x16x16 shape only");
  static constexpr int num_elements = 8;
  T x[num_elements];
};

namespace detail {
template <typename Use>
constexpr int element(int lane, int e) {
  const int i = lane * 8 + e;
  return std::is_same<Use, matrix_a>::value   ? (i * 151 + 41) & 255
         : std::is_same<Use, matrix_b>::value ? (i * 59 + 7) & 255
                                              : (i * 97 + 13) & 255;
}
inline float as_float(float v) { return v; }
inline float as_float(__half v) { return __half2float(v); }
inline float as_float(__nv_bfloat16 v) { return __bfloat162float(v); }

// Lanes of a warp must call a wmma function together, with the same pointer.
inline void converge(::emu::WarpOpKind kind, const void* p, unsigned ldm, size_t elem,
                     const char* file, int line) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0 || (ldm * elem) % 16 != 0)
    ::emu::report(::emu::Finding::WarpMask, file, line,
                  "wmma pointer %p not 256-bit aligned or ldm %u not a multiple of 16 bytes", p,
                  ldm);
  ::emu::warp_op({kind, 0xffffffffu, p, nullptr, nullptr, file, line});
}

template <typename TA, typename TB, typename LA, typename LB>
struct MmaPayload {
  fragment<accumulator, 16, 16, 16, float>* d;
  const fragment<matrix_a, 16, 16, 16, TA, LA>* a;
  const fragment<matrix_b, 16, 16, 16, TB, LB>* b;
  const fragment<accumulator, 16, 16, 16, float>* c;
};
template <typename P>
void complete_mma(void* const* payloads, unsigned) {
  float A[256], B[256], C[256];
  for (int l = 0; l < 32; ++l) {
    const P* p = static_cast<const P*>(payloads[l]);
    for (int e = 0; e < 8; ++e) {
      A[element<matrix_a>(l, e)] = as_float(p->a->x[e]);
      B[element<matrix_b>(l, e)] = as_float(p->b->x[e]);
      C[element<accumulator>(l, e)] = p->c->x[e];
    }
  }
  for (int l = 0; l < 32; ++l) {
    const P* p = static_cast<const P*>(payloads[l]);
    for (int e = 0; e < 8; ++e) {
      const int idx = element<accumulator>(l, e), r = idx / 16, c = idx % 16;
      float acc = C[idx];
      for (int k = 0; k < 16; ++k) acc = fmaf(A[r * 16 + k], B[k * 16 + c], acc);
      p->d->x[e] = acc;
    }
  }
}
}  // namespace detail

template <typename Use, typename T, typename L>
void fill_fragment(fragment<Use, 16, 16, 16, T, L>& f, T v) {
  for (int e = 0; e < 8; ++e) f.x[e] = v;
}

// A is M x K, B is K x N; a row_major operand's element (r, c) is at p[r * ldm + c].
template <typename Use, typename T, typename L>
void load_matrix_sync_at(fragment<Use, 16, 16, 16, T, L>& f, const T* p, unsigned ldm,
                         const char* file, int line) {
  detail::converge(::emu::kWmmaLoad, p, ldm, sizeof(T), file, line);
  const int lane = ::emu::lane_id();
  for (int e = 0; e < 8; ++e) {
    const int idx = detail::element<Use>(lane, e), r = idx / 16, c = idx % 16;
    f.x[e] = std::is_same<L, row_major>::value ? p[r * ldm + c] : p[c * ldm + r];
  }
}
inline void load_matrix_sync_at(fragment<accumulator, 16, 16, 16, float>& f, const float* p,
                                unsigned ldm, layout_t layout, const char* file, int line) {
  detail::converge(::emu::kWmmaLoad, p, ldm, sizeof(float), file, line);
  const int lane = ::emu::lane_id();
  for (int e = 0; e < 8; ++e) {
    const int idx = detail::element<accumulator>(lane, e), r = idx / 16, c = idx % 16;
    f.x[e] = layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r];
  }
}
inline void store_matrix_sync_at(float* p, const fragment<accumulator, 16, 16, 16, float>& f,
                                 unsigned ldm, layout_t layout, const char* file, int line) {
  detail::converge(::emu::kWmmaStore, p, ldm, sizeof(float), file, line);
  const int lane = ::emu::lane_id();
  for (int e = 0; e < 8; ++e) {
    const int idx = detail::element<accumulator>(lane, e), r = idx / 16, c = idx % 16;
    (layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = f.x[e];
  }
}
template <typename TA, typename TB, typename LA, typename LB>
void mma_sync_at(fragment<accumulator, 16, 16, 16, float>& d,
                 const fragment<matrix_a, 16, 16, 16, TA, LA>& a,
                 const fragment<matrix_b, 16, 16, 16, TB, LB>& b,
                 const fragment<accumulator, 16, 16, 16, float>& c, const char* file, int line) {
  static_assert(std::is_same<TA, TB>::value, "A and B of one element type");
  using P = detail::MmaPayload<TA, TB, LA, LB>;
  P p{&d, &a, &b, &c};
  ::emu::warp_op({::emu::kWmmaMma, 0xffffffffu, nullptr, &p, &detail::complete_mma<P>, file, line});
}
}  // namespace wmma
}  // namespace nvcuda

#define load_matrix_sync(...) load_matrix_sync_at(__VA_ARGS__, __FILE__, __LINE__)
#define store_matrix_sync(...) store_matrix_sync_at(__VA_ARGS__, __FILE__, __LINE__)
#define mma_sync(...) mma_sync_at(__VA_ARGS__, __FILE__, __LINE__)

template <typename F>
cudaError_t cudaFuncSetAttribute(F* kernel, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaErrorInvalidValue;
  return ::emu::set_dynamic_shared_limit(reinterpret_cast<const void*>(kernel), value);
}
