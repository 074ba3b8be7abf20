// token_select / token_pack CUDA registrations: device guard, current stream, workspace
// from the caching allocator, then the launchers in csrc/cuda/token_select.cu. The values
// of counts / indices / row_offsets cannot be checked here without a device sync: the
// kernels clamp counts to [0, M_max] and skip rows outside the arrays instead.
#include <ATen/ATen.h>

#include <optional>

#include "slime/token_select.h"
#include "torch/cuda_glue.h"
#include "torch/token_select_glue.h"

namespace slime {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> token_select_cuda_impl(
    const at::Tensor& tokens, const at::Tensor& token_counts, const at::Tensor& text,
    const at::Tensor& text_mask, const std::optional<at::Tensor>& noise,
    std::optional<double> top_p, std::optional<int64_t> top_k, double temperature,
    std::optional<double> prenorm_temperature) {
  TORCH_CHECK_VALUE(tokens.is_cuda(), "slime::token_select: CUDA kernel got ", tokens.device());
  const c10::cuda::CUDAGuard guard(tokens.device());
  glue::SelectCall c = glue::prepare_select(tokens, token_counts, text, text_mask, noise, top_p,
                                            top_k, temperature, prenorm_temperature);
  auto workspace = at::empty({static_cast<int64_t>(token_select_workspace_bytes(c.p))},
                             tokens.options().dtype(at::kByte));
  c.p.workspace = workspace.data_ptr();
  glue::check_launch(token_select_cuda(c.p, glue::current_stream(tokens)), "token_select");
  return {c.indices, c.counts, c.probs};
}

at::Tensor token_pack_cuda_impl(const at::Tensor& tokens, const at::Tensor& indices,
                                const at::Tensor& counts, const at::Tensor& row_offsets,
                                const at::Tensor& base) {
  TORCH_CHECK_VALUE(tokens.is_cuda(), "slime::token_pack: CUDA kernel got ", tokens.device());
  const c10::cuda::CUDAGuard guard(tokens.device());
  glue::PackCall c = glue::prepare_pack(tokens, indices, counts, row_offsets, base);
  glue::check_launch(token_pack_cuda(c.p, glue::current_stream(tokens)), "token_pack");
  return c.out;
}

std::tuple<at::Tensor, at::Tensor> token_pack_backward_cuda_impl(const at::Tensor& grad_out,
                                                                 const at::Tensor& indices,
                                                                 const at::Tensor& counts,
                                                                 const at::Tensor& row_offsets,
                                                                 int64_t num_tokens) {
  TORCH_CHECK_VALUE(grad_out.is_cuda(), "slime::token_pack_backward: CUDA kernel got ",
                    grad_out.device());
  const c10::cuda::CUDAGuard guard(grad_out.device());
  glue::PackBackwardCall c =
      glue::prepare_pack_backward(grad_out, indices, counts, row_offsets, num_tokens);
  glue::check_launch(token_pack_backward_cuda(c.p, glue::current_stream(grad_out)),
                     "token_pack_backward");
  return {c.grad_tokens, c.grad_base};
}

}  // namespace
}  // namespace slime

TORCH_LIBRARY_IMPL(slime, CUDA, m) {
  m.impl("token_select", &slime::token_select_cuda_impl);
  m.impl("token_pack", &slime::token_pack_cuda_impl);
  m.impl("token_pack_backward", &slime::token_pack_backward_cuda_impl);
}
