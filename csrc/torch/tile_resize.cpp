// tile_resize.cpp: schema and CPU registration of slime::tile_resize (the fused SliME
// slicing op; kernel in csrc/cpu/tile_resize.cpp, Python API in slime_core/ops/tile_resize.py).
#include <torch/library.h>

#include "torch/tile_resize_glue.h"

namespace {

// images: list of [H, W, 3] uint8; plans: [N, 9] int32 (CPU: geometry + pass-order flags,
// slime/tile_resize.h PlanField) -> [total_crops, 3, S, S]
at::Tensor tile_resize_cpu_impl(const std::vector<at::Tensor>& images, const at::Tensor& plans,
                                int64_t total_crops, int64_t tile_size, int64_t filter,
                                c10::ArrayRef<double> mean, c10::ArrayRef<double> stdev,
                                c10::ScalarType out_dtype) {
  auto a = slime::glue::tile_resize_prepare(images, plans, total_crops, tile_size, filter,
                                            mean.vec(), stdev.vec(), out_dtype,
                                            c10::Device(c10::kCPU));
  slime::tile_resize_cpu(a.params);
  return a.out;
}

// The same into a caller's buffer (e.g. pinned memory reused across batches: a fresh output
// costs a page fault per 4 KB on its first write).
void tile_resize_out_cpu_impl(const std::vector<at::Tensor>& images, const at::Tensor& plans,
                              int64_t total_crops, int64_t tile_size, int64_t filter,
                              c10::ArrayRef<double> mean, c10::ArrayRef<double> stdev,
                              const at::Tensor& out) {
  auto a = slime::glue::tile_resize_prepare(images, plans, total_crops, tile_size, filter,
                                            mean.vec(), stdev.vec(), out.scalar_type(),
                                            c10::Device(c10::kCPU), &out);
  slime::tile_resize_cpu(a.params);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(slime, m) {
  m.def(
      "tile_resize(Tensor[] images, Tensor plans, int total_crops, int tile_size, int filter, "
      "float[] mean, float[] std, ScalarType out_dtype) -> Tensor");
  m.def(
      "tile_resize_out(Tensor[] images, Tensor plans, int total_crops, int tile_size, "
      "int filter, float[] mean, float[] std, Tensor(a!) out) -> ()");
}

TORCH_LIBRARY_IMPL(slime, CPU, m) {
  m.impl("tile_resize", &tile_resize_cpu_impl);
  m.impl("tile_resize_out", &tile_resize_out_cpu_impl);
}
