// query_attention.cu: CUDA kernels of learnable-query cross-attention (math in
// slime/query_attention.h), mirroring the CPU algorithm in csrc/cpu/query_attention.cpp.
//
// Forward (flash style): a block owns 64 query rows of one (batch, head), 4 warps of 16 rows.
// Its Q tile stays in shared memory; K/V tiles of 32 keys stream through shared memory; each
// warp computes its 16 x 32 scores, runs the online softmax in float32 (base 2, one key per
// lane), and accumulates O (float32, shared memory). bf16/fp16 use tensor cores
// (nvcuda::wmma 16x16x16, float accumulators) for Q K^T and P V; float32 uses FMA.
// Backward (simple and deterministic): one kernel per key tile accumulates dk/dv over all
// queries; one kernel per query tile accumulates dq over all keys, into a per-item float32
// partial when q is shared; a last kernel sums those partials over the batch in order.
// Requires d <= 128 and sm_80 or newer.
//
// Check:      python -m pytest -q tests/test_query_attention.py  (CUDA cases run on a GPU)
// Benchmark:  python -m bench --device cuda --only query_attention
#include <mma.h>

#include <algorithm>
#include <type_traits>

#include "cuda_utils.cuh"
#include "slime/query_attention.h"

namespace slime {
namespace cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kFwdRows = 16 * kWarps;  // query rows per forward block
constexpr int kKeys = 32;              // keys per tile (one per lane in the softmax)
constexpr int kBwdTile = 32;           // rows (queries or keys) per backward tile
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

__device__ __forceinline__ float warp_max(float x) {
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}

__device__ __forceinline__ float warp_sum(float x) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

__device__ __forceinline__ int tile_rows(int64_t total, int64_t start, int tile) {
  return static_cast<int>(total - start < tile ? total - start : tile);
}

// The (batch, head, tile) of this block in a 1-D grid numbered with the tile fastest. Grid y
// and z stop at 65535, which the batch alone may pass; x takes 2^31 - 1 blocks.
struct BlockIndex {
  int64_t b, h, tile;
};
__device__ __forceinline__ BlockIndex block_index(int64_t heads, int64_t rows, int tile) {
  const int64_t tiles = (rows + tile - 1) / tile, blk = blockIdx.x, bh = blk / tiles;
  return {bh / heads, bh % heads, blk % tiles};
}

__host__ __device__ constexpr size_t align128(size_t x) { return (x + 127) / 128 * 128; }

// Shared-memory layout of the forward block. Row strides are padded: +8 16-bit elements keep
// wmma's 32-byte alignment and spread banks; +1 float for the FMA path's column reads.
template <typename T, int DP>
struct FwdLayout {
  static constexpr bool kMMA = !std::is_same<T, float>::value;
  using S = typename std::conditional<kMMA, T, float>::type;  // storage type of Q, K, V, P
  static constexpr int kLdQK = kMMA ? DP + 8 : DP + 1;
  static constexpr int kLdV = kMMA ? DP + 8 : DP;
  static constexpr int kLdS = kKeys + 4;   // float scores
  static constexpr int kLdP = kKeys + 8;   // probabilities as T (wmma operand)
  static constexpr int kLdO = DP + 4;      // float accumulator
  static constexpr size_t q_off = 0;
  static constexpr size_t k_off = align128(q_off + sizeof(S) * kFwdRows * kLdQK);
  // float32 loads V into K's buffer once the scores are done: with separate K and V tiles
  // its d = 128 layout (107 KiB) would exceed the 99 KiB a block may have on sm_86/sm_89.
  static constexpr bool kKVShared = !kMMA;
  static constexpr size_t v_off = kKVShared ? k_off : align128(k_off + sizeof(S) * kKeys * kLdQK);
  static constexpr size_t s_off =
      align128(kKVShared ? k_off + sizeof(S) * kKeys * kLdQK : v_off + sizeof(S) * kKeys * kLdV);
  static constexpr size_t p_off = align128(s_off + sizeof(float) * kFwdRows * kLdS);
  static constexpr size_t o_off = align128(p_off + (kMMA ? sizeof(T) * kFwdRows * kLdP : 0));
  static constexpr size_t a_off = align128(o_off + sizeof(float) * kFwdRows * kLdO);
  static constexpr size_t bytes = a_off + sizeof(float) * kFwdRows;
};

// The largest forward layouts fit every sm_80+ architecture's opt-in limit (sm_86/sm_89:
// 99 KiB), so a launch never fails for want of shared memory.
static_assert(FwdLayout<float, 128>::bytes <= 99 * 1024, "float32 forward layout > 99 KiB");
static_assert(FwdLayout<__nv_bfloat16, 128>::bytes <= 99 * 1024, "16-bit layout > 99 KiB");

template <typename S, typename T>
__device__ __forceinline__ S convert(T x) {
  return from_float<S>(to_float(x));
}

// Copies `rows` rows of d elements (row stride `ld_src`) into shared memory as S, zero-filling
// rows past `valid` and columns past d.
template <typename S, typename T, int DP>
__device__ void load_tile(S* dst, int ld_dst, const T* src, int64_t ld_src, int rows, int valid,
                          int d) {
  for (int e = threadIdx.x; e < rows * DP; e += blockDim.x) {
    const int r = e / DP, c = e % DP;
    const T zero = from_float<T>(0.0f);
    const T x = (r < valid && c < d) ? src[r * ld_src + c] : zero;
    dst[r * ld_dst + c] = convert<S>(x);
  }
}

template <typename T, int DP>
__global__ void __launch_bounds__(kThreads)
    query_attention_fwd_kernel(const QueryAttentionParams p) {
  using L = FwdLayout<T, DP>;
  using S = typename L::S;
  extern __shared__ __align__(128) unsigned char smem[];
  S* qs = reinterpret_cast<S*>(smem + L::q_off);
  S* ks = reinterpret_cast<S*>(smem + L::k_off);
  S* vs = reinterpret_cast<S*>(smem + L::v_off);
  float* ss = reinterpret_cast<float*>(smem + L::s_off);
  T* ps = reinterpret_cast<T*>(smem + L::p_off);
  float* os = reinterpret_cast<float*>(smem + L::o_off);
  float* alpha_s = reinterpret_cast<float*>(smem + L::a_off);

  const BlockIndex bi = block_index(p.heads, p.lq, kFwdRows);
  const int64_t b = bi.b, h = bi.h, i0 = bi.tile * kFwdRows;
  const int d = static_cast<int>(p.d);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int nq = tile_rows(p.lq, i0, kFwdRows);
  const T* q = static_cast<const T*>(p.q) + b * p.q_strides.batch + h * p.q_strides.head +
               i0 * p.q_strides.row;
  load_tile<S, T, DP>(qs, L::kLdQK, q, p.q_strides.row, kFwdRows, nq, d);
  for (int e = threadIdx.x; e < kFwdRows * L::kLdO; e += blockDim.x) os[e] = 0.0f;
  __syncthreads();  // with Lk == 0 the loop below (and its barriers) never runs

  const float smul = p.scale * kLog2e;
  float m_r[16], l_r[16];
#pragma unroll
  for (int r = 0; r < 16; ++r) m_r[r] = -INFINITY, l_r[r] = 0.0f;
  const int wr = warp * 16;  // this warp's first row in the block
  const T* kb = static_cast<const T*>(p.k) + b * p.k_strides.batch + h * p.k_strides.head;
  const T* vb = static_cast<const T*>(p.v) + b * p.v_strides.batch + h * p.v_strides.head;

  for (int64_t j0 = 0; j0 < p.lk; j0 += kKeys) {
    const int nk = tile_rows(p.lk, j0, kKeys);
    __syncthreads();  // the previous tile's K/V/P are no longer read
    load_tile<S, T, DP>(ks, L::kLdQK, kb + j0 * p.k_strides.row, p.k_strides.row, kKeys, nk, d);
    if constexpr (!L::kKVShared)
      load_tile<S, T, DP>(vs, L::kLdV, vb + j0 * p.v_strides.row, p.v_strides.row, kKeys, nk, d);
    __syncthreads();

    // Scores of this warp's 16 rows x 32 keys into ss.
    if constexpr (L::kMMA) {
      using namespace nvcuda;
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[kKeys / 16];
#pragma unroll
      for (int n = 0; n < kKeys / 16; ++n) wmma::fill_fragment(acc[n], 0.0f);
#pragma unroll
      for (int k0 = 0; k0 < DP; k0 += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
        wmma::load_matrix_sync(a, qs + wr * L::kLdQK + k0, L::kLdQK);
#pragma unroll
        for (int n = 0; n < kKeys / 16; ++n) {
          // K stored [key][dim] is K^T in column-major order: the B operand as is.
          wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> bf;
          wmma::load_matrix_sync(bf, ks + n * 16 * L::kLdQK + k0, L::kLdQK);
          wmma::mma_sync(acc[n], a, bf, acc[n]);
        }
      }
#pragma unroll
      for (int n = 0; n < kKeys / 16; ++n)
        wmma::store_matrix_sync(ss + wr * L::kLdS + n * 16, acc[n], L::kLdS, wmma::mem_row_major);
    } else {
      for (int r = 0; r < 16; ++r) {
        float acc = 0.0f;
#pragma unroll 8
        for (int c = 0; c < DP; ++c)
          acc = fmaf(static_cast<float>(qs[(wr + r) * L::kLdQK + c]),
                     static_cast<float>(ks[lane * L::kLdQK + c]), acc);
        ss[(wr + r) * L::kLdS + lane] = acc;
      }
    }
    __syncwarp();

    // Online softmax, one key per lane; every lane keeps the 16 rows' running max and sum.
    const int64_t key = j0 + lane;
    const bool keep = lane < nk && (p.key_mask == nullptr || p.key_mask[b * p.lk + key] != 0);
#pragma unroll
    for (int r = 0; r < 16; ++r) {
      const float x = keep ? ss[(wr + r) * L::kLdS + lane] * smul : -INFINITY;
      const float m_new = fmaxf(m_r[r], warp_max(x));
      const bool none = m_new == -INFINITY;  // no key of this row so far
      const float pr = none ? 0.0f : exp2f(x - m_new);
      const float alpha = none ? 1.0f : exp2f(m_r[r] - m_new);
      l_r[r] = l_r[r] * alpha + warp_sum(pr);
      m_r[r] = m_new;
      if constexpr (L::kMMA)
        ps[(wr + r) * L::kLdP + lane] = from_float<T>(pr);
      else
        ss[(wr + r) * L::kLdS + lane] = pr;
      if (lane == 0) alpha_s[wr + r] = alpha;
    }
    __syncwarp();
    for (int e = lane; e < 16 * DP; e += 32) {
      const int r = e / DP, c = e % DP;
      os[(wr + r) * L::kLdO + c] *= alpha_s[wr + r];
    }
    __syncwarp();
    if constexpr (L::kKVShared) {
      __syncthreads();  // every warp's scores are done with K
      load_tile<S, T, DP>(vs, L::kLdV, vb + j0 * p.v_strides.row, p.v_strides.row, kKeys, nk, d);
      __syncthreads();
    }

    // O += P V for this warp's rows.
    if constexpr (L::kMMA) {
      using namespace nvcuda;
#pragma unroll
      for (int n0 = 0; n0 < DP; n0 += 16) {
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
        float* o = os + wr * L::kLdO + n0;
        wmma::load_matrix_sync(acc, o, L::kLdO, wmma::mem_row_major);
#pragma unroll
        for (int k0 = 0; k0 < kKeys; k0 += 16) {
          wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
          wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> bf;
          wmma::load_matrix_sync(a, ps + wr * L::kLdP + k0, L::kLdP);
          wmma::load_matrix_sync(bf, vs + k0 * L::kLdV + n0, L::kLdV);
          wmma::mma_sync(acc, a, bf, acc);
        }
        wmma::store_matrix_sync(o, acc, L::kLdO, wmma::mem_row_major);
      }
    } else {
      for (int e = lane; e < 16 * DP; e += 32) {
        const int r = e / DP, c = e % DP;
        float acc = os[(wr + r) * L::kLdO + c];
#pragma unroll 8
        for (int j = 0; j < kKeys; ++j)
          acc = fmaf(ss[(wr + r) * L::kLdS + j], static_cast<float>(vs[j * L::kLdV + c]), acc);
        os[(wr + r) * L::kLdO + c] = acc;
      }
    }
    __syncwarp();
  }

  // Normalise and write this warp's rows; a row with no key gets 0 and lse = -inf.
  T* out = static_cast<T*>(p.out);
#pragma unroll
  for (int r = 0; r < 16; ++r) {
    const int row = wr + r;
    if (row >= nq) break;
    const int64_t orow = (b * p.heads + h) * p.lq + i0 + row;
    const float inv = l_r[r] > 0.0f ? 1.0f / l_r[r] : 0.0f;
    for (int c = lane; c < d; c += 32)
      out[orow * d + c] = from_float<T>(os[row * L::kLdO + c] * inv);
    if (lane == 0) p.lse[orow] = l_r[r] > 0.0f ? (m_r[r] + log2f(l_r[r])) * kLn2 : -INFINITY;
  }
}

// ---- backward ----------------------------------------------------------------------------

constexpr int kLdB(int dp) { return dp + 1; }

struct BwdShared {
  // float tiles [kBwdTile][DP + 1]: the row (query) operand and its dout, the column (key)
  // operands K and V; P and dS [query][key]; per-query log2-domain lse and delta.
  float *a, *ga, *kk, *vv, *pp, *ds, *lse2, *delta;
};

template <int DP>
__device__ BwdShared bwd_shared(float* base) {
  BwdShared s;
  const int tile = kBwdTile * kLdB(DP);
  s.a = base, s.ga = s.a + tile, s.kk = s.ga + tile, s.vv = s.kk + tile;
  s.pp = s.vv + tile, s.ds = s.pp + kBwdTile * (kBwdTile + 1);
  s.lse2 = s.ds + kBwdTile * (kBwdTile + 1), s.delta = s.lse2 + kBwdTile;
  return s;
}

template <int DP>
constexpr size_t bwd_shared_bytes() {
  return sizeof(float) * (4 * kBwdTile * kLdB(DP) + 2 * kBwdTile * (kBwdTile + 1) + 2 * kBwdTile);
}

// Loads query rows [i0, i0 + 32) of (b, h): q, dout, and the per-row lse (log2 domain, +inf
// for a row without keys so that P = 0) and delta = dout . out - dlse.
template <typename T, int DP>
__device__ void load_query_tile(const QueryAttentionBackwardParams& p, const BwdShared& s,
                                int64_t b, int64_t h, int64_t i0) {
  const int d = static_cast<int>(p.d);
  const int nq = tile_rows(p.lq, i0, kBwdTile);
  const T* q = static_cast<const T*>(p.q) + b * p.q_strides.batch + h * p.q_strides.head +
               i0 * p.q_strides.row;
  const int64_t row0 = (b * p.heads + h) * p.lq + i0;
  const T* g = static_cast<const T*>(p.dout) + row0 * d;
  load_tile<float, T, DP>(s.a, kLdB(DP), q, p.q_strides.row, kBwdTile, nq, d);
  load_tile<float, T, DP>(s.ga, kLdB(DP), g, d, kBwdTile, nq, d);
  const T* o = static_cast<const T*>(p.out) + row0 * d;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int r = warp; r < kBwdTile; r += kWarps) {
    float acc = 0.0f;
    if (r < nq)
      for (int c = lane; c < d; c += 32) acc += to_float(g[r * d + c]) * to_float(o[r * d + c]);
    acc = warp_sum(acc);
    if (lane == 0) {
      float lse2 = INFINITY, delta = 0.0f;
      if (r < nq) {
        const float lse = p.lse[row0 + r];
        lse2 = isfinite(lse) ? lse * kLog2e : INFINITY;
        delta = acc - (p.dlse ? p.dlse[row0 + r] : 0.0f);
      }
      s.lse2[r] = lse2, s.delta[r] = delta;
    }
  }
}

