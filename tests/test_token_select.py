"""token_select / token_pack (issue 5): agreement with SliME's released selection chain
(transcribed literally in slime_core.ops.reference) and with a fast float64 reference,
tie rules, edge cases, the packing gather and its backward, opcheck, torch.compile and
bad input."""
import pytest
import torch

import slime_core
from slime_core.ops import reference as R
from slime_core.ops.token_select import token_pack, token_select

DEVICES = ["cpu"]
if torch.cuda.is_available() and slime_core._C.build_info()["cuda"]:
    DEVICES.append("cuda")
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _inputs(B, M, T, H, dtype, device, gen, counts=None, mask_p=0.8):
    tokens = torch.randn(B, M, H, generator=gen).to(dtype).to(device)
    text = torch.randn(B, T, H, generator=gen).to(dtype).to(device)
    mask = (torch.rand(B, T, generator=gen) < mask_p).to(device)
    if counts is None:
        counts = [M] * B
    return tokens, text, mask, torch.tensor(counts, dtype=torch.int64, device=device)


def _fresh_gen():
    g = torch.Generator()
    g.manual_seed(int(torch.randint(0, 2**31 - 1, ())))
    return g


def _well_separated(p, top_p, top_k, rtol=3e-5, ctol=1e-6):
    """False when float32 rounding could change the selection: the probabilities next to
    the cut are nearly equal, or a cumulative sum is nearly top_p. The kernels' p has a
    relative error of about 1e-6 (float32 dot products over H, then exp), the cumulative
    sums an absolute one below 1e-7."""
    p = p.double()
    s = torch.sort(p, descending=True).values
    M = s.numel()
    if M < 2:
        return True
    if top_k is not None:
        cuts = [min(top_k, M)]
    else:
        c = torch.cumsum(s, 0)
        if (c - top_p).abs().min() < ctol:
            return False
        n = int((c <= top_p).sum())
        cuts = [n, min(n + 1, M)]
    for j in cuts:
        if 0 < j < M and s[j - 1] - s[j] < rtol * s[j - 1]:
            return False
    return True


# ---- agreement with the released chain --------------------------------------------------

