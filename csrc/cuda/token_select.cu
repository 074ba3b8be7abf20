// token_select (CUDA): text-guided top-p / top-k selection of local visual tokens and the
// packing gather with its backward; the math is in slime/token_select.h and mirrors the CPU
// kernel (csrc/cpu/token_select.cpp) step for step, so the same tests validate both.
//
// Kernels, in stream order:
//   text_inv      one warp per text row: 1 / max(|e_t|, eps), 0 for masked rows;
//   text_partial  each thread owns one column h of one image and sums a chunk of 64 rows
//                 (coalesced across the warp); text_reduce adds the chunks: s_b. No atomics,
//                 so the result is deterministic;
//   scores        the bandwidth-bound pass: one warp per token row, 16-byte loads, the dot
//                 with s_b and |x_m|^2 in one read;
//   select        one block per image: both softmaxes (block reductions, denominators in
//                 double), a bitonic sort of 64-bit (p, index) keys, the cumulative-sum scan
//                 (double), flags and an ascending compaction. Keys live in shared memory
//                 when M_max <= kTokenSelectSharedSortMax (8192, 72 KiB with the flags);
//                 beyond that the same code sorts in a global-memory workspace, one block per
//                 image (slower, O(M log^2 M) global accesses, but any M).
// Check:     python -m pytest -q tests/test_token_select.py   (cuda cases on a GPU machine)
// Benchmark: python -m bench --only token_select --device cuda
#include <cfloat>
#include <cstdint>

#include "cuda_utils.cuh"
#include "slime/token_select.h"

namespace slime {
namespace {

constexpr int kWarp = 32;
constexpr int kRowThreads = 256;     // 8 warps, one row each (text_inv, scores)
constexpr int kColThreads = 256;     // columns per block (text_partial, text_reduce)
constexpr int kSelectThreads = 1024;

// ---- block reductions -----------------------------------------------------------------

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Every thread of the block must call these; every thread gets the result.
template <typename T>
__device__ T block_sum(T v, T* scratch) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int nwarps = (blockDim.x + kWarp - 1) / kWarp;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous reduction
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  T r = lane < nwarps ? scratch[lane] : T(0);
  return warp_sum(r);
}

__device__ float block_max(float v, float* scratch) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int nwarps = (blockDim.x + kWarp - 1) / kWarp;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float r = lane < nwarps ? scratch[lane] : -INFINITY;
  return warp_max(r);
}

// Exclusive prefix sum of one value per thread, in thread order; also returns the total.
template <typename T>
__device__ T block_exclusive_scan(T v, T* scratch, T* total) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int nwarps = (blockDim.x + kWarp - 1) / kWarp;
  T inc = v;
#pragma unroll
  for (int o = 1; o < kWarp; o <<= 1) {
    const T n = __shfl_up_sync(0xffffffffu, inc, o);
    if (lane >= o) inc += n;
  }
  __syncthreads();
  if (lane == kWarp - 1) scratch[warp] = inc;
  __syncthreads();
  if (warp == 0) {
    T w = lane < nwarps ? scratch[lane] : T(0);
    T winc = w;
#pragma unroll
    for (int o = 1; o < kWarp; o <<= 1) {
      const T n = __shfl_up_sync(0xffffffffu, winc, o);
      if (lane >= o) winc += n;
    }
    if (lane < nwarps) scratch[lane] = winc - w;  // exclusive prefix of the warp totals
    if (lane == kWarp - 1) scratch[kWarp] = winc;
  }
  __syncthreads();
  const T out = scratch[warp] + inc - v;
  *total = scratch[kWarp];
  return out;
}

// ---- loads ------------------------------------------------------------------------------

// Converts the 16 bytes at p (16-byte aligned) to 16 / sizeof(T) floats.
template <typename T>
__device__ __forceinline__ void load16(const T* p, float* out) {
  const uint4 raw = *reinterpret_cast<const uint4*>(p);
  const T* v = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int i = 0; i < int(16 / sizeof(T)); ++i) out[i] = cuda::to_float(v[i]);
}

