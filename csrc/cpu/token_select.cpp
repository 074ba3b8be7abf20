// token_select (CPU): text-guided top-p / top-k selection of local visual tokens and the
// packing gather with its backward; the math is in slime/token_select.h.
//
// Three passes, none of them O(M * T * H):
//   1. text, read once: per chunk of 64 rows, each row's norm then row / norm into the
//      chunk's partial sum; the chunks are added in order (independent of the thread count);
//   2. scores: one fused pass over the tokens computing dot(x_m, s_b) and |x_m|^2 together;
//   3. per image (OpenMP over images): two softmaxes, a sort of M 64-bit (p, index) keys,
//      the cumulative-sum scan and the ascending compaction. Extra memory: B * (M + H) floats
//      plus B * ceil(T / 64) * H floats of chunk sums (1/64 of the text in float32).
// Check:     python -m pytest -q tests/test_token_select.py   (and ctest: test_token_select)
// Benchmark: python -m bench --only token_select
#include "slime/token_select.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <vector>

namespace slime {
namespace {

struct LoadF32 {
  using storage = float;
  static float load(float v) { return v; }
};
struct LoadBF16 {
  using storage = uint16_t;
  static float load(uint16_t v) { return bf16_bits_to_float(v); }
};
struct LoadF16 {
  using storage = uint16_t;
  static float load(uint16_t v) {
#if defined(__FLT16_MAX__)
    // The compiler's own half type converts with F16C instructions and vectorises.
    _Float16 h;
    std::memcpy(&h, &v, sizeof(h));
    return static_cast<float>(h);
#else
    return f16_bits_to_float(v);
#endif
  }
};

// s_b in two steps that do not depend on the thread count: chunks of kTextChunk rows, each
// read once (the row's norm, then row * inv into the chunk's partial sum, the row still in
// L1), then the chunks added in order per column block.
template <class L>
void text_sums(const TokenSelectParams& p, float* partial, float* s) {
  using T = typename L::storage;
  const T* text = static_cast<const T*>(p.text);
  const int64_t B = p.B, TT = p.T_max, H = p.H;
  const int64_t rows = TokenSelectWorkspace::kTextChunk;
  const int64_t chunks = (TT + rows - 1) / rows;
#pragma omp for schedule(dynamic, 1)
  for (int64_t job = 0; job < B * chunks; ++job) {
    const int64_t b = job / chunks, t0 = (job % chunks) * rows;
    const int64_t t1 = std::min(TT, t0 + rows);
    float* acc = partial + job * H;
    std::fill(acc, acc + H, 0.0f);
    for (int64_t t = t0; t < t1; ++t) {
      if (!p.text_mask[b * TT + t]) continue;
      const T* e = text + (b * TT + t) * H;
      float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
      for (int64_t h = 0; h < H; ++h) {
        const float v = L::load(e[h]);
        ss += v * v;
      }
      const float w = 1.0f / std::max(std::sqrt(ss), kTokenSelectEps);
#pragma omp simd
      for (int64_t h = 0; h < H; ++h) acc[h] += L::load(e[h]) * w;
    }
  }
  constexpr int64_t kCols = 256;
  const int64_t nblk = (H + kCols - 1) / kCols;
#pragma omp for schedule(static)
  for (int64_t job = 0; job < B * nblk; ++job) {
    const int64_t b = job / nblk, h0 = (job % nblk) * kCols, h1 = std::min(H, h0 + kCols);
    float* out = s + b * H;
    std::fill(out + h0, out + h1, 0.0f);
    for (int64_t c = 0; c < chunks; ++c) {
      const float* part = partial + (b * chunks + c) * H;
#pragma omp simd
      for (int64_t h = h0; h < h1; ++h) out[h] += part[h];
    }
  }
}

template <class L>
void token_scores(const TokenSelectParams& p, const float* s, float* scores) {
  using T = typename L::storage;
  const T* tokens = static_cast<const T*>(p.tokens);
  const int64_t B = p.B, M = p.M_max, H = p.H;
#pragma omp for schedule(static)
  for (int64_t r = 0; r < B * M; ++r) {
    const int64_t b = r / M, m = r % M;
    if (m >= p.token_counts[b]) continue;
    const T* x = tokens + r * H;
    const float* sb = s + b * H;
    float dot = 0.0f, ss = 0.0f;
#pragma omp simd reduction(+ : dot, ss)
    for (int64_t h = 0; h < H; ++h) {
      const float v = L::load(x[h]);
      dot += v * sb[h];
      ss += v * v;
    }
    scores[r] = dot / std::max(std::sqrt(ss), kTokenSelectEps);
  }
}

// out[m] = exp((v[m] - max v) / t) / sum, the denominator accumulated in double.
void softmax(const float* v, float* out, int64_t n, float t) {
  float mx = -INFINITY;
  for (int64_t i = 0; i < n; ++i) mx = std::max(mx, v[i]);
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    out[i] = std::exp((v[i] - mx) / t);
    sum += out[i];
  }
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<float>(out[i] / sum);
}

void select_image(const TokenSelectParams& p, int64_t b, const float* scores,
                  std::vector<float>& work, std::vector<uint64_t>& keys,
                  std::vector<char>& kept) {
  const int64_t Mmax = p.M_max;
  const int64_t M = std::min(std::max<int64_t>(p.token_counts[b], 0), Mmax);
  int64_t* out_idx = p.out_indices + b * Mmax;
  float* probs = p.out_probs + b * Mmax;
  work.resize(static_cast<size_t>(M));
  const float* sc = scores + b * Mmax;
  if (p.prenorm_temperature > 0.0f) {
    softmax(sc, work.data(), M, p.prenorm_temperature);
  } else {
    std::copy(sc, sc + M, work.begin());
  }
  if (p.noise != nullptr) {
    const float* nz = p.noise + b * Mmax;
    for (int64_t m = 0; m < M; ++m) work[m] += nz[m];
  }
  softmax(work.data(), probs, M, p.temperature);
  for (int64_t m = M; m < Mmax; ++m) probs[m] = 0.0f;

  keys.resize(static_cast<size_t>(M));
  for (int64_t m = 0; m < M; ++m) keys[m] = token_rank_key(probs[m], m);
  std::sort(keys.begin(), keys.end(), std::greater<uint64_t>());
  int64_t keep;
  if (p.use_top_k) {
    keep = std::min(p.top_k, M);
  } else {
    double c = 0.0;
    int64_t n = 0;
    for (; n < M; ++n) {
      c += bits_float(static_cast<uint32_t>(keys[n] >> 32));
      if (!(c <= p.top_p)) break;
    }
    keep = top_p_keep(n, M, p.top_p);
  }
  kept.assign(static_cast<size_t>(M), 0);
  for (int64_t j = 0; j < keep; ++j) kept[token_rank_index(keys[j])] = 1;
  int64_t w = 0;
  for (int64_t m = 0; m < M; ++m)
    if (kept[m]) out_idx[w++] = m;
  for (int64_t j = w; j < Mmax; ++j) out_idx[j] = -1;
  p.out_counts[b] = keep;
}

}  // namespace

