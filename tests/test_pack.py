"""slime_core.ops.pack (issue 13): from a selection to a batched LLM input. Each function is
checked against a plain per-sequence Python loop (the obvious reading of its docstring) on
random ragged batches, left and right padding, sequences without images, empty selections;
gradients; torch.compile with dynamic shapes; and the errors of the silent traps."""
import random

import numpy as np

import pytest
import torch

import slime_core  # noqa: F401
from slime_core.ops import (IGNORE_INDEX, TokenSelection, find_image_positions, gather_rows,
                            pack_image_tokens, splice_image_tokens, tile_raster_index,
                            token_pack, token_select)


def raster_loop(grids, side):
    out, first = [], 0
    for w, h in grids:
        idx = []
        for row in range(h * side):
            for col in range(w * side):
                tile = (row // side) * w + col // side
                idx.append(first + tile * side * side + (row % side) * side + col % side)
        out.append(idx)
        first += w * h * side * side
    return out


@pytest.mark.parametrize("side", [1, 2, 3])
def test_tile_raster_index_matches_loop(side):
    grids = [(3, 2), (1, 5), (2, 2), (7, 1), (1, 1), (0, 0)]
    index, counts = tile_raster_index(grids, side)
    want = raster_loop(grids, side)
    assert counts.tolist() == [len(w) for w in want]
    for b, w in enumerate(want):
        assert index[b, :len(w)].tolist() == w
        assert torch.all(index[b, len(w):] == -1)
    # Every flat row is used exactly once.
    used = index[index >= 0]
    assert torch.equal(used.sort().values, torch.arange(sum(len(w) for w in want)))


def test_tile_raster_index_empty_and_errors():
    index, counts = tile_raster_index([], 12)
    assert index.shape == (0, 0) and counts.shape == (0,)
    with pytest.raises(ValueError, match="side"):
        tile_raster_index([(1, 1)], 0)
    with pytest.raises(ValueError, match="non-negative"):
        tile_raster_index([(-1, 2)], 2)


def test_gather_rows():
    rows = torch.randn(7, 5, requires_grad=True)
    index = torch.tensor([[3, 0, -1], [6, -1, -1]])
    out = gather_rows(rows, index)
    assert torch.equal(out[0, 0], rows[3]) and torch.equal(out[1, 0], rows[6])
    assert torch.all(out[0, 2] == 0) and torch.all(out[1, 1:] == 0)
    out.sum().backward()
    assert rows.grad[[0, 3, 6]].eq(1).all() and rows.grad[[1, 2, 4, 5]].eq(0).all()


def selection(B, M, counts):
    idx = torch.full((B, M), -1, dtype=torch.int64)
    for b, c in enumerate(counts):
        idx[b, :c] = torch.randperm(M)[:c].sort().values
    return idx, torch.tensor(counts)


@pytest.mark.parametrize("P", [0, 1, 4])
def test_pack_image_tokens_matches_loop(P):
    B, M, H = 4, 9, 6
    tokens = torch.randn(B, M, H, requires_grad=True)
    prefix = torch.randn(B, P, H, requires_grad=True) if P else None
    idx, cnt = selection(B, M, [3, 0, 9, 5])
    out, n = pack_image_tokens(tokens, idx, cnt, prefix=prefix)
    assert out.shape == (B, P + M, H) and n.tolist() == [P + c for c in cnt.tolist()]
    for b in range(B):
        want = tokens[b, idx[b, :cnt[b]]]
        if P:
            want = torch.cat([prefix[b], want])
        assert torch.equal(out[b, :len(want)], want)
        assert torch.all(out[b, len(want):] == 0)
    g = torch.randn_like(out)
    (out * g).sum().backward()
    for b in range(B):
        kept = idx[b, :cnt[b]]
        assert torch.equal(tokens.grad[b, kept], g[b, P:P + len(kept)])
    if P:
        assert torch.equal(prefix.grad, g[:, :P])
    # A shared (P, H) prefix broadcasts; a TokenSelection is taken whole.
    sel = TokenSelection(idx, cnt, torch.zeros(B, M))
    shared = torch.randn(P, H)
    a, _ = pack_image_tokens(tokens, sel, prefix=shared if P else None)
    assert torch.equal(a[:, :P], shared.expand(B, -1, -1))


def splice_loop(embeds, mask, positions, image, counts, labels, L, side):
    B, T, H = embeds.shape
    out = torch.zeros(B, L, H)
    am = torch.zeros(B, L, dtype=torch.long)
    lab = torch.full((B, L), IGNORE_INDEX)
    for b in range(B):
        rows, labs = [], []
        for t in range(T):
            if not mask[b, t]:
                continue
            if t == positions[b]:
                rows += [image[b, i] for i in range(counts[b])]
                labs += [IGNORE_INDEX] * counts[b]
            else:
                rows.append(embeds[b, t])
                labs.append(int(labels[b, t]))
        n = len(rows)
        s = 0 if side == "right" else L - n
        if n:
            out[b, s:s + n] = torch.stack(rows)
        am[b, s:s + n] = 1
        lab[b, s:s + n] = torch.tensor(labs, dtype=torch.long)
    return out, am, lab


def random_batch(B, T, K, H, side, seed):
    rnd = random.Random(seed)
    embeds = torch.randn(B, T, H)
    mask = torch.zeros(B, T, dtype=torch.long)
    positions = torch.full((B,), -1)
    counts = torch.zeros(B, dtype=torch.long)
    for b in range(B):
        n = rnd.randint(1, T)
        s = 0 if side == "right" else T - n
        mask[b, s:s + n] = 1
        if rnd.random() < 0.8:
            positions[b] = s + rnd.randrange(n)
            counts[b] = rnd.randint(0, K)
    image = torch.randn(B, K, H)
    labels = torch.randint(0, 50, (B, T))
    return embeds, mask, positions, image, counts, labels


@pytest.mark.parametrize("in_side", ["right", "left"])
@pytest.mark.parametrize("out_side", ["right", "left"])
@pytest.mark.parametrize("seed", range(3))
def test_splice_matches_loop(in_side, out_side, seed):
    B, T, K, H = 5, 8, 6, 4
    embeds, mask, positions, image, counts, labels = random_batch(B, T, K, H, in_side, seed)
    got = splice_image_tokens(embeds, mask, positions, image, counts, labels=labels,
                              padding_side=out_side)
    L = T - 1 + K
    want = splice_loop(embeds, mask, positions, image, counts, labels, L, out_side)
    assert got.inputs_embeds.shape == (B, L, H)
    assert torch.equal(got.inputs_embeds, want[0])
    assert torch.equal(got.attention_mask, want[1])
    assert torch.equal(got.labels, want[2])
    real = got.attention_mask.bool()
    ranks = real.cumsum(1) - 1
    assert torch.equal(got.position_ids[real], ranks[real])  # 0.. over real tokens
    if out_side == "right":
        assert torch.equal(got.position_ids, torch.arange(L).expand(B, L))
    else:
        assert torch.all(got.position_ids[~real] == 1)


def test_splice_gradients_and_counts_from_lists():
    B, T, K, H = 3, 6, 5, 4
    embeds, mask, positions, image, counts, _ = random_batch(B, T, K, H, "right", 7)
    embeds.requires_grad_()
    image.requires_grad_()
    out = splice_image_tokens(embeds, mask, positions.tolist(), image, counts.tolist(), out_len=20)
    assert out.inputs_embeds.shape == (B, 20, H) and out.labels is None
    g = torch.randn_like(out.inputs_embeds)
    (out.inputs_embeds * g).sum().backward()
    ge = torch.zeros_like(embeds)
    gi = torch.zeros_like(image)
    for b in range(B):  # each input row's gradient is the output gradient where it landed
        j = 0
        for t in range(T):
            if not mask[b, t]:
                continue
            if t == positions[b]:
                gi[b, :counts[b]] = g[b, j:j + counts[b]]
                j += int(counts[b])
            else:
                ge[b, t] = g[b, j]
                j += 1
    assert torch.equal(embeds.grad, ge) and torch.equal(image.grad, gi)


def test_find_image_positions():
    ids = torch.tensor([[1, 5, 9, 2], [1, 2, 3, 4], [9, 1, 0, 0], [0, 0, 1, 9]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 1, 1]])
    assert find_image_positions(ids, 9, mask).tolist() == [2, -1, 0, 3]
    with pytest.raises(ValueError, match="more than one image placeholder"):
        find_image_positions(torch.tensor([[9, 9]]), 9)
    assert find_image_positions(torch.zeros(2, 0, dtype=torch.long), 9).tolist() == [-1, -1]


