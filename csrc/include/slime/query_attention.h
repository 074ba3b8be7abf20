// slime/query_attention.h: learnable-query cross-attention (SliME's resampler core).
//
//   out[b,h,i,:] = sum_j softmax_j(scale * q[h,i,:].k[b,h,j,:] + mask[b,j]) v[b,h,j,:]
//   lse[b,h,i]   = log sum_j exp(scale * q[h,i,:].k[b,h,j,:] + mask[b,j])
//
// q is either shared by the whole batch ([heads, Lq, d], q_batch_stride 0) or per item
// ([B, heads, Lq, d]); k and v are [B, heads, Lk, d]; the optional key mask [B, Lk] holds
// 1 where a key takes part and 0 where it is padding. Softmax and accumulation are float32
// for F32, BF16 and F16 elements; F64 (CPU only: it exists for gradcheck and float64
// references) computes in double and keeps lse, dlse and the dq scratch in double as well.
// A query row whose keys are all masked (or Lk == 0) gets out = 0, lse = -inf, and zero
// gradients.
//
// Layout: every tensor's last dimension (d) is contiguous; the other strides are free (in
// elements), so the projections' [B, Lk, heads, d] views need no copy. out, lse and the
// gradients are written contiguous.
#pragma once

#include <cmath>
#include <cstdint>

#include "slime/common.h"

#if defined(SLIME_WITH_CUDA) || defined(__CUDACC__)
#include <cuda_runtime_api.h>
#endif

namespace slime {

// Element strides of a [B, heads, L, d] operand (d stride is 1). batch == 0 broadcasts.
struct AttnStrides {
  int64_t batch = 0, head = 0, row = 0;
};

struct QueryAttentionParams {
  const void* q;             // [heads, Lq, d] (q.batch == 0) or [B, heads, Lq, d]
  const void* k;             // [B, heads, Lk, d]
  const void* v;             // [B, heads, Lk, d]
  const uint8_t* key_mask;   // [B, Lk] contiguous, 1 = keep; nullptr = keep all
  void* out;                 // [B, heads, Lq, d] contiguous, same dtype as q
  // [B, heads, Lq] contiguous, natural log, in the compute type: lse64 when dtype is F64.
  // A union rather than void* so that the float-only CUDA kernels read lse unchanged.
  union {
    float* lse;
    double* lse64;
  };
  AttnStrides q_strides, k_strides, v_strides;
  int64_t batch = 0, heads = 0, lq = 0, lk = 0, d = 0;
  float scale = 1.0f;
  double scale64 = 1.0;  // the same scale unrounded: what the F64 kernel reads instead
  DType dtype = DType::F32;
};

struct QueryAttentionBackwardParams {
  const void* q;             // [heads, Lq, d] or [B, heads, Lq, d]   (strides as forward)
  const void* k;             // [B, heads, Lk, d]
  const void* v;             // [B, heads, Lk, d]
  const uint8_t* key_mask;   // [B, Lk] or nullptr
  const void* out;           // [B, heads, Lq, d] contiguous
  const void* dout;          // [B, heads, Lq, d] contiguous
  // lse, dlse and dq_partial are in the compute type, like the forward's lse: their *64
  // members when dtype is F64.
  union {
    const float* lse;        // [B, heads, Lq] contiguous
    const double* lse64;
  };
  union {
    const float* dlse;       // [B, heads, Lq] contiguous, or nullptr (no gradient on lse)
    const double* dlse64;
  };
  void* dq;                  // like q but contiguous: [heads, Lq, d] (shared) or [B, heads, Lq, d]
  void* dk;                  // [B, heads, Lk, d] contiguous
  void* dv;                  // [B, heads, Lk, d] contiguous
  // [B, heads, Lq, d] scratch, needed when q is shared: per-item partial dq that is summed
  // over the batch in a fixed order afterwards (deterministic, no atomics).
  union {
    float* dq_partial;
    double* dq_partial64;
  };
  AttnStrides q_strides, k_strides, v_strides;
  int64_t batch = 0, heads = 0, lq = 0, lk = 0, d = 0;
  float scale = 1.0f;
  double scale64 = 1.0;  // the same scale unrounded: what the F64 kernel reads instead
  DType dtype = DType::F32;
};

SLIME_HD bool query_attention_q_shared(const AttnStrides& s) { return s.batch == 0; }

void query_attention_cpu(const QueryAttentionParams& p);
void query_attention_backward_cpu(const QueryAttentionBackwardParams& p);

#if defined(SLIME_WITH_CUDA) || defined(__CUDACC__)
// The CUDA kernels take d <= 128 (SliME uses 128); the torch glue checks it.
constexpr int64_t kQueryAttentionCudaMaxD = 128;
LaunchStatus query_attention_cuda(const QueryAttentionParams& p, cudaStream_t stream);
LaunchStatus query_attention_backward_cuda(const QueryAttentionBackwardParams& p,
                                           cudaStream_t stream);
#endif

}  // namespace slime
