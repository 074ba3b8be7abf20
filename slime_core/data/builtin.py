"""The built-in dataset: high-resolution scenes whose questions only small details answer.

    paths = build_builtin("data/builtin", seed=0)   # or ensure_builtin: build once, then reuse
    paths.train_json, paths.val_json     # instruction QA, LLaVA format, plus "question_type"
                                         # and "box" (x0, y0, x1, y1: the pixels that hold
                                         # the answer, the asked cell's cluster)
    paths.captions_json                  # caption pairs for the alignment stages ("plain")
    paths.image_folder                   # the PNGs (image paths in the JSON are relative to it)
    paths.tokenizer_folder               # tokenizer.json + tokenizer_config.json, trained here
    paths.objects_json                   # every image's shapes (and dots): names, boxes and
                                         # the digit beside them

Each image (1000 to 2000 px wide by default) is cut into a 3 x 3 grid of named cells ("top
left", ..., "centre", ..., "bottom right"). Every cell holds one cluster: `shapes_per_cell`
small shapes side by side (distinct shapes from square, circle, triangle, cross; distinct
colours from a palette of 7) and a digit drawn with Pillow's default font. Questions name a
cell and ask for one detail of its cluster:

    colour  "What colour is the triangle in the top left?"   -> "red"
    shape   "Which shape is blue in the centre?"             -> "circle"
    digit   "Which digit is in the bottom right?"            -> "7"

With dots=True or stripes=True every shape also carries a detail, and question types "dot"
("What colour is the dot on the red square?") or "stripes" ("Which way do the stripes on
the red square run?" -> "diagonal") ask for it; with single=True the image holds one
cluster anywhere (the demo's task: stripes, single, see slime_core.demo), and question type
"where" ("Where is the square?" -> "top left") asks which quadrant of the image holds it:
context a tile lacks (its pixels do not say where it lies), which the global view holds and
the local tokens' order in the sequence tells only while most of them are kept.

Why this task shows SliME's points at small scale:
- the detail is 3 times smaller in the global view. With aspects of 0.5 to 0.8, SliME's
  planner cuts every image into 3 x 2 tiles of S pixels, so a shape of side
  detail_frac * width is about (2.5 to 3) * detail_frac * S pixels wide in the local view
  and detail_frac * S in the global view (S pixels for the whole width). Defaults, S = 112:
  shapes and digits of 5.6 to 6.7 px in the tiles (legible in a 14-px patch) and 2.2 px in
  the global view, where to the eye they are blobs and a cluster's colours run together.
  Measured (scripts/builtin_probe.py, 200 images, a linear probe told exactly where the
  cluster is): digit read from the global view 93%, from the local view 99%; first shape
  97% / 99%. So the global view blurs the details but does not erase them for an aligned
  reader: what local detail buys a small model is details it can learn to read in minutes.
  Without jitter: 99% / 100%. Smaller details widen the gap at some cost to the local view
  (jitter 0.35, 150 images; detail_frac 0.015: digits 74% / 93%, shapes 85% / 97%;
  detail_frac 0.012: digits 58% / 87%, shapes 72% / 93%). The local-to-global ratio is the grid's
  width, 3, at any S; for S = 56 use detail_frac=0.04 for the same sizes in pixels;
- the answer lives in one cell of nine (one cluster, under 1% of the image's area), so
  keeping a few local tokens, the ones the question's words point at, can keep the accuracy;
- every answer is one word from a closed set (7 colours, 4 shapes, 10 digits): exact match
  is a meaningful accuracy, per question type;
- questions and captions come from a few templates, and the tokenizer is trained on them
  (a word-level vocabulary of about 70 tokens), so a tiny model learns the text side fast.

Deterministic: each image is drawn from its own random stream, seeded by (seed, split,
index), so the same seed gives byte-identical files whatever n_train, n_val or workers are,
and the validation split does not change when the training split grows.
"""
import dataclasses
import functools
import inspect
import json
import math
import multiprocessing
import os
import random

from PIL import Image, ImageDraw, ImageFont
from tokenizers import Tokenizer as _Backend
from tokenizers import models, pre_tokenizers, processors, trainers

