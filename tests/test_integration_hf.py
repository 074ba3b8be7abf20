"""The HF LLaVA-NeXT recipe (issue 13): SliME's compression and selection inside a tiny
random transformers LlavaNextForConditionalGeneration: the batched input equals a per-image
loop built from the HF model's own parts, forward and backward run, torch.compile (also
dynamic=True) gives the same loss, and HF's generate accepts the spliced input."""
import numpy as np
import pytest
import torch

import slime_core  # noqa: F401
from slime_core.integrations.hf import SlimeLlavaNext
from slime_core.ops import IGNORE_INDEX, token_select
from slime_core.preprocess import ImageProcessor

transformers = pytest.importorskip("transformers")

TILE, PATCH, GRID, IMAGE_ID, SEP_ID, VOCAB = 56, 14, 2, 120, 7, 128


def tiny_model(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.LlavaNextConfig(
        vision_config=transformers.CLIPVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
            image_size=TILE, patch_size=PATCH),
        text_config=transformers.LlamaConfig(
            hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=VOCAB),
        image_token_index=IMAGE_ID, image_grid_pinpoints=[[56, 112], [112, 56], [112, 112]],
        vision_feature_layer=-2, vision_feature_select_strategy="default")
    return transformers.LlavaNextForConditionalGeneration(cfg).eval()


def batch(rng, sizes, lengths, image_at):
    proc = ImageProcessor(tile_size=TILE)  # SliME's grid picker, at this tower's tile size
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for w, h in sizes]
    out = proc(images)
    T = max(lengths)
    ids = torch.zeros(len(lengths), T, dtype=torch.int64)
    mask = torch.zeros(len(lengths), T, dtype=torch.int64)
    for b, (n, at) in enumerate(zip(lengths, image_at)):
        ids[b, :n] = torch.from_numpy(rng.integers(1, 100, n))
        ids[b, at] = IMAGE_ID
        mask[b, :n] = 1
    grids = [(p.grid_w, p.grid_h) for p in out.plans]
    return ids, mask, out.pixel_values, out.crops_per_image, grids


def loop_reference(model, slime, ids, mask, pixels, crops, grids):
    """One image at a time, from the HF model's parts, the obvious way."""
    embed = model.get_input_embeddings()
    proj = model.model.multi_modal_projector
    rows, first = [], 0
    for b, (c, (gw, gh)) in enumerate(zip(crops, grids)):
        feats = slime.vision_features(pixels[first:first + c])
        first += c
        glob = proj(feats[:1])[0]
        tiles = proj(slime.resampler(feats[1:]))                    # (gh*gw, g*g, H)
        g, H = GRID, tiles.shape[-1]
        local = (tiles.view(gh, gw, g, g, H).permute(0, 2, 1, 3, 4).reshape(-1, H))
        n = int(mask[b].sum())
        seq = ids[b, :n]
        text = embed(seq)
        keep = seq != IMAGE_ID
        sel = token_select(local, text, keep, top_p=slime.top_p)
        kept = local[sel.indices[:int(sel.counts)]]
        at = int((seq == IMAGE_ID).nonzero())
        rows.append(torch.cat([text[:at], glob, embed.weight[SEP_ID][None], kept,
                               text[at + 1:]]))
    return rows


def test_batched_recipe_equals_per_image_loop():
    rng = np.random.default_rng(1)
    model = tiny_model()
    slime = SlimeLlavaNext(model, grid_size=GRID, num_heads=4, top_p=0.8,
                           separator_token_id=SEP_ID)
    ids, mask, pixels, crops, grids = batch(rng, [(90, 60), (40, 130), (56, 56)], [9, 6, 12],
                                            [3, 0, 11])
    assert len(set(crops)) > 1  # ragged: images with different tile counts
    labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
    with torch.no_grad():
        out = slime.prepare_inputs(ids, mask, pixels, crops, grids, labels=labels)
        want = loop_reference(model, slime, ids, mask, pixels, crops, grids)
    for b, w in enumerate(want):
        n = int(out.attention_mask[b].sum())
        assert n == len(w)
        assert torch.allclose(out.inputs_embeds[b, :n], w, rtol=1e-5, atol=1e-6)
        assert torch.all(out.inputs_embeds[b, n:] == 0)
        assert torch.equal(out.position_ids[b, :n], torch.arange(n))
    # Labels: text tokens keep theirs, the image block takes no loss.
    img = (out.labels == IGNORE_INDEX) & out.attention_mask.bool()
    assert int(img.sum()) == sum(len(w) for w in want) - int(mask.sum()) + len(want)


