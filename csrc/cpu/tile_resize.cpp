// tile_resize.cpp: CPU kernel of the fused SliME slicing op (global view + padded tiles,
// Pillow-exact resize, CLIP normalisation, CHW output), plus the host-side layout builder
// the CUDA launcher shares.
//
// Work split: every crop is cut into bands of output rows; OpenMP hands (crop, band) tasks to
// threads. A task runs Pillow's two passes on just the source window its rows and columns
// need: the horizontal pass over 8 source rows at a time (the rows are transposed into a
// small [x][channel][8 rows] block so each tap is one vector multiply-add across the rows),
// rounded to uint8 as Pillow does, then the vertical pass over a contiguous row of
// (column, channel) values, clipped, normalised through a 256-entry table per channel and
// stored straight into the CHW output. Resizes the plan marks vertical-first (Pillow's pass
// order depends on its version) filter 8 resized rows vertically straight from the source,
// then horizontally with the same transposed-block code. Padding rows and columns are written
// without reading the source.
//
// Check: python -m pytest -q tests/test_tile_resize.py (Pillow, zero differing pixels) and
//        ctest --test-dir build/cpu (csrc/tests/test_tile_resize.cpp).
// Bench: python -m bench --only tile_resize
#include "slime/tile_resize.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <utility>

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__SSE2__)
#include <immintrin.h>
#endif