def test_splice_errors():
    B, T, K, H = 2, 5, 3, 4
    e, m, pos, img = torch.randn(B, T, H), torch.ones(B, T, dtype=torch.long), \
        torch.tensor([1, -1]), torch.randn(B, K, H)
    with pytest.raises(ValueError, match="without an image placeholder"):
        splice_image_tokens(e, m, pos, img, [2, 1])
    with pytest.raises(ValueError, match="exceed image_tokens"):
        splice_image_tokens(e, m, pos, img, [4, 0])
    with pytest.raises(ValueError, match="too short"):
        splice_image_tokens(e, m, pos, img, [3, 0], out_len=6)
    holey = m.clone()
    holey[0, 3] = 0
    with pytest.raises(ValueError, match="contiguous"):
        splice_image_tokens(e, holey, pos, img, [1, 0])
    padded = m.clone()
    padded[0, 1:] = 0
    with pytest.raises(ValueError, match="padding position"):
        splice_image_tokens(e, padded, pos, img, [1, 0])
    with pytest.raises(TypeError, match="dtype"):
        splice_image_tokens(e, m, pos, img.double(), [1, 0])
    with pytest.raises(ValueError, match="padding_side"):
        splice_image_tokens(e, m, pos, img, [1, 0], padding_side="middle")
    with pytest.raises(TypeError, match="attention_mask must be bool or integer"):
        splice_image_tokens(e, m.float(), pos, img, [1, 0])


