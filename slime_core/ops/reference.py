"""Plain-PyTorch references of the fused ops: readable, slow, used by the tests and the
benchmarks as the ground truth the kernels are checked against."""
import math
from functools import partial

import torch
from torch import nn
from torch.nn import functional as F

# The fixed position embedding is part of the model, not a reference of it: shared here.
from slime_core.models.pos_embed import resize_pos_embed, sincos_pos_embed_2d  # noqa: F401


# ---- tile_resize ----

def tile_resize_ref(image, plan, filter="bicubic", mean=None, std=None, dtype=torch.uint8):
    """SliME's crops of one image as its released pipeline makes them, with Pillow: global view
    (plain resize to S x S), then resize-and-pad on black and S x S tiles row-major.

    image: uint8 (H, W, 3) numpy array or tensor; plan: slime_core.preprocess.Plan.
    Returns (n_crops, 3, S, S): uint8, or for a float dtype (x / 255 - mean) / std computed in
    float32 then rounded to dtype."""
    import numpy as np
    from PIL import Image

    resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}[filter]
    S = plan.tile_size
    im = Image.fromarray(np.asarray(image), "RGB")
    crops = []
    if plan.global_view:
        crops.append(np.asarray(im.resize((S, S), resample)))
    if plan.grid_w:
        canvas = Image.new("RGB", plan.canvas_wh, (0, 0, 0))
        canvas.paste(im.resize((plan.new_w, plan.new_h), resample), (plan.off_x, plan.off_y))
        for ty in range(plan.grid_h):
            for tx in range(plan.grid_w):
                crops.append(np.asarray(canvas.crop((tx * S, ty * S, (tx + 1) * S, (ty + 1) * S))))
    out = torch.from_numpy(np.stack(crops).transpose(0, 3, 1, 2).copy())
    if dtype == torch.uint8:
        return out
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return ((out.to(torch.float32) / 255.0 - m) / s).to(dtype)


# ---- token_select ----
# Two references: the released SliME selection transcribed literally (an M x T cosine matrix,
# one image at a time), and a fast batched reference of the op's documented semantics.

def token_select_literal(x, e, mask, top_p, *, temperature=1.0, prenorm_temperature=0.5,
                         noise=None):
    """SliME's TextGuidedRouterCosine + TextGuidedSampler.forward, step for step.

    x (M, H) local tokens, e (T, H) text embeddings, mask (T,) (nonzero = a real text token,
    or None: the released code then averages instead of summing), noise (M,) or None (the
    released code draws randn * 0.1 here in training). Returns (kept indices ascending (K,)
    int64, probabilities (M,)). The released sampler softmaxes at temperature 0.5 before the
    noise (prenorm_temperature=0.5); prenorm_temperature=None skips that step. Computes in
    the inputs' dtype, as the released code does: upcast the inputs to float64 for ground
    truth. The cosine matrix costs M * T * H memory."""
    similarity_matrix = F.cosine_similarity(x.unsqueeze(1), e.unsqueeze(0), dim=-1)
    if mask is not None:
        attn_mask = mask == False  # noqa: E712  (the released code's spelling)
        similarity_matrix = similarity_matrix.masked_fill(attn_mask.unsqueeze(0), float(0))
        similarity_matrix = similarity_matrix.sum(dim=-1)
    else:
        similarity_matrix = similarity_matrix.mean(dim=-1)
    local_probs = similarity_matrix
    if prenorm_temperature is not None:
        local_probs = F.softmax(local_probs / prenorm_temperature, dim=-1)
    if noise is not None:
        local_probs = local_probs + noise
    local_probs = F.softmax(local_probs / temperature, dim=-1)
    sorted_probs, sorted_indices = torch.sort(local_probs, descending=True)
    cumulative_probs = torch.cumsum(sorted_probs, dim=0)
    selected_indices = (cumulative_probs <= top_p).nonzero(as_tuple=True)[0]
    if selected_indices.numel() < sorted_indices.numel():
        selected_indices = sorted_indices[:selected_indices.numel() + 1]
    selected_indices, _ = selected_indices.sort(descending=False)
    return selected_indices, local_probs