namespace slime {

namespace {

// Normalised value of every uint8 per channel, in the output's storage type: the value the
// formula gives in float32, so the table is exact by construction.
struct OutputTable {
  float f32[3][256];
  uint16_t u16[3][256];
  uint8_t u8[3][256];  // identity: the uint8 output is the resized pixels
};

OutputTable make_output_table(const TileResizeParams& p) {
  OutputTable t;
  for (int c = 0; c < 3; ++c)
    for (int v = 0; v < 256; ++v) {
      const float x = clip_normalize(static_cast<uint8_t>(v), p.mean[c], p.stdev[c]);
      t.f32[c][v] = x;
      t.u8[c][v] = static_cast<uint8_t>(v);
      t.u16[c][v] = p.out_dtype == DType::BF16 ? float_to_bf16_bits(x) : float_to_f16_bits(x);
    }
  return t;
}

// Writes row r of the three planes of a crop: the black canvas outside [ca, cb), the
// table value of line[(c - ca) * 3 + ch] inside (line == nullptr: all canvas).
template <typename T>
inline void store_row_t(T* crop, const T (*lut)[256], int64_t plane, int32_t S, int32_t r,
                        const uint8_t* line, int32_t ca, int32_t cb) {
  if (!line) ca = cb = S;
  for (int ch = 0; ch < 3; ++ch) {
    T* o = crop + ch * plane + static_cast<int64_t>(r) * S;
    const T* t = lut[ch];
    const T pad = t[0];
    for (int32_t c = 0; c < ca; ++c) o[c] = pad;
    const uint8_t* in = line ? line + ch - 3 * ca : nullptr;
    for (int32_t c = ca; c < cb; ++c) o[c] = t[in[3 * c]];
    for (int32_t c = cb; c < S; ++c) o[c] = pad;
  }
}

inline void store_row(const TileResizeParams& p, const OutputTable& tab, int32_t ci, int32_t r,
                      const uint8_t* line, int32_t ca, int32_t cb) {
  const int32_t S = p.tile;
  const int64_t plane = static_cast<int64_t>(S) * S;
  const int64_t off = static_cast<int64_t>(ci) * 3 * plane;
  switch (p.out_dtype) {
    case DType::U8:
      store_row_t(static_cast<uint8_t*>(p.out) + off, tab.u8, plane, S, r, line, ca, cb);
      break;
    case DType::F32:
      store_row_t(static_cast<float*>(p.out) + off, tab.f32, plane, S, r, line, ca, cb);
      break;
    default:
      store_row_t(static_cast<uint16_t*>(p.out) + off, tab.u16, plane, S, r, line, ca, cb);
      break;
  }
}

// Per-thread scratch, grown as needed and reused across tasks.
struct Scratch {
  std::vector<uint8_t> block;  // [x][ch][8] the 8 source rows being filtered horizontally
  std::vector<uint8_t> rows;   // [row][col*3 + ch] first pass result (Pillow's imTemp)
  std::vector<uint8_t> line;   // [col*3 + ch] finished output rows (8 in vertical-first order)
};

struct Table {
  int32_t in, out, ksize;
  bool identity;
  const int32_t* first;
  const int32_t* count;
  const int32_t* k;
};

Table table_at(const TileResizeLayout& L, int32_t t) {
  const int32_t* f = L.table(t);
  return Table{f[kTableIn], f[kTableOut], f[kTableKSize], f[kTableIdentity] != 0,
               L.data.data() + f[kTableFirst], L.data.data() + f[kTableCount],
               L.data.data() + f[kTableCoeffs]};
}

// blk[i * 8 + l] = src[l][i] for i < n: 8 source rows side by side, so that one tap of the
// horizontal filter is one multiply-add across the rows.
inline void transpose8(const uint8_t* const* src, int32_t n, uint8_t* blk) {
  int32_t i = 0;
#if defined(__SSE2__)
  for (; i + 16 <= n; i += 16) {
    __m128i r[8];
    for (int l = 0; l < 8; ++l)
      r[l] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src[l] + i));
    // Bytes of row pairs, then 16-bit pairs of pairs, then 32-bit quads: byte j of every row
    // ends up in 8 consecutive bytes.
    __m128i a[8], b[8];
    for (int q = 0; q < 4; ++q) {
      a[2 * q] = _mm_unpacklo_epi8(r[2 * q], r[2 * q + 1]);
      a[2 * q + 1] = _mm_unpackhi_epi8(r[2 * q], r[2 * q + 1]);
    }
    for (int q = 0; q < 2; ++q)
      for (int hlf = 0; hlf < 2; ++hlf) {
        b[4 * q + 2 * hlf] = _mm_unpacklo_epi16(a[4 * q + hlf], a[4 * q + 2 + hlf]);
        b[4 * q + 2 * hlf + 1] = _mm_unpackhi_epi16(a[4 * q + hlf], a[4 * q + 2 + hlf]);
      }
    // b[0..3]: rows 0-3, bytes 0-3 / 4-7 / 8-11 / 12-15; b[4..7]: rows 4-7, same bytes.
    uint8_t* o = blk + i * 8;
    for (int g = 0; g < 4; ++g) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(o + 32 * g), _mm_unpacklo_epi32(b[g], b[4 + g]));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(o + 32 * g + 16),
                       _mm_unpackhi_epi32(b[g], b[4 + g]));
    }
  }
#endif
  for (; i < n; ++i)
    for (int l = 0; l < 8; ++l) blk[i * 8 + l] = src[l][i];
}

