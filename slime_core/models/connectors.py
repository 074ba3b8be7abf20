"""Connectors: vision features (N, L, D_v) -> LLM-width tokens (N, L', H).

Chosen by exact name from the registry (kind "connector"):

    linear        one Linear(D_v, H) (LLaVA-1.0)
    mlp2x_gelu    Linear(D_v, H) -> GELU -> Linear(H, H) (LLaVA-1.5, TinyLLaVA's best)
    resampler     a Resampler (learned queries, cross-attention) then a Linear to H
    gated         SliME's mixture of adapters for the global view (below)

The gated block (SliME's `mm_projector_type = "gated"`):

    expert 0:  MLP(x)                      (the mlp2x_gelu above, stored as `projection`)
    expert 1:  MLP(Resampler_576(x))       (24 x 24 learned queries, stored as `attn`; the
                                            same MLP, so both experts share it)
    router:    g = softmax(x @ w_gate) per token, on the raw vision feature; in training
               the logits get noise randn * (softplus(x @ w_gate) + 0.01); then
               g / (sum(g) + 1e-6) (the released top-2-of-2 renormalisation)
    output:    g0 * expert0 + g1 * expert1

`w_gate` starts at zero (both experts at 0.5). `w_noise` and the `mean`/`std` buffers
exist in the released checkpoints but take no part in the function; they are kept so those
state dicts load unchanged. Inputs whose token count is not the global view's (576) skip
the router and the Resampler and go through the MLP only: that is how the released model
projects its compressed local tokens (144 per tile) with the same module. `expert=0` or
`expert=1` runs one expert only (SliME's training stages Ia and Ib; `mm_learnable_gated`).
"""
import re

import torch
from torch import nn
from torch.nn import functional as F

from slime_core.models.registry import register
from slime_core.models.resampler import Resampler


def mlp(in_dim, out_dim, depth=2):
    """LLaVA's mlp{depth}x_gelu: Linear, then (GELU, Linear) depth-1 times; an nn.Sequential,
    so its keys are 0.*, 2.*, ... as in LLaVA checkpoints."""
    layers = [nn.Linear(in_dim, out_dim)]
    for _ in range(depth - 1):
        layers += [nn.GELU(), nn.Linear(out_dim, out_dim)]
    return nn.Sequential(*layers)


@register("connector", "linear")
def linear_connector(in_dim, out_dim, **_):
    """One Linear(D_v, H)."""
    return nn.Linear(in_dim, out_dim)


@register("connector", "mlp2x_gelu")
def mlp2x_gelu(in_dim, out_dim, **_):
    """Linear(D_v, H) -> GELU -> Linear(H, H)."""
    return mlp(in_dim, out_dim, 2)


def mlp_from_name(name, in_dim, out_dim):
    """`mlp{N}x_gelu` for any N >= 1 (LLaVA's naming), else None."""
    m = re.fullmatch(r"mlp(\d+)x_gelu", name)
    return mlp(in_dim, out_dim, int(m.group(1))) if m and int(m.group(1)) >= 1 else None


@register("connector", "resampler")
class ResamplerConnector(nn.Module):
    """TinyLLaVA's resampler connector: grid_size**2 learned queries over the vision tokens
    (Resampler at the vision width), then a Linear to the LLM width."""

    def __init__(self, in_dim, out_dim, grid_size=12, num_heads=None, **_):
        super().__init__()
        heads = num_heads or max(1, in_dim // 128)
        self.resampler = Resampler(grid_size, in_dim, heads)
        self.proj = nn.Linear(in_dim, out_dim)

    def forward(self, x):
        """x: (N, L, D_v), L a square -> (N, grid_size**2, H)."""
        return self.proj(self.resampler(x))


@register("connector", "gated")
class GatedAdapters(nn.Module):
    """SliME's mixture of adapters (module docstring). Parameter names follow the released
    checkpoints: projection.0/2, attn.* (the Resampler), w_gate, w_noise, mean, std.

    Args:
        in_dim: vision width D_v (1024 for CLIP-L).
        out_dim: LLM width H.
        grid_size: side of the resampler expert's query grid; its square (576) is also the
            token count that selects the mixture (others take the MLP-only shortcut).
        num_heads: resampler heads (released: D_v // 128).
        expert: -1 mixes both experts; 0 or 1 runs one expert only.
    """

    def __init__(self, in_dim, out_dim, grid_size=24, num_heads=None, expert=-1, **_):
        super().__init__()
        if expert not in (-1, 0, 1):
            raise ValueError(f"expert must be -1 (mixture), 0 (MLP) or 1 (resampler), got {expert}")
        self.num_tokens = grid_size * grid_size
        self.attn = Resampler(grid_size, in_dim, num_heads or max(1, in_dim // 128))
        self.projection = mlp(in_dim, out_dim, 2)
        # Released dtypes: bfloat16 even in a float32 model (so a converted model keeps
        # them; the router runs in the input's dtype).
        self.w_gate = nn.Parameter(torch.zeros(in_dim, 2, dtype=torch.bfloat16))
        self.w_noise = nn.Parameter(torch.zeros(in_dim, 2, dtype=torch.bfloat16),
                                    requires_grad=False)
        self.register_buffer("mean", torch.tensor([0.0], dtype=torch.bfloat16))
        self.register_buffer("std", torch.tensor([1.0], dtype=torch.bfloat16))
        self.expert = expert

    def gates(self, x):
        """(..., 2) router weights per token of x (..., D_v)."""
        logits = x @ self.w_gate.to(x.dtype)
        if self.training:
            scale = F.softplus(logits) + 0.01
            logits = logits + torch.randn_like(logits) * scale
        g = torch.softmax(logits, dim=-1)
        return g / (g.sum(-1, keepdim=True) + 1e-6)

    def forward(self, x):
        """x: (N, L, D_v) or (L, D_v) -> same leading shape with width H. L == 576 runs the
        mixture (or the chosen expert); any other L the MLP only."""
        if x.shape[-2] != self.num_tokens:
            return self.projection(x)
        if self.expert == 0:
            return self.projection(x)
        resampled = self.projection(self.attn(x))
        if self.expert == 1:
            return resampled
        g = self.gates(x).to(x.dtype)
        return g[..., :1] * self.projection(x) + g[..., 1:] * resampled


def build_connector(name, in_dim, out_dim, **kwargs):
    """The connector registered under `name` (or any mlpNx_gelu), built for D_v -> H."""
    from slime_core.models import registry
    m = mlp_from_name(name, in_dim, out_dim) if name not in registry.names("connector") else None
    if m is not None:
        return m
    return registry.get("connector", name)(in_dim, out_dim, **kwargs)