// dot(row, s) and |row|^2 by one warp over H elements.
template <typename T, bool kVec>
__device__ __forceinline__ void warp_dot_norm(const T* row, const float* s, int64_t H, float* dot,
                                              float* ss) {
  const int lane = threadIdx.x % kWarp;
  float d = 0.0f, q = 0.0f;
  if (kVec) {
    constexpr int V = 16 / sizeof(T);
    for (int64_t h = int64_t(lane) * V; h < H; h += int64_t(kWarp) * V) {
      float x[V];
      load16(row + h, x);
#pragma unroll
      for (int i = 0; i < V; ++i) {
        const float sv = s == nullptr ? 0.0f : s[h + i];
        d = fmaf(x[i], sv, d);
        q = fmaf(x[i], x[i], q);
      }
    }
  } else {
    for (int64_t h = lane; h < H; h += kWarp) {
      const float x = cuda::to_float(row[h]);
      d = fmaf(x, s == nullptr ? 0.0f : s[h], d);
      q = fmaf(x, x, q);
    }
  }
  *dot = warp_sum(d);
  *ss = warp_sum(q);
}

// ---- text -------------------------------------------------------------------------------

template <typename T, bool kVec>
__global__ void text_inv_kernel(const T* __restrict__ text, const bool* __restrict__ mask,
                                float* __restrict__ inv, int64_t rows, int64_t H) {
  const int64_t r = int64_t(blockIdx.x) * (blockDim.x / kWarp) + threadIdx.x / kWarp;
  if (r >= rows) return;  // whole warps leave together
  if (!mask[r]) {
    if (threadIdx.x % kWarp == 0) inv[r] = 0.0f;
    return;
  }
  float dot, ss;
  warp_dot_norm<T, kVec>(text + r * H, nullptr, H, &dot, &ss);
  if (threadIdx.x % kWarp == 0) inv[r] = 1.0f / fmaxf(sqrtf(ss), kTokenSelectEps);
}

// gridDim.y and gridDim.z are at most 65535: the text kernels and pack_kernel loop over the
// chunks and images beyond that.
constexpr int64_t kMaxGridYZ = 65535;

inline unsigned grid_yz(int64_t n) {
  return static_cast<unsigned>(n < kMaxGridYZ ? n : kMaxGridYZ);
}

template <typename T>
__global__ void text_partial_kernel(const T* __restrict__ text, const bool* __restrict__ mask,
                                    const float* __restrict__ inv, float* __restrict__ partial,
                                    int64_t B, int64_t T_max, int64_t H, int64_t chunks,
                                    int64_t chunk_rows) {
  const int64_t h = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (h >= H) return;
  for (int64_t b = blockIdx.z; b < B; b += gridDim.z) {
    for (int64_t c = blockIdx.y; c < chunks; c += gridDim.y) {
      const int64_t t0 = c * chunk_rows;
      const int64_t t1 = t0 + chunk_rows < T_max ? t0 + chunk_rows : T_max;
      float acc = 0.0f;
      for (int64_t t = t0; t < t1; ++t) {
        // The mask, not inv != 0, decides: like the CPU kernel, an unmasked row whose norm
        // is inf (inv 0) still enters the sum, and masked padding (maybe NaN) never does.
        if (mask[b * T_max + t])
          acc = fmaf(cuda::to_float(text[(b * T_max + t) * H + h]), inv[b * T_max + t], acc);
      }
      partial[(b * chunks + c) * H + h] = acc;
    }
  }
}

__global__ void text_reduce_kernel(const float* __restrict__ partial, float* __restrict__ s,
                                   int64_t B, int64_t H, int64_t chunks) {
  const int64_t h = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (h >= H) return;
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y) {
    float acc = 0.0f;
    for (int64_t c = 0; c < chunks; ++c) acc += partial[(b * chunks + c) * H + h];
    s[b * H + h] = acc;
  }
}

// ---- scores -------------------------------------------------------------------------------

