// C++ test of the CPU token_select / token_pack kernels against plain references: the
// probabilities against an O(M*T*H) cosine-matrix computation in double, the selection
// against a sort-and-scan written out here on the kernel's own probabilities (so ties and
// rounding cannot blur the comparison), the pack and its backward against row copies.
// Outputs are poisoned first so that an element the kernel forgets to write fails.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "cases.h"
#include "slime/token_select.h"
#include "test_util.h"

using namespace slime;

namespace {

std::mt19937 rng(12345);

float randn() {
  static std::normal_distribution<float> d(0.0f, 1.0f);
  return d(rng);
}

uint16_t to_bits(float v, DType t) {
  return t == DType::BF16 ? float_to_bf16_bits(v) : float_to_f16_bits(v);
}

using Case = cases::SelectCase;

void run_case(const Case& c) {
  const int64_t B = c.B, M = c.M, T = c.T, H = c.H;
  std::vector<float> xf(static_cast<size_t>(B * M * H)), ef(static_cast<size_t>(B * T * H));
  for (auto& v : xf) v = randn();
  for (auto& v : ef) v = randn();
  std::vector<uint16_t> x16, e16;
  if (c.dtype != DType::F32) {
    // Round the inputs to the 16-bit type and use the rounded values in the reference.
    x16.resize(xf.size());
    e16.resize(ef.size());
    for (size_t i = 0; i < xf.size(); ++i) {
      x16[i] = to_bits(xf[i], c.dtype);
      xf[i] = load_as_float(x16.data(), static_cast<int64_t>(i), c.dtype);
    }
    for (size_t i = 0; i < ef.size(); ++i) {
      e16[i] = to_bits(ef[i], c.dtype);
      ef[i] = load_as_float(e16.data(), static_cast<int64_t>(i), c.dtype);
    }
  }
  std::vector<unsigned char> mask_bytes(static_cast<size_t>(B * T));
  bool* mask = reinterpret_cast<bool*>(mask_bytes.data());
  for (int64_t i = 0; i < B * T; ++i) mask[i] = (rng() % 5) != 0;
  if (B > 0 && T > 0) {
    for (int64_t h = 0; h < H; ++h) ef[h] = 0.0f;  // a zero text row: contributes 0
    if (c.dtype != DType::F32)
      for (int64_t h = 0; h < H; ++h) e16[h] = 0;
  }
  const std::vector<int64_t> counts = cases::select_counts(c);
  std::vector<float> noise(static_cast<size_t>(B * M));
  for (auto& v : noise) v = 0.1f * randn();

  std::vector<int64_t> idx(static_cast<size_t>(B * M), 0x5a5a5a5a5a5aLL), cnt(B, -77);
  std::vector<float> probs(static_cast<size_t>(B * M), NAN);
  TokenSelectParams p;
  p.tokens = c.dtype == DType::F32 ? static_cast<const void*>(xf.data()) : x16.data();
  p.text = c.dtype == DType::F32 ? static_cast<const void*>(ef.data()) : e16.data();
  p.token_counts = counts.data();
  p.text_mask = mask;
  p.noise = c.noise ? noise.data() : nullptr;
  p.out_indices = idx.data();
  p.out_counts = cnt.data();
  p.out_probs = probs.data();
  p.B = B;
  p.M_max = M;
  p.T_max = T;
  p.H = H;
  p.dtype = c.dtype;
  p.use_top_k = c.top_k;
  p.top_p = c.top_p;
  p.top_k = c.k;
  p.temperature = 0.7f;
  p.prenorm_temperature = c.prenorm;
  token_select_cpu(p);

  for (int64_t b = 0; b < B; ++b) {
    const int64_t Mb = counts[b];
    // probabilities: the cosine matrix in double, then the two softmaxes
    std::vector<double> q(static_cast<size_t>(Mb));
    for (int64_t m = 0; m < Mb; ++m) {
      const float* x = &xf[(b * M + m) * H];
      double nx = 0;
      for (int64_t h = 0; h < H; ++h) nx += double(x[h]) * x[h];
      double s = 0;
      for (int64_t t = 0; t < T; ++t) {
        if (!mask[b * T + t]) continue;
        const float* e = &ef[(b * T + t) * H];
        double ne = 0, d = 0;
        for (int64_t h = 0; h < H; ++h) {
          ne += double(e[h]) * e[h];
          d += double(x[h]) * e[h];
        }
        s += d / (std::max(std::sqrt(nx), 1e-8) * std::max(std::sqrt(ne), 1e-8));
      }
      q[m] = s;
    }
    auto softmax = [](std::vector<double>& v, double t) {
      double mx = -INFINITY, sum = 0;
      for (double a : v) mx = std::max(mx, a);
      for (double& a : v) sum += (a = std::exp((a - mx) / t));
      for (double& a : v) a /= sum;
    };
    if (c.prenorm > 0) softmax(q, c.prenorm);
    if (c.noise)
      for (int64_t m = 0; m < Mb; ++m) q[m] += noise[b * M + m];
    softmax(q, 0.7);
    for (int64_t m = 0; m < Mb; ++m)
      CHECK(std::fabs(probs[b * M + m] - q[m]) <= 1e-5 * q[m] + 1e-9);
    for (int64_t m = Mb; m < M; ++m) CHECK(probs[b * M + m] == 0.0f);
    const auto kept = cases::select_ref(probs.data() + b * M, Mb, c);
    CHECK(cnt[b] == static_cast<int64_t>(kept.size()));
    for (int64_t j = 0; j < M; ++j)
      CHECK(idx[b * M + j] == (j < static_cast<int64_t>(kept.size()) ? kept[j] : -1));
  }
}

void test_pack(DType dtype) {
  const int64_t B = 3, M = 9, K = 9, H = 5, N = 20;
  const size_t es = dtype == DType::F32 ? 4 : 2;
  std::vector<unsigned char> tokens(B * M * H * es), base(N * H * es), out(N * H * es, 0xAB);
  for (auto& v : tokens) v = static_cast<unsigned char>(rng());
  for (auto& v : base) v = static_cast<unsigned char>(rng());
  std::vector<int64_t> indices(B * K, -1), counts = {3, 0, 2}, offsets = {10, 0, 4};
  indices[0] = 1, indices[1] = 5, indices[2] = 8, indices[2 * K] = 0, indices[2 * K + 1] = 7;
  TokenPackParams p;
  p.tokens = tokens.data();
  p.indices = indices.data();
  p.counts = counts.data();
  p.row_offsets = offsets.data();
  p.base = base.data();
  p.out = out.data();
  p.B = B, p.M_max = M, p.K = K, p.H = H, p.N = N, p.dtype = dtype;
  token_pack_cpu(p);
  const size_t row = H * es;
  std::vector<int64_t> src(N, -1);  // flat token row written to each output row, or -1
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < counts[b]; ++j) src[offsets[b] + j] = b * M + indices[b * K + j];
  for (int64_t r = 0; r < N; ++r) {
    const unsigned char* want = src[r] >= 0 ? &tokens[src[r] * row] : &base[r * row];
    CHECK(std::memcmp(&out[r * row], want, row) == 0);
  }
  std::vector<unsigned char> gt(B * M * row, 0xAB), gb(N * row, 0xAB);
  TokenPackBackwardParams q;
  q.grad_out = out.data();
  q.indices = indices.data();
  q.counts = counts.data();
  q.row_offsets = offsets.data();
  q.grad_tokens = gt.data();
  q.grad_base = gb.data();
  q.B = B, q.M_max = M, q.K = K, q.H = H, q.N = N, q.dtype = dtype;
  token_pack_backward_cpu(q);
  const std::vector<unsigned char> zero(row, 0);
  for (int64_t r = 0; r < N; ++r)
    CHECK(std::memcmp(&gb[r * row], src[r] >= 0 ? zero.data() : &out[r * row], row) == 0);
  std::vector<int64_t> dst(B * M, -1);
  for (int64_t r = 0; r < N; ++r)
    if (src[r] >= 0) dst[src[r]] = r;
  for (int64_t t = 0; t < B * M; ++t)
    CHECK(std::memcmp(&gt[t * row], dst[t] >= 0 ? &out[dst[t] * row] : zero.data(), row) == 0);
}

}  // namespace

int main() {
  for (const Case& c : cases::select_cases()) run_case(c);
  for (DType dt : {DType::F32, DType::BF16, DType::F16}) test_pack(dt);
  TEST_MAIN_END();
}