def test_forward_backward_and_generate():
    rng = np.random.default_rng(2)
    model = tiny_model()
    slime = SlimeLlavaNext(model, grid_size=GRID, num_heads=4, top_p=0.9,
                           separator_token_id=SEP_ID)
    ids, mask, pixels, crops, grids = batch(rng, [(100, 70), (60, 150)], [10, 7], [2, 5])
    labels = ids.masked_fill((mask == 0) | (ids == IMAGE_ID), IGNORE_INDEX)
    model.train()
    inp = slime.prepare_inputs(ids, mask, pixels, crops, grids, labels=labels,
                               noise_std=0.1)
    out = model(**inp._asdict())
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert slime.resampler.query.grad is not None and slime.resampler.query.grad.abs().sum() > 0
    assert model.model.multi_modal_projector.linear_1.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        gen_in = slime.prepare_inputs(ids, mask, pixels, crops, grids, padding_side="left")
        tokens = model.generate(inputs_embeds=gen_in.inputs_embeds,
                                attention_mask=gen_in.attention_mask, max_new_tokens=4,
                                do_sample=False, pad_token_id=0)
    assert tokens.shape == (2, 4)
    # The left-padded batch gives each sequence the same next token as running it alone.
    with torch.no_grad():
        for b in range(2):
            n = int(gen_in.attention_mask[b].sum())
            alone = model(inputs_embeds=gen_in.inputs_embeds[b:b + 1, -n:]).logits[0, -1]
            assert int(alone.argmax()) == int(tokens[b, 0])


@pytest.mark.parametrize("dynamic", [False, True])
def test_recipe_compiles(dynamic):
    torch._dynamo.reset()
    rng = np.random.default_rng(3)
    model = tiny_model()
    slime = SlimeLlavaNext(model, grid_size=GRID, num_heads=4, top_k=5,
                           separator_token_id=SEP_ID)
    ids, mask, pixels, crops, grids = batch(rng, [(100, 70), (60, 150)], [10, 7], [2, 5])
    labels = ids.masked_fill((mask == 0) | (ids == IMAGE_ID), IGNORE_INDEX)

    def step(ids, mask, pixels, labels):
        inp = slime.prepare_inputs(ids, mask, pixels, crops, grids, labels=labels)
        return model(**inp._asdict()).loss

    eager = step(ids, mask, pixels, labels)
    compiled = torch.compile(step, backend="aot_eager", dynamic=dynamic)
    loss = compiled(ids, mask, pixels, labels)
    assert torch.allclose(loss, eager, rtol=1e-5)
    loss.backward()
    assert slime.resampler.query.grad is not None


def test_resampler_compiles_with_dynamic_shapes():
    # The Resampler alone under dynamic=True: math.isqrt of a symbolic size used to fail in
    # tracing; two batch sizes run through one graph (the batch stays symbolic).
    from slime_core.models import Resampler
    torch._dynamo.reset()
    r = Resampler(2, 32, 4)
    f = torch.compile(r, dynamic=True, backend="aot_eager")
    for batch_size in (3, 5):
        x = torch.randn(batch_size, 16, 32, requires_grad=True)
        out = f(x)
        assert torch.allclose(out, r(x), rtol=1e-5, atol=1e-6)
        out.sum().backward()


def test_recipe_errors():
    model = tiny_model()
    slime = SlimeLlavaNext(model, grid_size=GRID, num_heads=4, separator_token_id=SEP_ID)
    rng = np.random.default_rng(4)
    ids, mask, pixels, crops, grids = batch(rng, [(100, 70)], [6], [1])
    with pytest.raises(ValueError, match="one image per sequence"):
        slime.prepare_inputs(ids, mask, pixels, crops + crops, grids)
    with pytest.raises(ValueError, match="global view first"):
        slime.prepare_inputs(ids, mask, pixels, [crops[0] - 1], grids)
    with pytest.raises(TypeError, match="LlavaNext"):
        SlimeLlavaNext(torch.nn.Linear(2, 2))
