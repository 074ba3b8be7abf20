"""query_attention: learnable-query cross-attention, the core of SliME's resampler.

    out = softmax(q k^T * scale + key mask) v        per batch item and head

The queries are either shared by the whole batch (one [heads, Lq, d] tensor, broadcast
inside the kernel, never copied per item) or given per item. Softmax and accumulation run
in float32 for float32, bfloat16 and float16 inputs; float64 inputs (CPU only, for gradcheck
and references) run in float64 throughout and get a float64 lse. No Lq x Lk matrix is stored
(online softmax over key blocks). Backward recomputes the probabilities from the saved
log-sum-exp and is deterministic: a shared q's gradient is summed over the batch in a fixed
order.

Layout: the kernels need only the last dimension (d) contiguous; any other strides are read
as they are, so views such as ``x.view(B, L, heads, d).transpose(1, 2)`` cost no copy. A
tensor whose last dimension is strided is copied first.

Backends: "fused" is the kernels above. "sdpa" is torch's scaled_dot_product_attention with q
expanded over the batch (a view) and the same masks and zero rows. "auto" (the default) takes
sdpa on CUDA and the fused kernels elsewhere. Measured on an H100 (bench/results/
2026-11-22-cuda-NVIDIA-H100-80GB-HBM3.md), our CUDA kernels, which use no tensor cores, ran
5x to 50x slower than sdpa at SliME's shapes; on the CPU they match or beat it (1.0x to 1.25x,
2026-11-21-cpu-2core.md). sdpa's CUDA backward is not promised deterministic and it returns
no lse: pass backend="fused" for either.
"""
import math

import torch
import torch.nn.functional as F

from slime_core.ops._checks import check_same_device, check_same_dtype, check_tensor

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def _lse_dtype(q):
    """lse's dtype, the kernels' compute type: float64 for float64 inputs, else float32."""
    return torch.float64 if q.dtype == torch.float64 else torch.float32


def _key_mask(key_mask, key_padding_mask, batch, lk, device, allow_fully_masked):
    """One bool (B, Lk) mask, True = keep, from either convention (or None)."""
    if key_mask is not None and key_padding_mask is not None:
        raise ValueError("pass key_mask (True = keep, as SDPA's boolean mask and HF's "
                         "attention_mask) or key_padding_mask (True = ignore, as "
                         "nn.MultiheadAttention's), not both")
    name = "key_mask" if key_mask is not None else "key_padding_mask"
    mask = key_mask if key_mask is not None else key_padding_mask
    if mask is None:
        return None
    check_tensor(name, mask)
    if tuple(mask.shape) != (batch, lk):
        raise ValueError(f"{name} must have shape (B, Lk) = ({batch}, {lk}), got "
                         f"{tuple(mask.shape)}")
    if mask.device != device:
        raise ValueError(f"{name} is on {mask.device} but q is on {device}")
    eager = not torch.compiler.is_compiling()
    if mask.dtype == torch.bool:
        keep = mask if key_mask is not None else ~mask
    elif mask.dtype.is_floating_point:
        # An additive float mask (MHA and SDPA accept them): 0 keeps a key, -inf drops it,
        # the same in both conventions. Other values would reweight keys, which a padding
        # mask cannot express.
        keep = mask == 0
        if eager and not bool(torch.all(keep | (mask == float("-inf")))):
            raise ValueError(f"a float {name} may only hold 0 (keep) and -inf (drop); "
                             "pass a bool mask instead")
    elif key_mask is not None and not mask.dtype.is_complex:
        # HF's attention_mask: integer, 1 = keep, 0 = padding.
        keep = mask != 0
        if eager and not bool(torch.all((mask == 0) | (mask == 1))):
            raise ValueError("an integer key_mask may only hold 1 (keep) and 0 (drop), as "
                             "HF's attention_mask")
    else:
        raise TypeError(f"{name} must be bool (or a float mask of 0 / -inf"
                        f"{', or an integer 0/1 mask' if key_mask is not None else ''}), "
                        f"got {mask.dtype}")
    if eager and not allow_fully_masked and lk > 0 and batch > 0:
        empty = (~keep.any(dim=1)).nonzero().flatten().tolist()
        if empty:
            hint = ("key_mask means True = keep; a padding mask (True = ignore) goes in "
                    "key_padding_mask" if key_mask is not None else
                    "key_padding_mask means True = ignore; a keep mask (True = keep, like "
                    "HF's attention_mask) goes in key_mask")
            raise ValueError(
                f"{name} drops every key of batch item(s) {empty[:8]}"
                f"{' ...' if len(empty) > 8 else ''}: their output would be all zeros. "
                f"Is the mask inverted? {hint}. Pass allow_fully_masked=True if items "
                "without keys are intended (they get zeros and zero gradients).")
    return keep.contiguous()


def _layout_hint(q, k):
    """Names the likely cause of a head-count mismatch: FlashAttention's (B, L, heads, d)."""
    if k.shape[2] == q.shape[-3]:
        return ("; k and v look like FlashAttention's (B, Lk, heads, d) layout: pass "
                "k.transpose(1, 2) and v.transpose(1, 2) (views, no copy)")
    if q.dim() == 4 and q.shape[2] == k.shape[1]:
        return ("; q looks like FlashAttention's (B, Lq, heads, d) layout: pass "
                "q.transpose(1, 2)")
    return ""


_BACKENDS = ("auto", "fused", "sdpa")


