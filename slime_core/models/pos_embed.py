"""The fixed 2-D sin-cos position embedding of SliME's resampler and its
bicubic resize to a key grid (the queries of a 12 x 12 grid, the keys of a 24 x 24 one)."""
import math

import torch
from torch.nn import functional as F


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

    def one(p):  # (N,) positions -> (N, dim/2) [sin | cos]
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