template <typename T, int DP>
__device__ void load_key_tile(const QueryAttentionBackwardParams& p, const BwdShared& s,
                              int64_t b, int64_t h, int64_t j0) {
  const int d = static_cast<int>(p.d);
  const int nk = tile_rows(p.lk, j0, kBwdTile);
  const T* k = static_cast<const T*>(p.k) + b * p.k_strides.batch + h * p.k_strides.head +
               j0 * p.k_strides.row;
  const T* v = static_cast<const T*>(p.v) + b * p.v_strides.batch + h * p.v_strides.head +
               j0 * p.v_strides.row;
  load_tile<float, T, DP>(s.kk, kLdB(DP), k, p.k_strides.row, kBwdTile, nk, d);
  load_tile<float, T, DP>(s.vv, kLdB(DP), v, p.v_strides.row, kBwdTile, nk, d);
}

// P and dS of the loaded 32 x 32 (query x key) tile; masked or padding keys give P = 0.
template <int DP>
__device__ void probabilities(const QueryAttentionBackwardParams& p, const BwdShared& s,
                              int64_t b, int64_t j0) {
  const float smul = p.scale * kLog2e;
  for (int e = threadIdx.x; e < kBwdTile * kBwdTile; e += blockDim.x) {
    const int i = e / kBwdTile, j = e % kBwdTile;
    const int64_t key = j0 + j;
    const bool keep = key < p.lk && (p.key_mask == nullptr || p.key_mask[b * p.lk + key] != 0);
    float sc = 0.0f, dp = 0.0f;
#pragma unroll 8
    for (int c = 0; c < DP; ++c) {
      sc = fmaf(s.a[i * kLdB(DP) + c], s.kk[j * kLdB(DP) + c], sc);
      dp = fmaf(s.ga[i * kLdB(DP) + c], s.vv[j * kLdB(DP) + c], dp);
    }
    const float pr = keep ? exp2f(sc * smul - s.lse2[i]) : 0.0f;
    s.pp[i * (kBwdTile + 1) + j] = pr;
    s.ds[i * (kBwdTile + 1) + j] = pr * (dp - s.delta[i]);
  }
}

