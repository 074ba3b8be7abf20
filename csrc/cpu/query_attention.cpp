// query_attention.cpp: CPU kernels of learnable-query cross-attention (see
// slime/query_attention.h for the math), forward and backward.
//
// Flash-attention on a CPU: every (batch, head, query block) task converts its queries to
// float32 once, then streams the keys in blocks of kKeyBlock: the block is converted and
// transposed once, S = Q K^T and O += P V run as small register-blocked GEMMs (6 rows x 16
// columns of AVX2 accumulators), and an online softmax in base 2 keeps only a query block x
// key block tile of scores. The backward recomputes P from the saved log-sum-exp, one task
// per (batch, head) that owns its dk/dv; a shared q's gradient is summed over the batch in a
// fixed order afterwards, so every run gives the same bits.
//
// Every step is a template over the compute type T: float for F32, BF16 and F16 elements
// (the AVX2 code), double for F64 (the portable loops, which the compiler vectorises as it
// can; F64 is there for gradcheck and references, not for speed).
//
// Check:      MAX_JOBS=1 python setup.py build_ext --inplace
//             python -m pytest -q tests/test_query_attention.py
//             cmake --build build/cpu && ctest --test-dir build/cpu -R query_attention
// Benchmark:  python -m bench --only query_attention [--quick]
#include "slime/query_attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define SLIME_QA_AVX2 1
#endif

namespace slime {
namespace {

constexpr int64_t kRows = 2;       // rows are padded to a multiple of this
constexpr int64_t kCols = 16;      // micro-kernel columns (two 8-float vectors)
constexpr int64_t kKeyBlock = 64;  // keys per streamed block (multiple of kCols and kRows)
constexpr int64_t kFwdQueryBlock = 192;  // queries per forward task, at most
constexpr int64_t kGroupRows = 6;        // forward rows per scores-softmax-PV step
constexpr int64_t kBwdQueryBlock = 64;   // queries per backward step
template <typename T>
constexpr T kLog2e = static_cast<T>(1.4426950408889634);
template <typename T>
constexpr T kLn2 = static_cast<T>(0.6931471805599453);
template <typename T>
constexpr T kInf = std::numeric_limits<T>::infinity();

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// ---- element conversion -----------------------------------------------------------------

// dst[0:n] = src[0:n] * mul (src of dtype t: F64 when T is double); dst[n:n_pad] = 0.
template <typename T>
void load_row(const void* base, int64_t off, int64_t n, int64_t n_pad, DType t, T mul, T* dst) {
  if constexpr (std::is_same_v<T, double>) {
    const double* s = static_cast<const double*>(base) + off;
    for (int64_t c = 0; c < n; ++c) dst[c] = s[c] * mul;
  } else if (t == DType::F32) {
    const float* s = static_cast<const float*>(base) + off;
    for (int64_t c = 0; c < n; ++c) dst[c] = s[c] * mul;
  } else if (t == DType::BF16) {
    const uint16_t* s = static_cast<const uint16_t*>(base) + off;
    for (int64_t c = 0; c < n; ++c) dst[c] = bf16_bits_to_float(s[c]) * mul;
  } else {
    const uint16_t* s = static_cast<const uint16_t*>(base) + off;
    int64_t c = 0;
#if defined(SLIME_QA_AVX2) && defined(__F16C__)
    const __m256 vm = _mm256_set1_ps(mul);
    for (; c + 8 <= n; c += 8) {
      const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + c));
      _mm256_storeu_ps(dst + c, _mm256_mul_ps(_mm256_cvtph_ps(h), vm));
    }
#endif
    for (; c < n; ++c) dst[c] = f16_bits_to_float(s[c]) * mul;
  }
  for (int64_t c = n; c < n_pad; ++c) dst[c] = 0;
}

