// test_emu_kernels.cpp: every CUDA kernel and launcher path, run on the CPU emulation of CUDA
// (csrc/emu) with its checks, against the CPU kernels through the same C++ API. Bit-identical
// where the arithmetic is the same (tile_resize pixels in every dtype, token_select indices
// and counts, token_pack and its backward), within the tolerance of
// scripts/sanitize_cases.py elsewhere (query_attention; token_select probabilities). Every
// input lives in its own device allocation (ASan bounds), outputs are poisoned first, and
// any finding of the emulation fails the case.
//
//   test_emu_kernels tile_resize | query_attention | token_select
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <deque>
#include <random>
#include <string>
#include <vector>

#include "../cases.h"
#include "../test_util.h"
#include "cuda_runtime.h"
#include "slime/query_attention.h"
#include "slime/tile_resize.h"
#include "slime/token_select.h"

using namespace slime;

namespace {

std::mt19937 rng(std::random_device{}());
int g_cases = 0, g_findings = 0;

// A device copy of a host vector, freed at scope exit.
template <typename T>
struct Dev {
  T* p = nullptr;
  size_t n = 0;
  Dev() = default;
  explicit Dev(const std::vector<T>& h) : n(h.size()) {
    cudaMalloc(&p, n * sizeof(T));
    cudaMemcpy(p, h.data(), n * sizeof(T), cudaMemcpyHostToDevice);
  }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
  ~Dev() { cudaFree(p); }
  std::vector<T> host() const {
    std::vector<T> h(n);
    cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost);
    return h;
  }
};

// Every case: the launch status, then no finding.
bool finish(const char* op, const std::string& what, LaunchStatus st, bool same) {
  ++g_cases;
  const int found = emu::total_findings();
  g_findings += found;
  const bool ok = st == nullptr && found == 0 && same;
  if (!ok)
    std::fprintf(stderr, "%s %s: status %s, %d findings, %s\n", op, what.c_str(),
                 st ? st : "ok", found, same ? "same as CPU" : "DIFFERS from CPU");
  emu::reset_findings();
  return ok;
}

size_t esize(DType t) { return t == DType::F32 ? 4 : t == DType::U8 ? 1 : 2; }

std::vector<uint8_t> random_bytes(size_t n) {
  std::vector<uint8_t> v(n);
  for (auto& x : v) x = static_cast<uint8_t>(rng());
  return v;
}

// Floats rounded to dtype, stored in dtype's bytes.
std::vector<uint8_t> random_values(size_t n, DType t, float scale = 1.0f) {
  std::normal_distribution<float> nd(0.0f, scale);
  std::vector<uint8_t> v(n * esize(t));
  for (size_t i = 0; i < n; ++i) store_from_float(v.data(), static_cast<int64_t>(i), t, nd(rng));
  return v;
}

std::vector<uint8_t> nan_bytes(size_t n, DType t) {
  std::vector<uint8_t> v(n * esize(t));
  for (size_t i = 0; i < n; ++i) store_from_float(v.data(), static_cast<int64_t>(i), t, NAN);
  return v;
}

// ---- tile_resize ---------------------------------------------------------------------------

