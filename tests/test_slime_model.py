"""The SliME assembly (issue 11): tiny random CLIP + Llama saved by HF transformers in their
real layouts, loaded by slime_core, assembled with the gated connector and the local
compressor. Checked: the fused path equals the plain-reference path (loss and gradients),
a ragged batch equals its samples run alone, the three image modes and selection rules give
the token counts they promise, LLaVA-layout checkpoints round-trip and released-style ones
load, batched generation equals one-at-a-time, and a TinyLLaVA-style config runs."""
import json
import os

import numpy as np
import pytest
import torch

import slime_core  # noqa: F401
from slime_core.checkpoint import CheckpointError, save_safetensors
from slime_core.models.llm import Decoder
from slime_core.models.slime import IMAGE_TOKEN_INDEX, SlimeConfig, SlimeModel
from slime_core.models.vision import VisionTower
from slime_core.preprocess import ImageProcessor

transformers = pytest.importorskip("transformers")

TILE, PATCH, SEP, VOCAB = 28, 7, 5, 96
SIDE = TILE // PATCH  # 4 x 4 = 16 tokens per crop


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("slime")
    torch.manual_seed(0)
    vcfg = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=3, num_attention_heads=4,
                                         image_size=TILE, patch_size=PATCH)
    transformers.CLIPVisionModel(vcfg).save_pretrained(root / "clip")
    lcfg = transformers.LlamaConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2,
                                    vocab_size=VOCAB, bos_token_id=1, eos_token_id=2)
    transformers.LlamaForCausalLM(lcfg).save_pretrained(root / "llama")
    return root


def build(folders, **cfg):
    torch.manual_seed(1)
    defaults = dict(num_heads=4, local_grid=2, separator_token_id=SEP, top_p=0.8)
    defaults.update(cfg)
    model = SlimeModel(SlimeConfig(**defaults), VisionTower.from_pretrained(folders / "clip"),
                       Decoder.from_pretrained(folders / "llama"))
    with torch.no_grad():  # a trained router, not the zero init
        if hasattr(model.mm_projector, "w_gate"):
            model.mm_projector.w_gate.copy_(torch.randn_like(model.mm_projector.w_gate.float()))
    return model


def batch(seed, sizes=((50, 30), (20, 90), (28, 28)), lengths=(9, 6, 12), at=(3, 0, 11),
          planner="slime", grid=(2, 2)):
    rng = np.random.default_rng(seed)
    proc = ImageProcessor(tile_size=TILE, planner=planner, grid_wh=grid)
    out = proc([rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for w, h in sizes])
    T = max(lengths)
    ids = torch.zeros(len(lengths), T, dtype=torch.int64)
    mask = torch.zeros_like(ids)
    for b, (n, a) in enumerate(zip(lengths, at)):
        ids[b, :n] = torch.from_numpy(rng.integers(6, VOCAB, n))
        ids[b, a] = IMAGE_TOKEN_INDEX
        mask[b, :n] = 1
    labels = ids.masked_fill((mask == 0) | (ids < 0), -100)
    grids = [(p.grid_w, p.grid_h) for p in out.plans]
    return ids, mask, out.pixel_values, out.crops_per_image, grids, labels


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


@pytest.mark.parametrize("training", [False, True])
def test_fused_path_equals_reference_path(folders, training):
    model = build(folders)
    model.llm.requires_grad_(True)
    model.train(training)
    ids, mask, px, crops, grids, labels = batch(2)
    results = []
    for fused in (True, False):
        model.set_fused_ops(fused)
        model.zero_grad()
        torch.manual_seed(3)  # the same selection and router noise on both paths
        out = model(ids, mask, px, crops, grids, labels)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((out.loss.detach(), out.inputs.attention_mask, grads))
    (la, ma, ga), (lb, mb, gb) = results
    assert torch.equal(ma, mb)  # the same tokens were kept
    assert rel(la, lb) < 1e-5
    assert ga.keys() == gb.keys() and len(ga) > 10
    for n in ga:
        tol = 1e-2 if ga[n].dtype == torch.bfloat16 else 1e-4
        assert rel(ga[n].float(), gb[n].float()) < tol, n


def test_ragged_batch_equals_samples_alone(folders):
    model = build(folders).eval()
    ids, mask, px, crops, grids, labels = batch(4)
    with torch.no_grad():
        out = model(ids, mask, px, crops, grids, labels)
        first = 0
        for b in range(len(crops)):
            n = int(mask[b].sum())
            alone = model(ids[b:b + 1, :n], mask[b:b + 1, :n], px[first:first + crops[b]],
                          crops[b:b + 1], grids[b:b + 1], labels[b:b + 1, :n])
            first += crops[b]
            L = int(alone.inputs.attention_mask.sum())
            assert int(out.inputs.attention_mask[b].sum()) == L
            assert rel(out.logits[b, :L], alone.logits[0, :L]) < 1e-5


