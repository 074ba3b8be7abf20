// query_attention_cuda.cpp (torch glue): CUDA registrations of slime::query_attention and its
// backward. Same checks and tensor mapping as the CPU registration (query_attention_glue.h),
// plus the CUDA kernels' limit d <= 128; runs on the current stream of q's device.
#include "cuda_glue.h"
#include "query_attention_glue.h"

namespace slime {
namespace glue {

namespace {

void check_cuda_head_dim(const QueryAttentionInputs& in) {
  TORCH_CHECK_VALUE(in.d <= kQueryAttentionCudaMaxD, "slime::query_attention: the CUDA kernels "
                    "support head dim d <= ", kQueryAttentionCudaMaxD, ", got ", in.d);
}

std::tuple<at::Tensor, at::Tensor> query_attention_cuda_impl(const at::Tensor& q,
                                                             const at::Tensor& k,
                                                             const at::Tensor& v,
                                                             const c10::optional<at::Tensor>& mask,
                                                             double scale) {
  QueryAttentionInputs in = prepare_query_attention(q, k, v, mask, scale);
  check_cuda_head_dim(in);
  const c10::cuda::CUDAGuard guard(q.device());
  at::Tensor out = at::empty({in.batch, in.heads, in.lq, in.d}, in.q.options());
  at::Tensor lse = at::empty({in.batch, in.heads, in.lq}, in.q.options().dtype(at::kFloat));
  check_launch(query_attention_cuda(forward_params(in, out, lse), current_stream(q)),
               "query_attention");
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> query_attention_backward_cuda_impl(
    const at::Tensor& dout, const c10::optional<at::Tensor>& dlse, const at::Tensor& q,
    const at::Tensor& k, const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
    const c10::optional<at::Tensor>& mask, double scale) {
  QueryAttentionInputs in = prepare_query_attention(q, k, v, mask, scale);
  check_cuda_head_dim(in);
  const c10::cuda::CUDAGuard guard(q.device());
  BackwardTensors t = prepare_backward(in, dout, dlse, out, lse);
  check_launch(query_attention_backward_cuda(backward_params(in, t), current_stream(q)),
               "query_attention_backward");
  return {t.dq, t.dk, t.dv};
}

}  // namespace

}  // namespace glue
}  // namespace slime

TORCH_LIBRARY_IMPL(slime, CUDA, m) {
  m.impl("query_attention", &slime::glue::query_attention_cuda_impl);
  m.impl("query_attention_backward", &slime::glue::query_attention_backward_cuda_impl);
}