void tile_resize_cases() {
  for (const auto& batch : cases::tile_resize_batches()) {
    for (ResizeFilter filter : {ResizeFilter::Bicubic, ResizeFilter::Bilinear}) {
      std::vector<std::vector<uint8_t>> imgs;
      std::vector<const uint8_t*> host_ptrs;
      std::vector<int32_t> sizes, plans;
      for (const auto& im : batch.images) {
        imgs.push_back(random_bytes(size_t(im.w) * im.h * 3));
        sizes.push_back(im.h), sizes.push_back(im.w);
        // Bicubic runs Pillow 13's pass order, bilinear the opposite one: both orders of
        // every resize run on the emulated kernel.
        const auto plan = cases::tile_resize_plan(im, batch.tile, filter == ResizeFilter::Bilinear);
        plans.insert(plans.end(), plan.begin(), plan.end());
      }
      for (auto& im : imgs) host_ptrs.push_back(im.data());
      TileResizeParams p;
      p.num_images = static_cast<int32_t>(imgs.size());
      p.images = host_ptrs.data();
      p.sizes = sizes.data();
      p.plans = plans.data();
      p.tile = batch.tile;
      p.filter = filter;
      const float mean[3] = {0.48145466f, 0.4578275f, 0.40821073f};
      const float stdev[3] = {0.26862954f, 0.26130258f, 0.27577711f};
      std::memcpy(p.mean, mean, sizeof(mean));
      std::memcpy(p.stdev, stdev, sizeof(stdev));
      for (int i = 0; i < p.num_images; ++i)
        p.total_crops += tile_resize_plan_crops(&plans[size_t(i) * kPlanFields]);
      int32_t bad = -1;
      CHECK(tile_resize_validate(p, &bad) == nullptr);
      const TileResizeLayout layout = tile_resize_build_layout(p);
      std::deque<Dev<uint8_t>> dev_imgs;  // each image its own allocation
      for (auto& im : imgs) dev_imgs.emplace_back(im);
      std::vector<const uint8_t*> dev_ptrs;
      for (auto& d : dev_imgs) dev_ptrs.push_back(d.p);
      Dev<const uint8_t*> dev_table(dev_ptrs);
      Dev<int32_t> dev_layout(layout.data);
      const size_t n = static_cast<size_t>(p.total_crops) * 3 * batch.tile * batch.tile;
      for (DType t : {DType::U8, DType::F32, DType::F16, DType::BF16}) {
        p.out_dtype = t;
        std::vector<uint8_t> want = nan_bytes(n, t);
        p.out = want.data();
        tile_resize_cpu(p);
        Dev<uint8_t> out(nan_bytes(n, t));
        p.out = out.p;
        TileResizeParams q = p;
        q.images = dev_ptrs.data();
        const LaunchStatus st = tile_resize_cuda(q, layout, dev_layout.p, dev_table.p, nullptr);
        const bool same = out.host() == want;
        const char* f = filter == ResizeFilter::Bicubic ? " bicubic" : " bilinear";
        CHECK(finish("tile_resize", batch.name + " " + dtype_name(t) + f, st, same));
      }
    }
  }
}

// ---- query_attention -----------------------------------------------------------------------

// sanitize_cases.py's tolerances for CUDA against CPU.
double qa_tol(DType t) { return t == DType::F32 ? 1e-4 : 5e-2; }

bool close(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b, DType t, size_t n,
           double tol, double* worst) {
  bool ok = true;
  for (size_t i = 0; i < n; ++i) {
    const double x = load_as_float(a.data(), int64_t(i), t);
    const double y = load_as_float(b.data(), int64_t(i), t);
    if (std::isinf(x) && x == y) continue;  // lse of a row without keys
    const double err = std::fabs(x - y);
    if (!(err <= tol + tol * std::fabs(x))) ok = false;
    if (err > *worst || std::isnan(err)) *worst = err;
  }
  return ok;
}

