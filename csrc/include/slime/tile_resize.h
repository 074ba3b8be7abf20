// slime/tile_resize.h: SliME's image slicing in one pass (global view + padded tiles,
// Pillow-exact resampling, CLIP normalisation), framework-free API.
//
// A batch of uint8 HWC RGB images and one plan per image (see PlanField) produce every crop
// of every image, [total_crops, 3, S, S], in the order [global] + tiles (row-major) per
// image. The resampling reproduces Pillow's Image.resize for 8-bit images bit for bit:
// separable convolution, filter support scaled by the downscale factor (antialiasing),
// coefficients computed in double, normalised, rounded to 22 fractional bits; two passes,
// each rounded and clipped to uint8, horizontal then vertical unless the plan says vertical
// first. Which order Pillow takes depends on its version (12.x and 13.x differ), so the
// caller decides it per resize and passes it as data (kPlanGlobalVFirst, kPlanTilesVFirst;
// slime_core.ops.tile_resize.pillow_vertical_first computes it).
//
// The math that decides those bits (windows, weights, fixed-point coefficients, rounding)
// is written once below as SLIME_HD functions; the CPU kernel, the CUDA kernel and the
// host-side table builder all call them.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "slime/common.h"

#if defined(SLIME_WITH_CUDA) || defined(__CUDACC__)
#include <cuda_runtime_api.h>
#endif

