"""Text-guided selection of local visual tokens (SliME's TextGuidedSampler) and the packing
gather that splices the kept tokens into an LLM input.

    sel = token_select(tokens, text, text_mask, token_counts, top_p=0.95)
    packed = token_pack(tokens, sel)                 # kept rows of every image, back to back

(slime_core.ops.pack builds a whole batched LLM input from a selection.)

Semantics (both backends; the C++ header slime/token_select.h says the same):

* score_m = sum over unmasked t of cosine_similarity(x_m, e_t), computed in O(M*H + T*H) as
  dot(x_m / max(|x_m|, 1e-8), sum_t e_t / max(|e_t|, 1e-8)) in float32 whatever the input
  dtype. The per-norm clamp is torch.nn.functional.cosine_similarity's, so a zero vector (a
  zero token or a zero text row) contributes 0, never NaN.
* q = score, or softmax(score / prenorm_temperature) when given. Two released SliME rules:
  the repository's current code (its 2024-11 update) uses q = score, a single softmax:
  prenorm_temperature=None, the default and the rule to train with. The first release
  (2024-06, which the published checkpoints were trained with) applied softmax(score / 0.5)
  first: prenorm_temperature=0.5 reproduces it, to run those checkpoints as trained. Its
  double softmax makes p nearly uniform (all p within ~0.5% of 1/M), so top-p 0.95 keeps
  about 95% of the tokens and WHICH 5% are dropped hinges on differences of ~1e-6 in p: a
  1e-4 change in the tokens (another GEMM, a compiled kernel) changes many kept slots. With
  the single softmax, the kept set follows the scores and is stable under such noise.
  Then p = softmax((q + noise) / temperature) over the image's M_b tokens (denominator in
  double, p stored as float32).
* Ranking: p descending, equal float32 probabilities by the lower token index (deterministic).
  top_p: c_j = cumulative sum (double) of the ranked p; n = #{j : c_j <= top_p}; keep n + 1
  ranked tokens, all of them when n == M_b or top_p == 1. top_k: keep min(k, M_b).
  The kept indices are returned ascending.
* Edge cases: no unmasked text token (T = 0 or an all-False mask) gives score 0 for every
  token, a uniform p = 1/M_b, so top_p keeps n + 1 tokens (n = how many of the running
  sums j/M_b are <= top_p, about floor(top_p * M_b)), the lowest indices by the tie rule.
  An image with M_b = 0 keeps nothing (count 0, indices all -1).
* Not differentiable (a hard choice, as in SliME): gradients reach the kept tokens through
  token_pack.
"""
from typing import NamedTuple, Optional

import torch

from slime_core import _ext
from slime_core.ops._checks import check_same_device, check_tensor

_ext.load()

_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


class TokenSelection(NamedTuple):
    """What token_select keeps, per image (unbatched inputs give unbatched fields)."""
    indices: torch.Tensor  # (B, M_max) int64: kept token indices ascending, then -1
    counts: torch.Tensor   # (B,) int64: how many were kept
    probs: torch.Tensor    # (B, M_max) float32: p over each image's tokens, 0 on padding


def as_counts(name, counts, batch, device, allow_negative=False):
    """A (batch,) int64 tensor from a tensor or a list of Python ints (the processor's lists)."""
    if isinstance(counts, (list, tuple)):
        if not all(isinstance(c, int) and not isinstance(c, bool) for c in counts):
            raise TypeError(f"{name} must be ints, got {counts!r}")
        counts = torch.tensor(counts, dtype=torch.int64, device=device)
    elif isinstance(counts, int) and not isinstance(counts, bool):
        counts = torch.tensor([counts], dtype=torch.int64, device=device)
    check_tensor(name, counts)
    if counts.is_floating_point() or counts.is_complex() or counts.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got {counts.dtype}")
    counts = counts.reshape(-1) if counts.dim() == 0 else counts
    if counts.dim() != 1 or counts.shape[0] != batch:
        raise ValueError(f"{name} must have shape ({batch},), got {tuple(counts.shape)}")
    if (not allow_negative and not torch.compiler.is_compiling() and counts.numel()
            and bool((counts < 0).any())):
        raise ValueError(f"{name} must be >= 0, got {counts.tolist()}")
    return counts.to(device=device, dtype=torch.int64)