size_t token_select_workspace_bytes(const TokenSelectParams& p) {
  return token_select_workspace(p).total;
}

void token_select_cpu(const TokenSelectParams& p) {
  if (p.B == 0) return;
  const int64_t chunks = (p.T_max + TokenSelectWorkspace::kTextChunk - 1) /
                         TokenSelectWorkspace::kTextChunk;
  std::vector<float> partial(static_cast<size_t>(p.B * chunks * p.H));
  std::vector<float> s(static_cast<size_t>(p.B * p.H), 0.0f);
  std::vector<float> scores(static_cast<size_t>(p.B * p.M_max), 0.0f);
  // One parallel region for all phases (each phase ends in a barrier anyway), and none for
  // small inputs: on a loaded machine every fork/join can cost a scheduler time slice, far
  // more than reading a few MB on one core.
  const int64_t elems = p.B * (p.M_max + p.T_max) * p.H;
  const bool parallel = elems >= (int64_t(8) << 20) || p.B * p.M_max >= (int64_t(1) << 16);
#pragma omp parallel if (parallel)
  {
    if (p.H > 0 && p.M_max > 0) {
      auto run = [&](auto loader) {
        using L = decltype(loader);
        if (p.T_max > 0) text_sums<L>(p, partial.data(), s.data());
        token_scores<L>(p, s.data(), scores.data());
      };
      switch (p.dtype) {
        case DType::F32: run(LoadF32{}); break;
        case DType::BF16: run(LoadBF16{}); break;
        case DType::F16: run(LoadF16{}); break;
        default: break;
      }
    }
    std::vector<float> work;
    std::vector<uint64_t> keys;
    std::vector<char> kept;
#pragma omp for schedule(dynamic, 1)
    for (int64_t b = 0; b < p.B; ++b) select_image(p, b, scores.data(), work, keys, kept);
  }
}

