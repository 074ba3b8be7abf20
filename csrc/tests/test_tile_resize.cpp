// test_tile_resize.cpp: the CPU kernel of tile_resize (banded, windowed, fused) against a
// plain whole-image implementation of the same Pillow rules: resize the full image with
// two full passes (in the order the plan's pass-order flags say), paste it on a black canvas,
// cut tiles, normalise each value. Every case runs in all four combinations of the flags.
// Outputs are poisoned twice with different values, so an element the kernel never writes
// fails.
// (Exactness against Pillow itself is tests/test_tile_resize.py.)
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "slime/tile_resize.h"
#include "test_util.h"

using namespace slime;

namespace {

using Image = std::vector<uint8_t>;  // [H][W][3]

// One full pass along x (horizontal) or y (vertical) of a [H][W][3] image.
Image pass(const Image& in, int W, int H, int out_size, bool horizontal, ResizeFilter f) {
  const int in_size = horizontal ? W : H;
  if (in_size == out_size) return in;
  const ResampleAxis ax = resample_axis(in_size, out_size, f);
  const int OW = horizontal ? out_size : W, OH = horizontal ? H : out_size;
  Image out(static_cast<size_t>(OW) * OH * 3);
  std::vector<int32_t> k(ax.ksize);
  for (int o = 0; o < out_size; ++o) {
    int32_t first;
    const int32_t n = resample_coeffs(ax, in_size, o, f, &first, k.data());
    const int lines = horizontal ? H : W;
    for (int l = 0; l < lines; ++l)
      for (int ch = 0; ch < 3; ++ch) {
        int32_t acc = kResampleRound;
        for (int t = 0; t < n; ++t) {
          const int x = horizontal ? first + t : l, y = horizontal ? l : first + t;
          acc += in[(static_cast<size_t>(y) * W + x) * 3 + ch] * k[t];
        }
        const int x = horizontal ? o : l, y = horizontal ? l : o;
        out[(static_cast<size_t>(y) * OW + x) * 3 + ch] = resample_clip8(acc);
      }
  }
  return out;
}

Image resize(const Image& img, int W, int H, int nw, int nh, ResizeFilter f, bool vfirst) {
  if (vfirst)
    return pass(pass(img, W, H, nh, false, f), W, nh, nw, true, f);
  return pass(pass(img, W, H, nw, true, f), nw, H, nh, false, f);
}

// Crops of one image as uint8 [n][3][S][S].
std::vector<uint8_t> reference(const Image& img, int W, int H, const int32_t* plan, int S,
                               ResizeFilter f) {
  std::vector<uint8_t> out;
  auto emit = [&](const Image& src, int SW, int SH, int x0, int y0) {
    for (int ch = 0; ch < 3; ++ch)
      for (int r = 0; r < S; ++r)
        for (int c = 0; c < S; ++c) {
          const int x = c + x0, y = r + y0;
          const bool in = x >= 0 && x < SW && y >= 0 && y < SH;
          out.push_back(in ? src[(static_cast<size_t>(y) * SW + x) * 3 + ch] : 0);
        }
  };
  if (plan[kPlanGlobal]) emit(resize(img, W, H, S, S, f, plan[kPlanGlobalVFirst]), S, S, 0, 0);
  if (plan[kPlanGridW] > 0) {
    const int nw = plan[kPlanNewW], nh = plan[kPlanNewH];
    const Image r = resize(img, W, H, nw, nh, f, plan[kPlanTilesVFirst]);
    for (int ty = 0; ty < plan[kPlanGridH]; ++ty)
      for (int tx = 0; tx < plan[kPlanGridW]; ++tx)
        emit(r, nw, nh, tx * S - plan[kPlanOffX], ty * S - plan[kPlanOffY]);
  }
  return out;
}

// SliME's resize-and-pad for a grid.
void fit(int W, int H, int gw, int gh, int S, int32_t* plan) {
  const int TW = gw * S, TH = gh * S;
  int nw, nh;
  if (static_cast<double>(TW) / W < static_cast<double>(TH) / H) {
    nw = TW;
    nh = std::min(static_cast<int>(std::ceil(H * (static_cast<double>(TW) / W))), TH);
  } else {
    nh = TH;
    nw = std::min(static_cast<int>(std::ceil(W * (static_cast<double>(TH) / H))), TW);
  }
  const int32_t p[kPlanFields] = {gw, gh, nw, nh, (TW - nw) / 2, (TH - nh) / 2, 1, 0, 0};
  std::memcpy(plan, p, sizeof(p));
}

}  // namespace