def _positive_float(name, v):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(v).__name__}")
    if not v > 0:
        raise ValueError(f"{name} must be > 0, got {v}")
    return float(v)


def token_select(
    tokens: torch.Tensor,                      # (B, M_max, H) or (M, H); float32/16, bfloat16
    text: torch.Tensor,                        # (B, T_max, H) or (T, H); tokens' dtype
    text_mask: Optional[torch.Tensor] = None,  # (B, T_max) or (T,); bool/int, nonzero = real
    token_counts=None,                         # (B,) int tensor or list: M_b tokens of image b
    *,
    top_p: Optional[float] = None,
    top_k: Optional[int] = None,
    temperature: float = 1.0,
    prenorm_temperature: Optional[float] = None,
    noise: Optional[torch.Tensor] = None,      # (B, M_max) or (M,) float: added to q (training)
) -> TokenSelection:
    """Selects each image's local tokens most similar to its text (see the module docstring).

    Give exactly one of top_p (in (0, 1]) and top_k (>= 1). prenorm_temperature=None is the
    current released rule; 0.5 the first release's (published checkpoints), see above.
    Returns a TokenSelection(indices, counts, probs). Ragged batches are padded:
    image b has token_counts[b] valid rows of tokens[b] and the text rows where text_mask[b]
    is true. Output shapes depend only on the input shapes (torch.compile-friendly). With
    unbatched inputs ((M, H) tokens, (T, H) text) the outputs are unbatched too. For
    training noise, pass e.g. 0.1 * torch.randn(B, M_max): the op itself is deterministic.
    token_counts outside [0, M_max] is an error on CPU; the CUDA kernel clamps them (checking
    would need a device sync).
    """
    check_tensor("tokens", tokens, dtypes=_FLOATS)
    check_tensor("text", text, dtypes=_FLOATS)
    unbatched = tokens.dim() == 2
    if tokens.dim() not in (2, 3):
        raise ValueError(f"tokens must be (B, M, H) or (M, H), got shape {tuple(tokens.shape)}")
    if text.dim() != tokens.dim():
        raise ValueError(f"text must have {tokens.dim()} dimensions like tokens, got shape "
                         f"{tuple(text.shape)}")
    if unbatched:
        tokens, text = tokens.unsqueeze(0), text.unsqueeze(0)
        text_mask = None if text_mask is None else _unsqueeze("text_mask", text_mask, 1)
        noise = None if noise is None else _unsqueeze("noise", noise, 1)
        if token_counts is not None:
            token_counts = as_counts("token_counts", token_counts, 1, tokens.device)
    B, M, H = tokens.shape
    if text.dtype != tokens.dtype:
        raise TypeError(f"text has dtype {text.dtype} but tokens has {tokens.dtype}; they "
                        "must match")
    if text.shape[0] != B or text.shape[2] != H:
        raise ValueError(f"text shape {tuple(text.shape)} does not match tokens "
                         f"{tuple(tokens.shape)}: expected (B, T, H) with the same B and H")
    T = text.shape[1]
    if text_mask is None:
        text_mask = torch.ones(B, T, dtype=torch.bool, device=text.device)
    else:
        check_tensor("text_mask", text_mask, ndim=2)
        if tuple(text_mask.shape) != (B, T):
            raise ValueError(f"text_mask must have shape {(B, T)}, got {tuple(text_mask.shape)}")
        if text_mask.is_floating_point() or text_mask.is_complex():
            raise TypeError(f"text_mask must be bool or integer, got {text_mask.dtype}")
        if text_mask.dtype != torch.bool:
            text_mask = text_mask != 0
    if token_counts is None:
        token_counts = torch.full((B,), M, dtype=torch.int64, device=tokens.device)
    else:
        token_counts = as_counts("token_counts", token_counts, B, tokens.device)
    if noise is not None:
        check_tensor("noise", noise, ndim=2)
        if not noise.is_floating_point():
            raise TypeError(f"noise must be a float tensor, got {noise.dtype}")
        if tuple(noise.shape) != (B, M):
            raise ValueError(f"noise must have shape {(B, M)}, got {tuple(noise.shape)}")
        noise = noise.detach().float()
    check_same_device(tokens=tokens, text=text, text_mask=text_mask, token_counts=token_counts,
                      noise=noise)
    if (top_p is None) == (top_k is None):
        raise ValueError("give exactly one of top_p and top_k")
    if top_p is not None:
        if isinstance(top_p, bool) or not isinstance(top_p, (int, float)):
            raise TypeError(f"top_p must be a float, got {type(top_p).__name__}")
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        top_p = float(top_p)
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, int):
            raise TypeError(f"top_k must be an int, got {type(top_k).__name__}")
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
    temperature = _positive_float("temperature", temperature)
    if prenorm_temperature is not None:
        prenorm_temperature = _positive_float("prenorm_temperature", prenorm_temperature)
    indices, counts, probs = torch.ops.slime.token_select(
        tokens.detach(), token_counts, text.detach(), text_mask, noise, top_p, top_k,
        temperature, prenorm_temperature)
    if unbatched:
        return TokenSelection(indices[0], counts[0], probs[0])
    return TokenSelection(indices, counts, probs)