// One output column of 8 rows: sum_t px[t][ch][l] * k[t], rounded and clipped as Pillow
// does, stored as 3 bytes (r, g, b) at dst + l * stride for the first nl rows. Unless `last`,
// each store writes 4 bytes; the extra one is the next column's first byte, written again
// right after (columns go left to right).
inline void filter8(const uint8_t* px, const int32_t* k, int32_t n, uint8_t* dst, int64_t stride,
                    int nl, bool last) {
#if defined(__AVX2__)
  __m256i a0 = _mm256_set1_epi32(kResampleRound), a1 = a0, a2 = a0;
  for (int32_t t = 0; t < n; ++t) {
    const __m256i kt = _mm256_set1_epi32(k[t]);
    const uint8_t* pt = px + t * 24;
    const __m256i p0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(pt)));
    const __m256i p1 =
        _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(pt + 8)));
    const __m256i p2 =
        _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(pt + 16)));
    a0 = _mm256_add_epi32(a0, _mm256_mullo_epi32(p0, kt));
    a1 = _mm256_add_epi32(a1, _mm256_mullo_epi32(p1, kt));
    a2 = _mm256_add_epi32(a2, _mm256_mullo_epi32(p2, kt));
  }
  // >> 22 then saturating packs: clamp to int16, then to [0, 255], i.e. resample_clip8.
  a0 = _mm256_srai_epi32(a0, kResamplePrecisionBits);
  a1 = _mm256_srai_epi32(a1, kResamplePrecisionBits);
  a2 = _mm256_srai_epi32(a2, kResamplePrecisionBits);
  // Per 128-bit half (rows 0-3, rows 4-7): bytes [ch0 x4, ch1 x4, ch2 x4, ch2 x4].
  const __m256i b = _mm256_packus_epi16(_mm256_packs_epi32(a0, a1), _mm256_packs_epi32(a2, a2));
  const __m256i rgb = _mm256_shuffle_epi8(
      b, _mm256_setr_epi8(0, 4, 8, -1, 1, 5, 9, -1, 2, 6, 10, -1, 3, 7, 11, -1,  //
                          0, 4, 8, -1, 1, 5, 9, -1, 2, 6, 10, -1, 3, 7, 11, -1));
  alignas(32) uint32_t px4[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(px4), rgb);
  if (last) {
    for (int l = 0; l < nl; ++l) std::memcpy(dst + l * stride, &px4[l], 3);
  } else {
    for (int l = 0; l < nl; ++l) std::memcpy(dst + l * stride, &px4[l], 4);
  }
#else
  (void)last;
  int32_t acc[24];
  for (int i = 0; i < 24; ++i) acc[i] = kResampleRound;
  for (int32_t t = 0; t < n; ++t)
    for (int i = 0; i < 24; ++i) acc[i] += static_cast<int32_t>(px[t * 24 + i]) * k[t];
  for (int l = 0; l < nl; ++l)
    for (int ch = 0; ch < 3; ++ch) dst[l * stride + ch] = resample_clip8(acc[ch * 8 + l]);
#endif
}

// out[j] = clip8(round + sum_t rows[t * stride + j] * k[t]) for j < n: one output row of the
// vertical pass. 32 values at a time stay in registers across all taps.
inline void vertical_row(const uint8_t* rows, int64_t stride, int32_t n, const int32_t* k,
                         int32_t taps, uint8_t* out) {
  int32_t j = 0;
#if defined(__AVX2__)
  for (; j + 32 <= n; j += 32) {
    __m256i a[4];
    for (int q = 0; q < 4; ++q) a[q] = _mm256_set1_epi32(kResampleRound);
    const uint8_t* r = rows + j;
    for (int32_t t = 0; t < taps; ++t, r += stride) {
      const __m256i kt = _mm256_set1_epi32(k[t]);
      for (int q = 0; q < 4; ++q) {
        const __m256i px =
            _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(r + 8 * q)));
        a[q] = _mm256_add_epi32(a[q], _mm256_mullo_epi32(px, kt));
      }
    }
    for (int q = 0; q < 4; ++q) a[q] = _mm256_srai_epi32(a[q], kResamplePrecisionBits);
    // Saturating packs clip to [0, 255] (resample_clip8); they interleave the 128-bit
    // halves, which the final permute puts back in order.
    const __m256i w = _mm256_packus_epi16(_mm256_packs_epi32(a[0], a[1]),
                                          _mm256_packs_epi32(a[2], a[3]));
    const __m256i o = _mm256_permutevar8x32_epi32(w, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + j), o);
  }
#endif
  for (; j < n; ++j) {
    int32_t acc = kResampleRound;
    for (int32_t t = 0; t < taps; ++t) acc += static_cast<int32_t>(rows[t * stride + j]) * k[t];
    out[j] = resample_clip8(acc);
  }
}