int main() {
  std::mt19937 rng(12345);
  struct Case { int W, H, gw, gh; };
  // {48, 200}: the global view keeps the width (no horizontal pass); {200, 48}: the height.
  const Case cases[] = {{1, 1, 1, 2},    {37, 23, 2, 1},   {64, 48, 2, 2}, {5, 700, 1, 3},
                        {300, 2, 3, 1},  {48, 48, 1, 1},   {90, 31, 0, 0}, {48, 200, 1, 3},
                        {200, 48, 3, 1}, {150, 130, 2, 2}, {29, 301, 1, 2}};
  const int S = 48;
  for (int order = 0; order < 8; ++order) {
    // Bits 0 and 1: global view / tiles vertical-first; bit 2: the filter.
    const ResizeFilter f = order & 4 ? ResizeFilter::Bilinear : ResizeFilter::Bicubic;
    std::vector<Image> imgs;
    std::vector<const uint8_t*> ptrs;
    std::vector<int32_t> sizes, plans;
    std::vector<uint8_t> expect;
    for (const Case& c : cases) {
      Image img(static_cast<size_t>(c.W) * c.H * 3);
      for (auto& v : img) v = static_cast<uint8_t>(rng() & 0xff);
      imgs.push_back(std::move(img));
      sizes.push_back(c.H);
      sizes.push_back(c.W);
      int32_t plan[kPlanFields] = {0, 0, 0, 0, 0, 0, 1, 0, 0};
      if (c.gw) fit(c.W, c.H, c.gw, c.gh, S, plan);
      plan[kPlanGlobalVFirst] = order & 1;
      plan[kPlanTilesVFirst] = (order >> 1) & 1;
      plans.insert(plans.end(), plan, plan + kPlanFields);
    }
    for (size_t i = 0; i < imgs.size(); ++i) {
      ptrs.push_back(imgs[i].data());
      const auto r = reference(imgs[i], cases[i].W, cases[i].H, &plans[i * kPlanFields], S, f);
      expect.insert(expect.end(), r.begin(), r.end());
    }
    TileResizeParams p;
    p.num_images = static_cast<int32_t>(imgs.size());
    p.images = ptrs.data();
    p.sizes = sizes.data();
    p.plans = plans.data();
    p.tile = S;
    p.filter = f;
    p.total_crops = static_cast<int64_t>(expect.size()) / (3 * S * S);
    const float mean[3] = {0.48145466f, 0.4578275f, 0.40821073f};
    const float stdev[3] = {0.26862954f, 0.26130258f, 0.27577711f};
    std::memcpy(p.mean, mean, sizeof(mean));
    std::memcpy(p.stdev, stdev, sizeof(stdev));
    int32_t bad = 0;
    CHECK(tile_resize_validate(p, &bad) == nullptr);

    // uint8, poisoned with 0x00 then 0xff.
    std::vector<uint8_t> out(expect.size());
    for (uint8_t poison : {uint8_t{0}, uint8_t{0xff}}) {
      std::fill(out.begin(), out.end(), poison);
      p.out = out.data();
      p.out_dtype = DType::U8;
      tile_resize_cpu(p);
      size_t diff = 0;
      for (size_t i = 0; i < out.size(); ++i) diff += out[i] != expect[i];
      CHECK(diff == 0);
    }
    // float32 (NaN poison) and bf16/fp16: the formula in float32, rounded once.
    std::vector<float> f32(expect.size(), std::nanf(""));
    p.out = f32.data();
    p.out_dtype = DType::F32;
    tile_resize_cpu(p);
    std::vector<uint16_t> h16(expect.size(), 0x7fff);
    const int64_t plane = static_cast<int64_t>(S) * S;
    size_t bad_f32 = 0, bad_16 = 0;
    for (size_t i = 0; i < expect.size(); ++i) {
      const int ch = static_cast<int>((i / plane) % 3);
      const float want = clip_normalize(expect[i], mean[ch], stdev[ch]);
      bad_f32 += !(f32[i] == want);
    }
    for (DType t : {DType::BF16, DType::F16}) {
      std::fill(h16.begin(), h16.end(), 0x7fff);
      p.out = h16.data();
      p.out_dtype = t;
      tile_resize_cpu(p);
      for (size_t i = 0; i < expect.size(); ++i) {
        const int ch = static_cast<int>((i / plane) % 3);
        const float want = clip_normalize(expect[i], mean[ch], stdev[ch]);
        bad_16 += h16[i] != (t == DType::BF16 ? float_to_bf16_bits(want) : float_to_f16_bits(want));
      }
    }
    CHECK(bad_f32 == 0);
    CHECK(bad_16 == 0);
  }

  // Known coefficients, worked by hand from Pillow's rules: 4 -> 2 bilinear, output 0 has
  // centre 1.0 and support 2, window [0, 3), triangle weights .75 .75 .25, normalised to
  // 3/7 3/7 1/7, times 2^22 and rounded.
  {
    const ResampleAxis ax = resample_axis(4, 2, ResizeFilter::Bilinear);
    int32_t k[8], first;
    const int32_t n = resample_coeffs(ax, 4, 0, ResizeFilter::Bilinear, &first, k);
    CHECK(first == 0 && n == 3);
    CHECK(k[0] == 1797559 && k[1] == 1797559 && k[2] == 599186);
  }
  CHECK(resample_clip8(-5) == 0);
  CHECK(resample_clip8((255 << kResamplePrecisionBits) + kResampleRound) == 255);
  CHECK(resample_clip8(300 << kResamplePrecisionBits) == 255);
  CHECK(resample_fixed(-0.25) == -(1 << 20));

  // Invalid plans are named.
  {
    const uint8_t px[3] = {1, 2, 3};
    const uint8_t* ptr = px;
    const int32_t sizes[2] = {1, 1};
    int32_t plan[kPlanFields] = {1, 1, 49, 48, 0, 0, 1, 0, 0};
    TileResizeParams p;
    p.num_images = 1;
    p.images = &ptr;
    p.sizes = sizes;
    p.plans = plan;
    p.tile = 48;
    p.total_crops = 2;
    int32_t bad = -1;
    CHECK(tile_resize_validate(p, &bad) != nullptr && bad == 0);
    plan[kPlanNewW] = 48;
    CHECK(tile_resize_validate(p, &bad) == nullptr);
    plan[kPlanTilesVFirst] = 2;  // pass-order flags are 0 or 1
    CHECK(tile_resize_validate(p, &bad) != nullptr && bad == 0);
    plan[kPlanTilesVFirst] = 1;
    plan[kPlanGlobalVFirst] = -1;
    CHECK(tile_resize_validate(p, &bad) != nullptr && bad == 0);
  }
  TEST_MAIN_END();
}