// dst[0:n] (dtype t, element offset off; F64 when T is double) = src[0:n] * mul.
template <typename T>
void store_row(void* base, int64_t off, int64_t n, DType t, T mul, const T* src) {
  if constexpr (std::is_same_v<T, double>) {
    double* o = static_cast<double*>(base) + off;
    for (int64_t c = 0; c < n; ++c) o[c] = src[c] * mul;
  } else if (t == DType::F32) {
    float* o = static_cast<float*>(base) + off;
    for (int64_t c = 0; c < n; ++c) o[c] = src[c] * mul;
  } else if (t == DType::BF16) {
    uint16_t* o = static_cast<uint16_t*>(base) + off;
    for (int64_t c = 0; c < n; ++c) o[c] = float_to_bf16_bits(src[c] * mul);
  } else {
    uint16_t* o = static_cast<uint16_t*>(base) + off;
    int64_t c = 0;
#if defined(SLIME_QA_AVX2) && defined(__F16C__)
    const __m256 vm = _mm256_set1_ps(mul);
    for (; c + 8 <= n; c += 8) {
      const __m128i h = _mm256_cvtps_ph(_mm256_mul_ps(_mm256_loadu_ps(src + c), vm),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(o + c), h);
    }
#endif
    for (; c < n; ++c) o[c] = float_to_f16_bits(src[c] * mul);
  }
}

// ---- the GEMM micro-kernel --------------------------------------------------------------

#ifdef SLIME_QA_AVX2
// C[MR x kCols] += A B for one register block in float: two 8-float vectors per row.
template <int MR>
inline void micro_kernel_avx2(float* c, int64_t ldc, int64_t kdim, const float* a,
                              int64_t a_rs, int64_t a_ks, const float* b, int64_t ldb) {
  __m256 x[MR][2];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
    x[i][0] = _mm256_loadu_ps(c + i * ldc), x[i][1] = _mm256_loadu_ps(c + i * ldc + 8);
  for (int64_t k = 0; k < kdim; ++k, b += ldb, a += a_ks) {
    const __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const __m256 s = _mm256_broadcast_ss(a + i * a_rs);
      x[i][0] = _mm256_fmadd_ps(s, b0, x[i][0]);
      x[i][1] = _mm256_fmadd_ps(s, b1, x[i][1]);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
    _mm256_storeu_ps(c + i * ldc, x[i][0]), _mm256_storeu_ps(c + i * ldc + 8, x[i][1]);
}
#endif

// C[MR x kCols] += A B for one register block: MR rows of A, kCols columns of B.
template <int MR, typename T>
inline void micro_kernel(T* c, int64_t ldc, int64_t kdim, const T* a, int64_t a_rs,
                         int64_t a_ks, const T* b, int64_t ldb) {
#ifdef SLIME_QA_AVX2
  if constexpr (std::is_same_v<T, float>) {
    micro_kernel_avx2<MR>(c, ldc, kdim, a, a_rs, a_ks, b, ldb);
    return;
  }
#endif
  T x[MR][kCols];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < kCols; ++j) x[i][j] = c[i * ldc + j];
  for (int64_t k = 0; k < kdim; ++k, b += ldb, a += a_ks)
    for (int i = 0; i < MR; ++i) {
      const T s = a[i * a_rs];
      for (int j = 0; j < kCols; ++j) x[i][j] += s * b[j];
    }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < kCols; ++j) c[i * ldc + j] = x[i][j];
}

// C[m x n] += A B with A(r, k) = a[r * a_rs + k * a_ks] (so A or A^T, row-major either way)
// and B row-major [kdim x n]. m is a multiple of kRows, n of kCols. Every product of the
// attention (Q K^T, P V, dO V^T, P^T dO, dS^T Q, dS K) is this one loop nest. Blocks of 6
// rows x 16 columns keep 12 accumulators in flight, enough to hide the FMA latency.
template <typename T>
void gemm_acc(T* c, int64_t ldc, int64_t m, int64_t n, int64_t kdim, const T* a, int64_t a_rs,
              int64_t a_ks, const T* b, int64_t ldb) {
  int64_t r = 0;
  for (; r + 6 <= m; r += 6)
    for (int64_t col = 0; col < n; col += kCols)
      micro_kernel<6>(c + r * ldc + col, ldc, kdim, a + r * a_rs, a_rs, a_ks, b + col, ldb);
  for (; r + 2 <= m; r += 2)
    for (int64_t col = 0; col < n; col += kCols)
      micro_kernel<2>(c + r * ldc + col, ldc, kdim, a + r * a_rs, a_rs, a_ks, b + col, ldb);
}

