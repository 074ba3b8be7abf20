// token_select / token_pack schemas and CPU implementations (the math is described in
// slime/token_select.h; Python wrappers with friendly validation in slime_core/ops).
#include "slime/token_select.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <optional>
#include <utility>
#include <vector>

#include "torch/glue.h"
#include "torch/token_select_glue.h"

namespace slime {
namespace glue {

TokenSelectParams token_select_params(const at::Tensor& tokens, const at::Tensor& token_counts,
                                      const at::Tensor& text, const at::Tensor& text_mask,
                                      const std::optional<at::Tensor>& noise,
                                      std::optional<double> top_p, std::optional<int64_t> top_k,
                                      double temperature,
                                      std::optional<double> prenorm_temperature) {
  check_dim(tokens, "tokens", 3);
  check_dim(text, "text", 3);
  check_dim(token_counts, "token_counts", 1);
  check_dim(text_mask, "text_mask", 2);
  check_dtype(tokens, "tokens", {at::kFloat, at::kHalf, at::kBFloat16});
  TORCH_CHECK_TYPE(text.scalar_type() == tokens.scalar_type(),
                   "slime::token_select: text has dtype ", text.scalar_type(),
                   " but tokens has ", tokens.scalar_type());
  check_dtype(token_counts, "token_counts", {at::kLong});
  check_dtype(text_mask, "text_mask", {at::kBool});
  const int64_t B = tokens.size(0), M = tokens.size(1), H = tokens.size(2);
  TORCH_CHECK_VALUE(text.size(0) == B && text.size(2) == H, "slime::token_select: text shape ",
                    text.sizes(), " does not match tokens ", tokens.sizes(),
                    " (expected [B, T, H] with the same B and H)");
  TORCH_CHECK_VALUE(token_counts.size(0) == B, "slime::token_select: token_counts shape ",
                    token_counts.sizes(), " must be [", B, "]");
  TORCH_CHECK_VALUE(text_mask.size(0) == B && text_mask.size(1) == text.size(1),
                    "slime::token_select: text_mask shape ", text_mask.sizes(), " must be [", B,
                    ", ", text.size(1), "]");
  check_same_device(token_counts, "token_counts", tokens, "tokens");
  check_same_device(text, "text", tokens, "tokens");
  check_same_device(text_mask, "text_mask", tokens, "tokens");
  if (noise) {
    check_dtype(*noise, "noise", {at::kFloat});
    check_same_device(*noise, "noise", tokens, "tokens");
    TORCH_CHECK_VALUE(noise->dim() == 2 && noise->size(0) == B && noise->size(1) == M,
                      "slime::token_select: noise shape ", noise->sizes(), " must be [", B, ", ",
                      M, "]");
  }
  TORCH_CHECK_VALUE(top_p.has_value() != top_k.has_value(),
                    "slime::token_select: give exactly one of top_p and top_k");
  if (top_p) {
    TORCH_CHECK_VALUE(*top_p > 0.0 && *top_p <= 1.0,
                      "slime::token_select: top_p must be in (0, 1], got ", *top_p);
  }
  if (top_k) {
    TORCH_CHECK_VALUE(*top_k >= 1, "slime::token_select: top_k must be >= 1, got ", *top_k);
  }
  TORCH_CHECK_VALUE(temperature > 0.0, "slime::token_select: temperature must be > 0, got ",
                    temperature);
  if (prenorm_temperature) {
    TORCH_CHECK_VALUE(*prenorm_temperature > 0.0,
                      "slime::token_select: prenorm_temperature must be > 0, got ",
                      *prenorm_temperature);
  }
  TokenSelectParams p;
  p.B = B;
  p.M_max = M;
  p.T_max = text.size(1);
  p.H = H;
  p.dtype = to_dtype(tokens.scalar_type());
  p.use_top_k = top_k.has_value();
  p.top_p = top_p.value_or(1.0);
  p.top_k = top_k.value_or(0);
  p.temperature = static_cast<float>(temperature);
  p.prenorm_temperature = static_cast<float>(prenorm_temperature.value_or(0.0));
  return p;
}

void check_pack_args(const at::Tensor& ref, const char* ref_name, int64_t B,
                     const at::Tensor& indices, const at::Tensor& counts,
                     const at::Tensor& row_offsets, const char* op) {
  check_dim(indices, "indices", 2);
  check_dim(counts, "counts", 1);
  check_dim(row_offsets, "row_offsets", 1);
  check_dtype(indices, "indices", {at::kLong});
  check_dtype(counts, "counts", {at::kLong});
  check_dtype(row_offsets, "row_offsets", {at::kLong});
  TORCH_CHECK_VALUE(indices.size(0) == B && counts.size(0) == B && row_offsets.size(0) == B,
                    "slime::", op, ": indices ", indices.sizes(), ", counts ", counts.sizes(),
                    " and row_offsets ", row_offsets.sizes(), " must all have B = ", B, " rows");
  check_same_device(indices, "indices", ref, ref_name);
  check_same_device(counts, "counts", ref, ref_name);
  check_same_device(row_offsets, "row_offsets", ref, ref_name);
}

void check_pack_inputs(const at::Tensor& tokens, const at::Tensor& indices,
                       const at::Tensor& counts, const at::Tensor& row_offsets,
                       const at::Tensor& base) {
  check_dim(tokens, "tokens", 3);
  check_dim(base, "base", 2);
  check_dtype(tokens, "tokens", {at::kFloat, at::kHalf, at::kBFloat16});
  TORCH_CHECK_TYPE(base.scalar_type() == tokens.scalar_type(), "slime::token_pack: base has dtype ",
                   base.scalar_type(), " but tokens has ", tokens.scalar_type());
  TORCH_CHECK_VALUE(base.size(1) == tokens.size(2), "slime::token_pack: base hidden size ",
                    base.size(1), " does not match tokens ", tokens.sizes());
  check_same_device(base, "base", tokens, "tokens");
  check_pack_args(tokens, "tokens", tokens.size(0), indices, counts, row_offsets, "token_pack");
}

void check_pack_backward_inputs(const at::Tensor& grad_out, const at::Tensor& indices,
                                const at::Tensor& counts, const at::Tensor& row_offsets,
                                int64_t num_tokens) {
  check_dim(grad_out, "grad_out", 2);
  check_dtype(grad_out, "grad_out", {at::kFloat, at::kHalf, at::kBFloat16});
  TORCH_CHECK_VALUE(num_tokens >= 0, "slime::token_pack_backward: num_tokens must be >= 0, got ",
                    num_tokens);
  check_pack_args(grad_out, "grad_out", indices.dim() > 0 ? indices.size(0) : -1, indices, counts,
                  row_offsets, "token_pack_backward");
}

// CPU tensors can be inspected for free: reject what would make the output depend on the
// write order (overlapping images, repeated indices) or fall outside the arrays.
void check_pack_values_cpu(const at::Tensor& indices, const at::Tensor& counts,
                           const at::Tensor& row_offsets, int64_t M_max, int64_t N,
                           const char* op) {
  const int64_t B = indices.size(0), K = indices.size(1);
  auto idx = indices.contiguous();
  auto cnt = counts.contiguous();
  auto off = row_offsets.contiguous();
  const int64_t* ip = idx.data_ptr<int64_t>();
  const int64_t* cp = cnt.data_ptr<int64_t>();
  const int64_t* op_ = off.data_ptr<int64_t>();
  std::vector<std::pair<int64_t, int64_t>> spans;
  std::vector<char> seen(static_cast<size_t>(M_max));
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK_VALUE(cp[b] >= 0 && cp[b] <= K, "slime::", op, ": counts[", b, "] = ", cp[b],
                      " is outside [0, ", K, "]");
    TORCH_CHECK_VALUE(op_[b] >= 0 && op_[b] + cp[b] <= N, "slime::", op, ": image ", b,
                      " writes rows [", op_[b], ", ", op_[b] + cp[b], ") outside the ", N,
                      " output rows");
    std::fill(seen.begin(), seen.end(), 0);
    for (int64_t j = 0; j < cp[b]; ++j) {
      const int64_t m = ip[b * K + j];
      TORCH_CHECK_VALUE(m >= 0 && m < M_max, "slime::", op, ": indices[", b, ", ", j, "] = ", m,
                        " is outside [0, ", M_max, ")");
      TORCH_CHECK_VALUE(!seen[m], "slime::", op, ": index ", m, " repeats in image ", b,
                        " (indices must be unique per image)");
      seen[m] = 1;
    }
    if (cp[b] > 0) spans.emplace_back(op_[b], op_[b] + cp[b]);
  }
  std::sort(spans.begin(), spans.end());
  for (size_t i = 1; i < spans.size(); ++i) {
    TORCH_CHECK_VALUE(spans[i].first >= spans[i - 1].second, "slime::", op,
                      ": two images write the output rows [", spans[i].first, ", ",
                      std::min(spans[i].second, spans[i - 1].second), ")");
  }
}

SelectCall prepare_select(const at::Tensor& tokens, const at::Tensor& token_counts,
                          const at::Tensor& text, const at::Tensor& text_mask,
                          const std::optional<at::Tensor>& noise, std::optional<double> top_p,
                          std::optional<int64_t> top_k, double temperature,
                          std::optional<double> prenorm_temperature) {
  SelectCall c;
  c.p = token_select_params(tokens, token_counts, text, text_mask, noise, top_p, top_k,
                            temperature, prenorm_temperature);
  c.tokens = tokens.contiguous();
  c.token_counts = token_counts.contiguous();
  c.text = text.contiguous();
  c.text_mask = text_mask.contiguous();
  if (noise) c.noise = noise->contiguous();
  c.indices = at::empty({c.p.B, c.p.M_max}, tokens.options().dtype(at::kLong));
  c.counts = at::empty({c.p.B}, tokens.options().dtype(at::kLong));
  c.probs = at::empty({c.p.B, c.p.M_max}, tokens.options().dtype(at::kFloat));
  c.p.tokens = c.tokens.data_ptr();
  c.p.token_counts = c.token_counts.data_ptr<int64_t>();
  c.p.text = c.text.data_ptr();
  c.p.text_mask = c.text_mask.data_ptr<bool>();
  c.p.noise = noise ? c.noise.data_ptr<float>() : nullptr;
  c.p.out_indices = c.indices.data_ptr<int64_t>();
  c.p.out_counts = c.counts.data_ptr<int64_t>();
  c.p.out_probs = c.probs.data_ptr<float>();
  return c;
}

PackCall prepare_pack(const at::Tensor& tokens, const at::Tensor& indices,
                      const at::Tensor& counts, const at::Tensor& row_offsets,
                      const at::Tensor& base) {
  check_pack_inputs(tokens, indices, counts, row_offsets, base);
  PackCall c;
  c.tokens = tokens.contiguous();
  c.indices = indices.contiguous();
  c.counts = counts.contiguous();
  c.row_offsets = row_offsets.contiguous();
  c.base = base.contiguous();
  c.out = at::empty_like(c.base);
  c.p.tokens = c.tokens.data_ptr();
  c.p.indices = c.indices.data_ptr<int64_t>();
  c.p.counts = c.counts.data_ptr<int64_t>();
  c.p.row_offsets = c.row_offsets.data_ptr<int64_t>();
  c.p.base = c.base.data_ptr();
  c.p.out = c.out.data_ptr();
  c.p.B = c.tokens.size(0);
  c.p.M_max = c.tokens.size(1);
  c.p.K = c.indices.size(1);
  c.p.H = c.tokens.size(2);
  c.p.N = c.base.size(0);
  c.p.dtype = to_dtype(c.tokens.scalar_type());
  return c;
}

PackBackwardCall prepare_pack_backward(const at::Tensor& grad_out, const at::Tensor& indices,
                                       const at::Tensor& counts, const at::Tensor& row_offsets,
                                       int64_t num_tokens) {
  check_pack_backward_inputs(grad_out, indices, counts, row_offsets, num_tokens);
  PackBackwardCall c;
  c.grad_out = grad_out.contiguous();
  c.indices = indices.contiguous();
  c.counts = counts.contiguous();
  c.row_offsets = row_offsets.contiguous();
  const int64_t B = c.indices.size(0), H = c.grad_out.size(1);
  c.grad_tokens = at::empty({B, num_tokens, H}, c.grad_out.options());
  c.grad_base = at::empty_like(c.grad_out);
  c.p.grad_out = c.grad_out.data_ptr();
  c.p.indices = c.indices.data_ptr<int64_t>();
  c.p.counts = c.counts.data_ptr<int64_t>();
  c.p.row_offsets = c.row_offsets.data_ptr<int64_t>();
  c.p.grad_tokens = c.grad_tokens.data_ptr();
  c.p.grad_base = c.grad_base.data_ptr();
  c.p.B = B;
  c.p.M_max = num_tokens;
  c.p.K = c.indices.size(1);
  c.p.H = H;
  c.p.N = c.grad_out.size(0);
  c.p.dtype = to_dtype(c.grad_out.scalar_type());
  return c;
}

}  // namespace glue

namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> token_select_cpu_impl(
    const at::Tensor& tokens, const at::Tensor& token_counts, const at::Tensor& text,
    const at::Tensor& text_mask, const std::optional<at::Tensor>& noise,
    std::optional<double> top_p, std::optional<int64_t> top_k, double temperature,
    std::optional<double> prenorm_temperature) {
  TORCH_CHECK_VALUE(tokens.device().is_cpu(), "slime::token_select: CPU kernel got ",
                    tokens.device());
  glue::SelectCall c = glue::prepare_select(tokens, token_counts, text, text_mask, noise, top_p,
                                            top_k, temperature, prenorm_temperature);
  for (int64_t b = 0; b < c.p.B; ++b) {
    const int64_t n = c.p.token_counts[b];
    TORCH_CHECK_VALUE(n >= 0 && n <= c.p.M_max, "slime::token_select: token_counts[", b,
                      "] = ", n, " is outside [0, ", c.p.M_max, "]");
  }
  token_select_cpu(c.p);
  return {c.indices, c.counts, c.probs};
}

at::Tensor token_pack_cpu_impl(const at::Tensor& tokens, const at::Tensor& indices,
                               const at::Tensor& counts, const at::Tensor& row_offsets,
                               const at::Tensor& base) {
  glue::PackCall c = glue::prepare_pack(tokens, indices, counts, row_offsets, base);
  glue::check_pack_values_cpu(c.indices, c.counts, c.row_offsets, c.p.M_max, c.p.N,
                              "token_pack");
  token_pack_cpu(c.p);
  return c.out;
}

