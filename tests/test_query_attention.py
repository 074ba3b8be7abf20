"""query_attention (issue 4): the fused learnable-query attention against a float64
reference, its gradients, its registration (opcheck, fake, compile) and its bad-input errors.
The Resampler module built on it is tested in tests/test_resampler.py."""
import functools
import math

import pytest
import torch

import slime_core
from slime_core.ops.query_attention import query_attention as any_backend
from slime_core.ops.reference import query_attention_ref

# The tests below are the fused kernels' (auto would take torch's SDPA on CUDA); the sdpa
# backend and the routing have their own tests at the end.
query_attention = functools.partial(any_backend, backend="fused")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and slime_core._C.build_info()["cuda"]
                     else [])
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def make(batch, heads, lq, lk, d, *, shared=True, dtype=torch.float32, device="cpu", masked=False):
    # float64 inputs are drawn in float64, so that every mantissa bit is used: a kernel that
    # rounded them through float32 would fail the float64 tolerances.
    gen = torch.float64 if dtype == torch.float64 else torch.float32
    q = torch.randn((heads, lq, d) if shared else (batch, heads, lq, d), device=device, dtype=gen)
    k = torch.randn(batch, heads, lk, d, device=device, dtype=gen)
    v = torch.randn(batch, heads, lk, d, device=device, dtype=gen)
    mask = None
    if masked:
        mask = torch.rand(batch, lk, device=device) > 0.4
        if batch > 1:
            mask[1] = False  # a crop with no key left: zero rows, zero gradients
        if lk > 1:
            mask[0, -1] = True
    return q.to(dtype), k.to(dtype), v.to(dtype), mask


def max_err(a, b):
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


# (B, heads, Lq, Lk, d): every Lq and Lk of {1, 7, 144, 576, 577}, both d, batch 1 and 13,
# without the full cross product of the large ones (2 CPU cores).
SHAPES = [
    (1, 2, 1, 1, 64), (13, 2, 1, 577, 128), (13, 2, 7, 7, 64), (1, 3, 7, 144, 128),
    (13, 2, 144, 576, 128), (1, 2, 144, 1, 64), (1, 2, 576, 577, 64), (13, 1, 576, 7, 128),
    (1, 2, 577, 144, 128), (13, 1, 577, 1, 64), (2, 2, 33, 65, 40),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("shared", [True, False], ids=["shared_q", "per_item_q"])
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
def test_forward_matches_float64(device, shape, shared, masked):
    q, k, v, mask = make(*shape, shared=shared, device=device, masked=masked)
    out, lse = query_attention(q, k, v, key_mask=mask, return_lse=True, allow_fully_masked=True)
    ref, ref_lse = query_attention_ref(q, k, v, mask)
    assert out.shape == ref.shape and out.dtype == q.dtype and lse.dtype == torch.float32
    assert max_err(out, ref) < 2e-5
    finite = torch.isfinite(ref_lse)
    assert torch.equal(torch.isfinite(lse), finite)  # -inf exactly where no key is left
    assert max_err(lse[finite], ref_lse[finite]) < 2e-5
    if mask is not None and shape[0] > 1:
        assert torch.all(out[1] == 0) and torch.all(lse[1] == float("-inf"))


def low_precision_errors(dtype, shared, masked, device, shape=(5, 2, 144, 577, 128)):
    """Max error vs float64 of ours and of plain PyTorch attention in `dtype`, for out and
    the three gradients."""
    q, k, v, mask = make(*shape, shared=shared, dtype=dtype, device=device, masked=masked)
    g = torch.randn(shape[0], shape[1], shape[2], shape[4], device=device).to(dtype)

    def run(fn, inputs):
        leaves = [t.detach().clone().requires_grad_() for t in inputs]
        out = fn(*leaves)
        out.backward(g.to(out.dtype))
        return [out] + [t.grad for t in leaves]

    ours = run(lambda a, b, c: query_attention(a, b, c, key_mask=mask,
                                               allow_fully_masked=True), (q, k, v))
    plain = run(lambda a, b, c: query_attention_ref(a, b, c, mask, upcast=False)[0], (q, k, v))
    exact = run(lambda a, b, c: query_attention_ref(a, b, c, mask)[0],
                (q.double(), k.double(), v.double()))
    return ([max_err(a, e) for a, e in zip(ours, exact)],
            [max_err(a, e) for a, e in zip(plain, exact)])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shared,masked", [(True, False), (False, True)])
def test_error_at_most_twice_pytorch_in_same_dtype(device, dtype, shared, masked):
    # FlashAttention's criterion: against float64, at most 2x plain attention's error in the
    # same dtype (plus a float32-rounding floor, where both are ~1e-7).
    ours, plain = low_precision_errors(dtype, shared, masked, device)
    for name, o, p in zip(["out", "dq", "dk", "dv"], ours, plain):
        assert o <= 2 * p + 1e-5, f"{name}: ours {o:.3g}, PyTorch {dtype} {p:.3g}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shared", [True, False], ids=["shared_q", "per_item_q"])
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("shape", [(13, 2, 7, 144, 64), (3, 1, 145, 70, 128), (2, 2, 1, 1, 64)],
                         ids=lambda s: "x".join(map(str, s)))
