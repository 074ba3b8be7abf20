"""Training data (issue 12, items 1 and 2): LlavaDataset, collate, the resumable loader and the
built-in dataset.

References we did not write: Pillow (the pixels a record's answer names), HF transformers'
PreTrainedTokenizerFast on the built-in tokenizer folder, torch's pad_sequence for the
padding, torch's DataLoader in-process for the worker processes. A fresh seed every run, in
the failure messages of the generator's tests; SLIME_TEST_SEED=<seed> reruns one.
"""
import hashlib
import json
import logging
import os
import random

import pytest
import torch
from PIL import Image

from slime_core.data import (COLLATE_KEYS, DataError, LlavaDataset, build_builtin, collate,
                             ensure_builtin, length_grouped_sampler, make_loader)
from slime_core.data import builtin as bi
from slime_core.preprocess import ImageProcessor
from slime_core.text import (IGNORE_INDEX, IMAGE_TOKEN_INDEX, Tokenizer, get_template,
                             tokenize_conversation)

SEED = int(os.environ.get("SLIME_TEST_SEED", random.randrange(2**31)))  # rerun a failure
# Small images and 56-px tiles: SliME's planner then picks grids of 2 to 7 tiles, so
# batches mix crop counts; the generator's arithmetic is the same at any size.
SMALL = dict(image_width=(90, 300), aspect=(0.3, 2.0), detail_frac=0.035)
TILE = 56


def tree_bytes(folder):
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_builtin(str(tmp_path_factory.mktemp("builtin")), seed=SEED, n_train=12,
                         n_val=4, **SMALL)


@pytest.fixture(scope="module")
def tok(built):
    return Tokenizer.from_folder(built.tokenizer_folder)


@pytest.fixture(scope="module")
def proc():
    return ImageProcessor(tile_size=TILE)


@pytest.fixture(scope="module")
def train(built, tok, proc):
    return LlavaDataset(built.train_json, built.image_folder, tok, "vicuna_v1", proc)


@pytest.fixture(scope="module")
def cached(built, tok, proc):
    # Loader tests over many epochs, in this process: each image is resized once.
    return LlavaDataset(built.train_json, built.image_folder, tok, "vicuna_v1", proc,
                        cache_images=True)


def load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# ---- built-in dataset ----------------------------------------------------------------------
def test_builtin_same_seed_same_bytes(tmp_path, built):
    again = build_builtin(str(tmp_path / "again"), seed=SEED, n_train=12, n_val=4, workers=2,
                          **SMALL)
    first = tree_bytes(built.folder)
    assert tree_bytes(again.folder) == first, f"seed {SEED}"
    assert len([p for p in first if p.endswith(".png")]) == 16
    other = build_builtin(str(tmp_path / "other"), seed=SEED + 1, n_train=12, n_val=4, **SMALL)
    other = tree_bytes(other.folder)
    assert other["images/train_000000.png"] != first["images/train_000000.png"]
    # The validation split does not depend on the training split's size.
    grown = build_builtin(str(tmp_path / "grown"), seed=SEED, n_train=5, n_val=4, **SMALL)
    grown = tree_bytes(grown.folder)
    assert {k: v for k, v in grown.items() if "val" in k} == \
        {k: v for k, v in first.items() if "val" in k}


def test_ensure_builtin_reuses_a_finished_build_only(tmp_path, built):
    folder = str(tmp_path / "b")
    ensure_builtin(folder, seed=SEED, n_train=3, n_val=1, **SMALL)
    stamp = os.path.getmtime(os.path.join(folder, "train.json"))
    os.utime(os.path.join(folder, "train.json"), (stamp - 100, stamp - 100))
    ensure_builtin(folder, seed=SEED, n_train=3, n_val=1, workers=2, **SMALL)  # reused
    assert os.path.getmtime(os.path.join(folder, "train.json")) == stamp - 100
    paths = ensure_builtin(folder, seed=SEED, n_train=4, n_val=1, **SMALL)  # rebuilt
    assert len(load(paths.train_json)) == 8
    os.utime(paths.train_json, (stamp - 100, stamp - 100))
    os.remove(os.path.join(folder, "builtin.json"))  # as after a build cut short
    ensure_builtin(folder, seed=SEED, n_train=4, n_val=1, **SMALL)
    assert os.path.getmtime(paths.train_json) > stamp - 100
    with pytest.raises(TypeError, match="n_tran"):
        ensure_builtin(folder, n_tran=3)


def near(colour, name, shade=20):
    """colour is the palette's `name` up to the generator's jitter (+-20 levels at 0.25)."""
    return all(abs(a - b) <= shade for a, b in zip(colour, bi.COLOURS[name]))