def _unsqueeze(name, t, ndim):
    check_tensor(name, t, ndim=ndim)
    return t.unsqueeze(0)


def token_pack(
    tokens: torch.Tensor,                        # (B, M_max, H), or (M, H) with (K,) indices
    indices,                                     # (B, K) int64 kept indices, or a TokenSelection
    counts=None,                                 # (B,) int64 or list: first counts[b] used
    *,
    row_offsets: Optional[torch.Tensor] = None,  # (B,) int64: first output row of image b
    base: Optional[torch.Tensor] = None,         # (N, H): rows the op does not write
    out_rows: Optional[int] = None,              # N when base is None (default B * K)
) -> torch.Tensor:                               # (N, H)
    """out = base; out[row_offsets[b] + j] = tokens[b, indices[b, j]] for j < counts[b].

    `token_pack(tokens, selection)` takes a TokenSelection whole (indices and counts); with
    bare indices give counts too. row_offsets, base and out_rows are keyword-only, so
    `token_pack(tokens, *selection)` is an error instead of binding probs to an argument.
    An unbatched selection ((M, H) tokens, (K,) indices, a 0-d count) packs unbatched.

    The output shape is static (base's, or (out_rows, H) of zeros), so the data-dependent
    counts never become a shape. row_offsets defaults to packing the images back to back
    (exclusive cumulative sum of counts). For a batched LLM input (B, L, H) with attention
    mask and position ids, use slime_core.ops.pack (pack_image_tokens, splice_image_tokens).
    Differentiable in tokens and base (base gets no gradient on the rows that were
    overwritten). On CPU, out-of-range or repeated indices and overlapping images are
    errors; the CUDA kernel skips out-of-range rows (it cannot check without a device sync)
    and requires the same preconditions.
    """
    if isinstance(indices, TokenSelection):
        if counts is not None:
            raise ValueError("counts comes from the TokenSelection; do not pass it too")
        indices, counts = indices.indices, indices.counts
    elif counts is None:
        raise ValueError("pass a TokenSelection, or the kept indices and their counts")
    check_tensor("tokens", tokens, dtypes=_FLOATS)
    check_tensor("indices", indices, dtypes=(torch.int64,))
    if tokens.dim() == 2 and indices.dim() == 1:  # one image
        counts = as_counts("counts", counts, 1, tokens.device)
        if row_offsets is not None:
            row_offsets = as_counts("row_offsets", row_offsets, 1, tokens.device)
        if base is None and out_rows is None:
            out_rows = indices.shape[0]
        return token_pack(tokens.unsqueeze(0), indices.unsqueeze(0), counts,
                          row_offsets=row_offsets, base=base, out_rows=out_rows)
    if isinstance(counts, (list, tuple)):
        counts = as_counts("counts", counts, len(counts), tokens.device)
    check_tensor("tokens", tokens, dtypes=_FLOATS, ndim=3)
    check_tensor("indices", indices, dtypes=(torch.int64,), ndim=2)
    check_tensor("counts", counts, dtypes=(torch.int64,), ndim=1)
    B, M, H = tokens.shape
    if indices.shape[0] != B or counts.shape[0] != B:
        raise ValueError(f"indices {tuple(indices.shape)} and counts {tuple(counts.shape)} must "
                         f"have B = {B} rows like tokens {tuple(tokens.shape)}")
    if row_offsets is None:
        row_offsets = torch.cumsum(counts, 0) - counts
    else:
        check_tensor("row_offsets", row_offsets, dtypes=(torch.int64,), ndim=1)
        if row_offsets.shape[0] != B:
            raise ValueError(f"row_offsets must have shape ({B},), got {tuple(row_offsets.shape)}")
    if base is None:
        n = B * indices.shape[1] if out_rows is None else out_rows
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"out_rows must be an int >= 0, got {out_rows!r}")
        base = tokens.new_zeros(n, H)
    else:
        if out_rows is not None:
            raise ValueError("give base or out_rows, not both")
        check_tensor("base", base, ndim=2)
        if base.dtype != tokens.dtype:
            raise TypeError(f"base has dtype {base.dtype} but tokens has {tokens.dtype}; they "
                            "must match")
        if base.shape[1] != H:
            raise ValueError(f"base must have H = {H} columns like tokens, got {tuple(base.shape)}")
    check_same_device(tokens=tokens, indices=indices, counts=counts, row_offsets=row_offsets,
                      base=base)
    return torch.ops.slime.token_pack(tokens, indices, counts, row_offsets, base)