template <typename T, bool kVec>
__global__ void scores_kernel(const T* __restrict__ tokens, const int64_t* __restrict__ counts,
                              const float* __restrict__ s, float* __restrict__ scores, int64_t B,
                              int64_t M_max, int64_t H) {
  const int64_t r = int64_t(blockIdx.x) * (blockDim.x / kWarp) + threadIdx.x / kWarp;
  if (r >= B * M_max) return;
  const int64_t b = r / M_max, m = r % M_max;
  if (m >= counts[b]) return;
  float dot, ss;
  warp_dot_norm<T, kVec>(tokens + r * H, s + b * H, H, &dot, &ss);
  if (threadIdx.x % kWarp == 0) scores[r] = dot / fmaxf(sqrtf(ss), kTokenSelectEps);
}

// ---- selection ----------------------------------------------------------------------------

struct SelectArgs {
  float* q;  // [B, M_max]: scores in, overwritten with the pre-temperature logits
  const int64_t* counts;
  const float* noise;
  int64_t* out_indices;
  int64_t* out_counts;
  float* out_probs;
  uint64_t* global_keys;  // [B, sort_n] or nullptr (shared-memory path)
  uint8_t* global_flags;
  int64_t M_max, sort_n;
  bool use_top_k;
  double top_p;
  int64_t top_k;
  float temperature, prenorm_temperature;
};

// exp((v - mx) / t) for m < M, with the sum of those (as double) over the block.
__device__ double block_exp_sum(const float* v, int64_t M, float mx, float t, double* dscratch) {
  double local = 0.0;
  for (int64_t m = threadIdx.x; m < M; m += blockDim.x) local += expf((v[m] - mx) / t);
  return block_sum(local, dscratch);
}

__device__ float block_max_of(const float* v, int64_t M, float* fscratch) {
  float mx = -INFINITY;
  for (int64_t m = threadIdx.x; m < M; m += blockDim.x) mx = fmaxf(mx, v[m]);
  return block_max(mx, fscratch);
}

