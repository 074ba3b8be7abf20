"""Vision towers (issue 11, part 1) against HF transformers' CLIP and SigLIP (test-only): tiny
random models saved with save_pretrained in the layouts users bring, loaded with our code,
compared on hidden_states[select_layer]; the loader's errors; freezing; the processor feeding
the tower."""
import copy
import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

transformers = pytest.importorskip("transformers")
from transformers import (CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModel,  # noqa: E402
                          SiglipConfig, SiglipModel, SiglipVisionConfig, SiglipVisionModel)

from slime_core.checkpoint import CheckpointError  # noqa: E402
from slime_core.models import VisionConfig, VisionTower, registry  # noqa: E402
from slime_core.preprocess import ImageProcessor  # noqa: E402

# Tiny towers: heads of 12 and 16 channels, a 3x3 and a 4x4 patch grid, and an image size that
# the patch size does not divide (30 / 7: the conv drops the last 2 pixels, as HF's does).
VISION = {
    "clip": dict(hidden_size=48, intermediate_size=80, num_hidden_layers=4,
                 num_attention_heads=4, image_size=42, patch_size=14),
    "clip_odd": dict(hidden_size=24, intermediate_size=40, num_hidden_layers=2,
                     num_attention_heads=2, image_size=30, patch_size=7, hidden_act="gelu"),
    "siglip": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                   num_attention_heads=2, image_size=28, patch_size=7),
}
TEXT = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
            num_attention_heads=2, max_position_embeddings=16, pad_token_id=1, bos_token_id=0,
            eos_token_id=1)
# vision: transformers 5 save_pretrained (no prefix); vision_v4: the layout transformers 4.x
# wrote for CLIPVisionModel / SiglipVisionModel (vision_model.*, and before 4.31 the
# position_ids buffer); full: CLIPModel / SiglipModel with the text tower; sharded: vision,
# split into shards listed in model.safetensors.index.json.
LAYOUTS = ("vision", "vision_v4", "full", "sharded")


def rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def build_hf(name, layout):
    """An HF model with every parameter perturbed (so LayerNorm weights and biases matter),
    and the vision part of it that produces the reference hidden states."""
    torch.manual_seed(1234)
    family = "siglip" if name.startswith("siglip") else "clip"
    vision = VISION[name]
    if layout == "full" and family == "clip":
        model = CLIPModel(CLIPConfig(text_config=TEXT, vision_config=vision, projection_dim=16))
    elif layout == "full":
        model = SiglipModel(SiglipConfig(text_config=TEXT, vision_config=vision))
    elif family == "clip":
        model = CLIPVisionModel(CLIPVisionConfig(**vision))
    else:
        model = SiglipVisionModel(SiglipVisionConfig(**vision))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.eval()
    return model, (model.vision_model if layout == "full" else model)


def save(model, folder, layout):
    if layout == "sharded":
        model.save_pretrained(folder, max_shard_size="20KB")
        assert os.path.isfile(os.path.join(folder, "model.safetensors.index.json"))
        return
    model.save_pretrained(folder)
    if layout == "vision_v4":
        path = os.path.join(folder, "model.safetensors")
        # (transformers 4.x already wrote this prefix itself)
        state = {k if k.startswith("vision_model.") else "vision_model." + k: v
                 for k, v in load_file(path).items()}
        n = state["vision_model.embeddings.position_embedding.weight"].shape[0]
        state["vision_model.embeddings.position_ids"] = torch.arange(n)[None]
        save_file(state, path, metadata={"format": "pt"})


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """(name, layout) -> (folder, HF reference vision model), built once per module."""
    out = {}
    for name in VISION:
        for layout in LAYOUTS if name != "clip_odd" else ("vision",):
            folder = str(tmp_path_factory.mktemp(f"{name}-{layout}"))
            model, ref = build_hf(name, layout)
            save(model, folder, layout)
            out[name, layout] = folder, ref
    return out


def hf_states(ref, pixels):
    with torch.no_grad():
        return ref(pixel_values=pixels, output_hidden_states=True)


def pixels_for(name, batch=3, dtype=torch.float32):
    s = VISION[name]["image_size"]
    return torch.randn(batch, 3, s, s, dtype=dtype)


CASES = [(n, lay) for n in ("clip", "siglip") for lay in LAYOUTS] + [("clip_odd", "vision")]