def test_gradients_match_float64_autograd(device, shared, masked, shape):
    q, k, v, mask = make(*shape, shared=shared, device=device, masked=masked)
    g = torch.randn(shape[0], shape[1], shape[2], shape[4], device=device)
    g_lse = torch.randn(shape[0], shape[1], shape[2], device=device)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out, lse = query_attention(*leaves, key_mask=mask, return_lse=True, allow_fully_masked=True)
    # lse is differentiable too; masked rows' -inf must not leak NaN into the gradients.
    ((out * g).sum() + (torch.where(torch.isfinite(lse), lse, 0) * g_lse).sum()).backward()
    ref_leaves = [t.double().requires_grad_() for t in (q, k, v)]
    ref, ref_lse = query_attention_ref(*ref_leaves, mask)
    ((ref * g).sum() + (torch.where(torch.isfinite(ref_lse), ref_lse, 0) * g_lse).sum()).backward()
    for a, e in zip(leaves, ref_leaves):
        assert torch.isfinite(a.grad).all()
        assert a.grad.shape == a.shape
        assert max_err(a.grad, e.grad) < 5e-5
    if mask is not None and shape[0] > 1:  # crop 1 has no key: its k, v get zero gradient
        assert torch.all(leaves[1].grad[1] == 0) and torch.all(leaves[2].grad[1] == 0)