// One resident block per SM is all it gets (B blocks of 1024 threads): the bound lets ptxas
// use 64 registers, so sm_90 no longer spills (32 registers did).
__global__ void __launch_bounds__(kSelectThreads, 1) select_kernel(SelectArgs a) {
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ float fscratch[kWarp + 1];
  __shared__ double dscratch[kWarp + 1];
  __shared__ int64_t iscratch[kWarp + 1];
  const int64_t b = blockIdx.x;
  const int64_t M_max = a.M_max;
  int64_t M = a.counts[b];
  M = M < 0 ? 0 : (M > M_max ? M_max : M);
  int64_t n = 1;  // this image's sort size
  while (n < M) n *= 2;
  uint64_t* keys = a.global_keys != nullptr ? a.global_keys + b * a.sort_n
                                            : reinterpret_cast<uint64_t*>(smem);
  uint8_t* flags = a.global_flags != nullptr ? a.global_flags + b * a.sort_n
                                             : smem + a.sort_n * sizeof(uint64_t);
  float* q = a.q + b * M_max;
  float* probs = a.out_probs + b * M_max;

  // q = softmax(score / prenorm) (optional) + noise
  if (a.prenorm_temperature > 0.0f) {
    const float mx = block_max_of(q, M, fscratch);
    const double sum = block_exp_sum(q, M, mx, a.prenorm_temperature, dscratch);
    __syncthreads();  // everyone has read q for the sum before it is overwritten
    for (int64_t m = threadIdx.x; m < M; m += blockDim.x)
      q[m] = static_cast<float>(double(expf((q[m] - mx) / a.prenorm_temperature)) / sum);
  }
  if (a.noise != nullptr) {
    for (int64_t m = threadIdx.x; m < M; m += blockDim.x) q[m] += a.noise[b * M_max + m];
  }
  __syncthreads();
  // p = softmax(q / temperature), keys for the ranking
  const float mx = block_max_of(q, M, fscratch);
  const double sum = block_exp_sum(q, M, mx, a.temperature, dscratch);
  for (int64_t m = threadIdx.x; m < n; m += blockDim.x) {
    if (m < M) {
      const float p = static_cast<float>(double(expf((q[m] - mx) / a.temperature)) / sum);
      probs[m] = p;
      keys[m] = token_rank_key(p, m);
    } else {
      keys[m] = 0;
    }
  }
  for (int64_t m = M + threadIdx.x; m < M_max; m += blockDim.x) probs[m] = 0.0f;
  __syncthreads();

  // bitonic sort, descending
  for (int64_t k = 2; k <= n; k <<= 1) {
    for (int64_t j = k >> 1; j > 0; j >>= 1) {
      for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
        const int64_t l = i ^ j;
        if (l > i) {
          const uint64_t ki = keys[i], kl = keys[l];
          const bool desc = (i & k) == 0;
          if (desc ? ki < kl : ki > kl) {
            keys[i] = kl;
            keys[l] = ki;
          }
        }
      }
      __syncthreads();
    }
  }

  // how many ranked tokens to keep
  const int64_t per = (M + blockDim.x - 1) / blockDim.x;
  const int64_t j0 = threadIdx.x * per;
  const int64_t j1 = j0 + per < M ? j0 + per : M;
  int64_t keep;
  if (a.use_top_k) {
    keep = a.top_k < M ? a.top_k : M;
  } else {
    double local = 0.0;
    for (int64_t j = j0; j < j1; ++j) local += bits_float(static_cast<uint32_t>(keys[j] >> 32));
    double total;
    double c = block_exclusive_scan(local, dscratch, &total);
    int64_t within = 0;
    for (int64_t j = j0; j < j1; ++j) {
      c += bits_float(static_cast<uint32_t>(keys[j] >> 32));
      within += c <= a.top_p ? 1 : 0;
    }
    keep = top_p_keep(block_sum(within, iscratch), M, a.top_p);
  }

  // flag the kept tokens, then write them in index order
  for (int64_t m = threadIdx.x; m < M; m += blockDim.x) flags[m] = 0;
  __syncthreads();
  for (int64_t j = threadIdx.x; j < keep; j += blockDim.x) flags[token_rank_index(keys[j])] = 1;
  __syncthreads();
  int64_t mine = 0;
  for (int64_t m = j0; m < j1; ++m) mine += flags[m];
  int64_t total_kept;
  int64_t w = block_exclusive_scan(mine, iscratch, &total_kept);
  int64_t* out = a.out_indices + b * M_max;
  for (int64_t m = j0; m < j1; ++m)
    if (flags[m]) out[w++] = m;
  for (int64_t j = keep + threadIdx.x; j < M_max; j += blockDim.x) out[j] = -1;
  if (threadIdx.x == 0) a.out_counts[b] = keep;
}

