// token_select_glue.h: argument checks shared by the CPU (token_select.cpp) and CUDA
// (token_select_cuda.cpp) registrations of token_select / token_pack.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "slime/token_select.h"

namespace slime {
namespace glue {

// Checks shapes, dtypes, devices and the scalar arguments; returns the params with sizes and
// options filled in (pointers left for the caller).
TokenSelectParams token_select_params(const at::Tensor& tokens, const at::Tensor& token_counts,
                                      const at::Tensor& text, const at::Tensor& text_mask,
                                      const std::optional<at::Tensor>& noise,
                                      std::optional<double> top_p, std::optional<int64_t> top_k,
                                      double temperature,
                                      std::optional<double> prenorm_temperature);

// Shapes, dtypes and devices of token_pack (tokens [B, M, H], indices [B, K], counts [B],
// row_offsets [B], base [N, H]) and of its backward (grad_out [N, H]).
void check_pack_inputs(const at::Tensor& tokens, const at::Tensor& indices,
                       const at::Tensor& counts, const at::Tensor& row_offsets,
                       const at::Tensor& base);
void check_pack_backward_inputs(const at::Tensor& grad_out, const at::Tensor& indices,
                                const at::Tensor& counts, const at::Tensor& row_offsets,
                                int64_t num_tokens);

// One call, ready for either backend: the checked, contiguous inputs, the freshly allocated
// outputs (on the inputs' device: a CUDA caller sets its device guard first) and the params
// pointing at them. The struct owns the tensors, so the pointers stay valid while it lives.
struct SelectCall {
  at::Tensor tokens, token_counts, text, text_mask, noise;  // inputs, contiguous
  at::Tensor indices, counts, probs;                        // outputs
  TokenSelectParams p;
};
SelectCall prepare_select(const at::Tensor& tokens, const at::Tensor& token_counts,
                          const at::Tensor& text, const at::Tensor& text_mask,
                          const std::optional<at::Tensor>& noise, std::optional<double> top_p,
                          std::optional<int64_t> top_k, double temperature,
                          std::optional<double> prenorm_temperature);

struct PackCall {
  at::Tensor tokens, indices, counts, row_offsets, base;  // inputs, contiguous
  at::Tensor out;
  TokenPackParams p;
};
PackCall prepare_pack(const at::Tensor& tokens, const at::Tensor& indices,
                      const at::Tensor& counts, const at::Tensor& row_offsets,
                      const at::Tensor& base);

struct PackBackwardCall {
  at::Tensor grad_out, indices, counts, row_offsets;  // inputs, contiguous
  at::Tensor grad_tokens, grad_base;
  TokenPackBackwardParams p;
};
PackBackwardCall prepare_pack_backward(const at::Tensor& grad_out, const at::Tensor& indices,
                                       const at::Tensor& counts, const at::Tensor& row_offsets,
                                       int64_t num_tokens);

}  // namespace glue
}  // namespace slime
