// tile_resize_glue.h: argument checks and parameter packing shared by the CPU and CUDA
// registrations of slime::tile_resize (csrc/torch/tile_resize.cpp, tile_resize_cuda.cpp).
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <vector>

#include "slime/tile_resize.h"
#include "torch/glue.h"

namespace slime {
namespace glue {

struct TileResizeArgs {
  TileResizeParams params;
  std::vector<const uint8_t*> images;  // host copies of the data pointers
  std::vector<int32_t> sizes;          // [num_images, 2] (H, W)
  at::Tensor plans;                    // [num_images, kPlanFields] int32, CPU, contiguous
  at::Tensor out;                      // [total_crops, 3, S, S]
};

// images: each [H, W, 3] uint8 contiguous on `device`; plans: [N, 9] int32 on the CPU;
// out: nullptr (allocate) or [total_crops, 3, S, S] contiguous on `device`, of out_dtype.
inline TileResizeArgs tile_resize_prepare(const std::vector<at::Tensor>& images,
                                          const at::Tensor& plans, int64_t total_crops,
                                          int64_t tile_size, int64_t filter,
                                          const std::vector<double>& mean,
                                          const std::vector<double>& stdev,
                                          c10::ScalarType out_dtype, c10::Device device,
                                          const at::Tensor* out = nullptr) {
  TileResizeArgs a;
  const int64_t n = static_cast<int64_t>(images.size());
  TORCH_CHECK_VALUE(plans.device().is_cpu(), "slime::tile_resize: plans must be on the CPU");
  check_dtype(plans, "plans", {c10::ScalarType::Int});
  check_dim(plans, "plans", 2);
  TORCH_CHECK_VALUE(plans.size(0) == n && plans.size(1) == kPlanFields,
                    "slime::tile_resize: plans must have shape [", n, ", ", int(kPlanFields),
                    "], got ", plans.sizes());
  TORCH_CHECK_VALUE(mean.size() == 3 && stdev.size() == 3,
                    "slime::tile_resize: mean and std must have 3 values");
  for (int c = 0; c < 3; ++c)
    TORCH_CHECK_VALUE(stdev[c] != 0.0, "slime::tile_resize: std must be nonzero");
  TORCH_CHECK_TYPE(out_dtype == c10::ScalarType::Float || out_dtype == c10::ScalarType::Half ||
                       out_dtype == c10::ScalarType::BFloat16 ||
                       out_dtype == c10::ScalarType::Byte,
                   "slime::tile_resize: out_dtype must be float32, float16, bfloat16 or uint8");
  a.plans = plans.contiguous();
  a.images.resize(n);
  a.sizes.resize(2 * n);
  for (int64_t i = 0; i < n; ++i) {
    const at::Tensor& im = images[i];
    TORCH_CHECK_TYPE(im.scalar_type() == c10::ScalarType::Byte, "slime::tile_resize: images[",
                     i, "] must be uint8, got ", im.scalar_type());
    TORCH_CHECK_VALUE(im.dim() == 3 && im.size(2) == 3, "slime::tile_resize: images[", i,
                      "] must be [H, W, 3], got shape ", im.sizes());
    TORCH_CHECK_VALUE(im.device() == device, "slime::tile_resize: images[", i, "] is on ",
                      im.device(), " but images[0] is on ", device);
    TORCH_CHECK_VALUE(im.is_contiguous(), "slime::tile_resize: images[", i,
                      "] must be contiguous");
    TORCH_CHECK_VALUE(im.size(0) >= 1 && im.size(1) >= 1 && im.size(0) <= kTileResizeMaxSide &&
                          im.size(1) <= kTileResizeMaxSide,
                      "slime::tile_resize: images[", i, "] has size ", im.size(1), "x",
                      im.size(0), "; each side must be in [1, ", kTileResizeMaxSide, "]");
    a.images[i] = im.data_ptr<uint8_t>();
    a.sizes[2 * i] = static_cast<int32_t>(im.size(0));
    a.sizes[2 * i + 1] = static_cast<int32_t>(im.size(1));
  }
  TileResizeParams& p = a.params;
  p.num_images = static_cast<int32_t>(n);
  p.images = a.images.data();
  p.sizes = a.sizes.data();
  p.plans = a.plans.data_ptr<int32_t>();
  p.tile = static_cast<int32_t>(tile_size);
  p.filter = static_cast<ResizeFilter>(filter);
  for (int c = 0; c < 3; ++c) {
    p.mean[c] = static_cast<float>(mean[c]);
    p.stdev[c] = static_cast<float>(stdev[c]);
  }
  p.out_dtype = to_dtype(out_dtype);
  p.total_crops = total_crops;
  TORCH_CHECK_VALUE(tile_size >= kTileResizeMinTile && tile_size <= kTileResizeMaxTile,
                    "slime::tile_resize: tile_size must be in [", kTileResizeMinTile, ", ",
                    kTileResizeMaxTile, "], got ", tile_size);
  int32_t bad = -1;
  if (const char* err = tile_resize_validate(p, &bad)) {
    if (bad >= 0) TORCH_CHECK_VALUE(false, "slime::tile_resize: images[", bad, "]: ", err);
    TORCH_CHECK_VALUE(false, "slime::tile_resize: ", err);
  }
  TORCH_CHECK_VALUE(total_crops >= 0 && total_crops <= (int64_t{1} << 31),
                    "slime::tile_resize: total_crops must be in [0, 2^31], got ", total_crops);
  if (out) {
    TORCH_CHECK_VALUE(out->device() == device, "slime::tile_resize: out is on ", out->device(),
                      " but the images are on ", device);
    TORCH_CHECK_VALUE(out->sizes() == at::IntArrayRef({total_crops, 3, tile_size, tile_size}),
                      "slime::tile_resize: out must have shape [", total_crops, ", 3, ",
                      tile_size, ", ", tile_size, "], got ", out->sizes());
    TORCH_CHECK_VALUE(out->is_contiguous(), "slime::tile_resize: out must be contiguous");
    a.out = *out;
  } else {
    a.out = at::empty({total_crops, 3, tile_size, tile_size},
                      at::TensorOptions().dtype(out_dtype).device(device));
  }
  p.out = a.out.data_ptr();
  return a;
}

}  // namespace glue
}  // namespace slime