template <typename T>
LaunchStatus launch_select(const TokenSelectParams& p, cudaStream_t stream) {
  const TokenSelectWorkspace ws = token_select_workspace(p);
  unsigned char* base = static_cast<unsigned char*>(p.workspace);
  float* inv = reinterpret_cast<float*>(base + ws.text_inv);
  float* partial = reinterpret_cast<float*>(base + ws.partial);
  float* s = reinterpret_cast<float*>(base + ws.text_sum);
  float* scores = reinterpret_cast<float*>(base + ws.scores);
  const T* text = static_cast<const T*>(p.text);
  const T* tokens = static_cast<const T*>(p.tokens);
  constexpr int V = 16 / sizeof(T);
  const int rows_per_block = kRowThreads / kWarp;

  if (p.H > 0) {
    const bool text_vec = p.H % V == 0 && reinterpret_cast<uintptr_t>(text) % 16 == 0;
    if (p.T_max > 0) {
      const int64_t rows = p.B * p.T_max;
      const dim3 grid(static_cast<unsigned>(cuda::ceil_div(rows, rows_per_block)));
      SLIME_BOOL_SWITCH(text_vec, kVec, [&] {
        SLIME_LAUNCH(grid, kRowThreads, 0, stream, text_inv_kernel<T, kVec>)(text, p.text_mask,
                                                                             inv, rows, p.H);
      });
      SLIME_CUDA_RETURN_IF_ERROR(cudaGetLastError());
    }
    const unsigned hblocks = static_cast<unsigned>(cuda::ceil_div(p.H, kColThreads));
    SLIME_LAUNCH(dim3(hblocks, grid_yz(ws.chunks), grid_yz(p.B)), kColThreads, 0, stream,
                 text_partial_kernel<T>)(text, p.text_mask, inv, partial, p.B, p.T_max, p.H,
                                         ws.chunks, ws.kTextChunk);
    SLIME_CUDA_RETURN_IF_ERROR(cudaGetLastError());
    SLIME_LAUNCH(dim3(hblocks, grid_yz(p.B)), kColThreads, 0, stream, text_reduce_kernel)(
        partial, s, p.B, p.H, ws.chunks);
    SLIME_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  }
  if (p.M_max > 0) {
    const int64_t rows = p.B * p.M_max;
    const bool tok_vec = p.H % V == 0 && reinterpret_cast<uintptr_t>(tokens) % 16 == 0;
    const dim3 grid(static_cast<unsigned>(cuda::ceil_div(rows, rows_per_block)));
    // H == 0: every score is 0 / eps = 0, which the kernel computes as well.
    SLIME_BOOL_SWITCH(tok_vec, kVec, [&] {
      SLIME_LAUNCH(grid, kRowThreads, 0, stream, scores_kernel<T, kVec>)(
          tokens, p.token_counts, s, scores, p.B, p.M_max, p.H);
    });
    SLIME_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  }

  SelectArgs a;
  a.q = scores;
  a.counts = p.token_counts;
  a.noise = p.noise;
  a.out_indices = p.out_indices;
  a.out_counts = p.out_counts;
  a.out_probs = p.out_probs;
  a.M_max = p.M_max;
  a.sort_n = ws.sort_n;
  a.use_top_k = p.use_top_k;
  a.top_p = p.top_p;
  a.top_k = p.top_k;
  a.temperature = p.temperature;
  a.prenorm_temperature = p.prenorm_temperature;
  size_t smem = 0;
  if (ws.sort_n > kTokenSelectSharedSortMax) {
    a.global_keys = reinterpret_cast<uint64_t*>(base + ws.keys);
    a.global_flags = reinterpret_cast<uint8_t*>(base + ws.flags);
  } else {
    a.global_keys = nullptr;
    a.global_flags = nullptr;
    smem = static_cast<size_t>(ws.sort_n) * (sizeof(uint64_t) + 1);
    // The attribute is per function, not per launch: another host thread may launch between
    // setting it and this launch. So it is only ever raised, to the largest size this path
    // uses, and only when the 48 KiB default (static scratch included, under 1 KiB) is not
    // enough.
    constexpr size_t kSmemMax = kTokenSelectSharedSortMax * (sizeof(uint64_t) + 1);
    if (smem > 47 * 1024) {
      SLIME_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(
          select_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kSmemMax)));
    }
  }
  SLIME_LAUNCH(static_cast<unsigned>(p.B), kSelectThreads, smem, stream, select_kernel)(a);
  return cuda::launch_status();
}

// ---- pack ---------------------------------------------------------------------------------

// One block per (image, kept row): copies the row in units of U (uint4 when the row bytes
// and pointers allow, else the element type's width). Rows outside the arrays are skipped.
template <typename U, bool kBackward>
__global__ void pack_kernel(const U* __restrict__ src_rows, U* __restrict__ dst_rows,
                            U* __restrict__ zero_rows, const int64_t* __restrict__ indices,
                            const int64_t* __restrict__ counts,
                            const int64_t* __restrict__ row_offsets, int64_t B, int64_t K,
                            int64_t M_max, int64_t N, int64_t units) {
  const int64_t j = blockIdx.x;
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y) {
    if (j >= counts[b]) continue;
    const int64_t t = indices[b * K + j];
    const int64_t r = row_offsets[b] + j;
    if (t < 0 || t >= M_max || r < 0 || r >= N) continue;
    const int64_t tok = b * M_max + t;
    // forward: out[r] = tokens[tok]; backward: grad_tokens[tok] = grad_out[r], grad_base[r] = 0
    const U* from = src_rows + (kBackward ? r : tok) * units;
    U* to = dst_rows + (kBackward ? tok : r) * units;
    for (int64_t i = threadIdx.x; i < units; i += blockDim.x) {
      to[i] = from[i];
      if (kBackward) zero_rows[r * units + i] = U{};
    }
  }
}