void query_attention_case(const cases::AttnShape& s, DType t, bool shared, bool masked) {
  const int64_t B = s.batch, H = s.heads, Lq = s.lq, Lk = s.lk, d = s.d;
  const size_t qn = size_t((shared ? 1 : B) * H * Lq * d), kvn = size_t(B * Lk * 2 * H * d);
  const size_t on = size_t(B * H * Lq * d), ln = size_t(B * H * Lq), kn = size_t(B * H * Lk * d);
  const auto q = random_values(qn, t), kv = random_values(kvn, t), dout = random_values(on, t);
  std::vector<uint8_t> mask(size_t(B * Lk), 1);
  if (masked) {
    for (auto& m : mask) m = (rng() % 10) < 6;
    if (B > 1) std::fill(mask.begin() + Lk, mask.begin() + 2 * Lk, 0);  // item 1: no key
  }
  const AttnStrides qs = shared ? AttnStrides{0, Lq * d, d} : AttnStrides{H * Lq * d, Lq * d, d};
  const AttnStrides ks{Lk * 2 * H * d, d, 2 * H * d};  // k, v interleaved: [B, Lk, 2, H, d]
  const float scale = 1.0f / std::sqrt(float(d));

  // One run on either backend: forward, then backward on its own outputs.
  struct Result {
    std::vector<uint8_t> out, lse, dq, dk, dv;
    LaunchStatus st = nullptr;
  };
  auto run = [&](bool cuda) {
    Result r;
    Dev<uint8_t> dq_(q), dkv(kv), ddout(dout), dmask(mask);
    Dev<uint8_t> out(nan_bytes(on, t)), lse(nan_bytes(ln, DType::F32));
    Dev<uint8_t> dq(nan_bytes(qn, t)), dk(nan_bytes(kn, t)), dv(nan_bytes(kn, t));
    Dev<uint8_t> partial(nan_bytes(on, DType::F32));
    std::vector<uint8_t> hq = q, hkv = kv, hdout = dout, hmask = mask;
    std::vector<uint8_t> hout = nan_bytes(on, t), hlse = nan_bytes(ln, DType::F32);
    std::vector<uint8_t> hdq = nan_bytes(qn, t), hdk = nan_bytes(kn, t), hdv = nan_bytes(kn, t);
    std::vector<uint8_t> hpartial = nan_bytes(on, DType::F32);
    auto at = [&](Dev<uint8_t>& dev, std::vector<uint8_t>& host) {
      return cuda ? dev.p : host.data();
    };
    QueryAttentionParams p;
    p.q = at(dq_, hq), p.k = at(dkv, hkv);
    p.v = static_cast<const uint8_t*>(p.k) + esize(t) * size_t(H * d);
    p.key_mask = masked ? at(dmask, hmask) : nullptr;
    p.out = at(out, hout);
    p.lse = reinterpret_cast<float*>(at(lse, hlse));
    p.q_strides = qs, p.k_strides = ks, p.v_strides = ks;
    p.batch = B, p.heads = H, p.lq = Lq, p.lk = Lk, p.d = d, p.scale = scale;
    p.scale64 = 1.0 / std::sqrt(double(d));
    p.dtype = t;
    QueryAttentionBackwardParams g;
    g.q = p.q, g.k = p.k, g.v = p.v, g.key_mask = p.key_mask, g.out = p.out;
    g.dout = at(ddout, hdout);
    g.lse = p.lse, g.dlse = nullptr;
    g.dq = at(dq, hdq), g.dk = at(dk, hdk), g.dv = at(dv, hdv);
    g.dq_partial = reinterpret_cast<float*>(at(partial, hpartial));
    g.q_strides = qs, g.k_strides = ks, g.v_strides = ks;
    g.batch = B, g.heads = H, g.lq = Lq, g.lk = Lk, g.d = d, g.scale = scale;
    g.scale64 = p.scale64, g.dtype = t;
    if (cuda) {
      r.st = query_attention_cuda(p, nullptr);
      if (!r.st) r.st = query_attention_backward_cuda(g, nullptr);
      r.out = out.host(), r.lse = lse.host(), r.dq = dq.host(), r.dk = dk.host(), r.dv = dv.host();
    } else {
      query_attention_cpu(p);
      query_attention_backward_cpu(g);
      r.out = hout, r.lse = hlse, r.dq = hdq, r.dk = hdk, r.dv = hdv;
    }
    return r;
  };
  const Result want = run(false), got = run(true);
  const double tol = qa_tol(t);
  double worst = 0;
  bool same = close(got.out, want.out, t, on, tol, &worst) &&
              close(got.lse, want.lse, DType::F32, ln, tol, &worst);
  // Gradients are sums over Lk (or Lq) of products: the tolerance scales with their size.
  same = same && close(got.dq, want.dq, t, qn, 4 * tol, &worst) &&
         close(got.dk, want.dk, t, kn, 4 * tol, &worst) &&
         close(got.dv, want.dv, t, kn, 4 * tol, &worst);
  char what[160];
  std::snprintf(what, sizeof(what),
                "B%lld H%lld Lq%lld Lk%lld d%lld %s shared%d mask%d sm_%d (max err %.3g)",
                (long long)B, (long long)H, (long long)Lq, (long long)Lk, (long long)d,
                dtype_name(t), shared, masked, emu::arch(), worst);
  CHECK(finish("query_attention", what, got.st, same));
}

void query_attention_cases() {
  // Every shape in every dtype; the (shared q, key mask) combination rotates with both, so
  // each shape meets three of the four and each dtype all four (the emulation is ~1000x
  // slower than the CPU kernel: the full product would not fit CI's budget).
  const DType dtypes[] = {DType::F32, DType::BF16, DType::F16};
  const auto shapes = cases::attention_shapes();
  for (size_t i = 0; i < shapes.size(); ++i)
    for (int j = 0; j < 3; ++j) {
      const size_t combo = (i + size_t(j)) % 4;
      query_attention_case(shapes[i], dtypes[j], combo & 1, combo & 2);
    }
  // Every architecture's shared-memory limit, with the largest layouts (d = 128).
  for (int sm : {80, 86, 89, 90}) {
    emu::set_arch(sm);
    for (DType t : {DType::F32, DType::BF16})
      query_attention_case({2, 1, 17, 9, 128}, t, true, true);
  }
  emu::set_arch(80);
}

// ---- token_select / token_pack -------------------------------------------------------------