// Horizontal pass of source rows [y0, y1), resized columns [rx0, rx1), into s.rows.
void horizontal_pass(const uint8_t* img, int32_t W, const Table& h, int32_t y0, int32_t y1,
                     int32_t rx0, int32_t rx1, Scratch& s) {
  const int32_t ncols = rx1 - rx0;
  const int64_t stride = static_cast<int64_t>(ncols) * 3;
  s.rows.resize(static_cast<size_t>(y1 - y0) * stride);
  if (h.identity) {
    // Pillow skips a pass whose size does not change: the pixels are copied.
    for (int32_t y = y0; y < y1; ++y)
      std::memcpy(s.rows.data() + (y - y0) * stride,
                  img + (static_cast<int64_t>(y) * W + rx0) * 3, stride);
    return;
  }
  const int32_t x_lo = h.first[rx0];
  const int32_t x_hi = h.first[rx1 - 1] + h.count[rx1 - 1];
  const int32_t nx = x_hi - x_lo;
  s.block.resize(static_cast<size_t>(nx) * 24);
  uint8_t* blk = s.block.data();
  for (int32_t yb = y0; yb < y1; yb += 8) {
    // Rows past y1 repeat the last one; their results are dropped.
    const uint8_t* src[8];
    for (int l = 0; l < 8; ++l)
      src[l] = img + (static_cast<int64_t>(std::min(yb + l, y1 - 1)) * W + x_lo) * 3;
    transpose8(src, nx * 3, blk);
    const int nl = std::min(8, y1 - yb);
    uint8_t* dst = s.rows.data() + static_cast<int64_t>(yb - y0) * stride;
    for (int32_t rx = rx0; rx < rx1; ++rx)
      filter8(blk + (h.first[rx] - x_lo) * 24, h.k + static_cast<int64_t>(rx) * h.ksize,
              h.count[rx], dst + (rx - rx0) * 3, stride, nl, rx == rx1 - 1);
  }
}

// The other order, vertical pass first (what the plan says; Pillow 13 takes it whenever the
// height shrinks more than twice as much as the width): resized rows [ry0, ry1), 8 at a time,
// are filtered vertically straight from the source over the columns the crop needs and
// rounded to uint8 (Pillow's intermediate image), then horizontally with the same 8-row
// machinery as horizontal_pass. Each resized row is computed once, so no window overlap.
template <typename Emit>
void vertical_first_rows(const uint8_t* img, int32_t W, const Table& h, const Table& v,
                         int32_t ry0, int32_t ry1, int32_t rx0, int32_t rx1, Scratch& s,
                         Emit emit) {
  const int32_t x_lo = h.identity ? rx0 : h.first[rx0];
  const int32_t x_hi = h.identity ? rx1 : h.first[rx1 - 1] + h.count[rx1 - 1];
  const int32_t nx3 = (x_hi - x_lo) * 3;
  const int32_t n3 = (rx1 - rx0) * 3;
  const int64_t W3 = static_cast<int64_t>(W) * 3;
  s.rows.resize(static_cast<size_t>(8) * nx3);
  s.block.resize(static_cast<size_t>(8) * nx3);
  s.line.resize(static_cast<size_t>(8) * n3);
  for (int32_t yb = ry0; yb < ry1; yb += 8) {
    const int nl = std::min(8, ry1 - yb);
    // Rows past ry1 repeat the last one; their results are dropped.
    const uint8_t* src[8];
    for (int l = 0; l < 8; ++l) {
      const int32_t ry = yb + l;
      if (l >= nl) {
        src[l] = src[nl - 1];
      } else if (v.identity) {
        src[l] = img + (static_cast<int64_t>(ry) * W + x_lo) * 3;
      } else {
        uint8_t* dst = s.rows.data() + static_cast<int64_t>(l) * nx3;
        vertical_row(img + v.first[ry] * W3 + static_cast<int64_t>(x_lo) * 3, W3, nx3,
                     v.k + static_cast<int64_t>(ry) * v.ksize, v.count[ry], dst);
        src[l] = dst;
      }
    }
    if (h.identity) {
      for (int l = 0; l < nl; ++l) emit(yb + l, src[l]);
      continue;
    }
    uint8_t* blk = s.block.data();
    transpose8(src, nx3, blk);
    for (int32_t rx = rx0; rx < rx1; ++rx)
      filter8(blk + (h.first[rx] - x_lo) * 24, h.k + static_cast<int64_t>(rx) * h.ksize,
              h.count[rx], s.line.data() + (rx - rx0) * 3, n3, nl, rx == rx1 - 1);
    for (int l = 0; l < nl; ++l) emit(yb + l, s.line.data() + static_cast<int64_t>(l) * n3);
  }
}