from slime_core.text import IMAGE_PLACEHOLDER, get_template

POSITIONS = ("top left", "top middle", "top right", "middle left", "centre", "middle right",
             "bottom left", "bottom middle", "bottom right")  # row-major 3 x 3 cells
COLOURS = {"red": (215, 35, 35), "green": (35, 150, 55), "blue": (40, 70, 215),
           "yellow": (230, 195, 15), "purple": (135, 50, 170), "orange": (240, 125, 20),
           "black": (20, 20, 20)}
SHAPES = ("square", "circle", "triangle", "cross")
DIGITS = tuple("0123456789")
QUESTION_TYPES = ("colour", "shape", "digit")  # the default set
SINGLE_POSITION = "picture"  # single=True: the one cluster's "cell"
DOT_TYPE = "dot"  # "What colour is the dot on the red square?": needs dots=True
STRIPES = ("horizontal", "vertical", "diagonal")
STRIPES_TYPE = "stripes"  # "Which way do the stripes on the red square run?": stripes=True
WHERE_TYPE = "where"  # "Where is the square?" -> "top left": needs single=True
QUADRANTS = ("top left", "top right", "bottom left", "bottom right")
SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>",
                  "unk_token": "<unk>"}
# The instruction template of the built-in data (captions.json is for "plain"): "bare", the
# question alone with no roles, so that the text-guided selection of a tiny LLM reads the
# question's words rather than a chat template's (see slime_core.demo). The tokenizer knows
# vicuna_v1's and llama3's strings too.
DEMO_TEMPLATE = "bare"
TEMPLATES = ("vicuna_v1", "llama3", "plain", "bare")  # what the tokenizer is trained to serve
MANIFEST = "builtin.json"  # the arguments a folder was built with; written last
_FORMAT = 6  # bump when the same arguments would give other files


@dataclasses.dataclass(frozen=True)
class BuiltinPaths:
    folder: str
    image_folder: str     # image paths in the JSON files are relative to this folder
    train_json: str
    val_json: str
    captions_json: str
    tokenizer_folder: str
    objects_json: str     # {image: {"width", "height", "objects": [...]}}: where each shape,
    #                       dot and digit is (see _objects)


def _paths(folder):
    return BuiltinPaths(folder=folder, image_folder=os.path.join(folder, "images"),
                        train_json=os.path.join(folder, "train.json"),
                        val_json=os.path.join(folder, "val.json"),
                        captions_json=os.path.join(folder, "captions.json"),
                        tokenizer_folder=os.path.join(folder, "tokenizer"),
                        objects_json=os.path.join(folder, "objects.json"))


def _check_range(name, value, low, high, kind=int):
    if (not isinstance(value, (tuple, list)) or len(value) != 2
            or not all(isinstance(v, kind) and not isinstance(v, bool) for v in value)):
        raise TypeError(f"{name} must be a pair ({kind.__name__}, {kind.__name__}), "
                        f"got {value!r}")
    if not low <= value[0] <= value[1] <= high:
        raise ValueError(f"{name} must satisfy {low} <= min <= max <= {high}, got {value!r}")


def _check_count(name, value, low=0):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be at least {low}, got {value}")


@functools.lru_cache(maxsize=None)
def _font(size):
    # Pillow's default font (FreeType Aileron where FreeType is built in); at 1.4 times a
    # shape's side its digits are about as tall as the shapes.
    return ImageFont.load_default(size=size)