void token_select_case(const cases::SelectCase& c) {
  const int64_t B = c.B, M = c.M, T = c.T, H = c.H;
  const auto tokens = random_values(size_t(B * M * H), c.dtype);
  const auto text = random_values(size_t(B * T * H), c.dtype);
  std::vector<uint8_t> mask(size_t(B * T));
  for (auto& m : mask) m = (rng() % 5) != 0;
  const auto counts = cases::select_counts(c);
  std::vector<float> noise(size_t(B * M));
  std::normal_distribution<float> nd(0.0f, 0.1f);
  for (auto& v : noise) v = nd(rng);
  TokenSelectParams p;
  p.B = B, p.M_max = M, p.T_max = T, p.H = H, p.dtype = c.dtype;
  p.use_top_k = c.top_k, p.top_p = c.top_p, p.top_k = c.k, p.temperature = 0.7f;
  p.prenorm_temperature = c.prenorm;
  // CPU
  std::vector<int64_t> want_idx(size_t(B * M), 0x5a5a), want_cnt(size_t(B), -7);
  std::vector<float> want_p(size_t(B * M), NAN);
  p.tokens = tokens.data(), p.text = text.data(), p.token_counts = counts.data();
  p.text_mask = reinterpret_cast<const bool*>(mask.data());
  p.noise = c.noise ? noise.data() : nullptr;
  p.out_indices = want_idx.data(), p.out_counts = want_cnt.data(), p.out_probs = want_p.data();
  token_select_cpu(p);
  // CUDA
  Dev<uint8_t> dtok(tokens), dtext(text), dmask(mask);
  Dev<int64_t> dcounts(counts), didx(std::vector<int64_t>(size_t(B * M), 0x5a5a)),
      dcnt(std::vector<int64_t>(size_t(B), -7));
  Dev<float> dnoise(noise), dprobs(std::vector<float>(size_t(B * M), NAN));
  Dev<uint8_t> work(std::vector<uint8_t>(token_select_workspace_bytes(p), 0xff));
  p.tokens = dtok.p, p.text = dtext.p, p.token_counts = dcounts.p;
  p.text_mask = reinterpret_cast<const bool*>(dmask.p);
  p.noise = c.noise ? dnoise.p : nullptr;
  p.out_indices = didx.p, p.out_counts = dcnt.p, p.out_probs = dprobs.p, p.workspace = work.p;
  const LaunchStatus st = token_select_cuda(p, nullptr);
  const auto got_idx = didx.host(), got_cnt = dcnt.host();
  const auto got_p = dprobs.host();
  bool same = got_idx == want_idx && got_cnt == want_cnt;
  int ties = 0;
  if (!same) {
    // Allowed only where float rounding decides: then CUDA's selection must still be exactly
    // SliME's rule applied to its own probabilities.
    for (int64_t b = 0; b < B; ++b) {
      const auto kept = cases::select_ref(got_p.data() + b * M, counts[size_t(b)], c);
      bool ok = got_cnt[size_t(b)] == int64_t(kept.size());
      for (int64_t j = 0; j < M; ++j)
        ok = ok && got_idx[size_t(b * M + j)] == (j < int64_t(kept.size()) ? kept[size_t(j)] : -1);
      same = ok;
      if (!ok) break;
    }
    ties = 1;
  }
  for (size_t i = 0; i < got_p.size(); ++i)
    same = same && std::fabs(got_p[i] - want_p[i]) <= 1e-5f * want_p[i] + 1e-9f;
  char what[160];
  std::snprintf(what, sizeof(what), "B%lld M%lld T%lld H%lld %s %s%s", (long long)B, (long long)M,
                (long long)T, (long long)H, dtype_name(c.dtype), c.top_k ? "top-k" : "top-p",
                ties ? " (a rounding tie decided)" : "");
  CHECK(finish("token_select", what, st, same));

  // token_pack of the selection into a sequence with a prefix row per image, and back.
  if (B == 0) return;
  std::vector<int64_t> offsets(static_cast<size_t>(B));
  int64_t N = 0;
  for (int64_t b = 0; b < B; ++b) offsets[size_t(b)] = N + 1, N += 1 + got_cnt[size_t(b)] + 1;
  const auto base = random_values(size_t(N * H), c.dtype);
  TokenPackParams k;
  k.B = B, k.M_max = M, k.K = M, k.H = H, k.N = N, k.dtype = c.dtype;
  std::vector<uint8_t> want_out = nan_bytes(size_t(N * H), c.dtype);
  k.tokens = tokens.data(), k.indices = got_idx.data(), k.counts = got_cnt.data();
  k.row_offsets = offsets.data(), k.base = base.data(), k.out = want_out.data();
  token_pack_cpu(k);
  Dev<uint8_t> dbase(base), dout(nan_bytes(size_t(N * H), c.dtype));
  Dev<int64_t> doff(offsets);
  k.tokens = dtok.p, k.indices = didx.p, k.counts = dcnt.p, k.row_offsets = doff.p;
  k.base = dbase.p, k.out = dout.p;
  LaunchStatus pst = token_pack_cuda(k, nullptr);
  const auto packed = dout.host();
  CHECK(finish("token_pack", what, pst, packed == want_out));

  TokenPackBackwardParams g;
  g.B = B, g.M_max = M, g.K = M, g.H = H, g.N = N, g.dtype = c.dtype;
  std::vector<uint8_t> want_gt = nan_bytes(size_t(B * M * H), c.dtype);
  std::vector<uint8_t> want_gb = nan_bytes(size_t(N * H), c.dtype);
  g.grad_out = want_out.data(), g.indices = got_idx.data(), g.counts = got_cnt.data();
  g.row_offsets = offsets.data(), g.grad_tokens = want_gt.data(), g.grad_base = want_gb.data();
  token_pack_backward_cpu(g);
  Dev<uint8_t> dgt(nan_bytes(size_t(B * M * H), c.dtype)), dgb(nan_bytes(size_t(N * H), c.dtype));
  g.grad_out = dout.p, g.indices = didx.p, g.counts = dcnt.p, g.row_offsets = doff.p;
  g.grad_tokens = dgt.p, g.grad_base = dgb.p;
  pst = token_pack_backward_cuda(g, nullptr);
  const bool gsame = dgt.host() == want_gt && dgb.host() == want_gb;
  CHECK(finish("token_pack_backward", what, pst, gsame));
}