@pytest.mark.parametrize("mode", ["both", "global", "local"])
@pytest.mark.parametrize("selection", ["top_p", "top_k", "none", "random"])
def test_modes_and_selection_counts(folders, mode, selection):
    model = build(folders, image_mode=mode, selection=selection, top_k=5,
                  connector="gated").eval()
    ids, mask, px, crops, grids, labels = batch(5)
    with torch.no_grad():
        inp = model.prepare_inputs(ids, mask, px, crops, grids, labels)
    tiles = [c - 1 for c in crops]
    local_all = [t * 4 for t in tiles]  # 2 x 2 compressed tokens per tile
    image = inp.attention_mask.sum(1) - (mask.sum(1) - 1)
    for b, n in enumerate(image.tolist()):
        if mode == "global":
            assert n == SIDE * SIDE
            continue
        kept = n - (SIDE * SIDE + 1 if mode == "both" else 0)
        if selection == "none":
            assert kept == local_all[b]
        elif selection in ("top_k", "random"):
            assert kept == min(5, local_all[b])
        else:
            assert 1 <= kept <= local_all[b]
    assert torch.all(inp.labels[inp.attention_mask.bool()][(inp.labels == -100)
                                                          [inp.attention_mask.bool()]] == -100)


def test_random_selection_is_blind_to_the_text_and_repeats(folders):
    ids, mask, px, crops, grids, _ = batch(5)
    picks = {}
    for selection in ("random", "top_k"):
        model = build(folders, selection=selection, top_k=3).eval()
        text = model.llm.embed_tokens(ids.clamp(min=0))
        other = torch.randn_like(text)
        with torch.no_grad():
            for fused in (True, False):
                model.set_fused_ops(fused)
                for t in (text, other):
                    sel = model.image_tokens(px, crops, grids, t, mask.bool(),
                                             return_selection=True)[2]
                    picks.setdefault(selection, []).append(sel[0])
                    assert sel[1].tolist() == [min(3, int(m)) for m in sel[2]]
    # random: one choice whatever the text, on both paths, call after call
    assert all(torch.equal(p, picks["random"][0]) for p in picks["random"])
    # while top_k's follows the text
    assert not torch.equal(picks["top_k"][0], picks["top_k"][1])


def test_checkpoint_round_trip_and_released_layout(folders, tmp_path):
    model = build(folders).eval()
    ids, mask, px, crops, grids, labels = batch(6)
    model.save_pretrained(tmp_path / "ckpt", vision_tower_path=str(folders / "clip"))
    with torch.no_grad():
        want = model(ids, mask, px, crops, grids).logits
        again = SlimeModel.from_pretrained(tmp_path / "ckpt")
        assert torch.equal(again(ids, mask, px, crops, grids).logits, want)
    # A released-style folder: no slime_core block, mm_* fields as SliME writes them, the
    # vision tower's keys saved too (ignored), its path from another machine (overridden).
    sd = model.llava_state_dict()
    sd["model.vision_tower.vision_tower.vision_model.embeddings.class_embedding"] = torch.zeros(32)
    os.makedirs(tmp_path / "released")
    save_safetensors(sd, str(tmp_path / "released" / "model.safetensors"))
    hf = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    del hf["slime_core"]
    hf.update(model_type="llava_llama", mm_vision_tower="/data/clip-vit-large-patch14-336",
              mm_resampler_dim=4)
    (tmp_path / "released" / "config.json").write_text(json.dumps(hf))
    with pytest.raises(CheckpointError, match="pass vision_tower="):
        SlimeModel.from_pretrained(tmp_path / "released")
    released = SlimeModel.from_pretrained(tmp_path / "released", vision_tower=folders / "clip",
                                          num_heads=4)
    assert released.config.local_grid == 2 and released.config.separator_token_id == SEP
    with torch.no_grad():
        assert torch.equal(released(ids, mask, px, crops, grids).logits, want)
    # A missing key is named.
    del sd["model.sampler.post_qformer.query"]
    save_safetensors(sd, str(tmp_path / "released" / "model.safetensors"))
    with pytest.raises(CheckpointError, match="post_qformer|query"):
        SlimeModel.from_pretrained(tmp_path / "released", vision_tower=folders / "clip",
                                   num_heads=4)


def test_batched_generation_equals_one_at_a_time(folders):
    model = build(folders).eval()
    ids, mask, px, crops, grids, _ = batch(7)
    tokens = model.generate(ids, mask, px, crops, grids, max_new_tokens=5, stop_token_ids=[],
                            pad_token_id=0)
    first = 0
    for b in range(len(crops)):
        n = int(mask[b].sum())
        alone = model.generate(ids[b:b + 1, :n], mask[b:b + 1, :n], px[first:first + crops[b]],
                               crops[b:b + 1], grids[b:b + 1], max_new_tokens=5,
                               stop_token_ids=[], pad_token_id=0)
        first += crops[b]
        assert torch.equal(tokens[b], alone[0])


