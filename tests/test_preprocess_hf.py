"""LLaVA-NeXT preprocessing against the references we did not write: the original LLaVA-NeXT
"anyres" code (tests/llava_reference.py, a transcription of llava/mm_utils.py) and HF
transformers' LLaVA-NeXT image processor, processor and model (a test-only dependency). Also
the explicit size conventions: (w, h) vs (h, w) pinpoints, (h, w) image_sizes, and the
ProcessorOutput's BatchFeature-like API.

Bit-exactness holds against the Pillow version tile_resize reproduces (requirements-test.txt)."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import llava_reference as ref
import slime_core  # noqa: F401  (loads the extension)
from slime_core.preprocess import (ImageProcessor, plan_fixed, plan_pinpoints, plan_slime,
                                   select_best_resolution)

V16_PINPOINTS = ref.LLAVA_V16_PINPOINTS  # as llava-v1.6 ships it; HF reads it as (h, w)
# HF's LLaVA-NeXT image processor as the llava-v1.6 checkpoints (llava-hf/*-hf) configure it.
V16_HF_CONFIG = {
    "crop_size": {"height": 336, "width": 336}, "size": {"shortest_edge": 336},
    "image_grid_pinpoints": V16_PINPOINTS, "image_mean": list(ref.CLIP_MEAN),
    "image_std": list(ref.CLIP_STD), "resample": 3, "do_pad": True, "do_center_crop": True,
    "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
    "rescale_factor": 0.00392156862745098, "image_processor_type": "LlavaNextImageProcessor",
}

# Ties (both sides at most 336: 1x1, 2x3, 336x336...), just over, tall, wide, extreme, exact
# pinpoints.
SIZES = [(1, 1), (2, 3), (3, 2), (336, 336), (335, 337), (337, 335), (336, 168), (168, 336),
         (100, 100), (1, 500), (500, 1), (7, 1500), (1500, 7), (672, 336), (336, 672),
         (1008, 336), (640, 480), (1920, 1080)]


@pytest.fixture
def rng():
    return np.random.default_rng()


def rand_image(w, h, rng):
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def assert_same(got, expect, what="the reference"):
    assert got.shape == expect.shape and got.dtype == expect.dtype
    diff = int((got != expect).sum())
    assert diff == 0, f"{diff} of {expect.numel()} values differ from {what}"


def random_sizes(rng, n, hi=2000):
    return [tuple(int(v) for v in rng.integers(1, hi, 2)) for _ in range(n)]


# ---- the original LLaVA-NeXT code ----

def test_select_best_resolution_matches_original(rng):
    lists = [V16_PINPOINTS, [[h, w] for w, h in V16_PINPOINTS],
             [[384, 768], [768, 384], [768, 768], [1152, 384], [384, 1152], [1152, 1152]]]
    for w, h in SIZES + random_sizes(rng, 500, 5000):
        for cands in lists:
            assert select_best_resolution(w, h, cands) == ref.select_best_resolution((w, h),
                                                                                   cands)


def test_pinpoints_processor_equals_original_llava(rng):
    sizes = SIZES + random_sizes(rng, 10)
    pils = [Image.fromarray(rand_image(w, h, rng)) for w, h in sizes]
    out = ImageProcessor(planner="pinpoints")(pils)
    expect = [ref.process_anyres_image(p) for p in pils]
    assert out.crops_per_image == [e.shape[0] for e in expect]
    assert_same(out.pixel_values, torch.cat(expect), "the original LLaVA-NeXT code")


def test_pinpoints_other_tile_size_equals_original(rng):
    pins = [[384, 768], [768, 384], [768, 768], [1152, 384]]
    sizes = [(1, 1), (384, 384), (385, 900), (1200, 500), (20, 3)]
    pils = [Image.fromarray(rand_image(w, h, rng)) for w, h in sizes]
    out = ImageProcessor(planner="pinpoints", tile_size=384, pinpoints_wh=pins)(pils)
    expect = torch.cat([ref.process_anyres_image(p, pins, 384, 384) for p in pils])
    assert_same(out.pixel_values, expect, "the original LLaVA-NeXT code")


# ---- (w, h) vs (h, w) ----

def test_pinpoints_orders_differ_only_on_ties(rng):
    swapped = [[h, w] for w, h in V16_PINPOINTS]
    for w, h in SIZES + random_sizes(rng, 300, 1200):
        a = plan_pinpoints(w, h, pinpoints_wh=V16_PINPOINTS)
        b = plan_pinpoints(w, h, pinpoints_hw=V16_PINPOINTS)
        assert b == plan_pinpoints(w, h, pinpoints_wh=swapped)
        assert a == plan_pinpoints(w, h)  # the default is the original code's reading
        if max(w, h) <= 336:
            assert ((a.grid_w, a.grid_h), (b.grid_w, b.grid_h)) == ((1, 2), (2, 1))
        elif a != b:  # another tie: same pixels kept and canvas wasted, grids transposed
            assert (a.grid_w, a.grid_h) == (b.grid_h, b.grid_w)
            assert ref.select_best_resolution((w, h), V16_PINPOINTS) == (a.grid_w * 336,
                                                                        a.grid_h * 336)


def test_unordered_sizes_are_refused():
    with pytest.raises(TypeError, match="pinpoints_wh.*pinpoints_hw"):
        plan_pinpoints(10, 10, pinpoints=V16_PINPOINTS)
    with pytest.raises(TypeError, match="pinpoints_wh.*pinpoints_hw"):
        ImageProcessor(planner="pinpoints", pinpoints=V16_PINPOINTS)
    with pytest.raises(TypeError, match="not both"):
        plan_pinpoints(10, 10, pinpoints_wh=V16_PINPOINTS, pinpoints_hw=V16_PINPOINTS)
    with pytest.raises(TypeError, match="grid_wh"):
        plan_fixed(10, 10, grid=(1, 2))
    with pytest.raises(TypeError, match="grid_wh"):
        ImageProcessor(planner="fixed", grid=(1, 2))
    with pytest.raises(TypeError, match="unexpected"):
        ImageProcessor(tile=336)
    with pytest.raises(TypeError):
        ImageProcessor(336)  # keyword-only
    with pytest.raises(ValueError, match="pinpoints_hw"):
        plan_pinpoints(10, 10, pinpoints_hw=[[336, 500]])
    with pytest.raises(ValueError, match="empty"):
        plan_pinpoints(10, 10, pinpoints_wh=[])
    with pytest.raises(TypeError, match=r"pinpoints_hw must be a list of \(height, width\)"):
        ImageProcessor(planner="pinpoints", pinpoints_hw=[336, 672])


def test_image_sizes_are_height_width(rng):
    out = ImageProcessor()([rand_image(5, 9, rng), Image.fromarray(rand_image(640, 480, rng))])
    assert out.image_sizes.dtype == torch.int64
    assert out.image_sizes.tolist() == [[9, 5], [480, 640]]
    assert out.grids_wh == [(p.grid_w, p.grid_h) for p in out.plans]


# ---- ProcessorOutput: mapping, .to, token counts ----

def test_output_mapping_and_to(rng):
    out = ImageProcessor()([rand_image(50, 40, rng), rand_image(700, 300, rng)])
    assert list(out.keys()) == ["pixel_values", "image_sizes"] and len(out) == 2
    assert out["pixel_values"] is out.pixel_values and dict(out)["image_sizes"] is out.image_sizes

    def model(pixel_values, image_sizes):
        return pixel_values.shape[0], image_sizes.shape

    assert model(**out) == (sum(out.crops_per_image), (2, 2))
    with pytest.raises(KeyError, match="attributes"):
        out["crops_per_image"]
    pv = out.pixel_values
    assert out.to(dtype=torch.bfloat16) is out
    assert out.pixel_values.dtype == torch.bfloat16 and torch.equal(out.pixel_values,
                                                                   pv.bfloat16())
    assert out.image_sizes.dtype == torch.int64
    out.to(torch.float16)
    assert out.pixel_values.dtype == torch.float16
    out.to("cpu", torch.float32)
    assert out.pixel_values.dtype == torch.float32 and out.pixel_values.device.type == "cpu"
    with pytest.raises(TypeError, match="floating"):
        out.to(dtype=torch.int32)
    u8 = ImageProcessor(dtype=torch.uint8)(rand_image(30, 30, rng))
    assert u8.to(dtype=torch.float16).pixel_values.dtype == torch.uint8  # as BatchFeature


def test_image_tokens_slime():
    proc = ImageProcessor()
    out = proc([np.zeros((h, w, 3), np.uint8) for w, h in [(640, 480), (3000, 300), (1, 1)]])
    n = [p.grid_w * p.grid_h for p in out.plans]
    assert out.image_tokens_slime() == [576 + 1 + 144 * k for k in n]
    assert out.image_tokens_slime(tokens_per_tile=64) == [576 + 1 + 64 * k for k in n]
    tiles = ImageProcessor(planner="fixed", grid_wh=(2, 3), global_view=False)
    assert tiles(np.zeros((9, 9, 3), np.uint8)).image_tokens_slime() == [144 * 6]
    assert plan_slime(640, 480).num_crops == out.crops_per_image[0]


def test_layout_hf_needs_hf_pinpoints():
    for kwargs in [{}, {"planner": "pinpoints"}, {"planner": "pinpoints",
                                                  "pinpoints_wh": V16_PINPOINTS},
                   {"planner": "pinpoints", "pinpoints_hw": V16_PINPOINTS,
                    "global_view": False}]:
        with pytest.raises(ValueError, match="layout='hf'"):
            ImageProcessor(layout="hf", **kwargs)
    with pytest.raises(ValueError, match="layout"):
        ImageProcessor(layout="padded")
    with pytest.raises(ValueError, match="alpha"):
        ImageProcessor(alpha="black")


def test_layout_hf_empty_batch():
    out = ImageProcessor.from_hf(V16_HF_CONFIG)([])
    assert out.pixel_values.shape == (0, 0, 3, 336, 336) and out.image_sizes.shape == (0, 2)


# ---- from_hf: configs it refuses ----

@pytest.mark.parametrize("change,match", [
    ({"crop_size": {"height": 224, "width": 224}}, "size"),
    ({"crop_size": {"height": 336, "width": 300}}, "crop_size"),
    ({"size": {"shortest_edge": 336, "longest_edge": 1000}}, "size"),
    ({"resample": 1}, "resample"), ({"resample": 0}, "resample"), ({"resample": None}, "resample"),
    ({"resample": "bicubic"}, "resample"), ({"data_format": "channels_last"}, "data_format"),
    ({"pad_size": {"height": 672, "width": 672}}, "pad_size"),
    ({"rescale_factor": 1 / 256}, "rescale_factor"), ({"do_rescale": False}, "do_rescale"),
    ({"do_pad": False}, "do_pad"), ({"do_convert_rgb": False}, "do_convert_rgb"),
    ({"image_processor_type": "LlavaOnevisionImageProcessor"}, "image_processor_type"),
    ({"aspect_ratio_setting": "pad"}, "aspect_ratio_setting"),
    ({"do_sharpen": True}, "unknown setting.*do_sharpen"),
    ({"image_grid_pinpoints": [[336, 500]]}, "pinpoints_hw"),
])
def test_from_hf_refuses_what_it_cannot_reproduce(change, match):
    with pytest.raises(ValueError, match=match):
        ImageProcessor.from_hf({**V16_HF_CONFIG, **change})


def test_from_hf_sources(tmp_path):
    proc = ImageProcessor.from_hf(V16_HF_CONFIG)
    assert (proc.planner, proc.tile_size, proc.layout, proc.alpha, proc.filter) == \
        ("pinpoints", 336, "hf", "white", "bicubic")
    assert proc.pinpoints_hw == tuple(map(tuple, V16_PINPOINTS)) and proc.pinpoints_wh is None
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(V16_HF_CONFIG))
    assert repr(ImageProcessor.from_hf(tmp_path)) == repr(proc)
    assert repr(ImageProcessor.from_hf(str(tmp_path / "preprocessor_config.json"))) == repr(proc)
    bilinear = ImageProcessor.from_hf({**V16_HF_CONFIG, "resample": 2, "do_normalize": False})
    assert (bilinear.filter, bilinear.mean, bilinear.std) == ("bilinear", (0.0,) * 3, (1.0,) * 3)
    with pytest.raises(FileNotFoundError, match="no such file"):
        ImageProcessor.from_hf(tmp_path / "missing")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        ImageProcessor.from_hf(tmp_path / "bad.json")
    with pytest.raises(TypeError, match="from_hf takes"):
        ImageProcessor.from_hf(12)
    # transformers 5 saves a processor's settings in processor_config.json, nested.
    nested = tmp_path / "v5"
    nested.mkdir()
    (nested / "processor_config.json").write_text(json.dumps(
        {"image_processor": V16_HF_CONFIG, "patch_size": 14, "processor_class": "P"}))
    assert repr(ImageProcessor.from_hf(nested)) == repr(proc)


# ---- against HF transformers ----

@pytest.fixture
def transformers():
    return pytest.importorskip("transformers")


def hf_image_processor(transformers, config):
    """HF's Pillow-backed LLaVA-NeXT image processor: LlavaNextImageProcessorPil in 5.x,
    LlavaNextImageProcessor (the slow one) in 4.x."""
    cls = getattr(transformers, "LlavaNextImageProcessorPil", None)
    if cls is None:
        cls = transformers.LlavaNextImageProcessor
    return cls(**{k: v for k, v in config.items() if k != "image_processor_type"})


def check_same_as_hf(hf, ours, images):
    theirs = hf(images, return_tensors="pt")
    got = ours(images)
    assert_same(got.pixel_values, theirs["pixel_values"], "HF's")
    assert got.image_sizes.dtype == theirs["image_sizes"].dtype
    assert torch.equal(got.image_sizes, theirs["image_sizes"])
    return got


def test_from_hf_matches_transformers_v16(transformers, rng):
    hf = hf_image_processor(transformers, V16_HF_CONFIG)
    ours = ImageProcessor.from_hf(hf)
    assert repr(ours) == repr(ImageProcessor.from_hf(V16_HF_CONFIG))
    sizes = SIZES + random_sizes(rng, 12) + random_sizes(rng, 4, 337)  # + ties
    pils = [Image.fromarray(rand_image(w, h, rng)) for w, h in sizes]
    got = check_same_as_hf(hf, ours, pils)
    # The ties are where HF and the original code part: HF reads the list as (h, w).
    k = sizes.index((336, 336))
    assert got.grids_wh[k] == (2, 1) and plan_pinpoints(336, 336).grid_w == 1
    # One image at a time too (no padding between images).
    for p in pils[:4]:
        check_same_as_hf(hf, ours, [p])


def test_from_hf_other_configs(transformers, rng):
    configs = [
        {**V16_HF_CONFIG, "resample": 2},
        {**V16_HF_CONFIG, "do_normalize": False, "do_center_crop": False},
        {**V16_HF_CONFIG, "image_mean": [0.5, 0.25, 0.125], "image_std": [0.2, 0.3, 0.4]},
        {**V16_HF_CONFIG, "crop_size": {"height": 384, "width": 384},
         "size": {"height": 384, "width": 384},
         "image_grid_pinpoints": [[384, 768], [768, 384], [768, 768], [384, 1152]]},
    ]
    sizes = [(1, 1), (2, 3), (384, 384), (500, 333), (90, 1200)] + random_sizes(rng, 3)
    pils = [Image.fromarray(rand_image(w, h, rng)) for w, h in sizes]
    for cfg in configs:
        check_same_as_hf(hf_image_processor(transformers, cfg), ImageProcessor.from_hf(cfg), pils)


def test_from_hf_arrays_and_files(transformers, tmp_path, rng):
    hf = hf_image_processor(transformers, V16_HF_CONFIG)
    ours = ImageProcessor.from_hf(V16_HF_CONFIG)
    # HF guesses an array's channel axis; these shapes are unambiguous (height not 1, 3 or 4).
    arrays = [rand_image(w, h, rng) for w, h in [(5, 2), (400, 300), (17, 1000)]]
    check_same_as_hf(hf, ours, arrays)
    path = tmp_path / "a.png"
    Image.fromarray(arrays[1]).save(path)
    assert torch.equal(ours([path]).pixel_values, ours([arrays[1]]).pixel_values)
    # Ours never guesses: a 2x3 array is 2 wide and 3 high, as the same image given as PIL.
    small = rand_image(2, 3, rng)
    assert torch.equal(ours(small).pixel_values, hf(Image.fromarray(small),
                                                    return_tensors="pt")["pixel_values"])


# How HF's do_convert_rgb treats transparent PIL images (RGBA, LA, P with a transparency key):
# from transformers 5.21.0 on, image_transforms.convert_to_rgb (which PilBackend.process_image,
# LlavaNextImageProcessorPil's base, calls) composites them onto white, as from_hf's default
# alpha="white" does; up to 5.20.x (and in 4.x) it was image.convert("RGB"), which drops the
# alpha band, as alpha="drop" does. Checked bit for bit on 4.46.3, 4.57.6, 5.0.0, 5.5.0,
# 5.10.4, 5.14.0, 5.16.1, 5.17.0-5.20.2 (drop) and 5.21.0, 5.21.1, 5.22.0, 5.23.0 (white).
HF_WHITE_FROM = (5, 21)


def hf_alpha(transformers):
    """The from_hf alpha option that reproduces the installed transformers."""
    major, minor = (int(v) for v in transformers.__version__.split(".")[:2])
    return "white" if (major, minor) >= HF_WHITE_FROM else "drop"


def test_from_hf_transparency_matches_transformers(transformers, rng):
    alpha = hf_alpha(transformers)
    hf = hf_image_processor(transformers, V16_HF_CONFIG)
    ours = ImageProcessor.from_hf(V16_HF_CONFIG, alpha=alpha)
    rgba = Image.fromarray(rng.integers(0, 256, (90, 130, 4), dtype=np.uint8), "RGBA")
    la = rgba.convert("LA")
    pal = Image.fromarray(rand_image(60, 40, rng)).convert("P")
    palette = pal.getpalette()  # the key: a colour in use, not white (white on white is no change)
    pal.info["transparency"] = next(k for k in np.asarray(pal).ravel().tolist()
                                    if palette[3 * k:3 * k + 3] != [255, 255, 255])
    opaque_p = Image.fromarray(rand_image(60, 40, rng)).convert("P")
    images = [rgba, la, pal, opaque_p]
    got = check_same_as_hf(hf, ours, images)
    # "white" is not "drop": the other mode changes every transparent image, not the opaque one.
    other = ImageProcessor.from_hf(V16_HF_CONFIG, alpha="drop" if alpha == "white" else "white")
    flipped = other(images).pixel_values
    for i in range(3):
        assert not torch.equal(flipped[i], got.pixel_values[i]), \
            f"image {i}: alpha={alpha!r} and the other mode agree (transformers " \
            f"{transformers.__version__})"
    assert torch.equal(flipped[3], got.pixel_values[3])


def test_from_hf_fast_processor_config(transformers, rng):
    pytest.importorskip("torchvision")
    fast = transformers.LlavaNextImageProcessor(**{k: v for k, v in V16_HF_CONFIG.items()
                                                  if k != "image_processor_type"})
    ours = ImageProcessor.from_hf(fast)
    assert repr(ours) == repr(ImageProcessor.from_hf(V16_HF_CONFIG))
    # torchvision's resampling is not Pillow's: same shapes and sizes, not the same pixels.
    pils = [Image.fromarray(rand_image(w, h, rng)) for w, h in [(1, 1), (336, 336), (640, 480)]]
    theirs, got = fast(pils, return_tensors="pt"), ours(pils)
    assert got.pixel_values.shape == theirs["pixel_values"].shape
    assert torch.equal(got.image_sizes, theirs["image_sizes"])


def tiny_tokenizer(transformers):
    from tokenizers import Tokenizer, models, pre_tokenizers
    tok = Tokenizer(models.WordLevel({"<unk>": 0, "<image>": 1, "hi": 2}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>",
                                                additional_special_tokens=["<image>"])


@pytest.mark.parametrize("strategy,extra", [("default", 1), ("full", 0), ("default", 0)])
def test_image_tokens_match_llava_next_processor(transformers, strategy, extra, tmp_path,
                                                 rng):
    hf = hf_image_processor(transformers, V16_HF_CONFIG)
    proc = transformers.LlavaNextProcessor(
        image_processor=hf, tokenizer=tiny_tokenizer(transformers), patch_size=14,
        vision_feature_select_strategy=strategy, num_additional_image_tokens=extra)
    ours = ImageProcessor.from_hf(hf)
    assert repr(ImageProcessor.from_hf(proc)) == repr(ours)
    proc.save_pretrained(tmp_path)
    assert repr(ImageProcessor.from_hf(tmp_path)) == repr(ours)
    sizes = SIZES + [(h, w) for w, h in SIZES] + random_sizes(rng, 8, 3000)
    images = [np.zeros((h, w, 3), np.uint8) + 7 for w, h in sizes]
    pils = [Image.fromarray(a) for a in images]
    out = ours(pils)
    counts = out.image_tokens_llava_next(14, strategy, extra)
    for pil, n in zip(pils, counts):
        ids = proc(images=[pil], text=["hi <image> hi"], return_tensors="pt")["input_ids"]
        assert int((ids == proc.image_token_id).sum()) == n


def test_output_feeds_hf_llava_next_model(transformers, rng):
    """A tiny random LLaVA-NeXT (28-pixel crops, 14-pixel patches): our from_hf output goes
    straight in as **kwargs, the model's features per image number what
    image_tokens_llava_next says, and a prompt with that many image tokens runs."""
    cfg = transformers.LlavaNextConfig(
        vision_config=transformers.CLIPVisionConfig(
            image_size=28, patch_size=14, hidden_size=16, intermediate_size=32,
            num_hidden_layers=2, num_attention_heads=2, projection_dim=16),
        text_config=transformers.LlamaConfig(
            vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
            num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096),
        image_grid_pinpoints=[[28, 56], [56, 28], [56, 56], [84, 28], [28, 84]],
        image_token_index=63, vision_feature_select_strategy="default",
        vision_feature_layer=-2)
    torch.manual_seed(int(rng.integers(1 << 30)))
    model = transformers.LlavaNextForConditionalGeneration(cfg).eval()
    pp = {**V16_HF_CONFIG, "crop_size": {"height": 28, "width": 28},
          "size": {"shortest_edge": 28}, "image_grid_pinpoints": cfg.image_grid_pinpoints}
    ours = ImageProcessor.from_hf(pp)
    sizes = [(1, 1), (28, 28), (2, 3), (50, 20), (20, 50), (90, 30), (100, 77)]
    pils = [Image.fromarray(rand_image(w, h, rng)) for w, h in sizes]
    out = ours(pils)
    counts = out.image_tokens_llava_next(14, "default", 1)
    with torch.no_grad():
        feats = model.model.get_image_features(**out, vision_feature_layer=-2,
                                               vision_feature_select_strategy="default")
        assert [f.shape[0] for f in feats.pooler_output] == counts
        theirs = hf_image_processor(transformers, pp)(pils, return_tensors="pt")
        ref_feats = model.model.get_image_features(**theirs, vision_feature_layer=-2,
                                                   vision_feature_select_strategy="default")
        for a, b in zip(feats.pooler_output, ref_feats.pooler_output):
            assert torch.equal(a, b)
        ids = torch.tensor([[2] + [63] * sum(counts) + [2]])
        logits = model(input_ids=ids, **out.to(dtype=torch.float32)).logits
        assert logits.shape == (1, sum(counts) + 2, 64) and torch.isfinite(logits).all()
        with pytest.raises(ValueError, match="do not match"):  # one image token short
            model(input_ids=torch.cat([ids[:, :1], ids[:, 2:]], 1), **out)