def _sdpa(q, k, v, mask, scale):
    """The same function through torch's SDPA: a batch item without keys attends to all of
    them and is then zeroed, so it gets zeros and zero gradients, as from the kernels."""
    batch = k.shape[0]
    if q.dim() == 3:
        q = q.expand(batch, -1, -1, -1)
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    has_key = mask.any(dim=1)
    attend = (mask | ~has_key[:, None])[:, None, None, :]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attend, scale=scale)
    return out * has_key.view(batch, 1, 1, 1).to(out.dtype)


def query_attention(q, k, v, *, key_mask=None, key_padding_mask=None, scale=None,
                    return_lse=False, allow_fully_masked=False, backend="auto"):
    """Cross-attention of (usually shared, learnable) queries over a batch of keys/values.

    Args:
        q: (heads, Lq, d) shared by every batch item, or (B, heads, Lq, d).
        k: (B, heads, Lk, d)
        v: (B, heads, Lk, d)
        key_mask: (B, Lk), True / 1 where a key takes part: the library's one convention
            (SDPA's boolean mask, HF's attention_mask). bool, integer 0/1, or a float
            additive mask of 0 (keep) / -inf (drop).
        key_padding_mask: (B, Lk) bool, True where a key is padding and is ignored
            (nn.MultiheadAttention's convention, named so), or a float mask of 0 / -inf.
            Give at most one of the two masks.
        scale: score scale, default 1 / sqrt(d).
        return_lse: also return the log-sum-exp of the scaled scores.
        allow_fully_masked: a mask that drops every key of a batch item is an error
            (an inverted mask does exactly that), unless this is True.
        backend: "auto" (sdpa on CUDA, the fused kernels elsewhere), "fused" or "sdpa" (see
            the module docstring). return_lse needs the fused kernels.

    q, k, v share one dtype (float32, bfloat16 or float16; float64 on CPU only) and one
    device. A query row without keys (Lk = 0, or all masked with allow_fully_masked=True)
    gets zeros (and zero gradients), with lse = -inf.

    Returns:
        out: (B, heads, Lq, d) in q's dtype; with return_lse also lse: (B, heads, Lq),
        float32 (float64 for float64 inputs).
    """
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, _BACKENDS))}, got "
                         f"{backend!r}")
    if backend == "sdpa" and return_lse:
        raise ValueError("return_lse needs backend='fused' (or 'auto'): torch's SDPA returns "
                         "no log-sum-exp")
    check_tensor("q", q, dtypes=_FLOAT_DTYPES)
    if q.dim() not in (3, 4):
        raise ValueError(f"q must be (heads, Lq, d) or (B, heads, Lq, d), got shape "
                         f"{tuple(q.shape)}")
    check_tensor("k", k, dtypes=_FLOAT_DTYPES, ndim=4)
    check_tensor("v", v, dtypes=_FLOAT_DTYPES, ndim=4)
    check_same_dtype(q=q, k=k, v=v)
    check_same_device(q=q, k=k, v=v)
    if q.dtype == torch.float64 and q.device.type != "cpu":
        # The CUDA kernels are float32-accumulating only; float64 is for CPU gradchecks.
        raise TypeError(f"float64 is supported on CPU only; q, k, v are on {q.device}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got k {tuple(k.shape)} and v "
                         f"{tuple(v.shape)}")
    batch, heads, lk, d = k.shape
    qh, qd = q.shape[-3], q.shape[-1]
    if qh != heads:
        raise ValueError(f"q has {qh} heads but k and v have {heads}" + _layout_hint(q, k))
    if qd != d:
        raise ValueError(f"q has head dim {qd} but k and v have {d}")
    if q.dim() == 4 and q.shape[0] != batch:
        raise ValueError(f"q has batch {q.shape[0]} but k and v have {batch}")
    mask = _key_mask(key_mask, key_padding_mask, batch, lk, q.device, allow_fully_masked)
    if scale is None:
        scale = 1.0 / math.sqrt(d) if d > 0 else 1.0
    if backend == "auto":
        backend = "sdpa" if q.device.type == "cuda" and not return_lse else "fused"
    # Empty shapes stay with the kernels, which define them (zeros, lse -inf).
    if backend == "sdpa" and min(batch, lk, d) > 0:
        return _sdpa(q, k, v, mask, float(scale))
    out, lse = torch.ops.slime.query_attention(q, k, v, mask, float(scale))
    return (out, lse) if return_lse else out


@torch.library.register_fake("slime::query_attention")
def _query_attention_fake(q, k, v, key_mask, scale):
    batch, heads, _, d = k.shape
    lq = q.shape[-2]
    out = q.new_empty((batch, heads, lq, d))
    lse = q.new_empty((batch, heads, lq), dtype=_lse_dtype(q))
    return out, lse


@torch.library.register_fake("slime::query_attention_backward")
def _query_attention_backward_fake(dout, dlse, q, k, v, out, lse, key_mask, scale):
    return (q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape))


def _setup_context(ctx, inputs, output):
    q, k, v, key_mask, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, key_mask)
    ctx.scale = scale


def _backward(ctx, dout, dlse):
    q, k, v, out, lse, key_mask = ctx.saved_tensors
    if dout is None:  # only lse was used
        dout = torch.zeros_like(out)
    # A gradient on lse is exact too: d lse / d score = P, folded into the kernel's delta.
    dq, dk, dv = torch.ops.slime.query_attention_backward(
        dout, dlse, q, k, v, out, lse, key_mask, ctx.scale)
    return dq, dk, dv, None, None


torch.library.register_autograd("slime::query_attention", _backward,
                                setup_context=_setup_context)
