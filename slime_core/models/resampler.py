"""SliME's resampler: learned queries cross-attend to one crop's
vision tokens. Used with a 12x12 query grid to compress each local tile from 576 tokens to
144, and with a 24x24 grid as the global branch's second expert.

    kv  = LN_kv(kv_proj(x))                                  per crop, (Lk, D)
    q   = LN_q(query) + pos_embed                            shared, (Lq, D)
    k   = kv + resize(pos_embed, key grid)      v = kv
    out = proj(LN_post(MultiheadAttention(q, k, v)))         per crop, (Lq, out_dim)

Parameters carry the released checkpoints' names (query, pos_embed, kv_proj.weight,
attn.in_proj_weight, attn.in_proj_bias, attn.out_proj.weight, attn.out_proj.bias, ln_q.*,
ln_kv.*, ln_post.*, proj.*), so their weights load unchanged.

How this differs from the released code, which repeats the queries for every crop and runs
nn.MultiheadAttention (slime_core.ops.reference.ResamplerRef), while computing the same
function:
- the query projection runs once per forward, not once per crop, and the attention kernel
  (slime_core.ops.query_attention) broadcasts it over the crops;
- K and V come from one GEMM against the stacked [W_k; W_v], and the key position term is
  folded into a bias: (kv + pos) W_k^T + b_k = kv W_k^T + (pos W_k^T + b_k), computed once
  per forward (and cached across forwards when no gradient is needed);
- K and V are strided views of that GEMM's output: no per-head copies.
"""
import math
from functools import partial

import torch
from torch import nn
from torch.nn import functional as F

from slime_core.models.pos_embed import resize_pos_embed, sincos_pos_embed_2d
from slime_core.ops.query_attention import query_attention


class QueryAttentionWeights(nn.Module):
    """The projections of torch.nn.MultiheadAttention(embed_dim, num_heads), with its names
    and its initialisation, so checkpoints and the nn.MultiheadAttention reference map
    one to one. Resampler.forward uses them directly."""

    def __init__(self, embed_dim, num_heads):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))  # [W_q; W_k; W_v]
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def extra_repr(self):
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}"


