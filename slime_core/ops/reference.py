"""Plain-PyTorch references of the fused ops: readable, slow, used by the tests and the
benchmarks as the ground truth the kernels are checked against."""
import torch  # noqa: F401


# ---- query_attention ----
import math  # noqa: E402
from functools import partial  # noqa: E402

from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402


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


def sincos_pos_embed_2d(dim, grid):
    """(grid*grid, dim) float64: the 2-D sin-cos embedding of a grid x grid raster (MAE /
    Qwen-VL layout, as SliME's released code builds it): the first dim/2 channels encode the
    column, the last dim/2 the row, each as [sin(pos * w), cos(pos * w)] with
    w_i = 1 / 10000^(i / (dim/4))."""
    if dim % 4:
        raise ValueError(f"the sin-cos position embedding needs dim divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    pos = torch.arange(grid, dtype=torch.float64)
    col = pos.repeat(grid)             # token t = row * grid + col
    row = pos.repeat_interleave(grid)

    def one(p):
        a = p[:, None] * omega[None, :]
        return torch.cat([a.sin(), a.cos()], dim=1)

    return torch.cat([one(col), one(row)], dim=1)


def resize_pos_embed(pos, grid):
    """Bicubic resize (align_corners False) of a (g*g, D) embedding to (grid*grid, D),
    computed in float32 and returned in pos's dtype, as the released code does."""
    g = math.isqrt(pos.shape[0])
    img = pos.float().reshape(1, g, g, -1).permute(0, 3, 1, 2)
    out = F.interpolate(img, size=(grid, grid), mode="bicubic", align_corners=False)
    return out.permute(0, 2, 3, 1).flatten(0, 2).to(pos.dtype)


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
        # x: (B, Lk, kv_dim); key_padding_mask: (B, Lk) bool, True = ignore
        pos_k = resize_pos_embed(self.pos_embed, math.isqrt(x.shape[1]))
        x = self.ln_kv(self.kv_proj(x)).permute(1, 0, 2)   # (Lk, B, D)
        q = self.ln_q(self.query).unsqueeze(1).repeat(1, x.shape[1], 1)
        out = self.attn(q + self.pos_embed.unsqueeze(1), x + pos_k.unsqueeze(1), x,
                        key_padding_mask=key_padding_mask)[0]
        return self.proj(self.ln_post(out.permute(1, 0, 2)))
