// cases.h: the case grids shared by the C++ tests of the CPU kernels (test_*.cpp) and of the
// CUDA kernels on the CPU emulation (emu/test_emu_kernels.cpp), so each is written once.
// They include scripts/sanitize_cases.py's shapes (the GPU's compute-sanitizer run).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <string>
#include <vector>

#include "slime/common.h"
#include "slime/tile_resize.h"

namespace cases {

// ---- query_attention ----
struct AttnShape {
  int64_t batch, heads, lq, lk, d;
};

inline std::vector<AttnShape> attention_shapes() {
  return {{1, 1, 1, 1, 64},   {3, 2, 7, 70, 16},  {2, 1, 145, 65, 24}, {1, 2, 5, 129, 128},
          {2, 2, 0, 9, 8},    {0, 2, 4, 9, 8},    {2, 1, 4, 0, 8},     {3, 1, 9, 3, 5},
          {3, 2, 19, 77, 64},  // sanitize_cases.py
          {1, 1, 66, 33, 100}};  // d padded to 128, a second query tile
}

// ---- token_select ----
struct SelectCase {
  int64_t B, M, T, H;
  slime::DType dtype;
  bool top_k;
  double top_p;
  int64_t k;
  float prenorm;
  bool noise;
};

inline std::vector<SelectCase> select_cases() {
  using slime::DType;
  std::vector<SelectCase> v;
  for (DType dt : {DType::F32, DType::BF16, DType::F16}) {
    v.push_back({3, 37, 5, 64, dt, false, 0.9, 0, 0.5f, false});
    v.push_back({3, 37, 5, 67, dt, false, 0.6, 0, 0.0f, true});  // odd H: no 16-byte loads
    v.push_back({3, 144, 7, 300, dt, true, 1.0, 10, 0.0f, true});
    v.push_back({3, 5, 3, 16, dt, true, 1.0, 50, 0.0f, false});
    v.push_back({3, 11, 0, 16, dt, false, 0.35, 0, 0.0f, false});  // no text: uniform p
    v.push_back({2, 0, 4, 16, dt, false, 0.5, 0, 0.0f, false});    // no tokens
    v.push_back({1, 1, 1, 1, dt, false, 1.0, 0, 0.5f, false});
  }
  v.push_back({0, 4, 4, 16, DType::F32, false, 0.5, 0, 0.0f, false});  // empty batch
  // sanitize_cases.py: 3 images of up to 301 tokens, 9 text rows.
  v.push_back({3, 301, 9, 64, DType::BF16, false, 0.9, 0, 0.0f, false});
  v.push_back({3, 301, 9, 64, DType::F32, true, 1.0, 50, 0.0f, false});
  return v;
}

// The CUDA kernel's two sort paths: keys in shared memory above the 48 KiB default (opt-in),
// and in the global workspace past kTokenSelectSharedSortMax tokens.
inline std::vector<SelectCase> select_cases_large() {
  using slime::DType;
  return {{2, 6000, 3, 16, DType::F32, false, 0.5, 0, 0.5f, false},
          {2, 8200, 2, 8, DType::BF16, false, 0.3, 0, 0.0f, true}};
}

// M_b of image b: full, empty, about half, full...
inline std::vector<int64_t> select_counts(const SelectCase& c) {
  std::vector<int64_t> counts(static_cast<size_t>(c.B));
  for (int64_t b = 0; b < c.B; ++b)
    counts[static_cast<size_t>(b)] = std::min(c.M, b == 1 ? 0 : (b == 2 ? c.M / 2 + 1 : c.M));
  return counts;
}

// SliME's rule on given probabilities, written independently of the kernels: rank by
// (p desc, index asc), keep top-k or the top-p prefix plus one, ascending indices.
inline std::vector<int64_t> select_ref(const float* p, int64_t M, const SelectCase& c) {
  std::vector<int64_t> order(static_cast<size_t>(M));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return p[a] > p[b]; });
  int64_t keep = M;
  if (c.top_k) {
    keep = std::min(c.k, M);
  } else if (c.top_p < 1.0) {
    double s = 0.0;
    int64_t n = 0;
    while (n < M && (s += p[order[static_cast<size_t>(n)]]) <= c.top_p) ++n;
    keep = n < M ? n + 1 : M;
  }
  std::vector<int64_t> kept(order.begin(), order.begin() + keep);
  std::sort(kept.begin(), kept.end());
  return kept;
}

// ---- tile_resize ----
struct TileImage {
  int w, h;
  int grid_w, grid_h;  // 0, 0: global view only
};
struct TileBatch {
  std::string name;
  int tile;
  std::vector<TileImage> images;
};

inline std::vector<TileBatch> tile_resize_batches() {
  return {
      {"cpu-test", 48, {{1, 1, 1, 2}, {37, 23, 2, 1}, {64, 48, 2, 2}, {5, 700, 1, 3},
                        {300, 2, 3, 1}, {48, 48, 1, 1}, {90, 31, 0, 0}}},
      {"sanitize", 64, {{53, 37, 2, 1}, {500, 300, 2, 2}, {1, 1, 1, 1}, {90, 700, 1, 3}}},
      // a very tall narrow image (vertical pass first) and a tall window that makes the
      // launcher shrink its bands to fit shared memory
      {"tall", 32, {{3, 400, 1, 2}, {40, 3000, 1, 1}}},
  };
}

// Pillow 13's pass order: vertical first when the height shrinks by more than twice the
// width's shrink (slime_core.ops.tile_resize.pillow_vertical_first is the real rule).
inline int32_t pillow13_vertical_first(int in_w, int in_h, int out_w, int out_h) {
  return (in_h - out_h) > 0 && (in_h - out_h) > 2 * (in_w - out_w);
}

// A plan (kPlanFields values, unnamed fields 0): SliME's resize-and-pad onto the grid, and
// the global view. The pass-order flags follow Pillow 13's rule, or its opposite with
// flip_order (so a case list covers both orders of every resize).
inline std::vector<int32_t> tile_resize_plan(const TileImage& im, int S, bool flip_order = false) {
  std::vector<int32_t> plan(slime::kPlanFields, 0);
  plan[slime::kPlanGlobal] = 1;
  plan[slime::kPlanGlobalVFirst] = pillow13_vertical_first(im.w, im.h, S, S) != flip_order;
  if (im.grid_w == 0) return plan;
  const int TW = im.grid_w * S, TH = im.grid_h * S;
  int nw, nh;
  if (static_cast<double>(TW) / im.w < static_cast<double>(TH) / im.h) {
    nw = TW;
    nh = std::min(static_cast<int>(std::ceil(im.h * (static_cast<double>(TW) / im.w))), TH);
  } else {
    nh = TH;
    nw = std::min(static_cast<int>(std::ceil(im.w * (static_cast<double>(TH) / im.h))), TW);
  }
  plan[slime::kPlanGridW] = im.grid_w, plan[slime::kPlanGridH] = im.grid_h;
  plan[slime::kPlanNewW] = nw, plan[slime::kPlanNewH] = nh;
  plan[slime::kPlanOffX] = (TW - nw) / 2, plan[slime::kPlanOffY] = (TH - nh) / 2;
  plan[slime::kPlanTilesVFirst] = pillow13_vertical_first(im.w, im.h, nw, nh) != flip_order;
  return plan;
}

}  // namespace cases