@pytest.mark.parametrize("connector", ["mlp2x_gelu", "resampler"])
def test_tinyllava_style_config(folders, connector):
    # Vision tower + MLP (or resampler) connector + LLM, one crop per image: the same class.
    model = build(folders, image_mode="global", connector=connector, connector_grid=2)
    model.llm.requires_grad_(True)
    ids, mask, px, crops, grids, labels = batch(8, planner="fixed", grid=(0, 0))
    assert crops == [1, 1, 1]
    out = model(ids, mask, px, crops, grids, labels)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    n_image = 4 if connector == "resampler" else SIDE * SIDE
    assert torch.equal(out.inputs.attention_mask.sum(1), mask.sum(1) - 1 + n_image)
    assert model.sampler is None


def test_uncompressed_tiles_are_every_patch_in_raster_order(folders, tmp_path):
    """local_compressor='none' (LLaVA-NeXT's AnyRes, the demo's baseline): no sampler; each
    tile's tower tokens go through mm_projector as the global view's do, laid on the image's
    canvas in raster order (canvas row r, column c = tile (r // SIDE, c // SIDE), patch
    (r % SIDE, c % SIDE)), after the global view and the separator."""
    model = build(folders, local_compressor="none", selection="none").eval()
    assert model.sampler is None and model.local_side == SIDE
    ids, mask, px, crops, grids, _ = batch(6)
    text, tmask = model.selection_text(ids, mask)
    with torch.no_grad():
        image, counts = model.image_tokens(px, crops, grids, text, tmask)
        feats = model.mm_projector(model.vision_tower(px))  # (crops, SIDE * SIDE, H)
    first = 0
    for b, (gw, gh) in enumerate(grids):
        rows = [feats[first], model.llm.embed_tokens.weight[SEP][None]]
        for r in range(gh * SIDE):
            for c in range(gw * SIDE):
                tile = first + 1 + (r // SIDE) * gw + c // SIDE
                rows.append(feats[tile, (r % SIDE) * SIDE + c % SIDE][None])
        want = torch.cat(rows)
        assert int(counts[b]) == len(want) == SIDE * SIDE + 1 + gw * gh * SIDE * SIDE
        assert rel(image[b, :len(want)], want) < 1e-6
        first += crops[b]
    # the text-guided selection runs on the patches as on compressed tokens
    model.config.selection, model.config.top_k = "top_k", 7
    with torch.no_grad():
        _, counts, (_, kept, m) = model.image_tokens(px, crops, grids, text, tmask,
                                                     return_selection=True)
    assert m.tolist() == [(c - 1) * SIDE * SIDE for c in crops]
    assert kept.tolist() == [7] * len(crops)
    # it saves and loads back as it is (no model.sampler.* in the folder)
    model.save_pretrained(tmp_path / "patches", vision_tower_path=str(folders / "clip"))
    again = SlimeModel.from_pretrained(tmp_path / "patches").eval()
    assert again.config.local_compressor == "none" and again.sampler is None
    with torch.no_grad():
        assert torch.equal(again(ids, mask, px, crops, grids).logits,
                           model(ids, mask, px, crops, grids).logits)
    # built without a compressor, it cannot be switched to one
    model.config.local_compressor = "resampler"
    with pytest.raises(ValueError, match="without a local compressor"):
        model.image_tokens(px, crops, grids, text, tmask)


def test_config_errors(folders):
    with pytest.raises(ValueError, match="image_mode"):
        SlimeConfig(image_mode="all")
    with pytest.raises(ValueError, match="resampler"):
        SlimeConfig(connector="resampler")
    with pytest.raises(ValueError, match="local_compressor"):
        SlimeConfig(local_compressor="mean")
    model = build(folders)
    ids, mask, px, crops, grids, labels = batch(9)
    with pytest.raises(ValueError, match="1 \\+ tiles"):
        model(ids, mask, px, [c + 1 for c in crops], grids)


def test_trim_left_padding_keeps_the_longest_row_whole():
    from slime_core.models.slime import trim_left_padding
    x = torch.randn(3, 7, 4)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1, 1]])
    y, m = trim_left_padding(x, mask)
    assert torch.equal(y, x[:, 2:]) and torch.equal(m, mask[:, 2:])
    y, m = trim_left_padding(x, torch.ones_like(mask))  # nothing to trim
    assert y.shape == x.shape
    y, m = trim_left_padding(x[:0], mask[:0])           # empty batch: left as it is
    assert y.shape == (0, 7, 4) and m.shape == (0, 7)