LITERAL_CASES = [  # (M, T, H): the literal chain materialises M * T * H float64
    (1, 1, 64), (1, 0, 64), (0, 37, 64), (144, 37, 64), (144, 1, 4096), (144, 512, 64),
    (1008, 37, 64), (1008, 1, 4096), (145, 37, 4096),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M,T,H", LITERAL_CASES)
@pytest.mark.parametrize("mode", ["slime", "plain_noise"])
def test_matches_released_chain(device, dtype, M, T, H, mode):
    top_p = 0.95 if mode == "slime" else 0.6
    prenorm = 0.5 if mode == "slime" else None
    temperature = 1.0 if mode == "slime" else 0.7
    rtol = 3e-6 if prenorm else 3e-5
    for attempt in range(5):
        gen = _fresh_gen()
        tokens, text, mask, counts = _inputs(1, M, T, H, dtype, device, gen)
        noise = (0.1 * torch.randn(1, M, generator=gen)).to(device) if mode != "slime" else None
        lit_idx, lit_p = R.token_select_literal(
            tokens[0].double().cpu(), text[0].double().cpu(), mask[0].cpu(), top_p,
            temperature=temperature, prenorm_temperature=prenorm,
            noise=None if noise is None else noise[0].double().cpu())
        # SliME's double softmax makes p nearly uniform (relative gaps ~ 1/M^2) but also
        # shrinks the kernels' relative error in p to ~1e-7.
        separated = T == 0 or _well_separated(lit_p, top_p, None, rtol=rtol)
        if separated:
            break
    sel = token_select(tokens, text, mask, counts, top_p=top_p, temperature=temperature,
                       prenorm_temperature=prenorm, noise=noise)
    K = int(sel.counts[0])
    kept = sel.indices[0, :K].cpu()
    assert (sel.indices[0, K:] == -1).all()
    torch.testing.assert_close(sel.probs[0].cpu().double(), lit_p, rtol=1e-4, atol=1e-7)
    if separated:
        assert kept.tolist() == lit_idx.tolist()
    else:
        # Genuine near-ties at the cut (e.g. T = 512, H = 64: hundreds of tokens whose p
        # agree to 1e-10): any choice among them is right, so check the choice is a valid
        # top-p set of the float64 probabilities instead.
        assert abs(K - lit_idx.numel()) <= 1
        dropped = torch.ones(M, dtype=torch.bool)
        dropped[kept] = False
        if dropped.any() and K > 0:
            assert lit_p[kept].min() >= lit_p[dropped].max() * (1 - rtol)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,M,T,H", [
    (torch.float32, 5000, 512, 4096), (torch.bfloat16, 5000, 37, 4096),
    (torch.float16, 1008, 512, 4096), (torch.bfloat16, 5000, 512, 64),
])
def test_large_matches_fast_reference(device, dtype, M, T, H):
    gen = _fresh_gen()
    tokens, text, mask, counts = _inputs(1, M, T, H, dtype, device, gen)
    # temperature 0.05 spreads p so that most draws have no near-tie at the cut
    ref = R.token_select_ref(tokens.cpu(), text.cpu(), mask.cpu(), counts.cpu(), top_p=0.9,
                             prenorm_temperature=0.5, temperature=0.05)
    sel = token_select(tokens, text, mask, counts, top_p=0.9, prenorm_temperature=0.5,
                       temperature=0.05)
    torch.testing.assert_close(sel.probs.cpu(), ref[2], rtol=1e-4, atol=1e-8)
    if _well_separated(ref[2][0], 0.9, None):
        assert torch.equal(sel.counts.cpu(), ref[1])
        assert torch.equal(sel.indices.cpu(), ref[0])
    else:
        K = int(sel.counts[0])
        assert abs(K - int(ref[1][0])) <= 1
        dropped = torch.ones(M, dtype=torch.bool)
        dropped[sel.indices[0, :K].cpu()] = False
        assert ref[2][0][~dropped].min() >= ref[2][0][dropped].max() * (1 - 3e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("top_k", [1, 7, 144, 200])
def test_ragged_batch_top_k_and_top_p(device, dtype, top_k):
    counts = [144, 1, 0, 97, 143]
    for attempt in range(20):
        gen = _fresh_gen()
        tokens, text, mask, cnt = _inputs(5, 144, 37, 64, dtype, device, gen, counts=counts)
        mask[1] = False  # an image whose text is all padding
        ref = R.token_select_ref(tokens.cpu(), text.cpu(), mask.cpu(), cnt.cpu(), top_k=top_k)
        if all(_well_separated(ref[2][b, :counts[b]], None, top_k) for b in (0, 3, 4)):
            break
    sel = token_select(tokens, text, mask, cnt, top_k=top_k)
    assert torch.equal(sel.indices.cpu(), ref[0])
    assert sel.counts.cpu().tolist() == [min(top_k, c) for c in counts]
    torch.testing.assert_close(sel.probs.cpu(), ref[2], rtol=1e-4, atol=1e-8)
    assert (sel.probs[:, :][torch.arange(144, device=device)[None] >= cnt[:, None]] == 0).all()
    # top-p on the same ragged batch
    sel_p = token_select(tokens, text, mask, cnt, top_p=0.5, temperature=0.1)
    ref_p = R.token_select_ref(tokens.cpu(), text.cpu(), mask.cpu(), cnt.cpu(), top_p=0.5,
                               temperature=0.1)
    for b in (0, 3, 4):
        if _well_separated(ref_p[2][b, :counts[b]], 0.5, None):
            assert torch.equal(sel_p.indices[b].cpu(), ref_p[0][b])


# ---- ties and edge cases ------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
def test_ties_break_by_lower_index(device):
    gen = _fresh_gen()
    H = 64
    rows = torch.randn(2, H, generator=gen)
    # tokens 2, 5, 9 identical (best), 4 and 7 identical (second), the rest point away from
    # the text: equal float32 p within each group
    tokens = -rows[0] + 0.5 * torch.randn(12, H, generator=gen)
    tokens[[2, 5, 9]] = rows[0]
    tokens[[4, 7]] = rows[0] + 0.5 * rows[1]
    text = rows[0:1].clone()
    sel = token_select(tokens.to(device), text.to(device), top_k=2, temperature=0.01)
    assert sel.indices.cpu().tolist()[:2] == [2, 5]
    sel = token_select(tokens.to(device), text.to(device), top_k=4, temperature=0.01)
    assert sel.indices.cpu().tolist()[:4] == [2, 4, 5, 9]
    # uniform probabilities (no text): top-p keeps the lowest indices, deterministically
    M = 10
    empty = torch.zeros(0, H, device=device)
    sel = token_select(tokens[:M].to(device), empty, top_p=0.35)
    # running sums 0.1, 0.2, 0.3 <= 0.35, plus one more
    assert sel.counts.item() == 4 and sel.indices.cpu().tolist()[:4] == [0, 1, 2, 3]
    assert torch.allclose(sel.probs.cpu(), torch.full((M,), 0.1))
    again = token_select(tokens[:M].to(device), empty, top_p=0.35)
    assert torch.equal(sel.indices, again.indices)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_edge_cases_are_defined(device, dtype):
    gen = _fresh_gen()
    tokens, text, mask, counts = _inputs(3, 17, 5, 64, dtype, device, gen, counts=[17, 0, 9])
    # p = 1 and k >= M keep everything
    for kw in ({"top_p": 1.0}, {"top_k": 17}, {"top_k": 1000}):
        sel = token_select(tokens, text, mask, counts, **kw)
        assert sel.counts.cpu().tolist() == [17, 0, 9]
        assert sel.indices[0].cpu().tolist() == list(range(17))
        assert sel.indices[2].cpu().tolist() == list(range(9)) + [-1] * 8
        assert (sel.indices[1] == -1).all()
    # zero vectors: a zero token and a zero text row score 0, never NaN
    tokens[0, 3] = 0
    text[0, 1] = 0
    mask[:] = False
    sel = token_select(tokens, text, mask, counts, top_p=0.5, prenorm_temperature=0.5)
    assert torch.isfinite(sel.probs).all()
    torch.testing.assert_close(sel.probs[0].cpu(), torch.full((17,), 1 / 17))
    assert sel.probs[1].abs().sum() == 0
    # M_max = 0 and T_max = 0 and B = 0
    for shape_tok, shape_txt in (((2, 0, 64), (2, 3, 64)), ((2, 4, 64), (2, 0, 64)),
                                 ((0, 4, 64), (0, 3, 64))):
        tk = torch.randn(shape_tok).to(dtype).to(device)
        tx = torch.randn(shape_txt).to(dtype).to(device)
        sel = token_select(tk, tx, top_p=0.9)
        assert sel.indices.shape == shape_tok[:2] and sel.counts.shape == shape_tok[:1]
        assert torch.isfinite(sel.probs).all()
        if shape_tok[1] == 0:
            assert (sel.counts == 0).all()


@pytest.mark.parametrize("device", DEVICES)
def test_unbatched_and_int_mask(device):
    gen = _fresh_gen()
    tokens, text, mask, _ = _inputs(1, 33, 9, 64, torch.float32, device, gen)
    a = token_select(tokens[0], text[0], mask[0].long(), top_k=5)
    b = token_select(tokens, text, mask, top_k=5)
    assert a.indices.shape == (33,) and a.counts.shape == ()
    assert torch.equal(a.indices, b.indices[0]) and torch.equal(a.probs, b.probs[0])


@pytest.mark.parametrize("device", DEVICES)
def test_result_does_not_depend_on_batch_neighbours(device):
    gen = _fresh_gen()
    tokens, text, mask, counts = _inputs(4, 50, 7, 64, torch.bfloat16, device, gen,
                                         counts=[50, 20, 33, 1])
    whole = token_select(tokens, text, mask, counts, top_p=0.7, temperature=0.2)
    for b in range(4):
        one = token_select(tokens[b:b + 1], text[b:b + 1], mask[b:b + 1], counts[b:b + 1],
                           top_p=0.7, temperature=0.2)
        assert torch.equal(one.indices[0], whole.indices[b])
        assert torch.equal(one.probs[0], whole.probs[b])


# ---- token_pack -----------------------------------------------------------------------------

def _pack_ref(tokens, indices, counts, row_offsets, base):
    """The same splice with index_select and cat (autograd through torch's own ops)."""
    pieces, at = [], 0
    order = sorted(range(tokens.shape[0]), key=lambda b: int(row_offsets[b]))
    for b in order:
        off, c = int(row_offsets[b]), int(counts[b])
        pieces.append(base[at:off])
        pieces.append(tokens[b].index_select(0, indices[b, :c]))
        at = off + c
    pieces.append(base[at:])
    return torch.cat(pieces, 0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,M,H", [(3, 144, 64), (1, 1, 7), (2, 37, 4096)])
def test_pack_forward_and_backward_match_index_select(device, dtype, B, M, H):
    gen = _fresh_gen()
    tokens = torch.randn(B, M, H, generator=gen).to(dtype).to(device)
    text = torch.randn(B, 5, H, generator=gen).to(dtype).to(device)
    counts_in = torch.tensor([M, max(M // 2, 1), 0][:B], device=device)
    sel = token_select(tokens, text, None, counts_in, top_p=0.8, temperature=0.05)
    # splice [3 global rows, 1 separator, kept] per image with a gap of 2 between images
    row_offsets, at = [], 0
    for b in range(B):
        at += 4
        row_offsets.append(at)
        at += int(sel.counts[b]) + 2
    row_offsets = torch.tensor(row_offsets, device=device)
    base = torch.randn(at + 1, H, generator=gen).to(dtype).to(device)
    t1 = tokens.clone().requires_grad_()
    b1 = base.clone().requires_grad_()
    out = token_pack(t1, sel.indices, sel.counts, row_offsets=row_offsets, base=b1)
    t2 = tokens.clone().requires_grad_()
    b2 = base.clone().requires_grad_()
    ref = _pack_ref(t2, sel.indices, sel.counts, row_offsets, b2)
    assert torch.equal(out, ref)
    g = torch.randn(out.shape, generator=gen).to(dtype).to(device)
    out.backward(g)
    ref.backward(g)
    assert torch.equal(t1.grad, t2.grad)
    assert torch.equal(b1.grad, b2.grad)


@pytest.mark.parametrize("device", DEVICES)
def test_pack_defaults_pack_back_to_back(device):
    gen = _fresh_gen()
    tokens = torch.randn(3, 10, 16, generator=gen).to(device)
    indices = torch.tensor([[1, 4, 9] + [-1] * 7, [0] + [-1] * 9, [-1] * 10], device=device)
    counts = torch.tensor([3, 1, 0], device=device)
    out = token_pack(tokens, indices, counts)
    assert out.shape == (30, 16)
    assert torch.equal(out[:4], torch.stack([tokens[0, 1], tokens[0, 4], tokens[0, 9],
                                             tokens[1, 0]]))
    assert (out[4:] == 0).all()
    assert token_pack(tokens, indices, counts, out_rows=4).shape == (4, 16)


# ---- opcheck and torch.compile ---------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    gen = _fresh_gen()
    tokens, text, mask, counts = _inputs(3, 21, 6, 64, torch.float32, device, gen,
                                         counts=[21, 0, 8])
    noise = torch.randn(3, 21, generator=gen).to(device)
    for args in ((None, 0.9, None, 1.0, 0.5), (noise, None, 5, 0.5, None)):
        torch.library.opcheck(torch.ops.slime.token_select.default,
                              (tokens, counts, text, mask) + args)
    sel = token_select(tokens, text, mask, counts, top_k=4)
    offsets = torch.tensor([0, 30, 10], device=device)
    base = torch.randn(40, 64, generator=gen).to(device)
    for req in (False, True):
        torch.library.opcheck(
            torch.ops.slime.token_pack.default,
            (tokens.clone().requires_grad_(req), sel.indices, sel.counts, offsets,
             base.clone().requires_grad_(req)))
    torch.library.opcheck(torch.ops.slime.token_pack_backward.default,
                          (base, sel.indices, sel.counts, offsets, 21))


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device):
    torch._dynamo.reset()
    gen = _fresh_gen()
    tokens, text, mask, counts = _inputs(2, 30, 6, 32, torch.float32, device, gen,
                                         counts=[30, 11])
    glob = torch.randn(2, 4, 32, generator=gen).to(device)

    def f(tokens, text, mask, counts, glob):
        sel = token_select(tokens, text, mask, counts, top_p=0.9, prenorm_temperature=0.5)
        B, M, H = tokens.shape
        G = glob.shape[1]
        base = torch.zeros(B * (G + M), H, device=tokens.device, dtype=tokens.dtype)
        base = base.index_copy(0, (torch.arange(B, device=tokens.device)[:, None] * (G + M)
                                   + torch.arange(G, device=tokens.device)).reshape(-1),
                               glob.reshape(-1, H))
        offsets = torch.arange(B, device=tokens.device) * (G + M) + G
        return token_pack(tokens, sel.indices, sel.counts, row_offsets=offsets, base=base), sel

    compiled = torch.compile(f, fullgraph=True)
    t1 = tokens.clone().requires_grad_()
    out, sel = compiled(t1, text, mask, counts, glob)
    t2 = tokens.clone().requires_grad_()
    out_e, sel_e = f(t2, text, mask, counts, glob)
    assert torch.equal(out, out_e) and torch.equal(sel.indices, sel_e.indices)
    out.square().sum().backward()
    out_e.square().sum().backward()
    assert torch.equal(t1.grad, t2.grad)


# ---- bad input -------------------------------------------------------------------------------

def test_bad_input_gets_clear_errors():
    x = torch.randn(2, 8, 16)
    e = torch.randn(2, 3, 16)
    with pytest.raises(ValueError, match="top_p must be in"):
        token_select(x, e, top_p=0.0)
    with pytest.raises(ValueError, match="top_p must be in"):
        token_select(x, e, top_p=1.5)
    with pytest.raises(ValueError, match="top_k must be >= 1"):
        token_select(x, e, top_k=0)
    with pytest.raises(ValueError, match="exactly one"):
        token_select(x, e, top_p=0.5, top_k=3)
    with pytest.raises(ValueError, match="exactly one"):
        token_select(x, e)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        token_select(x, e, top_p=0.5, temperature=0)
    with pytest.raises(ValueError, match="prenorm_temperature must be > 0"):
        token_select(x, e, top_p=0.5, prenorm_temperature=-1.0)
    with pytest.raises(TypeError, match="text has dtype"):
        token_select(x, e.half(), top_p=0.5)
    with pytest.raises(TypeError, match="tokens must have dtype"):
        token_select(x.long(), e.long(), top_p=0.5)
    with pytest.raises(ValueError, match="text shape"):
        token_select(x, torch.randn(2, 3, 15), top_p=0.5)
    with pytest.raises(ValueError, match="text_mask must have shape"):
        token_select(x, e, torch.ones(2, 4, dtype=torch.bool), top_p=0.5)
    with pytest.raises(ValueError, match="token_counts must have shape"):
        token_select(x, e, None, torch.tensor([1]), top_p=0.5)
    with pytest.raises(ValueError, match="token_counts\\[1\\] = 9 is outside"):
        token_select(x, e, None, torch.tensor([1, 9]), top_p=0.5)
    with pytest.raises(ValueError, match="noise must have shape"):
        token_select(x, e, noise=torch.randn(2, 7), top_p=0.5)
    with pytest.raises(ValueError, match="tokens must be"):
        token_select(x[0, 0], e[0, 0], top_p=0.5)
    with pytest.raises(ValueError, match="on meta but"):
        token_select(x, e.to("meta"), top_p=0.5)
    # the C++ backstop for direct torch.ops callers
    with pytest.raises(ValueError, match="top_p must be in"):
        torch.ops.slime.token_select(x, torch.tensor([8, 8]), e, torch.ones(2, 3, dtype=torch.bool),
                                     None, 2.0, None, 1.0, None)
    with pytest.raises(TypeError, match="text_mask has unsupported dtype"):
        torch.ops.slime.token_select(x, torch.tensor([8, 8]), e, torch.ones(2, 3),
                                     None, 0.5, None, 1.0, None)

    idx = torch.tensor([[0, 1, -1], [2, -1, -1]])
    cnt = torch.tensor([2, 1])
    with pytest.raises(ValueError, match="outside"):
        token_pack(x, torch.tensor([[0, 8, -1], [2, -1, -1]]), cnt)
    with pytest.raises(ValueError, match="repeats"):
        token_pack(x, torch.tensor([[3, 3, -1], [2, -1, -1]]), cnt)
    with pytest.raises(ValueError, match="two images write"):
        token_pack(x, idx, cnt, row_offsets=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="outside the 2 output rows"):
        token_pack(x, idx, cnt, out_rows=2)
    with pytest.raises(TypeError, match="indices must have dtype int64"):
        token_pack(x, idx.int(), cnt)
    with pytest.raises(TypeError, match="base has dtype"):
        token_pack(x, idx, cnt, base=torch.zeros(6, 16, dtype=torch.float64))
    with pytest.raises(ValueError, match="base must have H"):
        token_pack(x, idx, cnt, base=torch.zeros(6, 15))