@pytest.mark.parametrize("name,layout", CASES)
@pytest.mark.parametrize("select_layer", [-2, -1, 0, 1, -3])
def test_float32_parity(folders, name, layout, select_layer):
    folder, ref = folders[name, layout]
    tower = VisionTower.from_pretrained(folder, select_layer=select_layer)
    n_layers = VISION[name]["num_hidden_layers"]
    assert len(tower.encoder.layers) == select_layer % (n_layers + 1)  # later layers not built
    x = pixels_for(name)
    want = hf_states(ref, x).hidden_states[select_layer]
    if name.startswith("clip"):
        want = want[:, 1:]  # "patch": the class token dropped
    with torch.no_grad():
        got = tower(x)
    assert got.shape == want.shape and got.dtype == torch.float32
    assert rel_err(got, want) < 1e-4


@pytest.mark.parametrize("layout", LAYOUTS)
def test_clip_cls_patch_and_pooled_token(folders, layout):
    """cls_patch keeps the class token first; with the final LayerNorm, that token is HF's
    pooler_output."""
    folder, ref = folders["clip", layout]
    x = pixels_for("clip")
    out = hf_states(ref, x)
    tower = VisionTower.from_pretrained(folder, select_feature="cls_patch")
    with torch.no_grad():
        got = tower(x)
    assert rel_err(got, out.hidden_states[-2]) < 1e-4
    tower = VisionTower.from_pretrained(folder, select_layer=-1, select_feature="cls_patch",
                                        post_layernorm=True)
    with torch.no_grad():
        got = tower(x)
    assert rel_err(got[:, 0], out.pooler_output) < 1e-4


@pytest.mark.parametrize("layout", LAYOUTS)
def test_siglip_last_hidden_state(folders, layout):
    folder, ref = folders["siglip", layout]
    x = pixels_for("siglip")
    tower = VisionTower.from_pretrained(folder, select_layer=-1, post_layernorm=True)
    with torch.no_grad():
        got = tower(x)
    assert rel_err(got, hf_states(ref, x).last_hidden_state) < 1e-4


@pytest.mark.parametrize("name", ["clip", "siglip"])
@pytest.mark.parametrize("dtype,tol_same,tol_fp32", [(torch.bfloat16, 5e-3, 5e-2),
                                                     (torch.float16, None, 1e-2)])
def test_half_precision(folders, name, dtype, tol_same, tol_fp32):
    """Loose: ours in bf16 against HF in bf16 (same rounding points) and both against float32;
    float16 against float32 only."""
    folder, ref = folders[name, "full"]
    tower = VisionTower.from_pretrained(folder, dtype=dtype)
    assert all(p.dtype == dtype for p in tower.parameters())
    x = pixels_for(name)
    want = hf_states(ref, x).hidden_states[-2]
    with torch.no_grad():
        got = tower(x)  # float32 pixels are cast to the tower's dtype, as HF does
    assert got.dtype == dtype
    if name == "clip":
        want = want[:, 1:]
    assert rel_err(got, want) < tol_fp32
    if tol_same is not None:
        ref_half = copy.deepcopy(ref).to(dtype)
        want_half = hf_states(ref_half, x.to(dtype)).hidden_states[-2]
        if name == "clip":
            want_half = want_half[:, 1:]
        assert rel_err(got, want_half) < tol_same


@pytest.mark.parametrize("batch", [1, 0, 5])
def test_batch_sizes(folders, batch):
    folder, ref = folders["siglip", "vision"]
    tower = VisionTower.from_pretrained(folder)
    x = pixels_for("siglip", batch)
    with torch.no_grad():
        got = tower(x)
    assert got.shape == (batch, 16, 32)
    if batch:
        assert rel_err(got, hf_states(ref, x).hidden_states[-2]) < 1e-4
        # each image alone gives its row of the batch
        with torch.no_grad():
            alone = tower(x[-1:])
        assert rel_err(alone[0], got[-1]) < 1e-5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["clip", "siglip"])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 5e-2)])
def test_cuda_parity(folders, name, dtype, tol):
    """On the GPU (its SDPA kernels) against HF in float32 on the CPU; TF32 convolutions
    (cuDNN's default) would cost about 1e-3, so they are off here."""
    folder, ref = folders[name, "vision"]
    tower = VisionTower.from_pretrained(folder, dtype=dtype, device="cuda")
    x = pixels_for(name)
    want = hf_states(ref, x).hidden_states[-2]
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        got = tower(x.cuda()).cpu()
    assert rel_err(got, want[:, 1:] if name == "clip" else want) < tol


def test_processor_feeds_tower(folders):
    """ImageProcessor with tile_size = the tower's image size: its pixel values go straight in."""
    folder, ref = folders["clip", "vision"]
    size = VISION["clip"]["image_size"]
    rng = np.random.default_rng()
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(50, 95), (17, 40)]]
    out = ImageProcessor(tile_size=size, planner="fixed", grid_wh=(2, 1))(images)
    assert out.pixel_values.shape == (sum(out.crops_per_image), 3, size, size)
    tower = VisionTower.from_pretrained(folder)
    with torch.no_grad():
        got = tower(out.pixel_values)
    want = hf_states(ref, out.pixel_values).hidden_states[-2][:, 1:]
    assert got.shape == (6, 9, 48) and rel_err(got, want) < 1e-4