@pytest.mark.parametrize("shape", [(13, 2, 7, 144, 64), (2, 2, 33, 65, 40), (2, 1, 9, 3, 5),
                                   (1, 2, 1, 1, 64)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("shared", [True, False], ids=["shared_q", "per_item_q"])
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
def test_float64_matches_float64_reference(shape, shared, masked):
    # The float64 kernel computes in double throughout, so it agrees with the float64
    # reference to rounding: out, lse and all three gradients (through out and lse).
    q, k, v, mask = make(*shape, shared=shared, dtype=torch.float64, masked=masked)
    g = torch.randn(shape[0], shape[1], shape[2], shape[4], dtype=torch.float64)
    g_lse = torch.randn(shape[0], shape[1], shape[2], dtype=torch.float64)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    ref_leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out, lse = query_attention(*leaves, key_mask=mask, return_lse=True, allow_fully_masked=True)
    ref, ref_lse = query_attention_ref(*ref_leaves, mask)
    assert out.dtype == lse.dtype == torch.float64
    finite = torch.isfinite(ref_lse)
    assert torch.equal(torch.isfinite(lse), finite)
    assert max_err(out, ref) < 1e-12 and max_err(lse[finite], ref_lse[finite]) < 1e-12
    for o, l in ((out, lse), (ref, ref_lse)):
        ((o * g).sum() + (torch.where(torch.isfinite(l), l, 0) * g_lse).sum()).backward()
    for a, e in zip(leaves, ref_leaves):
        assert max_err(a.grad, e.grad) < 1e-12


@pytest.mark.parametrize("shared", [True, False], ids=["shared_q", "per_item_q"])
def test_gradcheck(shared):
    # float64 on CPU: gradcheck's default step and tolerances, both outputs (lse too).
    q, k, v, mask = make(3, 2, 4, 6, 4, shared=shared, dtype=torch.float64, masked=True)
    mask[2, 3:] = False
    inputs = [t.clone().requires_grad_() for t in (q, k, v)]

    def f(a, b, c):
        out, lse = query_attention(a, b, c, key_mask=mask, return_lse=True, allow_fully_masked=True)
        return out, torch.where(torch.isfinite(lse), lse, 0)  # crop 1 has no key: lse -inf

    assert torch.autograd.gradcheck(f, inputs, fast_mode=False)


@pytest.mark.parametrize("shared", [True, False], ids=["shared_q", "per_item_q"])
@pytest.mark.parametrize("dtype", DTYPES + [torch.float64], ids=str)
def test_opcheck(shared, dtype):
    q, k, v, mask = make(3, 2, 7, 11, 16, shared=shared, dtype=dtype, masked=True)
    for m in (None, mask):
        args = (q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), m, 0.3)
        torch.library.opcheck(torch.ops.slime.query_attention.default, args)
    out, lse = torch.ops.slime.query_attention(q, k, v, mask, 0.3)
    bargs = (torch.randn_like(out), torch.randn_like(lse), q.detach(), k.detach(), v.detach(),
             out.detach(), lse.detach(), mask, 0.3)
    torch.library.opcheck(torch.ops.slime.query_attention_backward.default, bargs)


def test_backward_is_deterministic():
    q, k, v, mask = make(13, 2, 144, 200, 64, shared=True, masked=True)
    g = torch.randn(13, 2, 144, 64)
    grads = []
    for _ in range(2):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        query_attention(*leaves, key_mask=mask, allow_fully_masked=True).backward(g)
        grads.append([t.grad for t in leaves])
    for a, b in zip(*grads):
        assert torch.equal(a, b)


def test_strided_views_read_without_copy_and_agree():
    # The resampler's K/V are views of a [B, Lk, 2D] projection; the kernel reads them as is.
    batch, lk, heads, d = 3, 50, 4, 32
    kv = torch.randn(batch, lk, 2 * heads * d)
    k = kv[..., :heads * d].view(batch, lk, heads, d).transpose(1, 2)
    v = kv[..., heads * d:].view(batch, lk, heads, d).transpose(1, 2)
    q = torch.randn(9, heads * d).view(9, heads, d).transpose(0, 1)
    assert not k.is_contiguous() and not q.is_contiguous()
    out = query_attention(q, k, v)
    assert torch.equal(out, query_attention(q.contiguous(), k.contiguous(), v.contiguous()))
    # A strided last dimension is copied first, with the same result.
    qt = torch.randn(heads, d, 9).transpose(1, 2)
    assert max_err(query_attention(qt, k, v), query_attention_ref(qt, k, v)[0]) < 2e-5


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch", [1, 3])
def test_per_item_q_expanded_over_the_batch(device, batch):
    # q.expand(B, ...) has batch stride 0, the kernels' sign of a shared q; the glue must not
    # take it for one (that wrote dq through a buffer only a shared q gets: a crash).
    q3, k, v, mask = make(batch, 2, 9, 31, 64, shared=True, device=device, masked=True)
    g = torch.randn(batch, 2, 9, 64, device=device)
    leaf = q3.clone().requires_grad_()
    q = leaf.unsqueeze(0).expand(batch, -1, -1, -1)
    if batch == 1:  # expand keeps a size-1 dim's stride; a zero one is just as valid there
        q = q.as_strided(q.shape, (0,) + q.stride()[1:])
    assert q.stride(0) == 0
    out = query_attention(q, k, v, key_mask=mask, allow_fully_masked=True)
    out.backward(g)
    ref_leaf = q3.double().clone().requires_grad_()
    ref = query_attention_ref(ref_leaf.unsqueeze(0).expand(batch, -1, -1, -1), k, v, mask)[0]
    ref.backward(g.double())
    assert max_err(out, ref) < 2e-5
    assert max_err(leaf.grad, ref_leaf.grad) < 5e-5


@pytest.mark.parametrize("shared", [True, False], ids=["shared_q", "per_item_q"])
def test_empty_batch_and_no_keys(shared):
    q, k, v, _ = make(0, 2, 7, 5, 16, shared=shared)
    leaves = [t.requires_grad_() for t in (q, k, v)]
    out = query_attention(*leaves)
    assert out.shape == (0, 2, 7, 16)
    out.sum().backward()
    assert leaves[0].grad.shape == leaves[0].shape and torch.all(leaves[0].grad == 0)
    # Lk = 0: every row has no key: zeros, lse -inf, zero gradient on q.
    q, k, v, _ = make(2, 2, 7, 0, 16, shared=shared)
    q.requires_grad_()
    out, lse = query_attention(q, k, v, return_lse=True)
    assert torch.all(out == 0) and torch.all(lse == float("-inf"))
    out.sum().backward()
    assert torch.all(q.grad == 0)


def test_nan_input_propagates():
    q, k, v, _ = make(3, 2, 7, 100, 16)
    k[1, 0, 70, 3] = float("nan")
    out = query_attention(q, k, v)
    assert torch.isnan(out[1, 0]).all()
    assert not torch.isnan(out[0]).any() and not torch.isnan(out[1, 1]).any()


def test_mask_conventions_agree():
    q, k, v, keep = make(4, 2, 7, 30, 16, masked=True)
    qa = functools.partial(query_attention, allow_fully_masked=True)
    a = qa(q, k, v, key_mask=keep)
    assert torch.equal(a, qa(q, k, v, key_padding_mask=~keep))
    assert torch.equal(a, qa(q, k, v, key_mask=keep.long()))  # HF's attention_mask
    additive = torch.zeros(keep.shape).masked_fill(~keep, float("-inf"))
    assert torch.equal(a, qa(q, k, v, key_mask=additive))
    # MHA's float key_padding_mask is additive as well (0 keeps, -inf drops).
    assert torch.equal(a, qa(q, k, v, key_padding_mask=additive))
    ref = torch.nn.functional.scaled_dot_product_attention(
        q.expand(4, -1, -1, -1), k, v, attn_mask=keep[:, None, None, :])
    assert max_err(a[keep.any(1)], ref[keep.any(1)]) < 2e-5


def test_scale_and_lse():
    q, k, v, _ = make(2, 2, 7, 30, 16)
    out, lse = query_attention(q, k, v, scale=0.7, return_lse=True)
    ref, ref_lse = query_attention_ref(q, k, v, None, 0.7)
    s = torch.einsum("hid,bhjd->bhij", q.double(), k.double()) * 0.7
    assert max_err(ref_lse, torch.logsumexp(s, -1)) < 1e-12
    assert max_err(out, ref) < 2e-5 and max_err(lse, ref_lse) < 2e-5


def test_bad_inputs_raise_clear_errors():
    q, k, v, mask = make(2, 2, 7, 9, 16, masked=True)
    with pytest.raises(ValueError, match="heads"):
        query_attention(torch.randn(3, 7, 16), k, v)
    with pytest.raises(ValueError, match="head dim"):
        query_attention(torch.randn(2, 7, 8), k, v)
    with pytest.raises(ValueError, match="batch"):
        query_attention(torch.randn(3, 2, 7, 16), k, v)
    with pytest.raises(TypeError, match="dtype"):
        query_attention(q, k.half(), v)
    with pytest.raises(TypeError, match="q must have dtype"):
        query_attention(q.long(), k.long(), v.long())
    # float64 exists for CPU gradchecks; elsewhere it is refused before any kernel runs.
    for device in ["meta"] + DEVICES[1:]:
        with pytest.raises(TypeError, match="float64 is supported on CPU only"):
            query_attention(*(t.double().to(device) for t in (q, k, v)))
    with pytest.raises(ValueError, match="same shape"):
        query_attention(q, k, v[:, :, :5])
    with pytest.raises(ValueError, match="dimensions"):
        query_attention(q, k[0], v)
    with pytest.raises(ValueError, match=r"q must be \(heads"):
        query_attention(q[0], k, v)
    with pytest.raises(ValueError, match="device"):
        query_attention(q, k.to("meta"), v)
    with pytest.raises(ValueError, match=r"key_mask must have shape \(B, Lk\)"):
        query_attention(q, k, v, key_mask=mask[:, :5])
    with pytest.raises(TypeError, match="key_padding_mask must be bool"):
        query_attention(q, k, v, key_padding_mask=mask.int())
    with pytest.raises(ValueError, match="only hold 1 .keep. and 0"):
        query_attention(q, k, v, key_mask=mask.int() * 2)
    with pytest.raises(ValueError, match="not both"):
        query_attention(q, k, v, key_mask=mask, key_padding_mask=mask)
    with pytest.raises(ValueError, match="only hold 0"):
        query_attention(q, k, v, key_mask=torch.randn(2, 9))
    with pytest.raises(TypeError, match="q must be a torch.Tensor"):
        query_attention(q.numpy(), k, v)
    # Direct torch.ops callers hit the C++ checks.
    with pytest.raises(ValueError, match="key_mask must be"):
        torch.ops.slime.query_attention(q, k, v, mask[:1], 1.0)
    with pytest.raises(TypeError, match="key_mask must be bool"):
        torch.ops.slime.query_attention(q, k, v, mask.float(), 1.0)
    with pytest.raises(ValueError, match="does not match"):
        torch.ops.slime.query_attention(q[:, :, :8], k, v, None, 1.0)
    q64, k64, v64 = q.double(), k.double(), v.double()
    out64, lse64 = torch.ops.slime.query_attention(q64, k64, v64, mask, 1.0)
    with pytest.raises(TypeError, match="lse must be Double"):
        torch.ops.slime.query_attention_backward(out64, None, q64, k64, v64, out64,
                                                 lse64.float(), mask, 1.0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_compile_fullgraph(dtype):
    q, k, v, mask = make(3, 2, 7, 20, 16, dtype=dtype, masked=True)

    def f(q, k, v):
        out = query_attention(q, k, v, key_mask=mask, allow_fully_masked=True)
        return out.float().square().sum()

    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    compiled(*leaves).backward()
    eager = [t.clone().requires_grad_() for t in (q, k, v)]
    f(*eager).backward()
    for a, b in zip(leaves, eager):
        assert torch.equal(a.grad, b.grad)


def test_default_scale_is_inverse_sqrt_d():
    q, k, v, _ = make(2, 2, 5, 6, 16)
    assert torch.equal(query_attention(q, k, v), query_attention(q, k, v, scale=1 / math.sqrt(16)))


def test_fully_masked_item_is_an_error_naming_the_convention():
    # An inverted mask (a keep mask passed as padding, or the reverse) typically drops every
    # key of an unpadded item: all-zero output, which must not pass silently.
    q, k, v, _ = make(3, 2, 7, 10, 16)
    keep = torch.ones(3, 10, dtype=torch.bool)
    keep[2, 7:] = False
    with pytest.raises(ValueError, match=r"item\(s\) \[0, 1\].*True = ignore; a keep mask"):
        query_attention(q, k, v, key_padding_mask=keep)
    with pytest.raises(ValueError, match=r"item\(s\) \[0, 1\].*True = keep; a padding mask"):
        query_attention(q, k, v, key_mask=~keep)
    out = query_attention(q, k, v, key_mask=~keep, allow_fully_masked=True)
    assert torch.all(out[:2] == 0)
    assert torch.equal(query_attention(q, k, v, key_mask=keep),
                       query_attention(q, k, v, key_padding_mask=~keep))


def test_flash_attention_layout_is_named():
    q, k, v, _ = make(2, 4, 7, 10, 16)
    with pytest.raises(ValueError,
                       match=r"FlashAttention's \(B, Lk, heads, d\).*transpose\(1, 2\)"):
        query_attention(q, k.transpose(1, 2), v.transpose(1, 2))
    with pytest.raises(ValueError, match=r"q looks like FlashAttention's \(B, Lq, heads, d\)"):
        query_attention(q.expand(2, -1, -1, -1).transpose(1, 2), k, v)


# ---- backends ----

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32] + DTYPES[1:], ids=str)
@pytest.mark.parametrize("shared", [True, False], ids=["shared_q", "per_item_q"])
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
def test_sdpa_backend_computes_the_same_function(device, dtype, shared, masked):
    q, k, v, mask = make(3, 2, 19, 77, 64, shared=shared, dtype=dtype, device=device,
                         masked=masked)
    outs = []
    for backend in ("fused", "sdpa"):
        qq, kk, vv = (t.detach().requires_grad_() for t in (q, k, v))
        out = any_backend(qq, kk, vv, key_mask=mask, allow_fully_masked=True,
                                        scale=0.3, backend=backend)
        out.float().square().sum().backward()
        outs.append((out, qq.grad, kk.grad, vv.grad))
    tol = 2e-5 if dtype == torch.float32 else 3e-2
    for name, a, b in zip(("out", "dq", "dk", "dv"), *outs):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        scale = max(1.0, b.double().abs().max().item())
        assert max_err(a, b) <= tol * scale, name
    if masked:  # the item without keys: zeros, and no gradient into its keys and values
        out, _, dk, dv = outs[1]
        assert torch.all(out[1] == 0) and torch.all(dk[1] == 0) and torch.all(dv[1] == 0)