namespace slime {

// Pillow's Image.Resampling numbers, so Python can pass Image.BICUBIC straight through.
enum class ResizeFilter : int32_t { Bilinear = 2, Bicubic = 3 };

// Largest image side accepted: keeps every index and every fixed-point sum inside int32 and
// the widest filter window bounded (see tile_resize_max_window_rows).
constexpr int32_t kTileResizeMaxSide = 16384;
constexpr int32_t kTileResizeMinTile = 16;
constexpr int32_t kTileResizeMaxTile = 1024;

// One plan per image, int32 [num_images, kPlanFields]:
enum PlanField : int32_t {
  kPlanGridW = 0,   // tiles across (0 with kPlanGridH 0: no local tiles)
  kPlanGridH = 1,   // tiles down
  kPlanNewW = 2,    // the image is resized to (new_w, new_h) ...
  kPlanNewH = 3,
  kPlanOffX = 4,    // ... and pasted at (off_x, off_y) on a black (grid_w*S, grid_h*S) canvas
  kPlanOffY = 5,
  kPlanGlobal = 6,  // 1: a global view (plain resize to S x S) comes first
  kPlanGlobalVFirst = 7,  // 1: the global view's resize runs the vertical pass first
  kPlanTilesVFirst = 8,   // 1: the (new_w, new_h) resize runs the vertical pass first
  kPlanFields = 9
};

// ---- Pillow's resampling rules (shared by every backend) ---------------------------------

constexpr int kResamplePrecisionBits = 32 - 8 - 2;

// Pillow's build does not fuse a*b+c into one FMA (x86-64 baseline has none), but our build
// (-march=native, nvcc's default --fmad) would, which changes the last bit of a window centre
// or weight now and then. These products are therefore rounded on their own.
SLIME_HD double rn_mul(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  double r = a * b;
#if defined(__x86_64__) || defined(__i386__)
  asm("" : "+x"(r));
#elif defined(__aarch64__)
  asm("" : "+w"(r));
#else
  volatile double v = r;
  r = v;
#endif
  return r;
#endif
}

SLIME_HD double resample_support(ResizeFilter f) { return f == ResizeFilter::Bicubic ? 2.0 : 1.0; }

SLIME_HD double resample_weight(ResizeFilter f, double x) {
  if (x < 0.0) x = -x;
  if (f == ResizeFilter::Bilinear) return x < 1.0 ? 1.0 - x : 0.0;
  // Keys' cubic with a = -0.5, evaluated in Pillow's operation order.
  const double a = -0.5;
  if (x < 1.0) return rn_mul(rn_mul(rn_mul(a + 2.0, x) - (a + 3.0), x), x) + 1.0;
  if (x < 2.0) return rn_mul(rn_mul(rn_mul(x - 5.0, x) + 8.0, x) - 4.0, a);
  return 0.0;
}

// Geometry of resizing an axis of in_size pixels to out_size.
struct ResampleAxis {
  double scale;    // in / out
  double support;  // filter support in input pixels (grows when downscaling: antialiasing)
  double inv;      // 1 / max(scale, 1): maps input distance to filter argument
  int32_t ksize;   // upper bound of taps per output pixel
};

SLIME_HD ResampleAxis resample_axis(int32_t in_size, int32_t out_size, ResizeFilter f) {
  ResampleAxis a;
  a.scale = static_cast<double>(in_size) / out_size;
  const double filterscale = a.scale < 1.0 ? 1.0 : a.scale;
  a.support = rn_mul(resample_support(f), filterscale);
  a.inv = 1.0 / filterscale;
  a.ksize = static_cast<int32_t>(ceil(a.support)) * 2 + 1;
  return a;
}

// The input window [first, first + count) read by output pixel o, and its centre.
SLIME_HD void resample_window(const ResampleAxis& a, int32_t in_size, int32_t o, int32_t* first,
                              int32_t* count, double* center) {
  const double c = rn_mul(o + 0.5, a.scale);
  int32_t lo = static_cast<int32_t>(c - a.support + 0.5);  // truncation, as Pillow rounds
  if (lo < 0) lo = 0;
  int32_t hi = static_cast<int32_t>(c + a.support + 0.5);
  if (hi > in_size) hi = in_size;
  *first = lo;
  *count = hi - lo;
  *center = c;
}

// Pillow's double weight -> 22-bit fixed point, rounded half away from zero.
SLIME_HD int32_t resample_fixed(double w) {
  const double one = static_cast<double>(1 << kResamplePrecisionBits);
  return w < 0 ? static_cast<int32_t>(-0.5 + rn_mul(w, one))
               : static_cast<int32_t>(0.5 + rn_mul(w, one));
}

// Fixed-point coefficients of output pixel o into k[0, count) (k has room for a.ksize);
// returns count and sets *first. Two passes over the filter (sum, then normalised values)
// instead of a double scratch array, so it also runs in a CUDA thread.
SLIME_HD int32_t resample_coeffs(const ResampleAxis& a, int32_t in_size, int32_t o,
                                 ResizeFilter f, int32_t* first, int32_t* k) {
  int32_t lo, n;
  double center;
  resample_window(a, in_size, o, &lo, &n, &center);
  double ww = 0.0;
  for (int32_t x = 0; x < n; ++x)
    ww += resample_weight(f, rn_mul(static_cast<double>(x + lo) - center + 0.5, a.inv));
  for (int32_t x = 0; x < n; ++x) {
    double w = resample_weight(f, rn_mul(static_cast<double>(x + lo) - center + 0.5, a.inv));
    if (ww != 0.0) w /= ww;
    k[x] = resample_fixed(w);
  }
  *first = lo;
  return n;
}

// Accumulators start at one half (round to nearest) ...
constexpr int32_t kResampleRound = 1 << (kResamplePrecisionBits - 1);

// ... and end shifted back to 8 bits, clipped to [0, 255].
SLIME_HD uint8_t resample_clip8(int32_t acc) {
  const int32_t v = acc >> kResamplePrecisionBits;  // arithmetic shift, as Pillow's lookup
  return static_cast<uint8_t>(v < 0 ? 0 : (v > 255 ? 255 : v));
}

// CLIPImageProcessor's arithmetic in float32: rescale (x / 255) then (x - mean) / std.
SLIME_HD float clip_normalize(uint8_t v, float mean, float stdev) {
  return (static_cast<float>(v) / 255.0f - mean) / stdev;
}

// ---- The batch layout shared by the backends ---------------------------------------------
// Built on the host from the plans (tile_resize_build_layout): one int32 buffer holding the
// crops, the resampling tables they use (shared between images of equal size) and the
// tables' windows and coefficients. The CUDA path uploads it once per call.

enum CropField : int32_t {
  kCropImage = 0,   // index of the source image
  kCropHTable = 1,  // table index of the horizontal resize (W -> resized width)
  kCropVTable = 2,  // table index of the vertical resize (H -> resized height)
  kCropX0 = 3,      // resized-image column of the crop's column 0 (may be negative: padding)
  kCropY0 = 4,      // resized-image row of the crop's row 0
  kCropVFirst = 5,  // 1: vertical pass first (the plan's kPlanGlobalVFirst / kPlanTilesVFirst)
  kCropW = 6,       // source image width and height
  kCropH = 7,
  kCropFields = 8
};

enum TableField : int32_t {
  kTableIn = 0,      // input size
  kTableOut = 1,     // output size; valid resized coordinates are [0, out)
  kTableKSize = 2,   // coefficients stored per output pixel
  kTableIdentity = 3,  // 1: in == out, Pillow skips this pass (copy)
  kTableFirst = 4,   // offset of int32 first[out]
  kTableCount = 5,   // offset of int32 count[out]
  kTableCoeffs = 6,  // offset of int32 coeffs[out][ksize]
  kTableFields = 7
};

struct TileResizeLayout {
  std::vector<int32_t> data;  // crops, then tables, then the pool the tables point into
  int32_t num_crops = 0;
  int32_t num_tables = 0;
  int32_t max_ksize = 0;
  int32_t tables_offset() const { return num_crops * kCropFields; }
  const int32_t* crop(int32_t i) const { return data.data() + i * kCropFields; }
  const int32_t* table(int32_t t) const {
    return data.data() + tables_offset() + t * kTableFields;
  }
};

struct TileResizeParams {
  int32_t num_images = 0;
  const uint8_t* const* images = nullptr;  // [num_images] each [H, W, 3] contiguous
  const int32_t* sizes = nullptr;          // [num_images, 2] (H, W)
  const int32_t* plans = nullptr;          // [num_images, kPlanFields]
  int32_t tile = 336;                      // S
  ResizeFilter filter = ResizeFilter::Bicubic;
  float mean[3] = {0.f, 0.f, 0.f};
  float stdev[3] = {1.f, 1.f, 1.f};
  void* out = nullptr;        // [total_crops, 3, S, S]
  DType out_dtype = DType::F32;  // F32/F16/BF16 normalised, U8: the resized pixels as they are
  int64_t total_crops = 0;
};

// Crops of one plan: 1 global (if any) + grid_w * grid_h tiles.
inline int64_t tile_resize_plan_crops(const int32_t* plan) {
  return (plan[kPlanGlobal] ? 1 : 0) + static_cast<int64_t>(plan[kPlanGridW]) * plan[kPlanGridH];
}

// Returns nullptr when the plans are consistent with the images and the tile size, else a
// sentence saying which image and what is wrong (the torch glue raises it).
const char* tile_resize_validate(const TileResizeParams& p, int32_t* bad_image);

// Builds the batch layout (validate first).
TileResizeLayout tile_resize_build_layout(const TileResizeParams& p);

void tile_resize_cpu(const TileResizeParams& p);

#if defined(SLIME_WITH_CUDA) || defined(__CUDACC__)
// `images` and `out` are device pointers; `p.sizes`/`p.plans` host pointers. `layout_dev` is
// the layout's data already on the device (int32, layout.data.size() elements) and
// `images_dev` the image pointer table on the device.
LaunchStatus tile_resize_cuda(const TileResizeParams& p, const TileResizeLayout& layout,
                              const int32_t* layout_dev, const uint8_t* const* images_dev,
                              cudaStream_t stream);
#endif

}  // namespace slime