# -- configs ------------------------------------------------------------------------------


@pytest.mark.parametrize("hf_cls,family", [(CLIPVisionConfig, "clip"),
                                           (SiglipVisionConfig, "siglip")])
def test_config_defaults_match_hf(hf_cls, family):
    """A config.json that leaves fields out (transformers 4.x wrote only non-defaults) means
    HF's defaults."""
    hf = hf_cls()
    sparse = VisionConfig.from_hf_config({"model_type": hf.model_type}, select_layer=-1)
    full = VisionConfig.from_hf_config(hf.to_dict(), select_layer=-1)
    assert sparse == full
    for field in ("image_size", "patch_size", "num_channels", "hidden_size",
                  "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "layer_norm_eps", "hidden_act"):
        assert getattr(full, field) == getattr(hf, field), field
    assert full.class_token == full.pre_layernorm == (family == "clip")
    assert full.patch_bias == (family == "siglip")


def test_config_of_full_model_reads_vision_config():
    full = CLIPConfig(text_config=TEXT, vision_config=VISION["clip"], projection_dim=16)
    cfg = VisionConfig.from_hf_config(full.to_dict())
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.image_size) == (48, 4, 42)
    full = SiglipConfig(text_config=TEXT, vision_config=VISION["siglip"]).to_dict()
    cfg = VisionConfig.from_hf_config(full)
    assert not cfg.class_token and cfg.layer_norm_eps == 1e-6 and cfg.patch_size == 7


@pytest.mark.parametrize("hf,options,match", [
    ({"model_type": "llama"}, {}, "model_type 'llama'"),
    ({"model_type": "clip_vision_model", "attention_dropout": 0.1}, {}, "attention_dropout"),
    ({"model_type": "clip_vision_model", "hidden_act": "relu"}, {}, "hidden_act"),
    ({"model_type": "siglip_vision_model"}, {"select_feature": "cls_patch"}, "class token"),
    ({"model_type": "clip_vision_model"}, {"select_feature": "cls"}, "select_feature"),
    ({"model_type": "clip_vision_model"}, {"select_layer": 13}, r"\[-13, 12\]"),
    ({"model_type": "clip_vision_model"}, {"select_layer": -14}, "select_layer"),
    ({"model_type": "clip_vision_model"}, {"post_layernorm": True}, "last"),
    ({"model_type": "clip_vision_model", "hidden_size": 100}, {}, "divisible"),
    ({"model_type": "clip_vision_model", "patch_size": 0}, {}, "patch_size"),
])
def test_config_errors(hf, options, match):
    with pytest.raises(ValueError, match=match):
        VisionConfig.from_hf_config(hf, **options)


# -- loading errors -----------------------------------------------------------------------


def edited_copy(folders, tmp_path, edit, name="clip", layout="vision_v4"):
    """A copy of a saved folder whose state dict went through edit(state) -> state."""
    src, _ = folders[name, layout]
    for fn in os.listdir(src):
        with open(os.path.join(src, fn), "rb") as f, open(tmp_path / fn, "wb") as g:
            g.write(f.read())
    path = str(tmp_path / "model.safetensors")
    save_file(edit(load_file(path)), path, metadata={"format": "pt"})
    return str(tmp_path)


def test_missing_key_is_named(folders, tmp_path):
    key = "vision_model.encoder.layers.1.mlp.fc1.weight"
    folder = edited_copy(folders, tmp_path, lambda s: {k: v for k, v in s.items() if k != key})
    with pytest.raises(CheckpointError, match="missing keys.*encoder.layers.1.mlp.fc1.weight"):
        VisionTower.from_pretrained(folder)


def test_keys_of_unbuilt_layers_are_not_needed(folders, tmp_path):
    """With the penultimate layer selected, the last layer's weights may be absent."""
    folder = edited_copy(folders, tmp_path, lambda s: {
        k: v for k, v in s.items() if ".layers.3." not in k and "post_layernorm" not in k})
    assert len(VisionTower.from_pretrained(folder).encoder.layers) == 3
    with pytest.raises(CheckpointError, match="missing keys.*encoder.layers.3.layer_norm1"):
        VisionTower.from_pretrained(folder, select_layer=-1)


def test_misshapen_key_names_both_shapes(folders, tmp_path):
    key = "vision_model.encoder.layers.0.self_attn.q_proj.weight"
    folder = edited_copy(folders, tmp_path, lambda s: {**s, key: torch.randn(48, 40)})
    with pytest.raises(CheckpointError, match=r"layers.0.self_attn.q_proj.weight: checkpoint "
                                              r"\(48, 40\), model \(48, 48\)"):
        VisionTower.from_pretrained(folder)


