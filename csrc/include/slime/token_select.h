// slime/token_select.h: text-guided selection of local visual tokens (SliME's
// TextGuidedSampler, SLIME_SPEC.md section 5) and the packing gather that splices the kept
// tokens into an LLM input, as framework-free entry points for the CPU and CUDA kernels.
//
// token_select, per image b of a ragged batch (M_b tokens, T_max text rows with a mask):
//   s_b      = sum over unmasked t of e_t / max(|e_t|, eps)              (one H-vector)
//   score_m  = dot(x_m / max(|x_m|, eps), s_b)   == sum_t cosine_similarity(x_m, e_t)
//   q_m      = score_m                 or softmax_m(score / prenorm_temperature) if given
//   p_m      = softmax_m((q_m + noise_m) / temperature)
//   keep     = top-p: rank by (p desc, index asc); c_j = cumulative sum of ranked p;
//              n = #{j : c_j <= top_p}; keep n + 1 ranked tokens (all if n == M_b or
//              top_p >= 1); top-k: keep min(k, M_b) ranked tokens.
//   outputs  = kept indices ascending (padded with -1), their count, and p (0 on padding).
// eps = 1e-8 per norm is torch.nn.functional.cosine_similarity's clamp, so a zero vector
// scores 0 against everything. All arithmetic is float32 whatever the input dtype; the
// softmax denominators and the cumulative sum are accumulated in double.
//
// token_pack: out = base, then out[row_offsets[b] + j] = tokens[b, indices[b, j]] for
// j < counts[b]; its backward gathers grad_out rows back to the kept tokens (indices unique:
// plain stores, no atomics) and passes grad_out to base with the written rows zeroed.
#pragma once

#include <cstdint>

#include "slime/common.h"

#if defined(SLIME_WITH_CUDA) || defined(__CUDACC__)
#include <cuda_runtime_api.h>
#endif

