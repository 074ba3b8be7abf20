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
  TokenSelectParams p = glue::token_select_params(tokens, token_counts, text, text_mask, noise,
                                                  top_p, top_k, temperature, prenorm_temperature);
  TORCH_CHECK_VALUE(tokens.is_cuda(), "slime::token_select: CUDA kernel got ", tokens.device());
  const c10::cuda::CUDAGuard guard(tokens.device());
  auto x = tokens.contiguous();
  auto e = text.contiguous();
  auto mask = text_mask.contiguous();
  auto cnt = token_counts.contiguous();
  at::Tensor nz;
  if (noise) nz = noise->contiguous();
  auto indices = at::empty({p.B, p.M_max}, tokens.options().dtype(at::kLong));
  auto counts = at::empty({p.B}, tokens.options().dtype(at::kLong));
  auto probs = at::empty({p.B, p.M_max}, tokens.options().dtype(at::kFloat));
  auto workspace = at::empty({static_cast<int64_t>(token_select_workspace_bytes(p))},
                             tokens.options().dtype(at::kByte));
  p.tokens = x.data_ptr();
  p.token_counts = cnt.data_ptr<int64_t>();
  p.text = e.data_ptr();
  p.text_mask = mask.data_ptr<bool>();
  p.noise = noise ? nz.data_ptr<float>() : nullptr;
  p.out_indices = indices.data_ptr<int64_t>();
  p.out_counts = counts.data_ptr<int64_t>();
  p.out_probs = probs.data_ptr<float>();
  p.workspace = workspace.data_ptr();
  glue::check_launch(token_select_cuda(p, glue::current_stream(tokens)), "token_select");
  return {indices, counts, probs};
}

at::Tensor token_pack_cuda_impl(const at::Tensor& tokens, const at::Tensor& indices,
                                const at::Tensor& counts, const at::Tensor& row_offsets,
                                const at::Tensor& base) {
  glue::check_pack_inputs(tokens, indices, counts, row_offsets, base);
  TORCH_CHECK_VALUE(tokens.is_cuda(), "slime::token_pack: CUDA kernel got ", tokens.device());
  const c10::cuda::CUDAGuard guard(tokens.device());
  auto x = tokens.contiguous();
  auto idx = indices.contiguous();
  auto cnt = counts.contiguous();
  auto off = row_offsets.contiguous();
  auto bs = base.contiguous();
  auto out = at::empty_like(bs);
  TokenPackParams p;
  p.tokens = x.data_ptr();
  p.indices = idx.data_ptr<int64_t>();
  p.counts = cnt.data_ptr<int64_t>();
  p.row_offsets = off.data_ptr<int64_t>();
  p.base = bs.data_ptr();
  p.out = out.data_ptr();
  p.B = x.size(0);
  p.M_max = x.size(1);
  p.K = idx.size(1);
  p.H = x.size(2);
  p.N = bs.size(0);
  p.dtype = glue::to_dtype(x.scalar_type());
  glue::check_launch(token_pack_cuda(p, glue::current_stream(tokens)), "token_pack");
  return out;
}

std::tuple<at::Tensor, at::Tensor> token_pack_backward_cuda_impl(const at::Tensor& grad_out,
                                                                 const at::Tensor& indices,
                                                                 const at::Tensor& counts,
                                                                 const at::Tensor& row_offsets,
                                                                 int64_t num_tokens) {
  glue::check_pack_backward_inputs(grad_out, indices, counts, row_offsets, num_tokens);
  TORCH_CHECK_VALUE(grad_out.is_cuda(), "slime::token_pack_backward: CUDA kernel got ",
                    grad_out.device());
  const c10::cuda::CUDAGuard guard(grad_out.device());
  const int64_t B = indices.size(0), H = grad_out.size(1);
  auto g = grad_out.contiguous();
  auto idx = indices.contiguous();
  auto cnt = counts.contiguous();
  auto off = row_offsets.contiguous();
  auto grad_tokens = at::empty({B, num_tokens, H}, g.options());
  auto grad_base = at::empty_like(g);
  TokenPackBackwardParams p;
  p.grad_out = g.data_ptr();
  p.indices = idx.data_ptr<int64_t>();
  p.counts = cnt.data_ptr<int64_t>();
  p.row_offsets = off.data_ptr<int64_t>();
  p.grad_tokens = grad_tokens.data_ptr();
  p.grad_base = grad_base.data_ptr();
  p.B = B;
  p.M_max = num_tokens;
  p.K = idx.size(1);
  p.H = H;
  p.N = g.size(0);
  p.dtype = glue::to_dtype(g.scalar_type());
  glue::check_launch(token_pack_backward_cuda(p, glue::current_stream(grad_out)),
                     "token_pack_backward");
  return {grad_tokens, grad_base};
}

}  // namespace
}  // namespace slime

TORCH_LIBRARY_IMPL(slime, CUDA, m) {
  m.impl("token_select", &slime::token_select_cuda_impl);
  m.impl("token_pack", &slime::token_pack_cuda_impl);
  m.impl("token_pack_backward", &slime::token_pack_backward_cuda_impl);
}