def token_select_ref(tokens, text, text_mask, token_counts, *, top_p=None, top_k=None,
                     temperature=1.0, prenorm_temperature=None, noise=None,
                     compute_dtype=torch.float64):
    """The op's semantics in plain PyTorch, batched over padded inputs, O(M*H + T*H).

    tokens (B, M, H), text (B, T, H), text_mask (B, T) bool, token_counts (B,), noise (B, M)
    or None. Returns (indices (B, M) int64 ascending then -1, counts (B,) int64,
    probs (B, M) float32 with 0 on padding), ranking by (p desc, index asc) with a stable
    sort. compute_dtype float64 gives ground truth; float32 mirrors the kernels."""
    B, M, _ = tokens.shape
    x = tokens.to(compute_dtype)
    e = text.to(compute_dtype)
    eps = 1e-8
    e_unit = e / e.norm(dim=-1, keepdim=True).clamp_min(eps)
    s = (e_unit * text_mask.unsqueeze(-1).to(compute_dtype)).sum(dim=1)  # (B, H)
    scores = torch.einsum("bmh,bh->bm", x, s) / x.norm(dim=-1).clamp_min(eps)
    indices = torch.full((B, M), -1, dtype=torch.int64, device=tokens.device)
    counts = torch.zeros(B, dtype=torch.int64, device=tokens.device)
    probs = torch.zeros(B, M, dtype=torch.float32, device=tokens.device)
    for b in range(B):
        n_tok = int(token_counts[b])
        q = scores[b, :n_tok]
        if prenorm_temperature is not None:
            q = torch.softmax(q / prenorm_temperature, dim=0)
        if noise is not None:
            q = q + noise[b, :n_tok].to(compute_dtype)
        p = torch.softmax(q / temperature, dim=0).float()
        probs[b, :n_tok] = p
        order = torch.sort(p, descending=True, stable=True).indices
        if top_k is not None:
            keep = min(top_k, n_tok)
        elif top_p >= 1.0:
            keep = n_tok
        else:
            c = torch.cumsum(p[order].double(), dim=0)
            n = int((c <= top_p).sum())
            keep = n_tok if n >= n_tok else n + 1
        kept = order[:keep].sort().values
        indices[b, :keep] = kept
        counts[b] = keep
    return indices, counts, probs


def pack_image_tokens_ref(tokens, indices, counts, prefix=None):
    """pack_image_tokens the obvious way: per image [prefix rows, tokens[b, kept]] then zero
    rows, (B, P + K, H), with the counts P + counts (B,)."""
    B, _, H = tokens.shape
    P = 0 if prefix is None else prefix.shape[-2]
    rows = []
    for b in range(B):
        kept = tokens[b, indices[b, :int(counts[b])]]
        parts = ([] if prefix is None else [prefix if prefix.dim() == 2 else prefix[b]]) + [kept]
        block = torch.cat(parts)
        pad = tokens.new_zeros(P + indices.shape[1] - block.shape[0], H)
        rows.append(torch.cat([block, pad]))
    out = torch.stack(rows) if rows else tokens.new_zeros(0, P + indices.shape[1], H)
    return out, counts + P


# ---- query_attention ----


def query_attention_ref(q, k, v, key_mask=None, scale=None, *, upcast=True):
    """Plain attention with the queries broadcast over the batch.

    q: (heads, Lq, d) or (B, heads, Lq, d); k, v: (B, heads, Lk, d); key_mask: (B, Lk) bool,
    True = keep. With upcast the math runs in float64 (the ground truth); without, in the
    inputs' dtype (what plain PyTorch attention gives in that dtype). Returns out
    (B, heads, Lq, d) and lse (B, heads, Lq); rows without any key give 0 and -inf."""
    dtype = torch.float64 if upcast else q.dtype
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    if q.dim() == 3:
        q = q.unsqueeze(0).expand(k.shape[0], *q.shape)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = (q @ k.transpose(-1, -2)) * scale
    if key_mask is not None:
        s = s.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    lse = torch.logsumexp(s.float() if not upcast else s, dim=-1)
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)
    return p @ v, lse


