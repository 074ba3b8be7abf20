// glue.h: helpers for the torch-aware C++ in csrc/torch (the only place torch headers are
// used). The Python layer (slime_core/ops) validates inputs with friendly messages first;
// the checks here are the backstop for callers that use torch.ops.slime.* directly.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include "slime/common.h"

namespace slime {
namespace glue {

inline DType to_dtype(c10::ScalarType t) {
  switch (t) {
    case c10::ScalarType::Float: return DType::F32;
    case c10::ScalarType::Half: return DType::F16;
    case c10::ScalarType::BFloat16: return DType::BF16;
    case c10::ScalarType::Byte: return DType::U8;
    case c10::ScalarType::Long: return DType::I64;
    case c10::ScalarType::Int: return DType::I32;
    case c10::ScalarType::Double: return DType::F64;
    default: TORCH_CHECK(false, "slime: unsupported dtype ", t);
  }
  return DType::F32;
}

inline void check_dtype(const at::Tensor& t, const char* name,
                        std::initializer_list<c10::ScalarType> allowed) {
  for (auto a : allowed)
    if (t.scalar_type() == a) return;
  TORCH_CHECK_TYPE(false, "slime: ", name, " has unsupported dtype ", t.scalar_type());
}

inline void check_dim(const at::Tensor& t, const char* name, int64_t dim) {
  TORCH_CHECK_VALUE(t.dim() == dim, "slime: ", name, " must have ", dim, " dimensions, got shape ",
                    t.sizes());
}

inline void check_same_device(const at::Tensor& a, const char* an, const at::Tensor& b,
                              const char* bn) {
  TORCH_CHECK_VALUE(a.device() == b.device(), "slime: ", an, " is on ", a.device(), " but ", bn,
                    " is on ", b.device());
}

}  // namespace glue
}  // namespace slime