// One band [r0, r1) of output rows of crop `ci`.
void run_task(const TileResizeParams& p, const TileResizeLayout& L, const OutputTable& tab,
              int32_t ci, int32_t r0, int32_t r1, Scratch& s) {
  const int32_t S = p.tile;
  const int32_t* cr = L.crop(ci);
  const int32_t img_i = cr[kCropImage];
  const int32_t W = p.sizes[img_i * 2 + 1];
  const Table h = table_at(L, cr[kCropHTable]);
  const Table v = table_at(L, cr[kCropVTable]);
  const int32_t x0 = cr[kCropX0], y0 = cr[kCropY0];

  // Output columns [ca, cb) and rows [ra, rb) that land on the resized image; the rest is
  // the black canvas.
  const int32_t ca = std::clamp(-x0, 0, S), cb = std::clamp(h.out - x0, 0, S);
  const int32_t ra = std::clamp(-y0, r0, r1), rb = std::clamp(v.out - y0, ra, r1);

  if (ca >= cb || ra >= rb) {
    for (int32_t r = r0; r < r1; ++r) store_row(p, tab, ci, r, nullptr, ca, cb);
    return;
  }
  for (int32_t r = r0; r < ra; ++r) store_row(p, tab, ci, r, nullptr, ca, cb);
  for (int32_t r = rb; r < r1; ++r) store_row(p, tab, ci, r, nullptr, ca, cb);

  if (cr[kCropVFirst]) {
    vertical_first_rows(p.images[img_i], W, h, v, ra + y0, rb + y0, ca + x0, cb + x0, s,
                        [&](int32_t ry, const uint8_t* line) {
                          store_row(p, tab, ci, ry - y0, line, ca, cb);
                        });
    return;
  }

  const int32_t ry0 = ra + y0, ry1 = rb + y0;  // resized rows of this band
  const int32_t src_lo = v.identity ? ry0 : v.first[ry0];
  const int32_t src_hi = v.identity ? ry1 : v.first[ry1 - 1] + v.count[ry1 - 1];
  horizontal_pass(p.images[img_i], W, h, src_lo, src_hi, ca + x0, cb + x0, s);

  const int32_t n3 = (cb - ca) * 3;
  s.line.resize(n3);
  for (int32_t r = ra; r < rb; ++r) {
    const int32_t ry = r + y0;
    const uint8_t* line;
    if (v.identity) {
      line = s.rows.data() + static_cast<int64_t>(ry - src_lo) * n3;
    } else {
      const int32_t* k = v.k + static_cast<int64_t>(ry) * v.ksize;
      const uint8_t* base = s.rows.data() + static_cast<int64_t>(v.first[ry] - src_lo) * n3;
      vertical_row(base, n3, n3, k, v.count[ry], s.line.data());
      const uint8_t* out = s.line.data();
      line = out;
    }
    store_row(p, tab, ci, r, line, ca, cb);
  }
}

}  // namespace