// One block per (key tile, head, batch): dk and dv of its 32 keys, summed over every query.
template <typename T, int DP>
__global__ void __launch_bounds__(kThreads)
    query_attention_bwd_dkdv_kernel(const QueryAttentionBackwardParams p) {
  extern __shared__ __align__(128) unsigned char smem[];
  const BwdShared s = bwd_shared<DP>(reinterpret_cast<float*>(smem));
  const BlockIndex bi = block_index(p.heads, p.lk, kBwdTile);
  const int64_t b = bi.b, h = bi.h, j0 = bi.tile * kBwdTile;
  // Thread t owns key j = t / 4 and the columns part, part + 4, ... of dk and dv.
  constexpr int kParts = kThreads / kBwdTile;
  const int j = threadIdx.x / kParts, part = threadIdx.x % kParts;
  float dk[DP / kParts], dv[DP / kParts];
#pragma unroll
  for (int u = 0; u < DP / kParts; ++u) dk[u] = 0.0f, dv[u] = 0.0f;
  load_key_tile<T, DP>(p, s, b, h, j0);
  for (int64_t i0 = 0; i0 < p.lq; i0 += kBwdTile) {
    __syncthreads();  // the previous query tile is no longer read
    load_query_tile<T, DP>(p, s, b, h, i0);
    __syncthreads();
    probabilities<DP>(p, s, b, j0);
    __syncthreads();
    for (int i = 0; i < kBwdTile; ++i) {
      const float pr = s.pp[i * (kBwdTile + 1) + j], ds = s.ds[i * (kBwdTile + 1) + j];
#pragma unroll
      for (int u = 0; u < DP / kParts; ++u) {
        const int c = part + kParts * u;
        dv[u] = fmaf(pr, s.ga[i * kLdB(DP) + c], dv[u]);
        dk[u] = fmaf(ds, s.a[i * kLdB(DP) + c], dk[u]);
      }
    }
  }
  const int d = static_cast<int>(p.d);
  if (j0 + j >= p.lk) return;
  const int64_t row = ((b * p.heads + h) * p.lk + j0 + j) * d;
  T* dkp = static_cast<T*>(p.dk) + row;
  T* dvp = static_cast<T*>(p.dv) + row;
#pragma unroll
  for (int u = 0; u < DP / kParts; ++u) {
    const int c = part + kParts * u;
    if (c < d) dkp[c] = from_float<T>(dk[u] * p.scale), dvp[c] = from_float<T>(dv[u]);
  }
}