class Resampler(nn.Module):
    """One cross-attention layer from grid_size**2 learned queries to a square grid of keys.

    Args:
        grid_size: side of the query grid (12 for SliME's local compressor, 24 for the
            global expert); Lq = grid_size**2.
        embed_dim: width D of the attention (1024 in SliME).
        num_heads: attention heads (8 in SliME, head dim 128).
        kv_dim: width of the input tokens; a bias-free kv_proj maps it to D when it differs.
        out_dim: width of an output projection `proj` (None: no projection).
    """

    def __init__(self, grid_size, embed_dim, num_heads, kv_dim=None, out_dim=None):
        super().__init__()
        self.grid_size, self.embed_dim, self.num_heads = grid_size, embed_dim, num_heads
        # Fixed, not trained; stored in float16 because the released checkpoints store it so.
        self.pos_embed = nn.Parameter(sincos_pos_embed_2d(embed_dim, grid_size).half(),
                                      requires_grad=False)
        self.query = nn.Parameter(torch.zeros(grid_size * grid_size, embed_dim))
        nn.init.trunc_normal_(self.query, std=0.02)
        self.kv_proj = (nn.Linear(kv_dim, embed_dim, bias=False)
                        if kv_dim is not None and kv_dim != embed_dim else nn.Identity())
        self.attn = QueryAttentionWeights(embed_dim, num_heads)
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.ln_q, self.ln_kv, self.ln_post = norm(embed_dim), norm(embed_dim), norm(embed_dim)
        self.proj = nn.Linear(embed_dim, out_dim) if out_dim is not None else nn.Identity()
        self._bias_cache = None  # (key, (Lk, 2D) bias) of the last no-grad forward
        # False: attention through the plain-PyTorch reference instead of the fused op (same
        # function; for checking a model end to end against its readable path).
        self.use_fused_ops = True

    def _kv_bias(self, grid, dtype):
        """(Lk, 2D): [pos_k W_k^T + b_k, b_v], the bias of the fused K|V projection."""
        w, b, pos = self.attn.in_proj_weight, self.attn.in_proj_bias, self.pos_embed
        cacheable = not torch.compiler.is_compiling() and not (
            torch.is_grad_enabled() and (w.requires_grad or b.requires_grad))
        if cacheable:
            key = (grid, dtype, w.device, w.data_ptr(), w._version, b.data_ptr(), b._version,
                   pos.data_ptr(), pos._version)
            if self._bias_cache is not None and self._bias_cache[0] == key:
                return self._bias_cache[1]
        dim = self.embed_dim
        pos_k = resize_pos_embed(pos, grid).to(dtype)
        bias_k = F.linear(pos_k, w[dim:2 * dim], b[dim:2 * dim])
        bias = torch.cat([bias_k, b[2 * dim:].expand_as(bias_k)], dim=1)
        if cacheable:
            self._bias_cache = (key, bias)
        return bias

    def forward(self, x, key_mask=None, *, key_padding_mask=None, allow_fully_masked=False):
        """Compresses each item's tokens to grid_size**2 outputs.

        Args:
            x: (B, Lk, kv_dim) or (Lk, kv_dim); Lk a square number (the key grid, e.g.
                576 = 24 x 24 CLIP patch tokens).
            key_mask: (B, Lk) (or (Lk,)), True / 1 = this token takes part: the library's
                one mask convention (SDPA, HF attention_mask).
            key_padding_mask: (B, Lk) bool, True = ignore this token
                (nn.MultiheadAttention's convention, which the released code used). Give
                at most one of the two.
            allow_fully_masked: an item whose tokens are all masked is an error (its
                output would be a constant), unless this is True.

        Returns:
            (B, grid_size**2, out_dim or embed_dim), or (grid_size**2, ...) for a 2-D x.
        """
        single = x.dim() == 2
        if single:
            x = x.unsqueeze(0)
            key_mask = None if key_mask is None else key_mask.unsqueeze(0)
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
        if x.dim() != 3:
            raise ValueError(f"x must be (B, Lk, kv_dim) or (Lk, kv_dim), got {tuple(x.shape)}")
        in_dim = self.kv_proj.in_features if isinstance(self.kv_proj, nn.Linear) else self.embed_dim
        if x.shape[-1] != in_dim:
            raise ValueError(
                f"x has width {x.shape[-1]} but this Resampler takes {in_dim}-wide tokens; "
                f"construct it with kv_dim={x.shape[-1]} (a kv_proj then maps the tokens to "
                f"embed_dim={self.embed_dim})")
        if x.dtype != self.query.dtype:
            raise TypeError(f"x has dtype {x.dtype} but the Resampler's parameters are "
                            f"{self.query.dtype}; cast one to the other (e.g. "
                            f"resampler.to({x.dtype}) or x.to({self.query.dtype}))")
        batch, lk, _ = x.shape
        # int() specialises a symbolic Lk under torch.compile(dynamic=True): the key grid
        # decides the shape of the position term, so a new Lk recompiles (rare), while the
        # batch stays dynamic.
        lk = int(lk)
        grid = math.isqrt(lk)
        if grid * grid != lk:
            raise ValueError(f"x has {lk} tokens per item; the resampler needs a square key "
                             "grid (e.g. 576 = 24 x 24)")
        dim, heads = self.embed_dim, self.num_heads
        hd, lq = dim // heads, self.query.shape[0]
        w, b = self.attn.in_proj_weight, self.attn.in_proj_bias

        kv = self.ln_kv(self.kv_proj(x))                                  # (B, Lk, D)
        q_in = self.ln_q(self.query) + self.pos_embed                     # (Lq, D)
        q = F.linear(q_in, w[:dim], b[:dim])                              # once, not per crop
        q = q.view(lq, heads, hd).transpose(0, 1)                         # (heads, Lq, hd)
        kvp = F.linear(kv, w[dim:])                                       # (B, Lk, 2D)
        kvp.add_(self._kv_bias(grid, kvp.dtype))
        # (B, heads, Lk, hd) views, no copy; split (not two slices) so that backward joins
        # the two gradients with one cat instead of zero-filling and adding two full copies.
        k, v = (t.view(batch, lk, heads, hd).transpose(1, 2) for t in kvp.split(dim, dim=-1))
        if self.use_fused_ops:
            out = query_attention(q, k, v, key_mask=key_mask, key_padding_mask=key_padding_mask,
                                  allow_fully_masked=allow_fully_masked)  # (B, heads, Lq, hd)
        else:
            from slime_core.ops.reference import query_attention_ref
            keep = key_mask.bool() if key_mask is not None else (
                None if key_padding_mask is None else ~key_padding_mask)
            out = query_attention_ref(q, k, v, keep, upcast=False)[0]
        out = self.attn.out_proj(out.transpose(1, 2).reshape(batch, lq, dim))
        out = self.proj(self.ln_post(out))
        return out.squeeze(0) if single else out