@pytest.mark.parametrize("extra", ["vision_model.encoder.layers.0.self_attn.qkv.weight",
                                   "vision_model.encoder.layers.4.mlp.fc1.weight"])
def test_unexpected_key_is_named(folders, tmp_path, extra):
    """A key we do not know is an error, also for a layer beyond the config's count."""
    folder = edited_copy(folders, tmp_path, lambda s: {**s, extra: torch.zeros(2)})
    with pytest.raises(CheckpointError, match="unexpected keys.*" + extra[len("vision_model."):]):
        VisionTower.from_pretrained(folder)


def test_config_disagreeing_with_weights(folders, tmp_path):
    folder = edited_copy(folders, tmp_path, lambda s: s)
    cfg = json.load(open(os.path.join(folder, "config.json")))
    cfg["image_size"] = 56  # 16 patches: the position table in the file has 10 rows
    json.dump(cfg, open(os.path.join(folder, "config.json"), "w"))
    with pytest.raises(CheckpointError, match=r"position_embedding.weight: checkpoint \(10, 48\), "
                                              r"model \(17, 48\)"):
        VisionTower.from_pretrained(folder)


def test_wrong_folders(folders, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        VisionTower.from_pretrained(str(tmp_path / "nowhere"))
    with pytest.raises(CheckpointError, match="no config.json"):
        VisionTower.from_pretrained(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="not a CLIP or SigLIP config"):
        VisionTower.from_pretrained(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip_vision_model"}))
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        VisionTower.from_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match="dtype"):
        VisionTower.from_pretrained(folders["clip", "vision"][0], dtype=torch.float64)


# -- inputs, freezing, registry -----------------------------------------------------------


def test_bad_pixel_values(folders):
    tower = VisionTower.from_pretrained(folders["clip", "vision"][0])
    with pytest.raises(ValueError, match=r"\(B, 3, 42, 42\).*42x42.*got \(1, 3, 56, 56\)"):
        tower(torch.randn(1, 3, 56, 56))
    with pytest.raises(ValueError, match=r"got \(1, 3, 42, 28\)"):
        tower(torch.randn(1, 3, 42, 28))
    with pytest.raises(ValueError, match=r"got \(1, 42, 42, 3\)"):
        tower(torch.randn(1, 42, 42, 3))
    with pytest.raises(ValueError, match=r"got \(3, 42, 42\)"):
        tower(torch.randn(3, 42, 42))
    with pytest.raises(TypeError, match="floating point"):
        tower(torch.zeros(1, 3, 42, 42, dtype=torch.uint8))
    with pytest.raises(TypeError, match="torch.Tensor"):
        tower(np.zeros((1, 3, 42, 42), np.float32))
    with pytest.raises(ValueError, match="on meta, the tower on cpu"):
        tower(torch.randn(1, 3, 42, 42, device="meta"))


def trainable(tower):
    return {n for n, p in tower.named_parameters() if p.requires_grad}


def test_freeze_and_unfreeze(folders):
    tower = VisionTower.from_pretrained(folders["clip", "full"][0], select_layer=-1)
    assert trainable(tower) == set()
    tower.unfreeze(from_layer=2)  # TinyLLaVA's partially-tune: layers 2.. only
    assert trainable(tower) == {n for n, _ in tower.named_parameters()
                                if n.startswith(("encoder.layers.2.", "encoder.layers.3."))}
    x = pixels_for("clip", 2)
    tower(x).square().sum().backward()
    for n, p in tower.named_parameters():
        assert (p.grad is not None) == (n in trainable(tower)), n
    assert tower.unfreeze() is tower and trainable(tower) == {n for n, _ in
                                                             tower.named_parameters()}
    assert tower.freeze() is tower and trainable(tower) == set()
    for bad in (4, -1, 1.0, True):
        with pytest.raises(ValueError, match=r"from_layer must be an int in \[0, 4\)"):
            tower.unfreeze(from_layer=bad)


def test_registry():
    assert registry.get("vision_tower", "clip") is VisionTower
    assert registry.get("vision_tower", "siglip") is VisionTower
    with pytest.raises(ValueError, match=r"unknown vision_tower 'CLIP'; known: \['clip', "
                                         r"'siglip'\]"):
        registry.get("vision_tower", "CLIP")
    with pytest.raises(ValueError, match="already registered"):
        registry.register("vision_tower", "clip")(object)
    with pytest.raises(ValueError, match="no registry of kind 'tokenizer'"):
        registry.get("tokenizer", "clip")
    assert registry.get("vision_tower", "clip") is VisionTower  # the refused duplicate left it
