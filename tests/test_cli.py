"""The `slime` command line: generate and explain on a tiny random checkpoint folder written
by SlimeModel.save_pretrained (with its processor and a real tokenizer.json), info, and the
errors users meet (missing files, a tokenizer that does not fit the model)."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import slime_core  # noqa: F401
from slime_core import cli
from slime_core.models import SlimeConfig, SlimeModel
from slime_core.models.llm import Decoder, DecoderConfig
from slime_core.models.vision import VisionTower
from slime_core.preprocess import ImageProcessor

transformers = pytest.importorskip("transformers")
from text_fixtures import save_llama  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    transformers.CLIPVisionModel(transformers.CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        image_size=28, patch_size=7)).save_pretrained(root / "clip")
    save_llama(root / "ckpt")
    vocab = 1 + max(json.loads((root / "ckpt" / "tokenizer.json").read_text())
                    ["model"]["vocab"].values())
    llm = Decoder(DecoderConfig(vocab_size=vocab, hidden_size=48, intermediate_size=96,
                                num_layers=2, num_heads=4, num_kv_heads=2, bos_token_id=1,
                                eos_token_id=2))
    proc = ImageProcessor(tile_size=28)
    model = SlimeModel(SlimeConfig(num_heads=4, local_grid=2, separator_token_id=5),
                       VisionTower.from_pretrained(root / "clip"), llm)
    model.save_pretrained(root / "ckpt", vision_tower_path=str(root / "clip"), processor=proc)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)).save(root / "img.png")
    return root


def test_generate_and_explain(checkpoint, capsys, tmp_path):
    ck, img = str(checkpoint / "ckpt"), str(checkpoint / "img.png")
    assert cli.main(["generate", ck, img, "What colour is the square?",
                     "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.endswith("\n")  # random weights: any text, one line
    out = tmp_path / "e.png"
    assert cli.main(["explain", ck, img, "What colour is the square?", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "local tokens" in printed
    with Image.open(out) as im:
        assert im.size == (90, 70)  # drawn on the original image
        pixels = np.asarray(im.convert("RGB"))
    original = np.asarray(Image.open(img).convert("RGB"))
    assert not np.array_equal(pixels, original)  # grid lines and shading were drawn


def test_errors_are_one_line(checkpoint, capsys, tmp_path):
    img = str(checkpoint / "img.png")
    assert cli.main(["generate", str(tmp_path / "nope"), img, "q"]) == 2
    assert "checkpoint folder" in capsys.readouterr().err
    assert cli.main(["generate", str(checkpoint / "ckpt"), str(tmp_path / "x.png"), "q"]) == 2
    assert "image" in capsys.readouterr().err
    bare = tmp_path / "bare"
    shutil.copytree(checkpoint / "ckpt", bare)
    (bare / "tokenizer.json").unlink()
    assert cli.main(["generate", str(bare), img, "q"]) == 2
    assert "tokenizer.json" in capsys.readouterr().err
    assert cli.main(["generate", str(checkpoint / "ckpt"), img, "q", "--template",
                     "vicuna_v2"]) == 2
    assert "unknown template 'vicuna_v2'" in capsys.readouterr().err
    # a template the checkpoint records is the default; a bad one is named
    recorded = tmp_path / "recorded"
    shutil.copytree(checkpoint / "ckpt", recorded)
    config = json.loads((recorded / "config.json").read_text())
    (recorded / "config.json").write_text(json.dumps(dict(config, slime_core_template="nope")))
    assert cli.main(["generate", str(recorded), img, "q"]) == 2
    assert "unknown template 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["generate"])  # argparse: usage on stderr


def test_info_and_console_script(capsys):
    assert cli.main(["info", "--json"]) == 0
    assert "slime::token_select" in capsys.readouterr().out
    exe = shutil.which("slime")
    if exe is None:
        pytest.skip("the console script is not installed in this environment")
    r = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True)
    assert "generate" in r.stdout and "explain" in r.stdout
    r = subprocess.run([sys.executable, "-m", "slime_core.cli", "info"], capture_output=True,
                       text=True, check=True)
    assert "slime_core" in r.stdout