// One block per (query tile, head, batch): dq of its 32 queries, summed over every key;
// written to dq (per-item q) or to the float32 partial of this batch item (shared q).
template <typename T, int DP>
__global__ void __launch_bounds__(kThreads)
    query_attention_bwd_dq_kernel(const QueryAttentionBackwardParams p) {
  extern __shared__ __align__(128) unsigned char smem[];
  const BwdShared s = bwd_shared<DP>(reinterpret_cast<float*>(smem));
  const BlockIndex bi = block_index(p.heads, p.lq, kBwdTile);
  const int64_t b = bi.b, h = bi.h, i0 = bi.tile * kBwdTile;
  constexpr int kParts = kThreads / kBwdTile;
  const int i = threadIdx.x / kParts, part = threadIdx.x % kParts;
  float dq[DP / kParts];
#pragma unroll
  for (int u = 0; u < DP / kParts; ++u) dq[u] = 0.0f;
  load_query_tile<T, DP>(p, s, b, h, i0);
  for (int64_t j0 = 0; j0 < p.lk; j0 += kBwdTile) {
    __syncthreads();
    load_key_tile<T, DP>(p, s, b, h, j0);
    __syncthreads();
    probabilities<DP>(p, s, b, j0);
    __syncthreads();
    for (int j = 0; j < kBwdTile; ++j) {
      const float ds = s.ds[i * (kBwdTile + 1) + j];
#pragma unroll
      for (int u = 0; u < DP / kParts; ++u)
        dq[u] = fmaf(ds, s.kk[j * kLdB(DP) + part + kParts * u], dq[u]);
    }
  }
  const int d = static_cast<int>(p.d);
  if (i0 + i >= p.lq) return;
  const int64_t row = ((b * p.heads + h) * p.lq + i0 + i) * d;
#pragma unroll
  for (int u = 0; u < DP / kParts; ++u) {
    const int c = part + kParts * u;
    if (c >= d) continue;
    if (query_attention_q_shared(p.q_strides))
      p.dq_partial[row + c] = dq[u] * p.scale;
    else
      static_cast<T*>(p.dq)[row + c] = from_float<T>(dq[u] * p.scale);
  }
}