// ---- base-2 exponentials over a row -----------------------------------------------------

#ifdef SLIME_QA_AVX2
// 2^x for x <= 127: x = n + f with f in [-1/2, 1/2], 2^f by a degree-6 fit (relative error
// 1e-7, below float32's own rounding of the softmax). Inputs below -127, -inf included,
// give exactly 0, which is what masked keys need; NaN stays NaN (max_ps returns its second
// operand when either is NaN), so a NaN input is never silently dropped.
inline __m256 exp2_avx2(__m256 x) {
  x = _mm256_max_ps(_mm256_set1_ps(-127.0f), x);
  const __m256 n = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 f = _mm256_sub_ps(x, n);
  __m256 p = _mm256_set1_ps(0.00015469732170458883f);
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(0.0013400432653725147f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(0.00961802527308464f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(0.05550327152013779f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(0.24022650718688965f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(0.6931471824645996f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f));
  const __m256i e = _mm256_slli_epi32(
      _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}
#endif

// s[j] = 2^(s[j] * mul + add[j] - sub) over n (a multiple of 8) entries; returns the sum.
// add is the key mask (0 or -inf), or nullptr.
template <typename T>
T exp2_row(T* s, int64_t n, T mul, const T* add, T sub) {
#ifdef SLIME_QA_AVX2
  if constexpr (std::is_same_v<T, float>) {
    const __m256 vm = _mm256_set1_ps(mul), vs = _mm256_set1_ps(sub);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t j = 0; j < n; j += 8) {
      __m256 x = _mm256_fmsub_ps(_mm256_loadu_ps(s + j), vm, vs);
      if (add) x = _mm256_add_ps(x, _mm256_loadu_ps(add + j));
      const __m256 e = exp2_avx2(x);
      _mm256_storeu_ps(s + j, e);
      acc = _mm256_add_ps(acc, e);
    }
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, acc);
    float sum = 0.0f;
    for (float l : lanes) sum += l;
    return sum;
  }
#endif
  T sum = 0;
  for (int64_t j = 0; j < n; ++j) {
    const T x = s[j] * mul - sub + (add ? add[j] : T(0));
    s[j] = std::exp2(x);
    sum += s[j];
  }
  return sum;
}

template <typename T>
T row_max(const T* s, int64_t n, const T* add) {
  T m = -kInf<T>;
  for (int64_t j = 0; j < n; ++j) m = std::max(m, add ? s[j] + add[j] : s[j]);
  return m;
}

// The key mask of one key block as additive terms: 0 for a key that takes part, -inf for a
// masked key or a padding column past Lk. Returns false when no key is removed.
template <typename T>
bool key_block_mask(const uint8_t* key_mask, int64_t b, int64_t lk, int64_t j0, int64_t nk,
                    T* add) {
  bool any = false;
  for (int64_t j = 0; j < kKeyBlock; ++j) {
    const bool keep = j < nk && (key_mask == nullptr || key_mask[b * lk + j0 + j] != 0);
    add[j] = keep ? T(0) : -kInf<T>;
    any |= !keep;
  }
  return any;
}

int64_t offset(const AttnStrides& s, int64_t b, int64_t h, int64_t row) {
  return b * s.batch + h * s.head + row * s.row;
}

// ---- forward -----------------------------------------------------------------------------

// The scale and the log-sum-exp buffer in the compute type T (see the unions in
// slime/query_attention.h).
template <typename T, typename Params>
T scale_of(const Params& p) {
  if constexpr (std::is_same_v<T, double>)
    return p.scale64;
  else
    return p.scale;
}
float* lse_out(const QueryAttentionParams& p, float) { return p.lse; }
double* lse_out(const QueryAttentionParams& p, double) { return p.lse64; }

template <typename T>
struct FwdScratch {
  std::vector<T> q, o, m, l, kt, v, s, add, row;
};

template <typename T>
void forward_task(const QueryAttentionParams& p, int64_t b, int64_t h, int64_t i0, int64_t nq,
                  FwdScratch<T>& w) {
  const int64_t d = p.d, dp = round_up(d, kCols), mq = round_up(nq, kRows);
  const int64_t KB = kKeyBlock;
  constexpr T inf = kInf<T>;
  w.q.resize(mq * dp), w.o.assign(mq * dp, T(0)), w.m.assign(mq, -inf), w.l.assign(mq, T(0));
  w.kt.resize(dp * KB), w.v.resize(KB * dp), w.s.resize(kGroupRows * KB), w.add.resize(KB);
  w.row.resize(dp);
  // Scores come out in base 2: the log2(e) factor rides on the query scale.
  const T qmul = scale_of<T>(p) * kLog2e<T>;
  for (int64_t r = 0; r < mq; ++r) {
    if (r < nq)
      load_row(p.q, offset(p.q_strides, b, h, i0 + r), d, dp, p.dtype, qmul, &w.q[r * dp]);
    else
      std::fill(&w.q[r * dp], &w.q[r * dp] + dp, T(0));
  }
  for (int64_t j0 = 0; j0 < p.lk; j0 += KB) {
    const int64_t nk = std::min(KB, p.lk - j0);
    for (int64_t j = 0; j < KB; ++j) {
      if (j < nk) {
        load_row(p.k, offset(p.k_strides, b, h, j0 + j), d, dp, p.dtype, T(1), w.row.data());
        for (int64_t c = 0; c < dp; ++c) w.kt[c * KB + j] = w.row[c];
        load_row(p.v, offset(p.v_strides, b, h, j0 + j), d, dp, p.dtype, T(1), &w.v[j * dp]);
      } else {
        for (int64_t c = 0; c < dp; ++c) w.kt[c * KB + j] = T(0);
        std::fill(&w.v[j * dp], &w.v[j * dp] + dp, T(0));
      }
    }
    const T* add = key_block_mask(p.key_mask, b, p.lk, j0, nk, w.add.data()) ? w.add.data()
                                                                              : nullptr;
    // One group of kGroupRows query rows at a time: scores, softmax and P V while the group's
    // scores and output rows are still in L1.
    for (int64_t r0 = 0; r0 < mq; r0 += kGroupRows) {
      const int64_t rows = std::min(kGroupRows, mq - r0);
      T* s = w.s.data();
      std::fill(s, s + rows * KB, T(0));
      gemm_acc(s, KB, rows, KB, dp, &w.q[r0 * dp], dp, 1, w.kt.data(), KB);
      for (int64_t r = 0; r < rows; ++r) {
        T* sr = s + r * KB;
        T* orow = &w.o[(r0 + r) * dp];
        const T m_old = w.m[r0 + r];
        const T m_new = std::max(m_old, row_max(sr, KB, add));
        if (m_new == -inf) {  // every key so far masked: nothing to add yet
          std::fill(sr, sr + KB, T(0));
          continue;
        }
        const T alpha = std::exp2(m_old - m_new);
        w.l[r0 + r] = w.l[r0 + r] * alpha + exp2_row(sr, KB, T(1), add, m_new);
        w.m[r0 + r] = m_new;
        if (alpha != T(1))
          for (int64_t c = 0; c < dp; ++c) orow[c] *= alpha;
      }
      gemm_acc(&w.o[r0 * dp], dp, rows, dp, KB, s, KB, 1, w.v.data(), dp);
    }
  }
  T* lse = lse_out(p, T());
  for (int64_t r = 0; r < nq; ++r) {
    const int64_t orow = ((b * p.heads + h) * p.lq + i0 + r);
    const bool empty = w.l[r] == T(0);
    store_row(p.out, orow * d, d, p.dtype, empty ? T(0) : T(1) / w.l[r], &w.o[r * dp]);
    lse[orow] = empty ? -inf : (w.m[r] + std::log2(w.l[r])) * kLn2<T>;
  }
}

template <typename T>
void forward(const QueryAttentionParams& p) {
  const int64_t nblocks = (p.lq + kFwdQueryBlock - 1) / kFwdQueryBlock;
  const int64_t block = round_up((p.lq + nblocks - 1) / nblocks, kRows);
  const int64_t tasks = p.batch * p.heads * nblocks;
#pragma omp parallel
  {
    FwdScratch<T> w;
#pragma omp for schedule(dynamic)
    for (int64_t t = 0; t < tasks; ++t) {
      const int64_t blk = t % nblocks, bh = t / nblocks;
      const int64_t i0 = blk * block;
      if (i0 < p.lq) forward_task(p, bh / p.heads, bh % p.heads, i0, std::min(block, p.lq - i0), w);
    }
  }
}

// ---- backward ----------------------------------------------------------------------------

// The compute-type buffers of the backward (see the unions in slime/query_attention.h).
struct BwdBuffers32 {
  const float *lse, *dlse;
  float* dq_partial;
};
struct BwdBuffers64 {
  const double *lse, *dlse;
  double* dq_partial;
};
BwdBuffers32 bwd_buffers(const QueryAttentionBackwardParams& p, float) {
  return {p.lse, p.dlse, p.dq_partial};
}
BwdBuffers64 bwd_buffers(const QueryAttentionBackwardParams& p, double) {
  return {p.lse64, p.dlse64, p.dq_partial64};
}

template <typename T>
struct BwdScratch {
  std::vector<T> q, dout, dq, lse2, delta, kr, kt, vt, dk, dv, s, dp, add, row, orow;
};

template <typename T>
void backward_task(const QueryAttentionBackwardParams& p, int64_t b, int64_t h,
                   BwdScratch<T>& w) {
  const int64_t d = p.d, dp = round_up(d, kCols), mq = round_up(p.lq, kRows);
  const int64_t KB = kKeyBlock, QB = kBwdQueryBlock;
  const bool shared = query_attention_q_shared(p.q_strides);
  const auto buf = bwd_buffers(p, T());
  constexpr T inf = kInf<T>;
  const T scale = scale_of<T>(p);
  w.q.resize(mq * dp), w.dout.resize(mq * dp), w.dq.assign(mq * dp, T(0));
  w.lse2.resize(mq), w.delta.resize(mq);
  w.kr.resize(KB * dp), w.kt.resize(dp * KB), w.vt.resize(dp * KB);
  w.dk.resize(KB * dp), w.dv.resize(KB * dp);
  w.s.resize(QB * KB), w.dp.resize(QB * KB), w.add.resize(KB), w.row.resize(dp),
      w.orow.resize(dp);
  const int64_t bh = b * p.heads + h;
  for (int64_t r = 0; r < mq; ++r) {
    T* qr = &w.q[r * dp];
    T* gr = &w.dout[r * dp];
    if (r >= p.lq) {
      std::fill(qr, qr + dp, T(0)), std::fill(gr, gr + dp, T(0));
      w.lse2[r] = inf, w.delta[r] = T(0);  // padding rows: P = 0
      continue;
    }
    load_row(p.q, offset(p.q_strides, b, h, r), d, dp, p.dtype, T(1), qr);
    load_row(p.dout, (bh * p.lq + r) * d, d, dp, p.dtype, T(1), gr);
    load_row(p.out, (bh * p.lq + r) * d, d, dp, p.dtype, T(1), w.orow.data());
    T delta = 0;
    for (int64_t c = 0; c < d; ++c) delta += gr[c] * w.orow[c];
    // d lse / d s_ij = P_ij, so a gradient on lse enters exactly like -delta.
    if (buf.dlse) delta -= buf.dlse[bh * p.lq + r];
    w.delta[r] = delta;
    const T lse = buf.lse[bh * p.lq + r];
    // A row with no key left has lse = -inf: make its P exactly 0 instead of inf - inf.
    w.lse2[r] = std::isfinite(lse) ? lse * kLog2e<T> : inf;
  }
  const T smul = scale * kLog2e<T>;
  for (int64_t j0 = 0; j0 < p.lk; j0 += KB) {
    const int64_t nk = std::min(KB, p.lk - j0);
    for (int64_t j = 0; j < KB; ++j) {
      T* kr = &w.kr[j * dp];
      if (j < nk) {
        load_row(p.k, offset(p.k_strides, b, h, j0 + j), d, dp, p.dtype, T(1), kr);
        load_row(p.v, offset(p.v_strides, b, h, j0 + j), d, dp, p.dtype, T(1), w.row.data());
      } else {
        std::fill(kr, kr + dp, T(0)), std::fill(w.row.begin(), w.row.end(), T(0));
      }
      for (int64_t c = 0; c < dp; ++c) w.kt[c * KB + j] = kr[c], w.vt[c * KB + j] = w.row[c];
    }
    const T* add = key_block_mask(p.key_mask, b, p.lk, j0, nk, w.add.data()) ? w.add.data()
                                                                              : nullptr;
    std::fill(w.dk.begin(), w.dk.end(), T(0)), std::fill(w.dv.begin(), w.dv.end(), T(0));
    for (int64_t i0 = 0; i0 < mq; i0 += QB) {
      const int64_t mb = std::min(QB, mq - i0);
      T* s = w.s.data();
      T* g = w.dp.data();
      std::fill(s, s + mb * KB, T(0)), std::fill(g, g + mb * KB, T(0));
      gemm_acc(s, KB, mb, KB, dp, &w.q[i0 * dp], dp, 1, w.kt.data(), KB);
      gemm_acc(g, KB, mb, KB, dp, &w.dout[i0 * dp], dp, 1, w.vt.data(), KB);
      for (int64_t r = 0; r < mb; ++r) {
        T* sr = s + r * KB;
        T* gr = g + r * KB;
        exp2_row(sr, KB, smul, add, w.lse2[i0 + r]);  // sr = P
        const T delta = w.delta[i0 + r];
        for (int64_t j = 0; j < KB; ++j) gr[j] = sr[j] * (gr[j] - delta);  // gr = dS
      }
      gemm_acc(w.dv.data(), dp, KB, dp, mb, s, 1, KB, &w.dout[i0 * dp], dp);
      gemm_acc(w.dk.data(), dp, KB, dp, mb, g, 1, KB, &w.q[i0 * dp], dp);
      gemm_acc(&w.dq[i0 * dp], dp, mb, dp, KB, g, KB, 1, w.kr.data(), dp);
    }
    for (int64_t j = 0; j < nk; ++j) {
      const int64_t o = (bh * p.lk + j0 + j) * d;
      store_row(p.dk, o, d, p.dtype, scale, &w.dk[j * dp]);
      store_row(p.dv, o, d, p.dtype, T(1), &w.dv[j * dp]);
    }
  }
  for (int64_t r = 0; r < p.lq; ++r) {
    const T* src = &w.dq[r * dp];
    if (shared) {
      T* dst = buf.dq_partial + (bh * p.lq + r) * d;
      for (int64_t c = 0; c < d; ++c) dst[c] = src[c] * scale;
    } else {
      store_row(p.dq, (bh * p.lq + r) * d, d, p.dtype, scale, src);
    }
  }
}

template <typename T>
void backward(const QueryAttentionBackwardParams& p) {
  const bool shared = query_attention_q_shared(p.q_strides);
  const int64_t tasks = p.batch * p.heads;
#pragma omp parallel
  {
    BwdScratch<T> w;
#pragma omp for schedule(dynamic)
    for (int64_t t = 0; t < tasks; ++t) backward_task(p, t / p.heads, t % p.heads, w);
  }
  if (!shared) return;
  // dq of a shared q: sum the per-item partials over the batch, always in the order 0..B-1.
  const T* partial = bwd_buffers(p, T()).dq_partial;
  const int64_t n = p.heads * p.lq * p.d;
  const int64_t item = n;
  // dq is written directly when its dtype is the compute type: F64 always is, F32 for float.
  const bool direct = std::is_same_v<T, double> || p.dtype == DType::F32;
  T* dq_t = direct ? static_cast<T*>(p.dq) : nullptr;
#pragma omp parallel for schedule(static)
  for (int64_t e = 0; e < n; ++e) {
    T acc = 0;
    for (int64_t b = 0; b < p.batch; ++b) acc += partial[b * item + e];
    if (dq_t)
      dq_t[e] = acc;
    else
      store_from_float(p.dq, e, p.dtype, static_cast<float>(acc));
  }
}

}  // namespace

void query_attention_cpu(const QueryAttentionParams& p) {
  if (p.batch == 0 || p.heads == 0 || p.lq == 0) return;
  if (p.dtype == DType::F64)
    forward<double>(p);
  else
    forward<float>(p);
}

void query_attention_backward_cpu(const QueryAttentionBackwardParams& p) {
  if (p.dtype == DType::F64)
    backward<double>(p);
  else
    backward<float>(p);
}

}  // namespace slime