std::tuple<at::Tensor, at::Tensor> token_pack_backward_cpu_impl(const at::Tensor& grad_out,
                                                                const at::Tensor& indices,
                                                                const at::Tensor& counts,
                                                                const at::Tensor& row_offsets,
                                                                int64_t num_tokens) {
  glue::PackBackwardCall c =
      glue::prepare_pack_backward(grad_out, indices, counts, row_offsets, num_tokens);
  glue::check_pack_values_cpu(c.indices, c.counts, c.row_offsets, num_tokens, c.p.N,
                              "token_pack_backward");
  token_pack_backward_cpu(c.p);
  return {c.grad_tokens, c.grad_base};
}

}  // namespace
}  // namespace slime

TORCH_LIBRARY_FRAGMENT(slime, m) {
  // tokens [B, M, H], token_counts [B] int64, text [B, T, H], text_mask [B, T] bool,
  // noise [B, M] float32 -> indices [B, M] int64 (ascending, -1 padded), counts [B] int64,
  // probs [B, M] float32.
  m.def(
      "token_select(Tensor tokens, Tensor token_counts, Tensor text, Tensor text_mask, "
      "Tensor? noise, float? top_p, int? top_k, float temperature, "
      "float? prenorm_temperature) -> (Tensor, Tensor, Tensor)");
  // tokens [B, M, H], indices [B, K], counts [B], row_offsets [B], base [N, H] -> [N, H]
  m.def(
      "token_pack(Tensor tokens, Tensor indices, Tensor counts, Tensor row_offsets, "
      "Tensor base) -> Tensor");
  // grad_out [N, H] -> grad_tokens [B, num_tokens, H], grad_base [N, H]
  m.def(
      "token_pack_backward(Tensor grad_out, Tensor indices, Tensor counts, Tensor row_offsets, "
      "SymInt num_tokens) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(slime, CPU, m) {
  m.impl("token_select", &slime::token_select_cpu_impl);
  m.impl("token_pack", &slime::token_pack_cpu_impl);
  m.impl("token_pack_backward", &slime::token_pack_backward_cpu_impl);
}