// dq of a shared q: the per-item partials summed over the batch in the order 0..B-1.
template <typename T>
__global__ void query_attention_dq_reduce_kernel(const QueryAttentionBackwardParams p) {
  const int64_t n = p.heads * p.lq * p.d;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < n;
       e += int64_t(gridDim.x) * blockDim.x) {
    float acc = 0.0f;
    for (int64_t b = 0; b < p.batch; ++b) acc += p.dq_partial[b * n + e];
    static_cast<T*>(p.dq)[e] = from_float<T>(acc);
  }
}

template <typename F>
LaunchStatus with_dp(int64_t d, F&& f) {
  return d <= 64 ? f(std::integral_constant<int, 64>{}) : f(std::integral_constant<int, 128>{});
}

template <typename Kernel>
LaunchStatus set_smem(Kernel kernel, size_t bytes) {
  const cudaError_t err = cudaFuncSetAttribute(
      kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
  if (err == cudaSuccess) return nullptr;
  cudaGetLastError();  // clear it: the caller reports this one
  return cudaGetErrorString(err);
}

// The 1-D grid of block_index: batch * heads * ceil(rows / tile) blocks, at most 2^31 - 1.
LaunchStatus flat_grid(int64_t batch, int64_t heads, int64_t rows, int tile, dim3* grid) {
  const int64_t blocks = batch * heads * ceil_div(rows, tile);
  if (blocks > 0x7fffffff) return "slime::query_attention: too many blocks for one launch";
  *grid = dim3(static_cast<unsigned>(blocks));
  return nullptr;
}

}  // namespace
}  // namespace cuda