const char* tile_resize_validate(const TileResizeParams& p, int32_t* bad_image) {
  *bad_image = -1;
  if (p.tile < kTileResizeMinTile || p.tile > kTileResizeMaxTile)
    return "tile size out of range";
  if (p.filter != ResizeFilter::Bicubic && p.filter != ResizeFilter::Bilinear)
    return "filter must be BILINEAR (2) or BICUBIC (3)";
  int64_t crops = 0;
  for (int32_t i = 0; i < p.num_images; ++i) {
    *bad_image = i;
    const int32_t H = p.sizes[i * 2], W = p.sizes[i * 2 + 1];
    const int32_t* pl = p.plans + static_cast<int64_t>(i) * kPlanFields;
    if (H < 1 || W < 1) return "image is empty";
    if (H > kTileResizeMaxSide || W > kTileResizeMaxSide) return "image side above the maximum";
    const int32_t gw = pl[kPlanGridW], gh = pl[kPlanGridH];
    if (gw < 0 || gh < 0 || gw > 64 || gh > 64 || (gw == 0) != (gh == 0))
      return "plan grid must be 0x0 or between 1x1 and 64x64";
    if (pl[kPlanGlobal] != 0 && pl[kPlanGlobal] != 1) return "plan global flag must be 0 or 1";
    if ((pl[kPlanGlobalVFirst] != 0 && pl[kPlanGlobalVFirst] != 1) ||
        (pl[kPlanTilesVFirst] != 0 && pl[kPlanTilesVFirst] != 1))
      return "plan pass-order flags must be 0 or 1";
    if (gw > 0) {
      const int32_t TW = gw * p.tile, TH = gh * p.tile;
      const int32_t nw = pl[kPlanNewW], nh = pl[kPlanNewH];
      if (nw < 1 || nh < 1 || nw > TW || nh > TH)
        return "plan resized size must be at least 1 and fit in the grid canvas";
      if (pl[kPlanOffX] < 0 || pl[kPlanOffY] < 0 ||
          static_cast<int64_t>(pl[kPlanOffX]) + nw > TW ||
          static_cast<int64_t>(pl[kPlanOffY]) + nh > TH)
        return "plan paste offset puts the resized image outside the canvas";
      // The widest window must fit the kernels' scratch (see the CUDA launcher).
      if (W / nw > kTileResizeMaxSide / kTileResizeMinTile ||
          H / nh > kTileResizeMaxSide / kTileResizeMinTile)
        return "plan resized size shrinks the image too much";
    }
    crops += tile_resize_plan_crops(pl);
  }
  *bad_image = -1;
  if (crops != p.total_crops) return "total_crops does not match the plans";
  return nullptr;
}