def _scene(seed, split, index, image_width, aspect, detail_frac, shapes_per_cell, jitter,
           dots=False, single=False, stripes=False):
    """Everything about one image, drawn from its own stream (no pixels yet)."""
    # A str seed goes through SHA-512 in random.seed: stable across runs and platforms.
    rng = random.Random(f"slime-builtin/{seed}/{split}/{index}")
    width = rng.randint(*image_width)
    height = max(1, round(width * rng.uniform(*aspect)))
    background = tuple(rng.randint(195, 245) for _ in range(3))
    size = max(3, round(detail_frac * width))
    slot = math.ceil(size * (1 + jitter))  # room for the largest jittered object
    gap = max(1, size // 2)
    cluster_w = shapes_per_cell * (slot + gap) + slot  # shapes, then the digit
    shade = round(80 * jitter)  # per-channel colour jitter
    cells = []
    if dots or stripes:
        # Every object a different (shape, colour) pair, so that a question can name one
        # object by them wherever it is.
        pairs = rng.sample([(s, c) for s in SHAPES for c in sorted(COLOURS)],
                           (1 if single else len(POSITIONS)) * shapes_per_cell)
    for k, position in enumerate((SINGLE_POSITION,) if single else POSITIONS):
        row, col = divmod(k, 3)
        x0, x1 = col * width // 3, (col + 1) * width // 3
        y0, y1 = row * height // 3, (row + 1) * height // 3
        if single:  # one cluster anywhere in the image
            x0, x1, y0, y1 = 0, width, 0, height
        x = rng.randint(x0 + gap, max(x0 + gap, x1 - gap - cluster_w))
        y = rng.randint(y0 + gap, max(y0 + gap, y1 - gap - slot))
        if dots or stripes:
            mine = pairs[k * shapes_per_cell:(k + 1) * shapes_per_cell]
            shapes, colours = [s for s, _ in mine], [c for _, c in mine]
        else:
            shapes = rng.sample(SHAPES, shapes_per_cell)
            colours = rng.sample(sorted(COLOURS), shapes_per_cell)
        objects, dot_colours, ways = [], [], []
        for j, (shape, colour) in enumerate(zip(shapes, colours)):
            side = max(3, round(size * rng.uniform(1 - jitter, 1 + jitter)))
            rgb = _jittered(rng, COLOURS[colour], shade)
            dot = way = None
            if dots:
                dot_colour = rng.choice([c for c in sorted(COLOURS) if c != colour])
                dot_colours.append(dot_colour)
                dot = (_jittered(rng, COLOURS[dot_colour], shade), max(2, round(side / 3)))
            if stripes:
                # a random phase, so that where the colour sits in the shape (its first
                # band) says nothing about the way
                way = (rng.choice(STRIPES), rng.random())
                ways.append(way[0])
            # centred in its slot
            objects.append((shape, rgb, side, x + j * (slot + gap) + (slot - side) // 2,
                            y + (slot - side) // 2, dot, way))
        digit = rng.choice(DIGITS)
        digit_size = max(4, round(1.4 * size * rng.uniform(1 - jitter, 1 + jitter)))
        digit_grey = rng.randint(0, round(240 * jitter))
        tx, ty = x + shapes_per_cell * (slot + gap), y + slot / 2
        # The glyph may reach past the slot: the box takes its real extent.
        left, top, right, bottom = _font(digit_size).getbbox(digit, anchor="lm")
        box = [min(x, math.floor(tx + left)), min(y, math.floor(ty + top)),
               max(x + cluster_w, math.ceil(tx + right)), max(y + slot, math.ceil(ty + bottom))]
        # Which quadrant of the image each shape's centre is in (no random draw: the
        # streams stay those of the other question types). A global view with an even
        # number of patches a side (the demo's 8, CLIP-336's 24) splits at the image's
        # middle, so the patch that holds the centre holds the answer.
        quadrants = [QUADRANTS[2 * (2 * oy + side >= height) + (2 * ox + side >= width)]
                     for _, _, side, ox, oy, _, _ in objects]
        cells.append({"position": position, "shapes": shapes, "colours": colours,
                      "dot_colours": dot_colours, "stripes": ways, "digit": digit,
                      "objects": objects, "quadrants": quadrants,
                      "text": (tx, ty, digit_size, (digit_grey,) * 3), "box": box})
    return {"width": width, "height": height, "background": background, "cells": cells,
            "rng_state": rng.getstate()}


def _jittered(rng, rgb, shade):
    return tuple(min(255, max(0, v + rng.randint(-shade, shade))) for v in rgb)


def _draw_shape(draw, shape, x, y, size, fill):
    s = size - 1  # Pillow's boxes include their last pixel
    if shape == "square":
        draw.rectangle([x, y, x + s, y + s], fill=fill)
    elif shape == "circle":
        draw.ellipse([x, y, x + s, y + s], fill=fill)
    elif shape == "triangle":
        draw.polygon([(x + s / 2, y), (x + s, y + s), (x, y + s)], fill=fill)
    else:  # cross: a plus sign whose bars are a third of the size
        t = max(1, size // 3)
        a = (size - t) // 2
        draw.rectangle([x + a, y, x + a + t - 1, y + s], fill=fill)
        draw.rectangle([x, y + a, x + s, y + a + t - 1], fill=fill)


def _striped(side, rgb, way, phase):
    """A side x side square of stripes, the colour and white in equal widths, three periods
    across, shifted by `phase` periods: the same mean colour whichever way they run, so that
    a view too coarse to resolve them (the global view) cannot tell the ways apart."""
    period = side / 3
    image = Image.new("RGB", (side, side), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    # bands of colour start at a = (k - phase) * period along the stripes' normal; for
    # "diagonal" the normal is x + y, on which a period is sqrt(2) times longer
    step = period * (math.sqrt(2) if way == "diagonal" else 1)
    end = 2 * side if way == "diagonal" else side
    k = -1
    while (k - phase) * step < end:
        a, b = (k - phase) * step, (k - phase + 0.5) * step
        if way == "diagonal":
            draw.polygon([(a, 0), (b, 0), (0, b), (0, a)], fill=rgb)
        else:
            a, b = round(a), round(b) - 1
            if b >= 0:
                box = [0, a, side - 1, b] if way == "horizontal" else [a, 0, b, side - 1]
                draw.rectangle(box, fill=rgb)
        k += 1
    return image


def _dot_box(x, y, side, d):
    """A square dot at 0.6 of the shape's height: inside every shape (a triangle's middle
    is low, a cross's bars cross in the centre)."""
    dx, dy = x + (side - d) // 2, y + round(0.6 * side - d / 2)
    return [dx, dy, dx + d, dy + d]


def _objects(scene, where=False):
    """What is where in a scene, in pixels (boxes x0, y0, x1, y1, end exclusive): one entry
    per shape with its name, colour name, box, the digit of its cluster, and with dots its
    dot's colour and box, with stripes their way, with where its quadrant."""
    out = []
    for cell in scene["cells"]:
        for k, (shape, _, side, x, y, dot, way) in enumerate(cell["objects"]):
            o = {"position": cell["position"], "shape": shape, "colour": cell["colours"][k],
                 "box": [x, y, x + side, y + side], "digit": cell["digit"]}
            if dot is not None:
                o["dot_colour"] = cell["dot_colours"][k]
                o["dot_box"] = _dot_box(x, y, side, dot[1])
            if way is not None:
                o["stripes"] = way[0]
            if where:
                o["quadrant"] = cell["quadrants"][k]
            out.append(o)
    return out


def _render(scene, path, compress_level):
    image = Image.new("RGB", (scene["width"], scene["height"]), scene["background"])
    draw = ImageDraw.Draw(image)
    for cell in scene["cells"]:
        for shape, rgb, side, x, y, dot, way in cell["objects"]:
            if way is None:
                _draw_shape(draw, shape, x, y, side, rgb)
            else:
                mask = Image.new("L", (side, side), 0)
                _draw_shape(ImageDraw.Draw(mask), shape, 0, 0, side, 255)
                image.paste(_striped(side, rgb, *way), (x, y), mask)
            if dot is not None:
                x0, y0, x1, y1 = _dot_box(x, y, side, dot[1])
                draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=dot[0])
        x, y, font_size, grey = cell["text"]
        draw.text((x, y), cell["digit"], font=_font(font_size), fill=grey, anchor="lm")
    image.save(path, format="PNG", compress_level=compress_level)


def _render_job(job):
    _render(*job)


def _question(rng, cell, question_type, short=False):
    # short: without the words that name nothing (see build_builtin's short_questions)
    position = cell["position"]
    where = "" if short and position == SINGLE_POSITION else f" in the {position}"
    if question_type == "colour":
        k = rng.randrange(len(cell["shapes"]))
        return f"What colour is the {cell['shapes'][k]}{where}?", cell["colours"][k]
    if question_type == "shape":
        k = rng.randrange(len(cell["shapes"]))
        return f"Which shape is {cell['colours'][k]}{where}?", cell["shapes"][k]
    if question_type == "dot":
        k = rng.randrange(len(cell["shapes"]))
        return (f"What colour is the dot on the {cell['colours'][k]} {cell['shapes'][k]}?",
                cell["dot_colours"][k])
    if question_type == WHERE_TYPE:
        k = rng.randrange(len(cell["shapes"]))
        return f"Where is the {cell['shapes'][k]}?", cell["quadrants"][k]
    if question_type == STRIPES_TYPE:
        k = rng.randrange(len(cell["shapes"]))
        thing = f"the {cell['colours'][k]} {cell['shapes'][k]}"
        return (f"the stripes on {thing}?" if short else
                f"Which way do the stripes on {thing} run?"), cell["stripes"][k]
    return (f"Which digit is{where}?" if where else "Which digit?"), cell["digit"]


def _describe(cell, details=True, where=False):
    # where: the cluster is named by its first shape's quadrant ("top left: red cross, ...")
    parts = [f"{c} {s}" for s, c in zip(cell["shapes"], cell["colours"])]
    if details and cell["dot_colours"]:
        parts = [f"{p} with {'an' if d[0] in 'aeiou' else 'a'} {d} dot"
                 for p, d in zip(parts, cell["dot_colours"])]
    if details and cell["stripes"]:
        parts = [f"{p} with {w} stripes" for p, w in zip(parts, cell["stripes"])]
    place = cell["quadrants"][0] if where else cell["position"]
    return f"{place}: " + ", ".join(parts) + f", digit {cell['digit']}."


def _records(scene, image, rng, questions_per_image, question_types, caption_cells, split,
             index, short=False, details=True):
    where = WHERE_TYPE in question_types
    qa = []
    for q in range(questions_per_image):
        cell = rng.choice(scene["cells"])
        question_type = rng.choice(question_types)
        question, answer = _question(rng, cell, question_type, short)
        qa.append({"id": f"{split}_{index:06d}_{q}", "image": image,
                   "question_type": question_type, "position": cell["position"],
                   "box": cell["box"],
                   "conversations": [
                       {"from": "human", "value": f"{IMAGE_PLACEHOLDER}\n{question}"},
                       {"from": "gpt", "value": answer}]})
    cells = sorted(rng.sample(range(len(scene["cells"])), min(caption_cells,
                                                                len(scene["cells"]))))
    caption = {"id": f"{split}_{index:06d}_caption", "image": image,
               "conversations": [
                   {"from": "human", "value": IMAGE_PLACEHOLDER},
                   {"from": "gpt", "value": " ".join(_describe(scene["cells"][k], details,
                                                               where) for k in cells)}]}
    # The tokenizer learns the detailed form whatever the captions say (see build_builtin).
    detailed = " ".join(_describe(scene["cells"][k], where=where) for k in cells)
    return qa, caption, detailed


def _train_tokenizer(texts, folder):
    """A word-level tokenizer of the dataset's own words (and the templates' strings)."""
    backend = _Backend(models.WordLevel(unk_token=SPECIAL_TOKENS["unk_token"]))
    # \w+ | [^\w\s]+ pieces: "left?" is "left" and "?", so answers are single tokens.
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(
        vocab_size=100_000, min_frequency=1, show_progress=False,
        special_tokens=[SPECIAL_TOKENS[k] for k in ("pad_token", "bos_token", "eos_token",
                                                     "unk_token")] + [
            t for name in TEMPLATES for t in get_template(name).required_tokens
            if t not in SPECIAL_TOKENS.values()])
    backend.train_from_iterator(texts, trainer)
    # BOS before every text, as LLaMA's tokenizers (Vicuna's) add it; in tokenizer.json, so
    # that transformers and slime_core.text read the same rule.
    bos = SPECIAL_TOKENS["bos_token"]
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
        special_tokens=[(bos, backend.token_to_id(bos))])
    os.makedirs(folder, exist_ok=True)
    backend.save(os.path.join(folder, "tokenizer.json"))
    # EOS ("</s>", Vicuna's answer end) comes from the template, never from the tokenizer.
    config = dict(SPECIAL_TOKENS, add_bos_token=True, add_eos_token=False,
                  model_max_length=512, tokenizer_class="PreTrainedTokenizerFast")
    with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=1, sort_keys=True)
        f.write("\n")


def _template_texts():
    """Every string the templates the dataset is meant for add around the conversation."""
    texts = []
    for name in TEMPLATES:
        t = get_template(name)
        texts += [t.system, t.user.format(content=" "), t.assistant, t.generation]
    return [t.replace(IMAGE_PLACEHOLDER, " ") for t in texts]


def _write_json(path, records):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(records, f, indent=1)
        f.write("\n")


def build_builtin(folder, seed=0, n_train=1000, n_val=200, image_width=(1000, 2000),
                  aspect=(0.5, 0.8), detail_frac=0.02, jitter=0.25, shapes_per_cell=3,
                  questions_per_image=2, question_types=QUESTION_TYPES, caption_cells=3,
                  compress_level=1, dots=False, single=False, stripes=False,
                  short_questions=False, caption_details=True, workers=0):
    """Write the built-in dataset into `folder` (created if missing; files there are
    overwritten) and return its BuiltinPaths.

    n_train, n_val:      images per split; each gives questions_per_image QA records (one
                         cell and one question type each, drawn at random) and one caption
    image_width:         (min, max) width in pixels; height = width * uniform(aspect)
    aspect:              (min, max) height / width
    detail_frac:         side of a shape as a fraction of the image width (digits alike)
    jitter:              nuisance, in [0, 0.5]: each shape's side and each digit's size vary
                         by this fraction, each shape's colour by 320 * jitter levels per
                         channel (+-20 at 0.25), each digit's grey in 0..240 * jitter. Without
                         it the scenes are so clean that a linear probe reads digits and
                         shapes off the global view's 2-pixel blobs (ink amount and blur
                         pattern identify them); see scripts/builtin_probe.py
    shapes_per_cell:     shapes in each cell's cluster (1 to 4, all different)
    question_types:      a subset of ("colour", "shape", "digit"), plus "dot", "stripes"
                         and "where" with dots, stripes and single
    caption_cells:       cells a caption describes (1 to 9)
    dots:                a dot of another colour on every shape (a third of its side, 0.7 px
                         in the global view at the demo's sizes), every object of an image a
                         different (shape, colour) pair (shapes_per_cell at most 3), captions
                         name the dots (see caption_details), and question type "dot" asks
                         for one: "What colour is the dot on the red square?"
    single:              one cluster per image, anywhere in it, instead of one per cell of
                         the 3 x 3 grid; questions name its place "the picture" (and
                         captions describe it so): what to answer is at an unknown place in
                         an image of over a million pixels, and under 0.1% of it. With
                         question type "where" ("Where is the square?" -> "top left", one
                         of QUADRANTS: the global view's context, as a tile's pixels do
                         not say where it lies), captions name the quadrant instead ("top
                         left: red square, digit 5.")
    stripes:             every shape striped, its colour and white in three periods across,
                         running one of STRIPES' ways (the same mean colour whichever way,
                         so the global view cannot tell them apart); every object of an
                         image a different (shape, colour) pair, captions name the stripes
                         (see caption_details), and question type "stripes" asks for them:
                         "Which way do the stripes on the red square run?" (the demo's task,
                         see slime_core.demo)
    short_questions:     questions without the words that name nothing: no "in the picture"
                         with single=True ("What colour is the square?", "Which digit?"),
                         and the stripes question as "the stripes on the red square?". The
                         text-guided selection scores a token against every word of the
                         prompt, so a tiny LLM's selection reads a long question's filler
                         words more than its two content words (see slime_core.demo)
    caption_details:     captions name the dots and stripes (with dots or stripes); False:
                         the shapes, colours and digits only, "picture: red cross, digit
                         5.", as LLaVA-558K's captions, which SliME's alignment stages
                         train on, describe a whole picture and seldom its small details;
                         the tokenizer is the same either way (it learns the detailed form)
    compress_level:      PNG zlib level (1: fast, files ~30 KB since most pixels are flat)
    workers:             processes drawing the images (0: this one); no effect on the bytes
    """
    if not isinstance(folder, (str, os.PathLike)):
        raise TypeError(f"folder must be a path, got {type(folder).__name__}")
    _check_count("seed", seed)
    _check_count("n_train", n_train, 1)
    _check_count("n_val", n_val, 0)
    _check_range("image_width", image_width, 64, 16384)
    _check_range("aspect", aspect, 0.05, 20.0, kind=float)
    if isinstance(detail_frac, bool) or not isinstance(detail_frac, (int, float)):
        raise TypeError(f"detail_frac must be a number, got {type(detail_frac).__name__}")
    if isinstance(jitter, bool) or not isinstance(jitter, (int, float)):
        raise TypeError(f"jitter must be a number, got {type(jitter).__name__}")
    if not 0 <= jitter <= 0.5:
        raise ValueError(f"jitter must be in [0, 0.5], got {jitter}")
    _check_count("shapes_per_cell", shapes_per_cell, 1)
    for name, flag in (("dots", dots), ("single", single), ("stripes", stripes),
                       ("short_questions", short_questions),
                       ("caption_details", caption_details)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
    if (dots or stripes) and shapes_per_cell > 3:
        raise ValueError("dots=True or stripes=True needs shapes_per_cell <= 3 (9 cells x 3 "
                         "objects of 28 (shape, colour) pairs, all different), got "
                         f"{shapes_per_cell}")
    if stripes:
        # three periods across need a band of at least a pixel: sides of 6 px and more
        smallest = max(3, round(max(3, round(detail_frac * image_width[0])) * (1 - jitter)))
        if smallest < 6:
            raise ValueError(f"stripes=True needs shapes of at least 6 px, but detail_frac * "
                             f"image_width[0] * (1 - jitter) gives {smallest} px: raise "
                             "detail_frac or the smallest image width")
    if shapes_per_cell > len(SHAPES):
        raise ValueError(f"shapes_per_cell must be at most {len(SHAPES)}, got {shapes_per_cell}")
    # A cluster (shapes in slots of (1 + jitter) * size, half-size gaps, the digit, margins)
    # must fit in a cell, a third of the width, and its row (slot plus margins) in a third
    # of the height.
    max_frac = 1 / (3 * (shapes_per_cell * (1.5 + jitter) + 2 + jitter))
    if not 0 < detail_frac <= max_frac:
        raise ValueError(f"detail_frac must be in (0, {max_frac:.4f}] so that a cluster of "
                         f"{shapes_per_cell} shapes fits in a cell, got {detail_frac}")
    min_aspect = 3 * (2 + jitter) * detail_frac
    if aspect[0] < min_aspect:
        raise ValueError(f"aspect's minimum must be at least 3 * (2 + jitter) * detail_frac = "
                         f"{min_aspect:.3f} so that a cluster fits in a cell's height, "
                         f"got {aspect[0]}")
    _check_count("questions_per_image", questions_per_image, 1)
    question_types = tuple(question_types)
    known = QUESTION_TYPES + ((DOT_TYPE,) if dots else ()) + (
        (STRIPES_TYPE,) if stripes else ()) + ((WHERE_TYPE,) if single else ())
    bad = [t for t in question_types if t not in known]
    if not question_types or bad:
        hint = "".join(f" ({t!r} needs {flag}=True)" for t, flag in
                       ((DOT_TYPE, "dots"), (STRIPES_TYPE, "stripes"), (WHERE_TYPE, "single"))
                       if t in bad)
        raise ValueError(f"question_types must be a non-empty subset of {known}{hint}, "
                         f"got {question_types!r}")
    _check_count("caption_cells", caption_cells, 1)
    if caption_cells > len(POSITIONS):
        raise ValueError(f"caption_cells must be at most {len(POSITIONS)}, got {caption_cells}")
    if isinstance(compress_level, bool) or compress_level not in range(10):
        raise ValueError(f"compress_level must be an int in 0..9, got {compress_level!r}")
    _check_count("workers", workers)

    folder = os.fspath(folder)
    manifest = os.path.join(folder, MANIFEST)
    if os.path.exists(manifest):
        os.remove(manifest)  # the folder is not a finished build until the end
    image_folder = _paths(folder).image_folder
    os.makedirs(image_folder, exist_ok=True)
    jobs, splits, captions, caption_texts, objects = [], {"train": [], "val": []}, [], [], {}
    for split, count in (("train", n_train), ("val", n_val)):
        for i in range(count):
            scene = _scene(seed, split, i, tuple(image_width), tuple(aspect), detail_frac,
                           shapes_per_cell, jitter, dots, single, stripes)
            rng = random.Random()
            rng.setstate(scene.pop("rng_state"))
            name = f"{split}_{i:06d}.png"
            qa, caption, detailed = _records(scene, name, rng, questions_per_image,
                                             question_types, caption_cells, split, i,
                                             short_questions, caption_details)
            splits[split] += qa
            objects[name] = {"width": scene["width"], "height": scene["height"],
                             "objects": _objects(scene, WHERE_TYPE in question_types)}
            if split == "train":
                captions.append(caption)
                caption_texts += [" ", detailed]
            jobs.append((scene, os.path.join(image_folder, name), compress_level))
    if workers:
        with multiprocessing.Pool(workers) as pool:
            pool.map(_render_job, jobs, chunksize=16)
    else:
        for job in jobs:
            _render_job(job)

    paths = _paths(folder)
    _write_json(paths.train_json, splits["train"])
    _write_json(paths.val_json, splits["val"])
    _write_json(paths.captions_json, captions)
    _write_json(paths.objects_json, objects)
    # The captions enter in their detailed form (their words and counts) even with
    # caption_details=False, so that the token ids, which the trainer orders by frequency,
    # do not depend on which form the captions take: the two designs then differ in what
    # the captions say and in nothing else.
    texts = _template_texts() + [turn["value"].replace(IMAGE_PLACEHOLDER, " ")
                                 for records in (splits["train"], splits["val"])
                                 for r in records for turn in r["conversations"]]
    texts += caption_texts
    _train_tokenizer(texts, paths.tokenizer_folder)
    _write_json(manifest, {"format": _FORMAT, "arguments": _arguments(
        seed, n_train, n_val, image_width, aspect, detail_frac, jitter, shapes_per_cell,
        questions_per_image, question_types, caption_cells, compress_level, dots, single,
        stripes, short_questions, caption_details)})
    return paths


def _arguments(seed, n_train, n_val, image_width, aspect, detail_frac, jitter, shapes_per_cell,
               questions_per_image, question_types, caption_cells, compress_level, dots,
               single, stripes=False, short_questions=False, caption_details=True):
    """What the files depend on (workers does not), as JSON would read it back."""
    return json.loads(json.dumps(dict(
        seed=seed, n_train=n_train, n_val=n_val, image_width=list(image_width),
        aspect=list(aspect), detail_frac=detail_frac, jitter=jitter,
        shapes_per_cell=shapes_per_cell,
        questions_per_image=questions_per_image, question_types=list(question_types),
        caption_cells=caption_cells, compress_level=compress_level,
        **({"dots": True} if dots else {}), **({"single": True} if single else {}),
        **({"stripes": True} if stripes else {}),
        **({"short_questions": True} if short_questions else {}),
        **({} if caption_details else {"caption_details": False}))))


def ensure_builtin(folder, **kwargs):
    """build_builtin(folder, **kwargs) unless `folder` already holds a finished build with
    the same arguments (its builtin.json says so), in which case the files are reused."""
    defaults = {k: v.default for k, v in inspect.signature(build_builtin).parameters.items()
                if k != "folder"}
    unknown = sorted(set(kwargs) - set(defaults))
    if unknown:
        raise TypeError(f"ensure_builtin() got unexpected keyword argument(s) {unknown}")
    args = dict(defaults, **kwargs)
    workers = args.pop("workers")
    folder = os.fspath(folder)
    manifest = os.path.join(folder, MANIFEST)
    if os.path.isfile(manifest):
        with open(manifest, encoding="utf-8") as f:
            built = json.load(f)
        if built == {"format": _FORMAT, "arguments": _arguments(**args)}:
            return _paths(folder)
    return build_builtin(folder, workers=workers, **args)
