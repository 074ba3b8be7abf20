"""Connectors (issue 11): the registry by exact name, LLaVA's MLPs, and SliME's gated
mixture of adapters against a restatement of the released GatedBlock (its router: softmax,
top-2 of 2, renormalise, scatter, stack-and-matmul; its experts: the released
nn.MultiheadAttention resampler and the shared MLP) loading the same state dict."""
import pytest
import torch
from torch import nn

import slime_core  # noqa: F401
from slime_core.models import GatedAdapters, build_connector, registry
from slime_core.ops.reference import ReleasedGatedBlockRef


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def pair(in_dim=48, out_dim=40, grid=4, heads=4):
    ours = GatedAdapters(in_dim, out_dim, grid_size=grid, num_heads=heads)
    with torch.no_grad():  # a trained router, not the zero init (which hides the gate math)
        ours.w_gate.copy_(torch.randn(in_dim, 2) * 0.5)
    ref = ReleasedGatedBlockRef(in_dim, out_dim, grid, heads)
    ref.load_state_dict(ours.state_dict())
    return ours.eval(), ref.eval()


def test_state_dict_names_are_the_released_ones():
    ours, _ = pair()
    keys = set(ours.state_dict())
    for k in ("projection.0.weight", "projection.2.bias", "w_gate", "w_noise", "mean", "std",
              "attn.query", "attn.pos_embed", "attn.attn.in_proj_weight",
              "attn.attn.out_proj.weight", "attn.ln_q.weight", "attn.ln_kv.bias",
              "attn.ln_post.weight"):
        assert k in keys, k
    assert ours.w_gate.dtype == torch.bfloat16 and ours.attn.pos_embed.dtype == torch.float16


@pytest.mark.parametrize("training", [False, True])
def test_gated_matches_released_block(training):
    ours, ref = pair()
    ours.train(training)
    ref.train(training)
    x = torch.randn(3, 16, 48, requires_grad=True)
    xr = x.detach().clone().requires_grad_()
    torch.manual_seed(7)
    a = ours(x)
    torch.manual_seed(7)
    b = ref(xr)
    assert a.shape == (3, 16, 40)
    assert rel(a, b) < 1e-5
    g = torch.randn_like(a)
    (a * g).sum().backward()
    (b * g).sum().backward()
    assert rel(x.grad, xr.grad) < 1e-5
    ref_params = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        if p.requires_grad and p.grad is not None:
            # bfloat16 parameters (w_gate) hold their gradient in bfloat16: 2^-8 steps.
            tol = 1e-2 if p.dtype == torch.bfloat16 else 1e-4
            assert rel(p.grad.float(), ref_params[name].grad.float()) < tol, name


def test_shortcut_single_expert_and_zero_init():
    ours, ref = pair()
    local = torch.randn(5, 9, 48)  # not 576-like: MLP only, as the released local path
    assert torch.equal(ours(local), ours.projection(local))
    assert rel(ours(local), ref(local)) < 1e-6
    single = torch.randn(16, 48)  # unbatched global tokens
    assert rel(ours(single), ref(single.unsqueeze(0))[0]) < 1e-5
    x = torch.randn(2, 16, 48)
    ours.expert = 0
    assert torch.equal(ours(x), ours.projection(x))
    ours.expert = 1
    assert torch.equal(ours(x), ours.projection(ours.attn(x)))
    fresh = GatedAdapters(48, 40, grid_size=4, num_heads=4).eval()
    g = fresh.gates(torch.randn(7, 48))
    assert torch.allclose(g, torch.full_like(g, 0.5), atol=1e-6)  # zero-init router: 0.5/0.5
    with pytest.raises(ValueError, match="expert"):
        GatedAdapters(48, 40, expert=2)


def test_registry_and_mlps():
    assert {"linear", "mlp2x_gelu", "resampler", "gated"} <= set(registry.names("connector"))
    m = build_connector("mlp2x_gelu", 12, 20)
    assert [k for k in m.state_dict()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    m3 = build_connector("mlp3x_gelu", 12, 20)
    assert isinstance(m3[3], nn.GELU) and m3[4].out_features == 20
    r = build_connector("resampler", 32, 20, grid_size=3, num_heads=4)
    assert r(torch.randn(2, 16, 32)).shape == (2, 9, 20)
    with pytest.raises(ValueError, match=r"unknown connector 'mlp2x-gelu'; known"):
        build_connector("mlp2x-gelu", 12, 20)
    with pytest.raises(ValueError, match="already registered"):
        registry.register("connector", "gated")(object)
