// tile_resize.cu: CUDA kernel of the fused SliME slicing op: every crop of every image of a
// batch (global view + padded tiles), Pillow-exact resize, CLIP normalisation, CHW output, in
// one launch. Same algorithm and the same shared math (slime/tile_resize.h) as the CPU kernel.
//
// One block per (crop, band of R output rows). The band's source window is filtered
// horizontally, 32 output columns at a time, into shared memory as uint8 (Pillow rounds
// between the passes), then vertically from shared memory straight into the output. No
// intermediate image ever goes to device memory; the source is read through the cache.
//
// Check: python -m pytest -q tests/test_tile_resize.py (runs on CUDA when a GPU is present)
// Bench: python -m bench --only tile_resize --device cuda
#include <algorithm>

#include "cuda_utils.cuh"
#include "slime/tile_resize.h"

namespace slime {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxSmem = 48 * 1024;  // default dynamic shared memory, no opt-in needed

struct DevTable {
  int32_t out, ksize;
  bool identity;
  const int32_t* first;
  const int32_t* count;
  const int32_t* k;
};

__device__ __forceinline__ DevTable dev_table(const int32_t* L, int32_t tables_at, int32_t t) {
  const int32_t* f = L + tables_at + t * kTableFields;
  return DevTable{f[kTableOut], f[kTableKSize], f[kTableIdentity] != 0, L + f[kTableFirst],
                  L + f[kTableCount], L + f[kTableCoeffs]};
}

// Horizontal filter of one source row at resized column rx, channel ch.
__device__ __forceinline__ uint8_t hfilter(const uint8_t* row, const DevTable& h, int32_t rx,
                                           int ch) {
  if (h.identity) return row[rx * 3 + ch];
  const int32_t* k = h.k + static_cast<int64_t>(rx) * h.ksize;
  const int32_t x0 = h.first[rx], n = h.count[rx];
  int32_t acc = kResampleRound;
  for (int32_t t = 0; t < n; ++t) acc += static_cast<int32_t>(row[(x0 + t) * 3 + ch]) * k[t];
  return resample_clip8(acc);
}

template <typename T>
__device__ __forceinline__ T out_value(uint8_t v, int ch, const float* mean, const float* stdev) {
  // Selects rather than indexes: a runtime index into the by-value kernel arguments puts
  // them in local memory (a 64 B stack frame per thread, ptxas -v).
  const float m = ch == 0 ? mean[0] : (ch == 1 ? mean[1] : mean[2]);
  const float s = ch == 0 ? stdev[0] : (ch == 1 ? stdev[1] : stdev[2]);
  return cuda::from_float<T>(clip_normalize(v, m, s));
}
template <>
__device__ __forceinline__ uint8_t out_value<uint8_t>(uint8_t v, int, const float*, const float*) {
  return v;
}

struct KernelArgs {
  const int32_t* layout;
  const uint8_t* const* images;
  int32_t tables_at;
  int32_t tile;
  int32_t band_rows;  // R
  int32_t chunk;      // output columns per shared-memory chunk
  int32_t bands;      // ceil(S / R)
  float mean[3];
  float stdev[3];
};

template <typename T>
__global__ void __launch_bounds__(kThreads) tile_resize_kernel(KernelArgs a, T* __restrict__ out) {
  extern __shared__ uint8_t smem[];
  const int32_t ci = blockIdx.x / a.bands;
  const int32_t band = blockIdx.x % a.bands;
  const int32_t S = a.tile;
  const int32_t r0 = band * a.band_rows;
  const int32_t r1 = min(S, r0 + a.band_rows);
  const int32_t* cr = a.layout + ci * kCropFields;
  const uint8_t* img = a.images[cr[kCropImage]];
  const int32_t W = cr[kCropW];
  const DevTable h = dev_table(a.layout, a.tables_at, cr[kCropHTable]);
  const DevTable v = dev_table(a.layout, a.tables_at, cr[kCropVTable]);
  const int32_t x0 = cr[kCropX0], y0 = cr[kCropY0];
  const int64_t plane = static_cast<int64_t>(S) * S;
  T* o = out + static_cast<int64_t>(ci) * 3 * plane;

  const int32_t ca = min(max(-x0, 0), S), cb = min(max(h.out - x0, 0), S);
  const int32_t ra = min(max(-y0, r0), r1), rb = min(max(v.out - y0, ra), r1);
  const bool empty = ca >= cb || ra >= rb;

  // The black canvas: every element of the band outside [ra, rb) x [ca, cb).
  const int32_t band_elems = (r1 - r0) * S;
  for (int32_t i = threadIdx.x; i < 3 * band_elems; i += blockDim.x) {
    const int ch = i / band_elems;
    const int32_t r = r0 + (i % band_elems) / S, c = i % S;
    if (empty || r < ra || r >= rb || c < ca || c >= cb)
      o[ch * plane + static_cast<int64_t>(r) * S + c] = out_value<T>(0, ch, a.mean, a.stdev);
  }
  if (empty) return;

  if (cr[kCropVFirst]) {
    // Vertical pass first (the plan says so: Pillow's order depends on its version), each
    // rounded to uint8 as Pillow's intermediate image is; each thread computes its outputs
    // directly, recomputing the vertical taps of every horizontal tap.
    const int32_t cols = cb - ca, n = (rb - ra) * cols * 3;
    for (int32_t i = threadIdx.x; i < n; i += blockDim.x) {
      const int ch = i / ((rb - ra) * cols);
      const int32_t r = ra + (i / cols) % (rb - ra), c = ca + i % cols;
      const int32_t ry = r + y0, rx = c + x0;
      const int32_t xf = h.identity ? rx : h.first[rx];
      const int32_t xn = h.identity ? 1 : h.count[rx];
      int32_t hacc = kResampleRound;
      uint8_t val = 0;
      for (int32_t t = 0; t < xn; ++t) {
        const int32_t x = xf + t;
        uint8_t vv;
        if (v.identity) {
          vv = img[(static_cast<int64_t>(ry) * W + x) * 3 + ch];
        } else {
          const int32_t* kv = v.k + static_cast<int64_t>(ry) * v.ksize;
          int32_t vacc = kResampleRound;
          for (int32_t u = 0; u < v.count[ry]; ++u)
            vacc += static_cast<int32_t>(
                        img[(static_cast<int64_t>(v.first[ry] + u) * W + x) * 3 + ch]) * kv[u];
          vv = resample_clip8(vacc);
        }
        if (h.identity) {
          val = vv;
        } else {
          hacc += static_cast<int32_t>(vv) * h.k[static_cast<int64_t>(rx) * h.ksize + t];
        }
      }
      if (!h.identity) val = resample_clip8(hacc);
      o[ch * plane + static_cast<int64_t>(r) * S + c] = out_value<T>(val, ch, a.mean, a.stdev);
    }
    return;
  }

  const int32_t ry0 = ra + y0, ry1 = rb + y0;
  const int32_t src_lo = v.identity ? ry0 : v.first[ry0];
  const int32_t src_hi = v.identity ? ry1 : v.first[ry1 - 1] + v.count[ry1 - 1];
  const int32_t nrows = src_hi - src_lo;
  for (int32_t c0 = ca; c0 < cb; c0 += a.chunk) {
    const int32_t cw = min(a.chunk, cb - c0);
    const int32_t w3 = cw * 3;
    // Horizontal pass of the window rows into shared memory, [row][col * 3 + ch].
    for (int32_t i = threadIdx.x; i < nrows * w3; i += blockDim.x) {
      const int32_t y = src_lo + i / w3, j = i % w3;
      const uint8_t* row = img + static_cast<int64_t>(y) * W * 3;
      smem[i] = hfilter(row, h, c0 + x0 + j / 3, j % 3);
    }
    __syncthreads();
    // Vertical pass from shared memory into the output, columns fastest for coalescing.
    const int32_t nr = rb - ra;
    for (int32_t i = threadIdx.x; i < 3 * nr * cw; i += blockDim.x) {
      const int ch = i / (nr * cw);
      const int32_t r = ra + (i / cw) % nr, c = c0 + i % cw;
      const int32_t ry = r + y0;
      const int32_t j = (c - c0) * 3 + ch;
      uint8_t val;
      if (v.identity) {
        val = smem[(ry - src_lo) * w3 + j];
      } else {
        const int32_t* kv = v.k + static_cast<int64_t>(ry) * v.ksize;
        const uint8_t* col = smem + (v.first[ry] - src_lo) * w3 + j;
        int32_t acc = kResampleRound;
        for (int32_t t = 0; t < v.count[ry]; ++t) acc += static_cast<int32_t>(col[t * w3]) * kv[t];
        val = resample_clip8(acc);
      }
      o[ch * plane + static_cast<int64_t>(r) * S + c] = out_value<T>(val, ch, a.mean, a.stdev);
    }
    __syncthreads();
  }
}

// Largest source window (rows) any band of R output rows reads, over all crops.
int32_t max_window_rows(const TileResizeLayout& L, int32_t S, int32_t R) {
  int32_t best = 1;
  for (int32_t ci = 0; ci < L.num_crops; ++ci) {
    const int32_t* cr = L.crop(ci);
    if (cr[kCropVFirst]) continue;
    const int32_t* vt = L.table(cr[kCropVTable]);
    const int32_t vout = vt[kTableOut];
    const int32_t* first = L.data.data() + vt[kTableFirst];
    const int32_t* count = L.data.data() + vt[kTableCount];
    const int32_t y0 = cr[kCropY0];
    for (int32_t r0 = 0; r0 < S; r0 += R) {
      const int32_t ry0 = std::max(r0 + y0, 0), ry1 = std::min(std::min(r0 + R, S) + y0, vout);
      if (ry0 >= ry1) continue;
      const int32_t rows = vt[kTableIdentity] ? ry1 - ry0
                                              : first[ry1 - 1] + count[ry1 - 1] - first[ry0];
      best = std::max(best, rows);
    }
  }
  return best;
}

}  // namespace