def test_builtin_records_and_images_agree(built):
    """What a record asks about is drawn where it says, in the colours it names (read back
    from the PNG with Pillow)."""
    records = load(built.train_json) + load(built.val_json)
    assert len(records) == 16 * 2
    types = set()
    for r in records:
        types.add(r["question_type"])
        question, answer = (t["value"] for t in r["conversations"])
        assert question.startswith("<image>\n") and r["position"] in question
        image = Image.open(os.path.join(built.image_folder, r["image"])).convert("RGB")
        k = bi.POSITIONS.index(r["position"])
        row, col = divmod(k, 3)
        w, h = image.size
        cell = image.crop((col * w // 3, row * h // 3, (col + 1) * w // 3, (row + 1) * h // 3))
        present = {c for _, c in cell.getcolors(maxcolors=w * h)}
        background = image.getpixel((0, 0))
        # Shapes are drawn without antialiasing, so every pixel of the cell is background,
        # a shape's colour (a palette colour up to the jitter) or the digit's glyph.
        shape_px = {c for c in present if any(near(c, name) for name in bi.COLOURS)}
        digit_px = present - shape_px - {background}
        # The record's box lies in the named cell and holds the cell's shapes and digit.
        x0, y0, x1, y1 = r["box"]
        assert col * w // 3 <= x0 < x1 <= (col + 1) * w // 3
        assert row * h // 3 <= y0 < y1 <= (row + 1) * h // 3
        inside = {c for _, c in image.crop((x0, y0, x1, y1)).getcolors(maxcolors=w * h)}
        assert shape_px and digit_px and shape_px | digit_px <= inside, (SEED, r)
        if r["question_type"] == "colour":
            assert answer in bi.COLOURS and any(near(c, answer) for c in shape_px), (SEED, r)
        elif r["question_type"] == "shape":
            named = next(c for c in bi.COLOURS if f" {c} " in question)
            assert answer in bi.SHAPES and any(near(c, named) for c in shape_px), (SEED, r)
        else:
            assert answer in bi.DIGITS, (SEED, r)
    assert types == set(bi.QUESTION_TYPES)
    captions = load(built.captions_json)
    assert len(captions) == 12
    assert all(c["conversations"][0]["value"] == "<image>" and
               c["conversations"][1]["value"].count("digit") == 3 for c in captions)


@pytest.mark.parametrize("single", [False, True])
def test_builtin_dots_objects_and_questions_agree(tmp_path, single):
    """With dots: objects.json says where every shape and dot is, the PNG has them there in
    the named colours, every (shape, colour) pair is unique in an image, and a "dot"
    question's answer is the dot on the shape it names."""
    paths = build_builtin(str(tmp_path), seed=SEED, n_train=6, n_val=2, dots=True,
                          single=single, shapes_per_cell=1 if single else 2,
                          question_types=("dot", "colour"), questions_per_image=3,
                          caption_cells=2, **SMALL)
    scenes = load(paths.objects_json)
    assert sorted(scenes) == sorted(os.listdir(paths.image_folder))
    for name, scene in scenes.items():
        image = Image.open(os.path.join(paths.image_folder, name)).convert("RGB")
        assert image.size == (scene["width"], scene["height"])
        objects = scene["objects"]
        assert len(objects) == (1 if single else 18)
        assert len({(o["shape"], o["colour"]) for o in objects}) == len(objects)
        for o in objects:
            assert o["dot_colour"] != o["colour"]
            x0, y0, x1, y1 = o["dot_box"]
            assert o["box"][0] <= x0 < x1 <= o["box"][2] and o["box"][1] <= y0 < y1 <= o["box"][3]
            # the dot's pixels are the dot's colour, up to the jitter
            assert near(image.getpixel(((x0 + x1 - 1) // 2, (y0 + y1 - 1) // 2)),
                        o["dot_colour"]), (SEED, name, o)
            if single:
                assert o["position"] == bi.SINGLE_POSITION
    for r in load(paths.train_json) + load(paths.val_json):
        question, answer = (t["value"] for t in r["conversations"])
        objects = scenes[r["image"]]["objects"]
        if r["question_type"] == "dot":
            named = [o for o in objects if f"the {o['colour']} {o['shape']}?" in question]
            assert len(named) == 1 and answer == named[0]["dot_colour"], (SEED, r)
    for c in load(paths.captions_json):
        assert " dot" in c["conversations"][1]["value"]
    with pytest.raises(ValueError, match="needs dots=True"):
        build_builtin(str(tmp_path / "x"), n_train=1, question_types=("dot",), **SMALL)


def test_builtin_stripes_run_the_way_the_answer_says(tmp_path):
    """With stripes: every shape is its colour and white in bands that run the named way
    (a pixel and its neighbour along the stripes agree more often than across them), the
    ways have the same share of colour, and a "stripes" question's answer is the way of the
    shape it names."""
    paths = build_builtin(str(tmp_path), seed=SEED, n_train=8, n_val=2, stripes=True,
                          single=True, shapes_per_cell=1, image_width=(600, 900),
                          aspect=(0.5, 0.8), detail_frac=0.07,
                          question_types=("stripes", "colour"), questions_per_image=3,
                          caption_cells=1)
    scenes = load(paths.objects_json)
    shares = {}
    for name, scene in scenes.items():
        image = Image.open(os.path.join(paths.image_folder, name)).convert("RGB")
        (o,) = scene["objects"]
        assert o["stripes"] in bi.STRIPES
        x0, y0, x1, y1 = o["box"]
        # a square's box is all shape; other shapes: their middle third
        if o["shape"] != "square":
            w = (x1 - x0) // 3
            x0, y0, x1, y1 = x0 + w, y0 + w, x1 - w, y1 - w
        white = [[image.getpixel((x, y)) == (255, 255, 255) for x in range(x0, x1)]
                 for y in range(y0, y1)]
        along = {"horizontal": (1, 0), "vertical": (0, 1), "diagonal": (1, -1)}
        agree = {}
        for way, (dx, dy) in along.items():
            pairs = [(white[y][x], white[y + dy][x + dx]) for y in range(1, len(white) - 1)
                     for x in range(1, len(white[0]) - 1)]
            agree[way] = sum(a == b for a, b in pairs) / len(pairs)
        assert max(agree, key=agree.get) == o["stripes"], (SEED, name, agree)
        if o["shape"] == "square":
            shares.setdefault(o["stripes"], []).append(
                sum(map(sum, white)) / (len(white) * len(white[0])))
        # the coloured bands are the named colour, up to the jitter (a triangle's middle
        # third holds background at its corners)
        background = image.getpixel((0, 0))
        coloured = [image.getpixel((x, y)) for y in range(y0, y1) for x in range(x0, x1)
                    if not white[y - y0][x - x0] and image.getpixel((x, y)) != background]
        assert all(near(c, o["colour"]) for c in coloured), (SEED, name)
    for way, values in shares.items():
        assert all(0.35 < v < 0.65 for v in values), (SEED, way, values)
    for r in load(paths.train_json) + load(paths.val_json):
        question, answer = (t["value"] for t in r["conversations"])
        (o,) = scenes[r["image"]]["objects"]
        if r["question_type"] == "stripes":
            assert f"the {o['colour']} {o['shape']} run?" in question and answer == o["stripes"]
    for c in load(paths.captions_json):
        assert " stripes" in c["conversations"][1]["value"]
    with pytest.raises(ValueError, match="needs stripes=True"):
        build_builtin(str(tmp_path / "x"), n_train=1, question_types=("stripes",), **SMALL)


def test_builtin_where_answers_the_quadrant_the_shape_is_drawn_in(tmp_path):
    """Question type "where": the answer is the quadrant of the image that holds the middle of
    the named shape's pixels (read back from the PNG), and the caption names that quadrant."""
    paths = build_builtin(str(tmp_path), seed=SEED, n_train=10, n_val=4, single=True,
                          shapes_per_cell=1, image_width=(300, 600), aspect=(0.5, 0.8),
                          detail_frac=0.05, question_types=("where", "colour"),
                          questions_per_image=3, caption_cells=1)
    scenes = load(paths.objects_json)
    quadrant = {}
    for name, scene in scenes.items():
        image = Image.open(os.path.join(paths.image_folder, name)).convert("RGB")
        (o,) = scene["objects"]
        if o["colour"] == "black":
            continue  # the digit's ink is a dark grey: near black, not told apart by colour
        W, H = image.size
        xs, ys = zip(*[(x, y) for y in range(H) for x in range(W)
                       if near(image.getpixel((x, y)), o["colour"])])
        cx, cy = (min(xs) + max(xs) + 1) / 2, (min(ys) + max(ys) + 1) / 2
        if abs(cx - W / 2) < 1 or abs(cy - H / 2) < 1:
            continue  # on the middle line to within a pixel: either side is right
        quadrant[name] = f"{'top' if cy < H / 2 else 'bottom'} {'left' if cx < W / 2 else 'right'}"
        assert o["quadrant"] == quadrant[name], (SEED, name, o, (cx, cy, W, H))
    assert len(quadrant) >= len(scenes) // 3, SEED
    asked = 0
    for r in load(paths.train_json) + load(paths.val_json):
        question, answer = (t["value"] for t in r["conversations"])
        (o,) = scenes[r["image"]]["objects"]
        if r["question_type"] == "where":
            asked += 1
            assert question == f"<image>\nWhere is the {o['shape']}?", question
            assert answer == o["quadrant"] and answer in bi.QUADRANTS
    assert asked, SEED
    for c in load(paths.captions_json):
        (o,) = scenes[c["image"]]["objects"]
        assert c["conversations"][1]["value"].startswith(f"{o['quadrant']}: {o['colour']} ")
    with pytest.raises(ValueError, match="needs single=True"):
        build_builtin(str(tmp_path / "x"), n_train=1, question_types=("where",), **SMALL)


def test_builtin_caption_details_false_leaves_only_the_captions_details_out(tmp_path):
    """caption_details=False: the same images, questions, objects and tokenizer; each caption
    names its cells' shapes, colours and digits (objects.json's) and no dot or stripes; the
    manifest says so, and ensure_builtin rebuilds when it changes."""
    args = dict(seed=SEED, n_train=5, n_val=2, dots=True, stripes=True, shapes_per_cell=2,
                caption_cells=2, **dict(SMALL, image_width=(300, 500)))
    full = build_builtin(str(tmp_path / "full"), **args)
    whole = ensure_builtin(str(tmp_path / "whole"), caption_details=False, **args)
    a, b = tree_bytes(full.folder), tree_bytes(whole.folder)
    differ = sorted(k for k in a if a[k] != b[k])
    # the tokenizer too is the same: it learns the captions' detailed form either way, so
    # every word keeps its id ("with" and "stripes" included)
    assert differ == ["builtin.json", "captions.json"]
    assert load(os.path.join(whole.folder, "builtin.json"))["arguments"]["caption_details"] \
        is False
    assert "caption_details" not in load(os.path.join(full.folder, "builtin.json"))["arguments"]
    scenes = load(whole.objects_json)
    for detailed, short in zip(load(full.captions_json), load(whole.captions_json)):
        text, brief = detailed["conversations"][1]["value"], short["conversations"][1]["value"]
        assert " dot" not in brief and "stripes" not in brief and brief != text
        cells = [c for c in brief.split(".") if c]
        assert len(cells) == 2
        for cell in cells:
            position, rest = cell.strip().split(": ")
            objects = [o for o in scenes[short["image"]]["objects"] if o["position"] == position]
            assert rest == ", ".join(f"{o['colour']} {o['shape']}" for o in objects) + \
                f", digit {objects[0]['digit']}", (SEED, brief)
            for o in objects:  # the detailed caption names the same and the details
                article = "an" if o["dot_colour"][0] in "aeiou" else "a"
                assert (f"{o['colour']} {o['shape']} with {article} {o['dot_colour']} dot "
                        f"with {o['stripes']} stripes") in text, text
    stamp = os.path.getmtime(whole.captions_json)
    os.utime(whole.captions_json, (stamp - 100, stamp - 100))
    ensure_builtin(whole.folder, caption_details=True, **args)  # rebuilt: captions change
    assert load(whole.captions_json) == load(full.captions_json)


@pytest.mark.parametrize("single", [False, True])
def test_builtin_short_questions_drop_only_words_that_name_nothing(tmp_path, single):
    """short_questions changes the questions' wording and nothing else: the same images,
    objects and answers; "in the picture" goes (single) and the stripes question becomes
    "the stripes on the X?"; a named cell stays in the question."""
    args = dict(seed=SEED, n_train=6, n_val=2, stripes=True, single=single,
                shapes_per_cell=1, question_types=("colour", "shape", "digit", "stripes"),
                questions_per_image=4, caption_cells=1, image_width=(600, 900),
                aspect=(0.5, 0.8), detail_frac=0.05)
    full = build_builtin(str(tmp_path / "full"), **args)
    short = ensure_builtin(str(tmp_path / "short"), short_questions=True, **args)
    a, b = tree_bytes(full.folder), tree_bytes(short.folder)
    assert {k: v for k, v in a.items() if k.startswith("images")} == \
        {k: v for k, v in b.items() if k.startswith("images")}
    assert a["objects.json"] == b["objects.json"] and a["captions.json"] == b["captions.json"]
    where = " in the picture" if single else None
    n = 0
    for path in ("train_json", "val_json"):
        for long_r, short_r in zip(load(getattr(full, path)), load(getattr(short, path))):
            (q0, a0), (q1, a1) = [[t["value"] for t in r["conversations"]]
                                  for r in (long_r, short_r)]
            assert a0 == a1 and {**long_r, "conversations": 0} == {**short_r, "conversations": 0}
            if long_r["question_type"] == "stripes":
                assert q0.startswith("<image>\nWhich way do the stripes on ") and \
                    q1 == q0.replace("Which way do the", "the").replace(" run?", "?")
            elif long_r["question_type"] == "digit" and where:
                assert q1 == "<image>\nWhich digit?"
            else:
                assert q1 == (q0.replace(where, "") if where else q0)
                assert single or long_r["position"] in q1
            n += 1
    assert n == 32
    # the folder is rebuilt when the wording changes, and reused when it does not
    assert ensure_builtin(str(tmp_path / "full"), short_questions=False, **args) == full
    assert load(os.path.join(short.folder, bi.MANIFEST))["arguments"]["short_questions"]
    ensure_builtin(str(tmp_path / "full"), short_questions=True, **args)
    assert tree_bytes(full.folder)["val.json"] == b["val.json"]


def test_builtin_tokenizer_matches_transformers(built, tok):
    transformers = pytest.importorskip("transformers")
    hf = transformers.PreTrainedTokenizerFast.from_pretrained(built.tokenizer_folder)
    for name in ("bos", "eos", "pad", "unk"):
        assert getattr(tok, f"{name}_id") == getattr(hf, f"{name}_token_id") is not None
    texts = [t["value"] for r in load(built.train_json) + load(built.captions_json)
             for t in r["conversations"]]
    for text in texts:
        text = text.replace("<image>", "")  # a placeholder, never tokenized
        ids = tok.encode(text)
        assert ids == hf(text)["input_ids"]
        assert ids[0] == tok.bos_id and tok.unk_id not in ids, text
    assert tok.vocab_size < 120  # a closed, word-level vocabulary
    assert tok.encode("</s>", add_special_tokens=False) == [tok.eos_id]


def test_builtin_answers_are_the_labels(built, tok):
    """Each QA record's labels are its answer (one token) and </s>; each caption's labels are
    the caption and the newline of the plain template."""
    for path, template in ((built.train_json, "vicuna_v1"), (built.val_json, "vicuna_v1"),
                           (built.captions_json, "plain"), (built.train_json, "bare")):
        for r in load(path):
            ids, labels = tokenize_conversation(tok, get_template(template), r["conversations"])
            assert ids.count(IMAGE_TOKEN_INDEX) == 1 and tok.unk_id not in ids
            kept = [t for t in labels if t != IGNORE_INDEX]
            answer = r["conversations"][1]["value"]
            if template == "bare":  # BOS, the image, the question, the answer, </s>: no roles
                question = r["conversations"][0]["value"].replace("<image>", "")
                assert ids == [tok.bos_id, IMAGE_TOKEN_INDEX,
                               *tok.encode(question, add_special_tokens=False),
                               tok.token_to_id(answer), tok.eos_id], r
            if template in ("vicuna_v1", "bare"):
                assert kept == [tok.token_to_id(answer), tok.eos_id], r
            else:
                assert tok.decode(kept).split() == tok.decode(tok.encode(answer)).split()


@pytest.mark.parametrize("kwargs, error", [
    (dict(n_train=0), ValueError), (dict(image_width=(300, 200)), ValueError),
    (dict(detail_frac=0.2), ValueError), (dict(aspect=(0.1, 1.0)), ValueError),
    (dict(question_types=("count",)), ValueError), (dict(shapes_per_cell=5), ValueError),
    (dict(image_width=1000), TypeError), (dict(compress_level=10), ValueError),
    (dict(short_questions=1), TypeError), (dict(caption_details="no"), TypeError),
    (dict(stripes=True, image_width=(100, 200)), ValueError)])
def test_builtin_rejects_bad_arguments(tmp_path, kwargs, error):
    with pytest.raises(error):
        build_builtin(str(tmp_path), **kwargs)
    assert not os.path.exists(tmp_path / "train.json")


# ---- the dataset ---------------------------------------------------------------------------
class CountingProcessor:
    def __init__(self, inner):
        self.inner, self.calls, self.layout = inner, [], "flat"

    def wrap(self, inner):
        self.inner = inner
        return self

    def __call__(self, images):
        self.calls.append(list(images))
        return self.inner(images)


def test_dataset_is_lazy_and_samples_match_their_parts(built, tok, proc):
    counting = CountingProcessor(proc)
    ds = LlavaDataset(built.train_json, built.image_folder, tok, "vicuna_v1", counting)
    assert counting.calls == [] and len(ds) == 24
    k = random.Random(SEED).randrange(len(ds))
    sample = ds[k]
    record = load(built.train_json)[k]
    path = os.path.join(built.image_folder, record["image"])
    assert counting.calls == [[path]]
    ref = proc([path])
    assert torch.equal(sample["pixel_values"], ref.pixel_values)
    assert sample["crops_per_image"] == ref.crops_per_image[0]
    assert sample["grids_wh"] == tuple(ref.grids_wh[0])
    ids, labels = tokenize_conversation(tok, get_template("vicuna_v1"), record["conversations"])
    assert sample["input_ids"].tolist() == ids and sample["labels"].tolist() == labels
    assert sample["index"] == k and ds.record(k) == record
    assert ds.lengths[k] == len(ids)
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_prompt_samples_are_the_training_text_up_to_the_answer(built, tok, train, proc):
    prompts = LlavaDataset(built.val_json, built.image_folder, tok, "vicuna_v1", proc,
                           prompt=True)
    full = LlavaDataset(built.val_json, built.image_folder, tok, "vicuna_v1", proc)
    for k in range(len(prompts)):
        p, f = prompts[k], full[k]
        ids, labels = f["input_ids"].tolist(), f["labels"].tolist()
        first = next(i for i, t in enumerate(labels) if t != IGNORE_INDEX)
        assert p["input_ids"].tolist() == ids[:first]  # the answer and </s> come next
        assert (p["labels"] == IGNORE_INDEX).all() and prompts.lengths[k] == first
        assert tok.decode(ids[first:-1]) == prompts.answer(p["index"])
        assert prompts.answer(p["index"]) == prompts.record(p["index"])["conversations"][1]["value"]
        assert torch.equal(p["pixel_values"], f["pixel_values"])


def test_cached_images_are_the_processors_pixels(built, tok, train, proc):
    counting = CountingProcessor(None)
    cached = LlavaDataset(built.train_json, built.image_folder, tok, "vicuna_v1", proc,
                          cache_images=True)
    cached._raw = counting.wrap(cached._raw)
    order = list(range(len(train)))
    random.Random(SEED).shuffle(order)
    expected = {k: train[k] for k in order}
    for k in order + order:  # the second pass is served from the cache
        a, b = expected[k], cached[k]
        assert b["pixel_values"].dtype == torch.float32
        assert torch.equal(a["pixel_values"], b["pixel_values"]), k
        assert (a["crops_per_image"], a["grids_wh"]) == (b["crops_per_image"], b["grids_wh"])
    # questions_per_image=2: two records per image, each image processed once
    assert len(counting.calls) == 12 and len({c[0] for c in counting.calls}) == 12
    # other output dtypes: normalised in float32, then rounded, as tile_resize does
    for dtype in (torch.bfloat16, torch.uint8):
        other = ImageProcessor(tile_size=TILE, dtype=dtype)
        plain = LlavaDataset(built.train_json, built.image_folder, tok, "vicuna_v1", other)
        cached = LlavaDataset(built.train_json, built.image_folder, tok, "vicuna_v1", other,
                              cache_images=True)
        for k in order[:3]:
            a, b = plain[k]["pixel_values"], cached[k]["pixel_values"]
            assert b.dtype == dtype and torch.equal(a, b), (dtype, k)
    with pytest.raises(TypeError, match="ImageProcessor"):
        LlavaDataset(built.train_json, built.image_folder, tok, "vicuna_v1",
                     CountingProcessor(proc), cache_images=True)


def test_collate_ragged_batch(tmp_path, built, train, tok):
    """Batches mixing crop counts and text lengths (captions and questions together)."""
    captions = LlavaDataset(built.captions_json, built.image_folder, tok, "plain",
                            train.processor)
    # Two more images whose sizes make SliME's planner pick 2 and 7 tiles.
    image = Image.open(os.path.join(built.image_folder, "train_000000.png"))
    for name, size in (("small.png", (50, 40)), ("wide.png", (400, 57))):
        image.resize(size).save(tmp_path / name)
    records = [{"image": name, "conversations": [
        {"from": "human", "value": "<image>\nWhich digit is in the centre?"},
        {"from": "gpt", "value": "3"}]} for name in ("small.png", "wide.png")]
    (tmp_path / "more.json").write_text(json.dumps(records))
    more = LlavaDataset(str(tmp_path / "more.json"), str(tmp_path), tok, "vicuna_v1",
                        train.processor)
    rng = random.Random(SEED)
    samples = [train[rng.randrange(len(train))], more[0], more[1],
               captions[rng.randrange(len(captions))], captions[rng.randrange(len(captions))]]
    rng.shuffle(samples)
    assert {s["crops_per_image"] for s in samples} >= {3, 8}
    pad = tok.pad_id
    batch = collate(samples, pad)
    assert tuple(batch) == COLLATE_KEYS
    lengths = [len(s["input_ids"]) for s in samples]
    B, T = len(samples), max(lengths)
    ref_ids = torch.nn.utils.rnn.pad_sequence([s["input_ids"] for s in samples],
                                              batch_first=True, padding_value=pad)
    ref_labels = torch.nn.utils.rnn.pad_sequence([s["labels"] for s in samples],
                                                 batch_first=True, padding_value=IGNORE_INDEX)
    assert batch["input_ids"].shape == (B, T) and batch["input_ids"].dtype == torch.int64
    assert torch.equal(batch["input_ids"], ref_ids)
    assert torch.equal(batch["labels"], ref_labels) and batch["labels"].dtype == torch.int64
    assert batch["attention_mask"].dtype == torch.int64
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert torch.equal(batch["attention_mask"],
                       (torch.arange(T)[None] < torch.tensor(lengths)[:, None]).long())
    assert (batch["input_ids"] == IMAGE_TOKEN_INDEX).sum(1).tolist() == [1] * B
    assert torch.equal(batch["pixel_values"], torch.cat([s["pixel_values"] for s in samples]))
    assert batch["crops_per_image"] == [s["crops_per_image"] for s in samples]
    assert sum(batch["crops_per_image"]) == batch["pixel_values"].shape[0]
    assert batch["grids_wh"] == [s["grids_wh"] for s in samples]
    assert batch["index"] == [s["index"] for s in samples]
    one = collate(samples[:1], pad)  # size 1: no padding at all
    assert one["attention_mask"].all() and torch.equal(one["input_ids"][0],
                                                       samples[0]["input_ids"])
    with pytest.raises(ValueError, match="non-empty"):
        collate([], pad)
    with pytest.raises(ValueError, match="pad_id"):
        collate(samples, -1)
    bad = dict(samples[0], crops_per_image=samples[0]["crops_per_image"] + 1)
    with pytest.raises(ValueError, match="sample 1"):
        collate([samples[1], bad], pad)


# ---- bad records ---------------------------------------------------------------------------
def bad_folder(tmp_path, built):
    """Records 0 and 5 are good; 1 names a missing file, 2 a file of garbage, 3 has no answer,
    4 a PNG cut short (its header reads, its pixels do not), 6 has no <image>."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    src = os.path.join(built.image_folder, "train_000000.png")
    with open(src, "rb") as f:
        png = f.read()
    (folder / "good.png").write_bytes(png)
    (folder / "garbage.png").write_bytes(os.urandom(500))
    (folder / "cut.png").write_bytes(png[:len(png) // 2])
    qa = [{"from": "human", "value": "<image>\nWhich digit is in the centre?"},
          {"from": "gpt", "value": "7"}]
    records = [{"image": "good.png", "conversations": qa},
               {"image": "missing.png", "conversations": qa},
               {"image": "garbage.png", "conversations": qa},
               {"image": "good.png", "conversations": qa[:1]},
               {"image": "cut.png", "conversations": qa},
               {"image": "good.png", "conversations": qa},
               {"image": "good.png", "conversations": [
                   {"from": "human", "value": "Which digit is in the centre?"}, qa[1]]}]
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records))
    return str(path), str(folder)


def test_bad_records_raise_with_their_indices(tmp_path, built, tok, proc):
    path, folder = bad_folder(tmp_path, built)
    with pytest.raises(DataError) as e:
        LlavaDataset(path, folder, tok, "vicuna_v1", proc, on_error="raise")
    msg = str(e.value)
    assert "4 of 7 records" in msg
    assert "record 1: image" in msg and "missing.png" in msg and "does not exist" in msg
    assert "record 2: image" in msg and "garbage.png" in msg
    assert "record 3: the conversation ends with a question that has no answer" in msg
    assert "record 6: the conversation holds 0 <image>" in msg
    assert "record 0" not in msg and "record 4" not in msg and "record 5" not in msg
    with pytest.raises(DataError, match="record 0: 4. tokens, more than max_length=40"):
        LlavaDataset(path, folder, tok, "vicuna_v1", proc, on_error="raise", max_length=40)
    # A file that only fails when decoded fails when the sample is loaded.
    records = load(path)
    only = tmp_path / "cut.json"
    only.write_text(json.dumps([records[0], records[4]]))
    ds = LlavaDataset(str(only), folder, tok, "vicuna_v1", proc, on_error="raise")
    assert len(ds) == 2 and ds[0]["index"] == 0
    with pytest.raises(DataError, match=r"record 1: .*cut\.png"):
        ds[1]
    # from a worker process too: the DataLoader re-raises it with the record's index
    loader = make_loader(ds, 1, shuffle=False, num_workers=2)
    with pytest.raises(DataError, match=r"record 1: .*cut\.png"):
        batches(loader)


def test_bad_records_skipped_and_reported(tmp_path, built, tok, proc, caplog):
    path, folder = bad_folder(tmp_path, built)
    with caplog.at_level(logging.WARNING, logger="slime_core.data.dataset"):
        ds = LlavaDataset(path, folder, tok, "vicuna_v1", proc, on_error="skip")
    assert [i for i, _ in ds.skipped] == [1, 2, 3, 6]
    assert "skipping 4 of 7 records" in caplog.text and "record 6" in caplog.text
    assert len(ds) == 3 and [ds.record(i)["image"] for i in (0, 4, 5)] == \
        ["good.png", "cut.png", "good.png"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="slime_core.data.dataset"):
        sample = ds[1]  # record 4, the cut file: record 5 takes its place, loudly
    assert sample["index"] == 5
    assert ds.skipped[-1][0] == 4 and "cut.png" in ds.skipped[-1][1]
    assert "record 4" in caplog.text and "record 5 is used in its place" in caplog.text
    with pytest.raises(ValueError, match="on_error"):
        LlavaDataset(path, folder, tok, "vicuna_v1", proc, on_error="ignore")
    # A tokenizer without the template's special tokens fails once, up front.
    with pytest.raises(ValueError, match="endoftext.*do not match"):
        LlavaDataset(path, folder, tok, "phi", proc)


# ---- loading: workers, order, resuming -----------------------------------------------------
def batches(loader, n=None):
    out = []
    for batch in loader:
        out.append(batch)
        if n is not None and len(out) == n:
            break
    return out


def same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x["index"] == y["index"]
        for key in COLLATE_KEYS:
            if isinstance(x[key], torch.Tensor):
                assert torch.equal(x[key], y[key]), key
            else:
                assert x[key] == y[key], key


def test_two_workers_match_in_process(train):
    seed = SEED % 1000
    a = batches(make_loader(train, 5, shuffle=True, seed=seed, num_workers=2))
    b = batches(make_loader(train, 5, shuffle=True, seed=seed, num_workers=0))
    same_batches(a, b)
    assert sorted(i for x in a for i in x["index"]) == list(range(24))
    assert [len(x["index"]) for x in a] == [5, 5, 5, 5, 4]
    # Leaving a loop early and starting another: the workers (persistent) go on from there.
    loader = make_loader(train, 5, shuffle=True, seed=seed, num_workers=2)
    head = batches(loader, 2)
    same_batches(head + batches(loader), a)
    assert loader.state_dict()["epoch"] == 1


@pytest.mark.parametrize("group_by_length", [False, True])
def test_loader_resumes_at_the_exact_batch(cached, group_by_length):
    train = cached
    seed = SEED % 1000
    kwargs = dict(batch_size=5, shuffle=True, seed=seed, group_by_length=group_by_length)
    full = make_loader(train, **kwargs)
    epoch0, epoch1 = batches(full), batches(full)
    assert [x["index"] for x in epoch0] != [x["index"] for x in epoch1]  # reshuffled
    for cut in (1, 3):
        run = make_loader(train, **kwargs)
        assert len(batches(run, cut)) == cut
        state = run.state_dict()
        assert (state["epoch"], state["batch"]) == (0, cut)
        resumed = make_loader(train, **kwargs)
        resumed.load_state_dict(json.loads(json.dumps(state)))  # survives a JSON file
        same_batches(batches(resumed), epoch0[cut:])
        same_batches(batches(resumed), epoch1)
    run = make_loader(train, **kwargs)
    batches(run, len(epoch0))  # the epoch's last batch handed out, the loop not finished
    assert (run.state_dict()["epoch"], run.state_dict()["batch"]) == (1, 0)
    with pytest.raises(ValueError, match="seed"):
        make_loader(train, **dict(kwargs, seed=seed + 1)).load_state_dict(state)
    with pytest.raises(ValueError, match="past"):
        make_loader(train, **kwargs).load_state_dict(dict(state, batch=len(epoch0)))


def test_unshuffled_order_and_drop_last(cached):
    train = cached
    loader = make_loader(train, 7, shuffle=False, drop_last=True)
    assert [x["index"] for x in batches(loader)] == [list(range(i, i + 7)) for i in (0, 7, 14)]
    with pytest.raises(ValueError, match="shuffle"):
        make_loader(train, 4, shuffle=False, group_by_length=True)


def test_length_grouped_sampler_groups_and_permutes():
    rng = random.Random(SEED)
    n, bs = rng.randint(300, 400), 4
    lengths = [rng.randint(1, 100) for _ in range(n)]
    order = length_grouped_sampler(lengths, bs, SEED)
    assert sorted(order) == list(range(n))
    assert order == length_grouped_sampler(lengths, bs, SEED)
    assert order != length_grouped_sampler(lengths, bs, SEED + 1)
    shuffled = list(range(n))
    rng.shuffle(shuffled)

    def padding(o):
        chunks = [o[i:i + bs] for i in range(0, n, bs)]
        return sum(max(lengths[i] for i in c) * len(c) - sum(lengths[i] for i in c)
                   for c in chunks)

    assert padding(order) < padding(shuffled) / 4, SEED
    assert length_grouped_sampler([5], 3, SEED) == [0]
    assert length_grouped_sampler([], 3, SEED) == []


def test_a_shared_image_cache_decodes_each_image_once_and_refuses_another_cut(tmp_path):
    """cache_images=dict: two datasets of the same images share one cache (the second loads
    nothing and gives the same pixels); a processor that cuts differently is refused."""
    from slime_core.data import LlavaDataset, ensure_builtin
    from slime_core.preprocess import ImageProcessor
    from slime_core.text import Tokenizer
    paths = ensure_builtin(str(tmp_path), n_train=4, n_val=2, image_width=(300, 400),
                           detail_frac=0.04)
    tok = Tokenizer.from_folder(paths.tokenizer_folder)
    shared = {}
    proc = ImageProcessor(tile_size=56)
    a = LlavaDataset(paths.captions_json, paths.image_folder, tok, "plain", proc,
                     cache_images=shared)
    first = [a[i]["pixel_values"] for i in range(len(a))]
    filled = len(shared)
    assert filled == len(a) + 1  # one entry per image, and the processor's cut
    b = LlavaDataset(paths.train_json, paths.image_folder, tok, "vicuna_v1", proc,
                     cache_images=shared)
    b._raw = None  # a miss would call it and fail: every image must come from the cache
    images = {b.record(b[i]["index"])["image"]: b[i]["pixel_values"] for i in range(len(b))}
    assert len(shared) == filled
    for i in range(len(a)):
        assert torch.equal(images[a.record(i)["image"]], first[i])
    with pytest.raises(ValueError, match="cuts images differently"):
        LlavaDataset(paths.captions_json, paths.image_folder, tok, "plain",
                     ImageProcessor(tile_size=112), cache_images=shared)