TileResizeLayout tile_resize_build_layout(const TileResizeParams& p) {
  TileResizeLayout L;
  L.num_crops = static_cast<int32_t>(p.total_crops);
  // Tables are keyed by (in, out): a batch of same-size images shares them.
  std::map<std::pair<int32_t, int32_t>, int32_t> index;
  std::vector<std::pair<int32_t, int32_t>> keys;
  auto table_for = [&](int32_t in, int32_t out) {
    auto it = index.find({in, out});
    if (it != index.end()) return it->second;
    const int32_t t = static_cast<int32_t>(keys.size());
    index[{in, out}] = t;
    keys.push_back({in, out});
    return t;
  };
  std::vector<int32_t> crops;
  crops.reserve(static_cast<size_t>(p.total_crops) * kCropFields);
  for (int32_t i = 0; i < p.num_images; ++i) {
    const int32_t H = p.sizes[i * 2], W = p.sizes[i * 2 + 1];
    const int32_t* pl = p.plans + static_cast<int64_t>(i) * kPlanFields;
    if (pl[kPlanGlobal]) {
      const int32_t ht = table_for(W, p.tile), vt = table_for(H, p.tile);
      crops.insert(crops.end(), {i, ht, vt, 0, 0, pl[kPlanGlobalVFirst], W, H});
    }
    if (pl[kPlanGridW] > 0) {
      const int32_t ht = table_for(W, pl[kPlanNewW]), vt = table_for(H, pl[kPlanNewH]);
      const int32_t vfirst = pl[kPlanTilesVFirst];
      for (int32_t ty = 0; ty < pl[kPlanGridH]; ++ty)
        for (int32_t tx = 0; tx < pl[kPlanGridW]; ++tx)
          crops.insert(crops.end(), {i, ht, vt, tx * p.tile - pl[kPlanOffX],
                                     ty * p.tile - pl[kPlanOffY], vfirst, W, H});
    }
  }
  L.num_tables = static_cast<int32_t>(keys.size());
  L.data = std::move(crops);
  const size_t tables_at = L.data.size();
  L.data.resize(tables_at + static_cast<size_t>(L.num_tables) * kTableFields);
  for (int32_t t = 0; t < L.num_tables; ++t) {
    const int32_t in = keys[t].first, out = keys[t].second;
    const ResampleAxis ax = resample_axis(in, out, p.filter);
    const size_t first_at = L.data.size();
    const size_t count_at = first_at + out;
    const size_t k_at = count_at + out;
    L.data.resize(k_at + static_cast<size_t>(out) * ax.ksize, 0);
    int32_t* f = L.data.data() + tables_at + t * kTableFields;
    f[kTableIn] = in;
    f[kTableOut] = out;
    f[kTableKSize] = ax.ksize;
    f[kTableIdentity] = in == out ? 1 : 0;
    f[kTableFirst] = static_cast<int32_t>(first_at);
    f[kTableCount] = static_cast<int32_t>(count_at);
    f[kTableCoeffs] = static_cast<int32_t>(k_at);
    L.max_ksize = std::max(L.max_ksize, ax.ksize);
    int32_t* first = L.data.data() + first_at;
    int32_t* count = L.data.data() + count_at;
    int32_t* k = L.data.data() + k_at;
    for (int32_t o = 0; o < out; ++o)
      count[o] = resample_coeffs(ax, in, o, p.filter, first + o,
                                 k + static_cast<int64_t>(o) * ax.ksize);
  }
  return L;
}

void tile_resize_cpu(const TileResizeParams& p) {
  if (p.total_crops == 0 || p.num_images == 0) return;
  const TileResizeLayout L = tile_resize_build_layout(p);
  const OutputTable tab = make_output_table(p);
  const int32_t S = p.tile;
#ifdef _OPENMP
  const int threads = omp_get_max_threads();
#else
  const int threads = 1;
#endif
  // Bands of about kBandRows output rows keep a band's horizontal-pass rows in L2 between
  // the two passes (whole crops of a large image do not fit); more bands when needed for
  // every thread to stay busy on a single image. The source rows a band's window shares with
  // its neighbours are recomputed, a few percent at this height.
  constexpr int32_t kBandRows = 48;
  const int64_t want = 8 * static_cast<int64_t>(threads);
  const int64_t for_threads = (want + p.total_crops - 1) / p.total_crops;
  const int32_t bands = static_cast<int32_t>(std::clamp<int64_t>(
      std::max<int64_t>(for_threads, (S + kBandRows - 1) / kBandRows), 1, std::max(1, S / 16)));
  const int64_t tasks = p.total_crops * bands;
#pragma omp parallel
  {
    // Kept by each (pooled) OpenMP thread across calls: a few MB at most, and fresh buffers
    // every call would cost a page fault per 4 KB touched.
    static thread_local Scratch s;
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < tasks; ++t) {
      const int32_t ci = static_cast<int32_t>(t / bands), b = static_cast<int32_t>(t % bands);
      const int32_t r0 = static_cast<int32_t>(static_cast<int64_t>(S) * b / bands);
      const int32_t r1 = static_cast<int32_t>(static_cast<int64_t>(S) * (b + 1) / bands);
      run_task(p, L, tab, ci, r0, r1, s);
    }
  }
}

}  // namespace slime
