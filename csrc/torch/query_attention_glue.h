// query_attention_glue.h: the input checks and the tensor -> params mapping that the CPU
// (query_attention.cpp) and CUDA (query_attention_cuda.cpp) registrations share. These are
// the backstop for direct torch.ops.slime callers; slime_core.ops.query_attention checks
// first with friendlier messages.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

#include "glue.h"
#include "slime/query_attention.h"

namespace slime {
namespace glue {

struct QueryAttentionInputs {
  // d-contiguous views; mask contiguous uint8-compatible bool, or undefined
  at::Tensor q, k, v, mask;
  int64_t batch, heads, lq, lk, d;
  bool shared;
  double scale;
};

// The dtype of lse, dlse and the dq scratch: the kernels' compute type, double for float64
// inputs and float32 otherwise.
inline at::ScalarType lse_dtype(const at::Tensor& q) {
  return q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// The kernels read any strides except along d, which must be 1.
inline at::Tensor d_contiguous(const at::Tensor& t) {
  return t.size(-1) <= 1 || t.stride(-1) == 1 ? t : t.contiguous();
}

inline AttnStrides strides_of(const at::Tensor& t, bool shared) {
  AttnStrides s;
  if (shared) {
    s.batch = 0, s.head = t.stride(0), s.row = t.stride(1);
  } else {
    s.batch = t.stride(0), s.head = t.stride(1), s.row = t.stride(2);
  }
  return s;
}

inline QueryAttentionInputs prepare_query_attention(const at::Tensor& q, const at::Tensor& k,
                                                    const at::Tensor& v,
                                                    const c10::optional<at::Tensor>& mask,
                                                    double scale) {
  TORCH_CHECK_VALUE(q.dim() == 3 || q.dim() == 4,
                    "slime::query_attention: q must be [heads, Lq, d] or [B, heads, Lq, d], got ",
                    q.sizes());
  check_dim(k, "query_attention: k", 4);
  check_dim(v, "query_attention: v", 4);
  check_dtype(q, "query_attention: q", {at::kFloat, at::kHalf, at::kBFloat16, at::kDouble});
  TORCH_CHECK_TYPE(q.scalar_type() != at::kDouble || q.device().is_cpu(),
                   "slime::query_attention: float64 is supported on CPU only, got q on ",
                   q.device());
  TORCH_CHECK_TYPE(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
                   "slime::query_attention: q, k, v must share one dtype, got ",
                   q.scalar_type(), ", ", k.scalar_type(), ", ", v.scalar_type());
  check_same_device(q, "q", k, "k");
  check_same_device(q, "q", v, "v");
  QueryAttentionInputs in;
  in.shared = q.dim() == 3;
  in.batch = k.size(0), in.heads = k.size(1), in.lk = k.size(2), in.d = k.size(3);
  const int64_t o = in.shared ? 0 : 1;
  in.lq = q.size(o + 1);
  TORCH_CHECK_VALUE(v.sizes() == k.sizes(), "slime::query_attention: v has shape ", v.sizes(),
                    " but k has ", k.sizes());
  TORCH_CHECK_VALUE(q.size(o) == in.heads && q.size(o + 2) == in.d,
                    "slime::query_attention: q ", q.sizes(), " does not match k ", k.sizes(),
                    " in heads or d");
  TORCH_CHECK_VALUE(in.shared || q.size(0) == in.batch, "slime::query_attention: q batch ",
                    q.size(0), " != k batch ", in.batch);
  in.q = d_contiguous(q), in.k = d_contiguous(k), in.v = d_contiguous(v);
  // The kernels recognise a shared q by its zero batch stride, so a per-item q that is an
  // expanded view (batch stride 0) would be taken for a shared one and its dq written into
  // the shared-q partial buffer that a per-item call never allocates. Give it real rows.
  if (!in.shared && in.batch > 0 && in.q.stride(0) == 0)
    in.q = in.q.clone(at::MemoryFormat::Contiguous);
  if (mask.has_value() && mask->defined()) {
    TORCH_CHECK_TYPE(mask->scalar_type() == at::kBool,
                     "slime::query_attention: key_mask must be bool (True = keep), got ",
                     mask->scalar_type());
    TORCH_CHECK_VALUE(mask->dim() == 2 && mask->size(0) == in.batch && mask->size(1) == in.lk,
                      "slime::query_attention: key_mask must be [B, Lk] = [", in.batch, ", ",
                      in.lk, "], got ", mask->sizes());
    check_same_device(q, "q", *mask, "key_mask");
    in.mask = mask->contiguous();
  }
  in.scale = scale;
  return in;
}

inline QueryAttentionParams forward_params(const QueryAttentionInputs& in, at::Tensor& out,
                                           at::Tensor& lse) {
  QueryAttentionParams p;
  p.q = in.q.data_ptr(), p.k = in.k.data_ptr(), p.v = in.v.data_ptr();
  p.key_mask = in.mask.defined() ? reinterpret_cast<const uint8_t*>(in.mask.data_ptr()) : nullptr;
  p.out = out.data_ptr();
  p.q_strides = strides_of(in.q, in.shared);
  p.k_strides = strides_of(in.k, false), p.v_strides = strides_of(in.v, false);
  p.batch = in.batch, p.heads = in.heads, p.lq = in.lq, p.lk = in.lk, p.d = in.d;
  p.scale = static_cast<float>(in.scale), p.scale64 = in.scale;
  p.dtype = to_dtype(in.q.scalar_type());
  if (p.dtype == DType::F64)
    p.lse64 = lse.data_ptr<double>();
  else
    p.lse = lse.data_ptr<float>();
  return p;
}

struct BackwardTensors {
  at::Tensor dout, dlse, out, lse, dq, dk, dv, dq_partial;
};

inline BackwardTensors prepare_backward(const QueryAttentionInputs& in, const at::Tensor& dout,
                                        const c10::optional<at::Tensor>& dlse,
                                        const at::Tensor& out, const at::Tensor& lse) {
  const std::vector<int64_t> ob = {in.batch, in.heads, in.lq, in.d};
  const std::vector<int64_t> lb = {in.batch, in.heads, in.lq};
  TORCH_CHECK_VALUE(out.sizes() == at::IntArrayRef(ob) && dout.sizes() == at::IntArrayRef(ob),
                    "slime::query_attention_backward: out and dout must be ", at::IntArrayRef(ob),
                    ", got ", out.sizes(), " and ", dout.sizes());
  TORCH_CHECK_VALUE(lse.sizes() == at::IntArrayRef(lb), "slime::query_attention_backward: lse "
                    "must be ", at::IntArrayRef(lb), ", got ", lse.sizes());
  TORCH_CHECK_TYPE(out.scalar_type() == in.q.scalar_type() &&
                       dout.scalar_type() == in.q.scalar_type(),
                   "slime::query_attention_backward: out and dout must have q's dtype");
  const at::ScalarType acc = lse_dtype(in.q);
  TORCH_CHECK_TYPE(lse.scalar_type() == acc, "slime::query_attention_backward: lse must be ",
                   acc, " for q of dtype ", in.q.scalar_type(), ", got ", lse.scalar_type());
  check_same_device(in.q, "q", dout, "dout");
  check_same_device(in.q, "q", out, "out");
  check_same_device(in.q, "q", lse, "lse");
  BackwardTensors t;
  t.dout = dout.contiguous(), t.out = out.contiguous(), t.lse = lse.contiguous();
  if (dlse.has_value() && dlse->defined()) {
    TORCH_CHECK_VALUE(dlse->sizes() == at::IntArrayRef(lb) && dlse->scalar_type() == acc,
                      "slime::query_attention_backward: dlse must be ", acc, " ",
                      at::IntArrayRef(lb), ", got ", dlse->scalar_type(), " ", dlse->sizes());
    check_same_device(in.q, "q", *dlse, "dlse");
    t.dlse = dlse->contiguous();
  }
  const auto opts = in.q.options();
  t.dq = in.shared ? at::empty({in.heads, in.lq, in.d}, opts)
                   : at::empty({in.batch, in.heads, in.lq, in.d}, opts);
  t.dk = at::empty({in.batch, in.heads, in.lk, in.d}, opts);
  t.dv = at::empty({in.batch, in.heads, in.lk, in.d}, opts);
  if (in.shared)
    t.dq_partial = at::empty({in.batch, in.heads, in.lq, in.d}, opts.dtype(acc));
  return t;
}

inline QueryAttentionBackwardParams backward_params(const QueryAttentionInputs& in,
                                                    BackwardTensors& t) {
  QueryAttentionBackwardParams p;
  p.q = in.q.data_ptr(), p.k = in.k.data_ptr(), p.v = in.v.data_ptr();
  p.key_mask = in.mask.defined() ? reinterpret_cast<const uint8_t*>(in.mask.data_ptr()) : nullptr;
  p.out = t.out.data_ptr(), p.dout = t.dout.data_ptr();
  p.dq = t.dq.data_ptr(), p.dk = t.dk.data_ptr(), p.dv = t.dv.data_ptr();
  p.q_strides = strides_of(in.q, in.shared);
  p.k_strides = strides_of(in.k, false), p.v_strides = strides_of(in.v, false);
  p.batch = in.batch, p.heads = in.heads, p.lq = in.lq, p.lk = in.lk, p.d = in.d;
  p.scale = static_cast<float>(in.scale), p.scale64 = in.scale;
  p.dtype = to_dtype(in.q.scalar_type());
  if (p.dtype == DType::F64) {
    p.lse64 = t.lse.data_ptr<double>();
    p.dlse64 = t.dlse.defined() ? t.dlse.data_ptr<double>() : nullptr;
    p.dq_partial64 = t.dq_partial.defined() ? t.dq_partial.data_ptr<double>() : nullptr;
  } else {
    p.lse = t.lse.data_ptr<float>();
    p.dlse = t.dlse.defined() ? t.dlse.data_ptr<float>() : nullptr;
    p.dq_partial = t.dq_partial.defined() ? t.dq_partial.data_ptr<float>() : nullptr;
  }
  return p;
}

}  // namespace glue
}  // namespace slime
