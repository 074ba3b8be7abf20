// tile_resize_cuda.cpp: CUDA registration of slime::tile_resize. The plans stay on the host
// (they decide the output size); the batch layout (crops + resampling tables) and the image
// pointer table go to the device in one upload each, then one kernel launch does the batch.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "torch/cuda_glue.h"
#include "torch/tile_resize_glue.h"

namespace {

// images: list of [H, W, 3] uint8 on one CUDA device; plans: [N, 9] int32 (CPU);
// out: nullptr or the caller's [total_crops, 3, S, S] buffer on that device.
at::Tensor run(const std::vector<at::Tensor>& images, const at::Tensor& plans,
               int64_t total_crops, int64_t tile_size, int64_t filter, c10::ArrayRef<double> mean,
               c10::ArrayRef<double> stdev, c10::ScalarType out_dtype, const at::Tensor* out) {
  const c10::Device device =
      !images.empty() ? images[0].device() : (out ? out->device() : plans.device());
  TORCH_CHECK_VALUE(device.is_cuda(), "slime::tile_resize (CUDA): images must be CUDA tensors");
  const c10::cuda::CUDAGuard guard(device);
  auto a = slime::glue::tile_resize_prepare(images, plans, total_crops, tile_size, filter,
                                            mean.vec(), stdev.vec(), out_dtype, device, out);
  if (total_crops == 0) return a.out;
  const slime::TileResizeLayout layout = slime::tile_resize_build_layout(a.params);
  const auto host_i32 = at::TensorOptions().dtype(at::kInt);
  at::Tensor layout_dev =
      at::from_blob(const_cast<int32_t*>(layout.data.data()),
                    {static_cast<int64_t>(layout.data.size())}, host_i32)
          .to(device);
  at::Tensor ptrs = at::empty({static_cast<int64_t>(images.size())},
                              at::TensorOptions().dtype(at::kLong));
  int64_t* pp = ptrs.data_ptr<int64_t>();
  for (size_t i = 0; i < images.size(); ++i)
    pp[i] = reinterpret_cast<int64_t>(a.images[i]);
  at::Tensor ptrs_dev = ptrs.to(device);
  slime::glue::check_launch(
      slime::tile_resize_cuda(a.params, layout, layout_dev.data_ptr<int32_t>(),
                              reinterpret_cast<const uint8_t* const*>(ptrs_dev.data_ptr<int64_t>()),
                              slime::glue::current_stream(a.out)),
      "tile_resize");
  return a.out;
}

at::Tensor tile_resize_cuda_impl(const std::vector<at::Tensor>& images, const at::Tensor& plans,
                                 int64_t total_crops, int64_t tile_size, int64_t filter,
                                 c10::ArrayRef<double> mean, c10::ArrayRef<double> stdev,
                                 c10::ScalarType out_dtype) {
  return run(images, plans, total_crops, tile_size, filter, mean, stdev, out_dtype, nullptr);
}

void tile_resize_out_cuda_impl(const std::vector<at::Tensor>& images, const at::Tensor& plans,
                               int64_t total_crops, int64_t tile_size, int64_t filter,
                               c10::ArrayRef<double> mean, c10::ArrayRef<double> stdev,
                               const at::Tensor& out) {
  run(images, plans, total_crops, tile_size, filter, mean, stdev, out.scalar_type(), &out);
}

}  // namespace

TORCH_LIBRARY_IMPL(slime, CUDA, m) {
  m.impl("tile_resize", &tile_resize_cuda_impl);
  m.impl("tile_resize_out", &tile_resize_out_cuda_impl);
}
