// query_attention.cpp (torch glue): schemas of slime::query_attention and its backward, the
// CPU registrations, and the checks shared with the CUDA registrations
// (query_attention_glue.h). The Python layer (slime_core/ops/query_attention.py) validates
// with friendlier messages and attaches the fake kernels and autograd.
#include "query_attention_glue.h"

namespace slime {
namespace glue {

namespace {

std::tuple<at::Tensor, at::Tensor> query_attention_cpu_impl(const at::Tensor& q,
                                                            const at::Tensor& k,
                                                            const at::Tensor& v,
                                                            const c10::optional<at::Tensor>& mask,
                                                            double scale) {
  QueryAttentionInputs in = prepare_query_attention(q, k, v, mask, scale);
  at::Tensor out = at::empty({in.batch, in.heads, in.lq, in.d}, in.q.options());
  at::Tensor lse = at::empty({in.batch, in.heads, in.lq}, in.q.options().dtype(lse_dtype(in.q)));
  query_attention_cpu(forward_params(in, out, lse));
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> query_attention_backward_cpu_impl(
    const at::Tensor& dout, const c10::optional<at::Tensor>& dlse, const at::Tensor& q,
    const at::Tensor& k, const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
    const c10::optional<at::Tensor>& mask, double scale) {
  QueryAttentionInputs in = prepare_query_attention(q, k, v, mask, scale);
  BackwardTensors t = prepare_backward(in, dout, dlse, out, lse);
  query_attention_backward_cpu(backward_params(in, t));
  return {t.dq, t.dk, t.dv};
}

}  // namespace

}  // namespace glue
}  // namespace slime

TORCH_LIBRARY_FRAGMENT(slime, m) {
  // q: [heads, Lq, d] (shared by the batch) or [B, heads, Lq, d]; k, v: [B, heads, Lk, d];
  // key_mask: [B, Lk] bool, True = the key takes part. Returns out [B, heads, Lq, d] (q's
  // dtype) and lse [B, heads, Lq] (float32, or float64 for float64 inputs, which only the CPU
  // takes; -inf for a row with no key).
  m.def("query_attention(Tensor q, Tensor k, Tensor v, Tensor? key_mask, float scale) -> "
        "(Tensor, Tensor)");
  // Gradients of query_attention: dq like q (summed over the batch when q is shared), dk and
  // dv like k and v. dlse, when given, is the gradient flowing into lse.
  m.def("query_attention_backward(Tensor dout, Tensor? dlse, Tensor q, Tensor k, Tensor v, "
        "Tensor out, Tensor lse, Tensor? key_mask, float scale) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(slime, CPU, m) {
  m.impl("query_attention", &slime::glue::query_attention_cpu_impl);
  m.impl("query_attention_backward", &slime::glue::query_attention_backward_cpu_impl);
}