template <bool kBackward>
LaunchStatus launch_pack(const void* src, void* dst, void* zero, const int64_t* indices,
                         const int64_t* counts, const int64_t* row_offsets, int64_t B, int64_t K,
                         int64_t M_max, int64_t N, size_t row_bytes, cudaStream_t stream) {
  if (B == 0 || K == 0 || row_bytes == 0) return nullptr;
  const uintptr_t align = reinterpret_cast<uintptr_t>(src) | reinterpret_cast<uintptr_t>(dst) |
                          reinterpret_cast<uintptr_t>(zero) | row_bytes;
  const dim3 grid(static_cast<unsigned>(K), grid_yz(B));
  const int threads = 128;
  if (align % 16 == 0) {
    SLIME_LAUNCH(grid, threads, 0, stream, pack_kernel<uint4, kBackward>)(
        static_cast<const uint4*>(src), static_cast<uint4*>(dst), static_cast<uint4*>(zero),
        indices, counts, row_offsets, B, K, M_max, N, static_cast<int64_t>(row_bytes / 16));
  } else if (align % 4 == 0) {
    SLIME_LAUNCH(grid, threads, 0, stream, pack_kernel<uint32_t, kBackward>)(
        static_cast<const uint32_t*>(src), static_cast<uint32_t*>(dst),
        static_cast<uint32_t*>(zero), indices, counts, row_offsets, B, K, M_max, N,
        static_cast<int64_t>(row_bytes / 4));
  } else {
    SLIME_LAUNCH(grid, threads, 0, stream, pack_kernel<uint16_t, kBackward>)(
        static_cast<const uint16_t*>(src), static_cast<uint16_t*>(dst),
        static_cast<uint16_t*>(zero), indices, counts, row_offsets, B, K, M_max, N,
        static_cast<int64_t>(row_bytes / 2));
  }
  return cuda::launch_status();
}

size_t elem_bytes(DType t) { return t == DType::F32 ? 4 : 2; }

}  // namespace

LaunchStatus token_select_cuda(const TokenSelectParams& p, cudaStream_t stream) {
  if (p.B == 0) return nullptr;
  return SLIME_CUDA_FLOAT_SWITCH(p.dtype, scalar_t,
                                 [&] { return launch_select<scalar_t>(p, stream); });
}

LaunchStatus token_pack_cuda(const TokenPackParams& p, cudaStream_t stream) {
  const size_t row = static_cast<size_t>(p.H) * elem_bytes(p.dtype);
  if (p.N == 0 || row == 0) return nullptr;
  if (p.out != p.base)
    SLIME_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(p.out, p.base, static_cast<size_t>(p.N) * row,
                                               cudaMemcpyDeviceToDevice, stream));
  return launch_pack<false>(p.tokens, p.out, p.out, p.indices, p.counts, p.row_offsets, p.B, p.K,
                            p.M_max, p.N, row, stream);
}

LaunchStatus token_pack_backward_cuda(const TokenPackBackwardParams& p, cudaStream_t stream) {
  const size_t row = static_cast<size_t>(p.H) * elem_bytes(p.dtype);
  if (row == 0) return nullptr;
  if (p.B * p.M_max > 0)
    SLIME_CUDA_RETURN_IF_ERROR(
        cudaMemsetAsync(p.grad_tokens, 0, static_cast<size_t>(p.B * p.M_max) * row, stream));
  if (p.N == 0) return cuda::launch_status();
  SLIME_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(p.grad_base, p.grad_out,
                                             static_cast<size_t>(p.N) * row,
                                             cudaMemcpyDeviceToDevice, stream));
  return launch_pack<true>(p.grad_out, p.grad_tokens, p.grad_base, p.indices, p.counts,
                           p.row_offsets, p.B, p.K, p.M_max, p.N, row, stream);
}

}  // namespace slime