namespace slime {

constexpr float kTokenSelectEps = 1e-8f;

struct TokenSelectParams {
  const void* tokens = nullptr;     // [B, M_max, H] float-like (dtype), contiguous
  const int64_t* token_counts = nullptr;  // [B] M_b in [0, M_max]
  const void* text = nullptr;       // [B, T_max, H] same dtype as tokens, contiguous
  const bool* text_mask = nullptr;  // [B, T_max] true = this text row counts
  const float* noise = nullptr;     // [B, M_max] or nullptr: added to q before the softmax
  int64_t* out_indices = nullptr;   // [B, M_max] kept indices ascending, then -1
  int64_t* out_counts = nullptr;    // [B]
  float* out_probs = nullptr;       // [B, M_max] p_m, 0 for m >= M_b
  int64_t B = 0, M_max = 0, T_max = 0, H = 0;
  DType dtype = DType::F32;
  bool use_top_k = false;
  double top_p = 1.0;               // used when !use_top_k, in (0, 1]
  int64_t top_k = 0;                // used when use_top_k, >= 1
  float temperature = 1.0f;         // > 0
  float prenorm_temperature = 0.0f; // > 0: SliME's first softmax (0.5); 0: none
  // CUDA only: scratch of token_select_workspace_bytes(params) bytes (the torch glue
  // allocates it from the caching allocator).
  void* workspace = nullptr;
};

struct TokenPackParams {
  const void* tokens = nullptr;        // [B, M_max, H] float-like (dtype), contiguous
  const int64_t* indices = nullptr;    // [B, K] token indices, first counts[b] used, unique
  const int64_t* counts = nullptr;     // [B] in [0, K]
  const int64_t* row_offsets = nullptr;  // [B] first output row of image b
  const void* base = nullptr;          // [N, H] rows not written are copied from here
  void* out = nullptr;                 // [N, H]
  int64_t B = 0, M_max = 0, K = 0, H = 0, N = 0;
  DType dtype = DType::F32;
};

struct TokenPackBackwardParams {
  const void* grad_out = nullptr;      // [N, H]
  const int64_t* indices = nullptr;    // [B, K]
  const int64_t* counts = nullptr;     // [B]
  const int64_t* row_offsets = nullptr;  // [B]
  void* grad_tokens = nullptr;         // [B, M_max, H] (zero where no row was taken)
  void* grad_base = nullptr;           // [N, H] grad_out with the written rows zeroed
  int64_t B = 0, M_max = 0, K = 0, H = 0, N = 0;
  DType dtype = DType::F32;
};

// Ranking key shared by both backends: probabilities are >= 0, so their IEEE bits order like
// the values; the low word makes the lower index the larger key on equal probabilities.
// Sorting keys descending ranks by (p desc, index asc); key 0 is below every real key and
// pads a sort to a power of two.
SLIME_HD uint64_t token_rank_key(float p, int64_t m) {
  return (static_cast<uint64_t>(float_bits(p)) << 32) |
         static_cast<uint64_t>(0xffffffffu - static_cast<uint32_t>(m));
}

SLIME_HD int64_t token_rank_index(uint64_t key) {
  return static_cast<int64_t>(0xffffffffu - static_cast<uint32_t>(key & 0xffffffffu));
}

// How many ranked tokens SliME's top-p rule keeps, given n = #{j : c_j <= top_p}.
SLIME_HD int64_t top_p_keep(int64_t n, int64_t M, double top_p) {
  if (top_p >= 1.0 || n >= M) return M;
  return n + 1;
}

void token_select_cpu(const TokenSelectParams& p);
void token_pack_cpu(const TokenPackParams& p);
void token_pack_backward_cpu(const TokenPackBackwardParams& p);

// The CUDA sort keeps an image's keys in shared memory up to this many tokens (rounded up to
// a power of two: 64 KiB of keys); beyond it the same bitonic sort runs on a global-memory
// workspace, one block per image.
constexpr int64_t kTokenSelectSharedSortMax = 8192;

// Byte offsets of the CUDA scratch buffers (the CPU kernel allocates its own, O(M + T)).
struct TokenSelectWorkspace {
  size_t text_inv = 0;  // float [B, T_max]: 1 / max(|e_t|, eps), 0 for masked rows
  size_t partial = 0;   // float [B, chunks, H]: text sums over chunks of kTextChunk rows
  size_t text_sum = 0;  // float [B, H]: s_b
  size_t scores = 0;    // float [B, M_max]
  size_t keys = 0;      // uint64 [B, sort_n] (only when sort_n > kTokenSelectSharedSortMax)
  size_t flags = 0;     // uint8 [B, sort_n]  (same)
  size_t total = 0;
  int64_t chunks = 1;
  int64_t sort_n = 1;   // M_max rounded up to a power of two
  static constexpr int64_t kTextChunk = 64;
};

inline TokenSelectWorkspace token_select_workspace(const TokenSelectParams& p) {
  TokenSelectWorkspace w;
  w.chunks = p.T_max > 0 ? (p.T_max + w.kTextChunk - 1) / w.kTextChunk : 1;
  while (w.sort_n < p.M_max) w.sort_n *= 2;
  size_t at = 0;
  auto take = [&](size_t bytes) {
    const size_t here = at;
    at += (bytes + 255) / 256 * 256;
    return here;
  };
  const size_t B = static_cast<size_t>(p.B);
  w.text_inv = take(B * static_cast<size_t>(p.T_max) * sizeof(float));
  w.partial = take(B * static_cast<size_t>(w.chunks * p.H) * sizeof(float));
  w.text_sum = take(B * static_cast<size_t>(p.H) * sizeof(float));
  w.scores = take(B * static_cast<size_t>(p.M_max) * sizeof(float));
  const bool global_sort = w.sort_n > kTokenSelectSharedSortMax;
  w.keys = take(global_sort ? B * static_cast<size_t>(w.sort_n) * sizeof(uint64_t) : 0);
  w.flags = take(global_sort ? B * static_cast<size_t>(w.sort_n) : 0);
  w.total = at;
  return w;
}

size_t token_select_workspace_bytes(const TokenSelectParams& p);

#if defined(SLIME_WITH_CUDA) || defined(__CUDACC__)
LaunchStatus token_select_cuda(const TokenSelectParams& p, cudaStream_t stream);
LaunchStatus token_pack_cuda(const TokenPackParams& p, cudaStream_t stream);
LaunchStatus token_pack_backward_cuda(const TokenPackBackwardParams& p, cudaStream_t stream);
#endif

}  // namespace slime