namespace {
size_t elem_size(DType t) {
  return t == DType::F32 ? 4 : (t == DType::I64 ? 8 : (t == DType::U8 ? 1 : 2));
}

// Threads only pay off for copies of several MB (see token_select_cpu).
bool big_copy(int64_t rows, size_t row_bytes) {
  return static_cast<size_t>(rows) * row_bytes >= (size_t(16) << 20);
}

// True when image b's j-th kept row exists in both the token array and the output.
bool pack_row(const int64_t* indices, const int64_t* counts, const int64_t* row_offsets,
              int64_t b, int64_t j, int64_t K, int64_t M_max, int64_t N, int64_t* src,
              int64_t* dst) {
  if (j >= counts[b]) return false;
  *src = indices[b * K + j];
  *dst = row_offsets[b] + j;
  return *src >= 0 && *src < M_max && *dst >= 0 && *dst < N;
}
}  // namespace

void token_pack_cpu(const TokenPackParams& p) {
  const size_t row = static_cast<size_t>(p.H) * elem_size(p.dtype);
  if (p.N == 0 || row == 0) return;
  const char* base = static_cast<const char*>(p.base);
  const char* tokens = static_cast<const char*>(p.tokens);
  char* out = static_cast<char*>(p.out);
  if (out != base) std::memcpy(out, base, static_cast<size_t>(p.N) * row);
#pragma omp parallel for schedule(static) if (big_copy(p.B * p.K, row))
  for (int64_t r = 0; r < p.B * p.K; ++r) {
    const int64_t b = r / p.K, j = r % p.K;
    int64_t src, dst;
    if (pack_row(p.indices, p.counts, p.row_offsets, b, j, p.K, p.M_max, p.N, &src, &dst))
      std::memcpy(out + dst * row, tokens + (b * p.M_max + src) * row, row);
  }
}

void token_pack_backward_cpu(const TokenPackBackwardParams& p) {
  const size_t row = static_cast<size_t>(p.H) * elem_size(p.dtype);
  if (row == 0) return;
  const char* g = static_cast<const char*>(p.grad_out);
  char* gt = static_cast<char*>(p.grad_tokens);
  char* gb = static_cast<char*>(p.grad_base);
  // Zero bits are +0.0 in every float format.
  // (guarded: memset on a null pointer is undefined even for 0 bytes, and an empty
  // grad_tokens may have none)
  if (p.B * p.M_max > 0) std::memset(gt, 0, static_cast<size_t>(p.B * p.M_max) * row);
  if (p.N > 0) std::memcpy(gb, g, static_cast<size_t>(p.N) * row);
#pragma omp parallel for schedule(static) if (big_copy(p.B * p.K, row))
  for (int64_t r = 0; r < p.B * p.K; ++r) {
    const int64_t b = r / p.K, j = r % p.K;
    int64_t src, dst;
    if (pack_row(p.indices, p.counts, p.row_offsets, b, j, p.K, p.M_max, p.N, &src, &dst)) {
      std::memcpy(gt + (b * p.M_max + src) * row, g + dst * row, row);
      std::memset(gb + dst * row, 0, row);
    }
  }
}

}  // namespace slime