class ResamplerRef(nn.Module):
    """SliME's resampler written the straightforward way, as the released code runs it: the
    learned queries repeated for every crop and projected every time, keys with the resized
    position embedding added per crop, torch.nn.MultiheadAttention (sequence-first) in the
    middle. Same parameter names as slime_core.models.Resampler, so either loads the other's
    state_dict."""

    def __init__(self, grid_size, embed_dim, num_heads, kv_dim=None, out_dim=None):
        super().__init__()
        self.grid_size = grid_size
        self.pos_embed = nn.Parameter(sincos_pos_embed_2d(embed_dim, grid_size).half(),
                                      requires_grad=False)
        self.query = nn.Parameter(torch.zeros(grid_size * grid_size, embed_dim))
        nn.init.trunc_normal_(self.query, std=0.02)
        self.kv_proj = (nn.Linear(kv_dim, embed_dim, bias=False)
                        if kv_dim is not None and kv_dim != embed_dim else nn.Identity())
        self.attn = nn.MultiheadAttention(embed_dim, num_heads)
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.ln_q, self.ln_kv, self.ln_post = norm(embed_dim), norm(embed_dim), norm(embed_dim)
        self.proj = nn.Linear(embed_dim, out_dim) if out_dim is not None else nn.Identity()

    def forward(self, x, key_padding_mask=None):
        """x: (B, Lk, kv_dim); key_padding_mask: (B, Lk) bool, True = ignore (the released
        code's nn.MultiheadAttention convention, kept in this reference of it)."""
        pos_k = resize_pos_embed(self.pos_embed, math.isqrt(x.shape[1]))
        x = self.ln_kv(self.kv_proj(x)).permute(1, 0, 2)   # (Lk, B, D)
        q = self.ln_q(self.query).unsqueeze(1).repeat(1, x.shape[1], 1)
        out = self.attn(q + self.pos_embed.unsqueeze(1), x + pos_k.unsqueeze(1), x,
                        key_padding_mask=key_padding_mask)[0]
        return self.proj(self.ln_post(out.permute(1, 0, 2)))


# ---- gated connector ----


class ReleasedGatedBlockRef(nn.Module):
    """SliME's gated mixture of adapters (mm_projector_type "gated") computed as the released
    module computes it: both experts on every token, a softmax router, top-2 of 2 with
    renormalisation, a scatter into dense gates and a stack-and-matmul to mix; inputs that are
    not the global view's grid*grid tokens take the MLP only. Same parameter names as
    slime_core.models.GatedAdapters, so either loads the other's state_dict. x: (N, L, D_v)."""

    def __init__(self, in_dim, out_dim, grid, heads):
        super().__init__()
        self.attn = ResamplerRef(grid, in_dim, heads, kv_dim=in_dim)
        self.projection = nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(),
                                        nn.Linear(out_dim, out_dim))
        self.w_gate = nn.Parameter(torch.zeros(in_dim, 2, dtype=torch.bfloat16))
        self.w_noise = nn.Parameter(torch.zeros(in_dim, 2, dtype=torch.bfloat16))
        self.register_buffer("mean", torch.tensor([0.0], dtype=torch.bfloat16))
        self.register_buffer("std", torch.tensor([1.0], dtype=torch.bfloat16))
        self.target = grid * grid

    def forward(self, x):
        if x.shape[0] != self.target and x.shape[1] != self.target:
            return self.projection(x)
        N, C, D = x.shape
        outs = [self.projection(x), self.projection(self.attn(x))]
        flat = x.reshape(N * C, D)
        clean = flat @ self.w_gate.to(x.dtype)
        logits = clean
        if self.training:
            std = F.softplus(flat @ self.w_gate.to(x.dtype)) + 1e-2
            logits = clean + torch.randn_like(clean) * std
        logits = torch.softmax(logits, 1)
        top, idx = logits.topk(2, dim=1)
        top = top / (top.sum(1, keepdim=True) + 1e-6)
        gates = torch.zeros_like(logits).scatter(1, idx, top).reshape(N, C, -1)
        return torch.matmul(torch.stack(outs, dim=-1), gates.unsqueeze(-1)).squeeze(-1)