LaunchStatus tile_resize_cuda(const TileResizeParams& p, const TileResizeLayout& layout,
                              const int32_t* layout_dev, const uint8_t* const* images_dev,
                              cudaStream_t stream) {
  if (p.total_crops == 0 || p.num_images == 0) return nullptr;
  const int32_t S = p.tile;
  // Tallest bands whose window keeps at least 16 columns per shared-memory chunk (a band's
  // window rows overlap its neighbours', so taller bands recompute less).
  int32_t R = 16, rows = 1, chunk = 1;
  for (;; R /= 2) {
    rows = max_window_rows(layout, S, R);
    chunk = std::min(32, kMaxSmem / (rows * 3));
    if (chunk >= 16 || R == 1) break;
  }
  if (chunk < 1) return "slime::tile_resize: a filter window does not fit in shared memory";
  KernelArgs a;
  a.layout = layout_dev;
  a.images = images_dev;
  a.tables_at = layout.tables_offset();
  a.tile = S;
  a.band_rows = R;
  a.chunk = chunk;
  a.bands = (S + R - 1) / R;
  for (int c = 0; c < 3; ++c) {
    a.mean[c] = p.mean[c];
    a.stdev[c] = p.stdev[c];
  }
  const int64_t blocks = p.total_crops * a.bands;
  if (blocks > 0x7fffffff) return "slime::tile_resize: batch too large for one launch";
  const size_t smem = static_cast<size_t>(rows) * chunk * 3;
  if (p.out_dtype == DType::U8) {
    SLIME_LAUNCH(static_cast<unsigned>(blocks), kThreads, smem, stream,
                 tile_resize_kernel<uint8_t>)(a, static_cast<uint8_t*>(p.out));
    return cuda::launch_status();
  }
  return SLIME_CUDA_FLOAT_SWITCH(p.out_dtype, scalar_t, [&] {
    SLIME_LAUNCH(static_cast<unsigned>(blocks), kThreads, smem, stream,
                 tile_resize_kernel<scalar_t>)(a, static_cast<scalar_t*>(p.out));
    return cuda::launch_status();
  });
}

}  // namespace slime
