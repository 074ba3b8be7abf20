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
"""
import math

import torch

from slime_core.ops._checks import check_same_device, check_same_dtype, check_tensor

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def _lse_dtype(q):
    """lse's dtype, the kernels' compute type: float64 for float64 inputs, else float32."""
    return torch.float64 if q.dtype == torch.float64 else torch.float32


def _key_mask(key_mask, key_padding_mask, batch, lk, device):
    """One bool [B, Lk] mask, True = keep, from either convention (or None)."""
    if key_mask is not None and key_padding_mask is not None:
        raise ValueError("pass key_mask (True = keep, as SDPA's boolean mask) or "
                         "key_padding_mask (True = ignore, as nn.MultiheadAttention's), not both")
    name = "key_mask" if key_mask is not None else "key_padding_mask"
    mask = key_mask if key_mask is not None else key_padding_mask
    if mask is None:
        return None
    check_tensor(name, mask)
    if tuple(mask.shape) != (batch, lk):
        raise ValueError(f"{name} must have shape [B, Lk] = [{batch}, {lk}], got "
                         f"{tuple(mask.shape)}")
    if mask.device != device:
        raise ValueError(f"{name} is on {mask.device} but q is on {device}")
    if mask.dtype == torch.bool:
        keep = mask if key_mask is not None else ~mask
    elif mask.dtype.is_floating_point:
        # An additive float mask (MHA and SDPA accept them): 0 keeps a key, -inf drops it.
        # Other values would reweight keys, which a padding mask cannot express.
        keep = mask == 0
        if not torch.compiler.is_compiling() and not bool(
                torch.all(keep | (mask == float("-inf")))):
            raise ValueError(f"a float {name} may only hold 0 (keep) and -inf (drop); "
                             "pass a bool mask instead")
    else:
        raise TypeError(f"{name} must be bool (or a float mask of 0 / -inf), got {mask.dtype}")
    return keep.contiguous()


def query_attention(q, k, v, *, key_mask=None, key_padding_mask=None, scale=None,
                    return_lse=False):
    """Cross-attention of (usually shared, learnable) queries over a batch of keys/values.

    Args:
        q: (heads, Lq, d) shared by every batch item, or (B, heads, Lq, d).
        k: (B, heads, Lk, d)
        v: (B, heads, Lk, d)
        key_mask: (B, Lk) bool, True where a key takes part (SDPA's convention), or a
            float mask of 0 (keep) / -inf (drop).
        key_padding_mask: (B, Lk) bool, True where a key is padding and is ignored
            (nn.MultiheadAttention's convention), or a float mask of 0 / -inf (additive
            masks mean the same in both conventions). Give at most one of the two masks.
        scale: score scale, default 1 / sqrt(d).
        return_lse: also return the log-sum-exp of the scaled scores.

    q, k, v share one dtype (float32, bfloat16 or float16; float64 on CPU only) and one
    device. A query row whose keys are all masked gets zeros (and zero gradients), with
    lse = -inf.

    Returns:
        out: (B, heads, Lq, d) in q's dtype; with return_lse also lse: (B, heads, Lq),
        float32 (float64 for float64 inputs).
    """
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
        raise ValueError(f"q has {qh} heads but k and v have {heads}")
    if qd != d:
        raise ValueError(f"q has head dim {qd} but k and v have {d}")
    if q.dim() == 4 and q.shape[0] != batch:
        raise ValueError(f"q has batch {q.shape[0]} but k and v have {batch}")
    mask = _key_mask(key_mask, key_padding_mask, batch, lk, q.device)
    if scale is None:
        scale = 1.0 / math.sqrt(d) if d > 0 else 1.0
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