# ---- fake kernels (torch.compile / meta) and autograd ----------------------------------

@torch.library.register_fake("slime::token_select")
def _token_select_fake(tokens, token_counts, text, text_mask, noise, top_p, top_k, temperature,
                       prenorm_temperature):
    B, M, _ = tokens.shape
    return (tokens.new_empty((B, M), dtype=torch.int64),
            tokens.new_empty((B,), dtype=torch.int64),
            tokens.new_empty((B, M), dtype=torch.float32))


@torch.library.register_fake("slime::token_pack")
def _token_pack_fake(tokens, indices, counts, row_offsets, base):
    return torch.empty_like(base, memory_format=torch.contiguous_format)


@torch.library.register_fake("slime::token_pack_backward")
def _token_pack_backward_fake(grad_out, indices, counts, row_offsets, num_tokens):
    B = indices.shape[0]
    return (grad_out.new_empty((B, num_tokens, grad_out.shape[1])),
            torch.empty_like(grad_out, memory_format=torch.contiguous_format))


def _token_pack_setup_context(ctx, inputs, output):
    tokens, indices, counts, row_offsets, _ = inputs
    ctx.save_for_backward(indices, counts, row_offsets)
    ctx.num_tokens = tokens.shape[1]


def _token_pack_backward(ctx, grad):
    indices, counts, row_offsets = ctx.saved_tensors
    grad_tokens, grad_base = torch.ops.slime.token_pack_backward(
        grad.contiguous(), indices, counts, row_offsets, ctx.num_tokens)
    return grad_tokens, None, None, None, grad_base


torch.library.register_autograd("slime::token_pack", _token_pack_backward,
                                setup_context=_token_pack_setup_context)