LaunchStatus query_attention_cuda(const QueryAttentionParams& p, cudaStream_t stream) {
  using namespace cuda;
  if (p.batch == 0 || p.heads == 0 || p.lq == 0) return nullptr;
  if (p.d > kQueryAttentionCudaMaxD) return "slime::query_attention: CUDA kernels need d <= 128";
  return SLIME_CUDA_FLOAT_SWITCH(p.dtype, scalar_t, [&] {
    return with_dp(p.d, [&](auto dp) -> LaunchStatus {
      constexpr int DP = decltype(dp)::value;
      const size_t bytes = FwdLayout<scalar_t, DP>::bytes;
      auto kernel = query_attention_fwd_kernel<scalar_t, DP>;
      if (LaunchStatus e = set_smem(kernel, bytes)) return e;
      dim3 grid;
      if (LaunchStatus e = flat_grid(p.batch, p.heads, p.lq, kFwdRows, &grid)) return e;
      SLIME_LAUNCH(grid, kThreads, bytes, stream, kernel)(p);
      return launch_status();
    });
  });
}

LaunchStatus query_attention_backward_cuda(const QueryAttentionBackwardParams& p,
                                           cudaStream_t stream) {
  using namespace cuda;
  if (p.d > kQueryAttentionCudaMaxD) return "slime::query_attention: CUDA kernels need d <= 128";
  const bool shared = query_attention_q_shared(p.q_strides);
  return SLIME_CUDA_FLOAT_SWITCH(p.dtype, scalar_t, [&] {
    return with_dp(p.d, [&](auto dp) -> LaunchStatus {
      constexpr int DP = decltype(dp)::value;
      const size_t bytes = bwd_shared_bytes<DP>();
      if (p.batch > 0 && p.heads > 0 && p.lk > 0) {
        auto kernel = query_attention_bwd_dkdv_kernel<scalar_t, DP>;
        if (LaunchStatus e = set_smem(kernel, bytes)) return e;
        dim3 grid;
        if (LaunchStatus e = flat_grid(p.batch, p.heads, p.lk, kBwdTile, &grid)) return e;
        SLIME_LAUNCH(grid, kThreads, bytes, stream, kernel)(p);
        if (LaunchStatus e = launch_status()) return e;
      }
      if (p.batch > 0 && p.heads > 0 && p.lq > 0) {
        auto kernel = query_attention_bwd_dq_kernel<scalar_t, DP>;
        if (LaunchStatus e = set_smem(kernel, bytes)) return e;
        dim3 grid;
        if (LaunchStatus e = flat_grid(p.batch, p.heads, p.lq, kBwdTile, &grid)) return e;
        SLIME_LAUNCH(grid, kThreads, bytes, stream, kernel)(p);
        if (LaunchStatus e = launch_status()) return e;
      }
      const int64_t n = p.heads * p.lq * p.d;
      if (shared && n > 0) {
        const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(ceil_div(n, 256), 4096));
        SLIME_LAUNCH(blocks, 256, 0, stream, query_attention_dq_reduce_kernel<scalar_t>)(p);
        if (LaunchStatus e = launch_status()) return e;
      }
      return LaunchStatus{nullptr};
    });
  });
}

}  // namespace slime