@pytest.mark.parametrize("device", DEVICES)
def test_auto_takes_sdpa_on_cuda_and_the_kernels_elsewhere(device):
    q, k, v, mask = make(2, 2, 5, 9, 16, device=device, masked=True)
    auto = any_backend(q, k, v, key_mask=mask, allow_fully_masked=True)
    want = "sdpa" if device == "cuda" else "fused"
    same = any_backend(q, k, v, key_mask=mask, allow_fully_masked=True,
                                     backend=want)
    assert torch.equal(auto, same)
    # lse comes from the kernels only; empty shapes stay with them too
    out, lse = any_backend(q, k, v, return_lse=True)
    assert torch.equal(out, query_attention(q, k, v))
    for backend in ("auto", "sdpa"):
        e = any_backend(q, k[:, :, :0], v[:, :, :0], backend=backend)
        assert e.shape == (2, 2, 5, 16) and torch.all(e == 0)


def test_backend_errors():
    q, k, v, _ = make(2, 2, 5, 9, 16)
    with pytest.raises(ValueError, match="backend must be one of 'auto', 'fused', 'sdpa'"):
        any_backend(q, k, v, backend="flash")
    with pytest.raises(ValueError, match="return_lse needs backend='fused'"):
        any_backend(q, k, v, backend="sdpa", return_lse=True)