def test_token_pack_forms():
    tokens = torch.randn(3, 8, 5)
    text = torch.randn(3, 4, 5)
    sel = token_select(tokens, text, top_k=3)
    whole = token_pack(tokens, sel)
    assert torch.equal(whole, token_pack(tokens, sel.indices, sel.counts))
    assert torch.equal(whole, token_pack(tokens, sel.indices, sel.counts.tolist()))
    with pytest.raises(TypeError, match="positional"):
        token_pack(tokens, *sel)  # would bind probs to an offsets argument
    with pytest.raises(ValueError, match="counts comes from the TokenSelection"):
        token_pack(tokens, sel, sel.counts)
    with pytest.raises(ValueError, match="and their counts"):
        token_pack(tokens, sel.indices)
    one = token_select(tokens[1], text[1], top_k=3)  # unbatched selection packs unbatched
    assert one.indices.dim() == 1 and one.counts.dim() == 0
    packed = token_pack(tokens[1], one)
    assert packed.shape == (8, 5)
    assert torch.equal(packed[:3], tokens[1, one.indices[:3]])
    # Counts and ragged token counts straight from Python lists.
    sel2 = token_select(tokens, text, token_counts=[8, 5, 0], top_k=3)
    assert sel2.counts.tolist() == [3, 3, 0]


@pytest.mark.parametrize("dynamic", [False, True])
def test_whole_chain_compiles(dynamic):
    torch._dynamo.reset()
    B, M, H, T, P = 2, 12, 8, 7, 3

    def chain(local, text, text_mask, prefix, embeds, mask, pos):
        sel = token_select(local, text, text_mask, top_p=0.9)
        image, n = pack_image_tokens(local, sel, prefix=prefix)
        out = splice_image_tokens(embeds, mask, pos, image, n)
        return out.inputs_embeds.square().sum(), out.attention_mask

    args = [torch.randn(B, M, H, requires_grad=True), torch.randn(B, T, H),
            torch.ones(B, T, dtype=torch.long), torch.randn(P, H, requires_grad=True),
            torch.randn(B, T, H, requires_grad=True), torch.ones(B, T, dtype=torch.long),
            torch.tensor([2, 0])]
    args[5][1, 5:] = 0
    compiled = torch.compile(chain, backend="aot_eager", dynamic=dynamic)
    loss, am = compiled(*args)
    loss.backward()
    grads = [a.grad.clone() for a in args if a.requires_grad]
    for a in args:
        a.grad = None
    loss_e, am_e = chain(*args)
    loss_e.backward()
    assert torch.equal(am, am_e) and torch.allclose(loss, loss_e)
    for g, a in zip(grads, [a for a in args if a.requires_grad]):
        assert torch.allclose(g, a.grad)


def test_cuda_device_on_a_cpu_build_is_refused_up_front(monkeypatch):
    from slime_core.ops._checks import check_backend
    monkeypatch.setattr(slime_core, "BUILT_WITH_CUDA", False)  # what a CPU build records
    with pytest.raises(RuntimeError, match=r"built without CUDA kernels.*SLIME_CUDA=1"):
        check_backend("cuda", "ImageProcessor")
    check_backend("cpu")
    check_backend("meta")


def test_tile_order_is_the_stacking_order():
    index, counts = tile_raster_index([(2, 1), (1, 3)], 2, order="tile")
    assert index[0, :8].tolist() == list(range(8)) and index[1].tolist() == list(range(8, 20))
    with pytest.raises(ValueError, match="order"):
        tile_raster_index([(1, 1)], 2, order="spiral")


def test_processor_refuses_cuda_at_construction_and_float_tensor_images_say_the_torch_fix():
    from slime_core.preprocess import ImageInputError, ImageProcessor
    if not slime_core._C.build_info()["cuda"]:
        with pytest.raises(RuntimeError, match="ImageProcessor cannot run on cuda"):
            ImageProcessor(device="cuda")
    proc = ImageProcessor(tile_size=28)
    with pytest.raises(ImageInputError, match=r"to\(torch.uint8\).*permute\(1, 2, 0\)"):
        proc([torch.rand(3, 40, 50)])
    with pytest.raises(ImageInputError, match=r"astype\(np.uint8\)"):
        proc([np.random.rand(40, 50, 3)])
