// test_query_attention.cpp: the CPU query_attention kernels (forward and backward) against a
// plain double-precision C++ reference, for shared and per-item queries, with and without a
// key mask (including a crop with no key), strided k/v, odd sizes, size 1 and empty, in
// float32, bfloat16, float16 and float64 (whose inputs carry all 53 bits, so a kernel that
// rounded them through float would fail its 1e-12 tolerance). Outputs are poisoned with NaN
// first so an element the kernel does not write fails.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <random>
#include <vector>

#include "cases.h"
#include "slime/query_attention.h"
#include "test_util.h"

using namespace slime;

namespace {

struct Case {
  int64_t batch, heads, lq, lk, d;
  bool shared, masked;
  DType dtype;
};

// Values rounded to the element type, kept both as raw storage and as doubles (which are
// the storage for F64).
struct Buf {
  std::vector<uint16_t> h;
  std::vector<float> f;
  std::vector<double> x;
  const void* ptr(DType t) const {
    if (t == DType::F64) return x.data();
    return t == DType::F32 ? static_cast<const void*>(f.data()) : h.data();
  }
};

Buf random_buf(size_t n, DType t, std::mt19937& rng) {
  std::normal_distribution<double> nd(0.0, 1.0);
  Buf b;
  b.h.resize(n), b.f.resize(n), b.x.resize(n);
  for (size_t i = 0; i < n; ++i) {
    const double x = nd(rng);
    float v = static_cast<float>(x);
    if (t == DType::BF16) b.h[i] = float_to_bf16_bits(v), v = bf16_bits_to_float(b.h[i]);
    if (t == DType::F16) b.h[i] = float_to_f16_bits(v), v = f16_bits_to_float(b.h[i]);
    b.f[i] = v, b.x[i] = t == DType::F64 ? x : v;
  }
  return b;
}

// An output of n elements, or the compute-type lse/scratch buffers (F64 or F32), poisoned
// with NaN in every type.
struct Out {
  std::vector<float> f;
  std::vector<uint16_t> h;
  std::vector<double> x;
  explicit Out(size_t n) : f(n, std::nanf("")), h(n, 0x7fc1u), x(n, std::nan("")) {}
  void* ptr(DType t) {
    if (t == DType::F64) return x.data();
    return t == DType::F32 ? static_cast<void*>(f.data()) : h.data();
  }
  double at(size_t i, DType t) const {
    if (t == DType::F64) return x[i];
    return load_as_float(t == DType::F32 ? static_cast<const void*>(f.data()) : h.data(),
                         static_cast<int64_t>(i), t);
  }
};

double tol(DType t) {
  switch (t) {
    case DType::F64: return 1e-12;
    case DType::F32: return 2e-5;
    case DType::BF16: return 3e-2;
    default: return 4e-3;
  }
}

size_t elem_bytes(DType t) { return t == DType::F64 ? 8 : t == DType::F32 ? 4 : 2; }

// lse, dlse and the dq scratch are double for F64 and float otherwise.
DType compute_dtype(DType t) { return t == DType::F64 ? DType::F64 : DType::F32; }

bool run_case(const Case& c, std::mt19937& rng) {
  const int64_t B = c.batch, H = c.heads, Lq = c.lq, Lk = c.lk, d = c.d;
  const int64_t qn = (c.shared ? 1 : B) * H * Lq * d;
  Buf q = random_buf(static_cast<size_t>(qn), c.dtype, rng);
  // k and v interleaved in one [B, Lk, 2, H, d] buffer, the resampler's layout.
  Buf kv = random_buf(static_cast<size_t>(B * Lk * 2 * H * d), c.dtype, rng);
  std::vector<uint8_t> mask(static_cast<size_t>(B * Lk), 1);
  std::bernoulli_distribution keep(0.6);
  if (c.masked) {
    for (auto& m : mask) m = keep(rng);
    if (B > 1)
      for (int64_t j = 0; j < Lk; ++j) mask[static_cast<size_t>(Lk + j)] = 0;  // crop 1: no key
  }
  AttnStrides qs = c.shared ? AttnStrides{0, Lq * d, d} : AttnStrides{H * Lq * d, Lq * d, d};
  AttnStrides ks{Lk * 2 * H * d, d, 2 * H * d};
  auto qx = [&](int64_t b, int64_t h, int64_t i, int64_t e) {
    return q.x[static_cast<size_t>((c.shared ? 0 : b) * qs.batch + h * qs.head + i * qs.row + e)];
  };
  auto kx = [&](int64_t b, int64_t h, int64_t j, int64_t e, int which) {
    return kv.x[static_cast<size_t>(b * ks.batch + h * ks.head + j * ks.row + which * H * d + e)];
  };
  // The float kernels get the scale rounded to float, F64 the exact one; the reference uses
  // what the kernel gets.
  const float scale32 = 1.0f / std::sqrt(static_cast<float>(d));
  const double scale64 = 1.0 / std::sqrt(static_cast<double>(d));
  const double scale = c.dtype == DType::F64 ? scale64 : scale32;
  const DType acc_t = compute_dtype(c.dtype);
  const size_t on = static_cast<size_t>(B * H * Lq * d);
  Out out(on), lse(static_cast<size_t>(B * H * Lq));
  QueryAttentionParams p;
  p.q = q.ptr(c.dtype), p.k = kv.ptr(c.dtype);
  p.v = static_cast<const char*>(p.k) + elem_bytes(c.dtype) * static_cast<size_t>(H * d);
  p.key_mask = c.masked ? mask.data() : nullptr;
  p.out = out.ptr(c.dtype);
  if (c.dtype == DType::F64)
    p.lse64 = lse.x.data();
  else
    p.lse = lse.f.data();
  p.q_strides = qs, p.k_strides = ks, p.v_strides = ks;
  p.batch = B, p.heads = H, p.lq = Lq, p.lk = Lk, p.d = d, p.scale = scale32, p.scale64 = scale64;
  p.dtype = c.dtype;
  query_attention_cpu(p);

  // Backward inputs: dout random, out/lse from the forward.
  Buf dout = random_buf(on, c.dtype, rng);
  Out dq(static_cast<size_t>(qn)), dk(static_cast<size_t>(B * H * Lk * d)),
      dv(static_cast<size_t>(B * H * Lk * d));
  Out partial(on);
  QueryAttentionBackwardParams g;
  g.q = p.q, g.k = p.k, g.v = p.v, g.key_mask = p.key_mask, g.out = out.ptr(c.dtype);
  g.dout = dout.ptr(c.dtype);
  if (c.dtype == DType::F64)
    g.lse64 = lse.x.data(), g.dlse64 = nullptr, g.dq_partial64 = partial.x.data();
  else
    g.lse = lse.f.data(), g.dlse = nullptr, g.dq_partial = partial.f.data();
  g.dq = dq.ptr(c.dtype), g.dk = dk.ptr(c.dtype), g.dv = dv.ptr(c.dtype);
  g.q_strides = qs, g.k_strides = ks, g.v_strides = ks;
  g.batch = B, g.heads = H, g.lq = Lq, g.lk = Lk, g.d = d, g.scale = scale32, g.scale64 = scale64;
  g.dtype = c.dtype;
  query_attention_backward_cpu(g);

  // Double-precision reference.
  std::vector<double> rdq(static_cast<size_t>(qn), 0.0);
  double err_out = 0, err_lse = 0, err_dq = 0, err_dk = 0, err_dv = 0;
  bool lse_ok = true;
  std::vector<double> s(static_cast<size_t>(Lk)), pr(static_cast<size_t>(Lk));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      std::vector<double> rdk(static_cast<size_t>(Lk * d), 0.0);
      std::vector<double> rdv(static_cast<size_t>(Lk * d), 0.0);
      for (int64_t i = 0; i < Lq; ++i) {
        double m = -std::numeric_limits<double>::infinity();
        for (int64_t j = 0; j < Lk; ++j) {
          double acc = 0;
          for (int64_t e = 0; e < d; ++e) acc += qx(b, h, i, e) * kx(b, h, j, e, 0);
          s[j] = mask[static_cast<size_t>(b * Lk + j)] ? acc * scale : -INFINITY;
          m = std::max(m, s[j]);
        }
        double l = 0;
        for (int64_t j = 0; j < Lk; ++j) {
          pr[j] = std::isinf(m) ? 0.0 : std::exp(s[j] - m);
          l += pr[j];
        }
        const size_t row = static_cast<size_t>((b * H + h) * Lq + i);
        const double lse_row = lse.at(row, acc_t);
        if (l == 0) {
          lse_ok = lse_ok && std::isinf(lse_row) && lse_row < 0;
        } else {
          err_lse = std::max(err_lse, std::fabs(lse_row - (m + std::log(l))));
          for (int64_t j = 0; j < Lk; ++j) pr[j] /= l;
        }
        std::vector<double> o(static_cast<size_t>(d), 0.0), go(static_cast<size_t>(d));
        double delta = 0;
        for (int64_t e = 0; e < d; ++e) {
          for (int64_t j = 0; j < Lk; ++j) o[e] += pr[j] * kx(b, h, j, e, 1);
          const size_t oi = row * static_cast<size_t>(d) + static_cast<size_t>(e);
          err_out = std::max(err_out, std::fabs(out.at(oi, c.dtype) - o[e]));
          go[e] = dout.x[oi];
          delta += go[e] * out.at(oi, c.dtype);
        }
        for (int64_t j = 0; j < Lk; ++j) {
          double dp = 0;
          for (int64_t e = 0; e < d; ++e) dp += go[e] * kx(b, h, j, e, 1);
          const double ds = pr[j] * (dp - delta) * scale;
          for (int64_t e = 0; e < d; ++e) {
            rdv[static_cast<size_t>(j * d + e)] += pr[j] * go[e];
            rdk[static_cast<size_t>(j * d + e)] += ds * qx(b, h, i, e);
            const int64_t qrow = ((c.shared ? 0 : b) * H + h) * Lq + i;
            rdq[static_cast<size_t>(qrow * d + e)] += ds * kx(b, h, j, e, 0);
          }
        }
      }
      for (int64_t j = 0; j < Lk * d; ++j) {
        const size_t gi = static_cast<size_t>((b * H + h) * Lk * d + j);
        err_dk = std::max(err_dk, std::fabs(dk.at(gi, c.dtype) - rdk[static_cast<size_t>(j)]));
        err_dv = std::max(err_dv, std::fabs(dv.at(gi, c.dtype) - rdv[static_cast<size_t>(j)]));
      }
    }
  for (size_t i = 0; i < rdq.size(); ++i)
    err_dq = std::max(err_dq, std::fabs(dq.at(i, c.dtype) - rdq[i]));
  // NaN (an unwritten element) makes every comparison false, so `!(err <= tol)` catches it.
  const double t = tol(c.dtype);
  const bool ok = lse_ok && err_out <= t && err_lse <= t && err_dq <= 4 * t && err_dk <= 4 * t &&
                  err_dv <= 4 * t;
  if (!ok)
    std::fprintf(stderr,
                 "case B%lld H%lld Lq%lld Lk%lld d%lld shared%d mask%d %s: out %g lse %g dq %g "
                 "dk %g dv %g lse_ok %d\n",
                 (long long)B, (long long)H, (long long)Lq, (long long)Lk, (long long)d, c.shared,
                 c.masked, dtype_name(c.dtype), err_out, err_lse, err_dq, err_dk, err_dv, lse_ok);
  return ok;
}

}  // namespace

int main() {
  std::mt19937 rng(std::random_device{}());
  const DType dtypes[] = {DType::F32, DType::BF16, DType::F16, DType::F64};
  int n = 0;
  for (DType t : dtypes)
    for (const cases::AttnShape& s : cases::attention_shapes())
      for (int shared = 0; shared < 2; ++shared)
        for (int masked = 0; masked < 2; ++masked) {
          CHECK(run_case({s.batch, s.heads, s.lq, s.lk, s.d, shared == 1, masked == 1, t}, rng));
          ++n;
        }
  std::printf("%d cases\n", n);
  TEST_MAIN_END();
}