// token_pack over more images than grid.y's 65535: the launcher caps the grid and each
// block loops over the images beyond it.
void token_pack_many_images() {
  const int64_t B = 65537, M = 3, H = 4, K = 2;
  std::vector<int64_t> idx(static_cast<size_t>(B * K)), cnt(static_cast<size_t>(B)),
      off(static_cast<size_t>(B));
  int64_t N = 0;
  for (int64_t b = 0; b < B; ++b) {
    cnt[size_t(b)] = b % 3 == 1 ? 1 : 2;
    idx[size_t(b * K)] = b % M, idx[size_t(b * K + 1)] = (b + 1) % M;
    off[size_t(b)] = N, N += cnt[size_t(b)];
  }
  const auto tokens = random_values(size_t(B * M * H), DType::F32);
  const auto base = random_values(size_t(N * H), DType::F32);
  TokenPackParams k;
  k.B = B, k.M_max = M, k.K = K, k.H = H, k.N = N, k.dtype = DType::F32;
  std::vector<uint8_t> want = nan_bytes(size_t(N * H), DType::F32);
  k.tokens = tokens.data(), k.indices = idx.data(), k.counts = cnt.data();
  k.row_offsets = off.data();
  k.base = base.data(), k.out = want.data();
  token_pack_cpu(k);
  Dev<uint8_t> dtok(tokens), dbase(base), dout(nan_bytes(size_t(N * H), DType::F32));
  Dev<int64_t> didx(idx), dcnt(cnt), doff(off);
  k.tokens = dtok.p, k.indices = didx.p, k.counts = dcnt.p, k.row_offsets = doff.p;
  k.base = dbase.p, k.out = dout.p;
  const LaunchStatus st = token_pack_cuda(k, nullptr);
  CHECK(finish("token_pack", "B65537 (grid.y split)", st, dout.host() == want));
}

void token_select_cases() {
  token_pack_many_images();
  for (const auto& c : cases::select_cases()) token_select_case(c);
  for (const auto& c : cases::select_cases_large()) token_select_case(c);
}

}  // namespace

int main(int argc, char** argv) {
  const std::string op = argc > 1 ? argv[1] : "";
  if (op == "tile_resize") {
    tile_resize_cases();
  } else if (op == "query_attention") {
    query_attention_cases();
  } else if (op == "token_select") {
    token_select_cases();
  } else {
    std::fprintf(stderr, "usage: test_emu_kernels tile_resize|query_attention|token_select\n");
    return 2;
  }
  std::printf("%s: %d cases, %d findings\n", op.c_str(), g_cases, g_findings);
  TEST_MAIN_END();
}
