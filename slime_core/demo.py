"""`slime demo`: the built-in dataset, a tiny SliME and its ablations trained on the CPU, one
table of what each variant sees and scores.

    slime demo                      # runs/demo: data, every variant, table, loss curves, PNG
    slime demo --out DIR --scale 0.1   # fewer images and steps (a smoke run)
    slime demo --seeds 0-7          # runs/demo_seeds: once per seed, then the table over
                                    # seeds and each claim's difference per seed
    slime demo --seeds 0-18 --jobs 2 --threads 1   # two seeds at a time, one process each

The variants (each trained here from the same pretrained parts, seeds fixed):

    global only           LLaVA-style: the global view alone (stages Ia, Ib, then the
                          instruction stage in global mode for II's and III's steps)
    every local patch     LLaVA-NeXT's AnyRes, the baseline SliME's "less is more" is
                          measured against: the global view and every tile's patch tokens,
                          uncompressed, through the connector aligned on the global view
                          (SliME's Ia and Ib), then the instruction stage for II's and
                          III's steps (local_compressor "none": 6 tiles x 64 patches here,
                          against SliME's 6 x 16)
    global + all local    SliME's stages, instruction stage keeping every compressed local
                          token (compression without selection)
    SliME (top-p)         SliME's stages, text-guided top-p selection of local tokens
    top-k, equal budget   SliME's stages, top-k with k = the top-p model's mean kept count
    SliME end to end      the paper's ablation: the global experts and the local compressor
                          aligned together in one stage as long as Ia + Ib + II, then the
                          same stage III as SliME (top-p)

The task: one small striped shape (and a digit) somewhere in a 1000-1600 px image;
"colour" questions ask the shape's colour, "stripes" questions which way its stripes run
(horizontal, vertical, diagonal). Stripes of the shape's colour and white, three periods
across, have the same mean colour whichever way they run, so the global view (the whole
image in 56 px) cannot resolve them while a tile (3 times finer) can.

The questions are short ("What colour is the circle?", "the stripes on the green circle?")
and go to the LLM in the "bare" template (the question, then the answer; no roles). SliME's
selection scores each local token against every token of the prompt, template included:
at a width of 96, a random direction's cosine summed over llama3's 19 prompt tokens has a
spread of about 0.49 (sqrt(23/96), counting "the" twice), which outweighs what the
question's two content words add to the shape's tokens (about 0.2, measured), while at
Llama's width of 4096 the same sum spreads by 0.075. The short prompts' other tokens (BOS
and "the stripes on the ... ?": 8 counting "the" twice; sqrt(8/96) = 0.29) drown the
question's words less.

SliME's stages are SLIME_SPEC section 6's Ia, Ib, II, III. SliME starts from a pretrained
CLIP and a pretrained LLM; the demo pretrains its own tiny stand-ins first and says so:
stage 0 teaches the vision tower, per patch, the colour, shape and stripes of what each
patch holds (labels from objects.json), then freezes it; stage -1 teaches the LLM the
dataset's language and to answer from a picture given as word vectors (pretrain_llm; its
word vectors fixed and orthonormal but for each colour name's and each way of the stripes'
part of "colour" and "stripes", RELATED; the picture holds all of each object, stripes too).
Stages Ia, Ib and II then train the connector alone against the frozen LLM on the
captions ("picture: red cross with vertical stripes, digit 5."), and stage III trains the
LLM with it at a lower rate, as SliME does, but not the word vectors the selection scores
against. The captions name the stripes, which LLaVA-558K's captions of whole pictures
would not; with captions that leave them out (build_builtin's caption_details=False),
alternating beat end to end at top-p on 9 seeds of 12 by a skewed margin, but compression
and selection fell 0.015 below every local patch (bench/results/, 2026-12-04, same
tokenizer).
The other variants copy SliME's stages they share with it (Ia, Ib and II for all-local and
top-k; Ia and Ib for global only and every local patch) rather than rerun them.

The table also says, for each variant with local tokens, which share of the asked-about
shape's local tokens the selection kept, beside the share of all local tokens it kept:
a selection blind to the question keeps the shape's tokens at the second rate.

Three more rows train nothing: the SliME and end-to-end models above, evaluated with BUDGET
(4) of their about 97 local tokens, chosen by the question (top-k on the text-guided
scores) or, for SliME, at random (selection "random"). Top-p 0.95 over SliME's double
softmax keeps about 95% of the tokens, as released, so only a tight budget shows what the
question's choice is worth: a tile's 16 compressed tokens all see the whole tile, and a
random 16 of 97 already reach every tile. A looser budget shows less still: over 19
seeds, the question's best 16 score about as well as 16 at random, and its best 32 or 64
worse than as many at random, as the text-guided score ranks part of what answers the
question last; SliME's stages stay ahead of end to end's at every budget from 4 to 64
(bench/results/, 2026-12-04, budget sweep).

What is written under --out: data/ (the dataset, reused when its arguments match),
variants/<name>/<stage>/ (checkpoints, metrics.jsonl, loss.png), variants/<name>/loss.png,
slime/ (the SliME model in the LLaVA layout with its tower and tokenizer: `slime generate
runs/demo/slime IMAGE PROMPT` answers), explain.png, results.json and results.md.
Accuracy and token counts repeat exactly run to run on one machine (fixed seeds); the
throughput column is a measurement and varies.

One seed's table cannot tell a claim from chance at this scale: 600 validation questions
give a standard error of about 0.01 to 0.02 on a difference, but training itself varies more
than that from seed to seed (the end-to-end model's selection, for one, puts the shape's
tokens near the bottom on some seeds). --seeds runs the whole demo once per seed and writes
summary.md: every row's mean and spread, and each claim (CLAIMS) as a difference of rows,
per seed, with its mean, standard error and the number of seeds where it holds.
"""
import dataclasses
import json
import math
import os
import shutil
import statistics
import sys
import time

import torch

from slime_core.checkpoint import load_into, load_safetensors, save_safetensors
from slime_core.data import LlavaDataset, collate, ensure_builtin
from slime_core.data.builtin import COLOURS, DEMO_TEMPLATE, SHAPES, STRIPES
from slime_core.models.llm import Decoder, DecoderConfig
from slime_core.models.slime import SlimeConfig, SlimeModel
from slime_core.models.vision import VisionConfig, VisionTower
from slime_core.preprocess import ImageProcessor
from slime_core.text import IGNORE_INDEX, Tokenizer, get_template
from slime_core.train.evaluate import evaluate, load_questions
from slime_core.train.plot import plot_losses
from slime_core.train.trainer import run_recipe

# The task (module docstring): a shape about 12 px wide in a tile and 4 px in the global
# view, its stripes 2 px wide in a tile and 0.7 px in the global view.
DATA = dict(seed=0, n_train=1600, n_val=300, image_width=(1000, 1600), aspect=(0.5, 0.8),
            detail_frac=0.07, shapes_per_cell=1, stripes=True, single=True,
            question_types=("colour", "stripes"), questions_per_image=2, caption_cells=1,
            short_questions=True)
TILE, PATCH = 56, 7          # 8 x 8 patches a crop; SliME's planner gives 3 x 2 tiles here
LOCAL_GRID = 4               # 16 compressed tokens a tile
STEPS = dict(tower=450, llm=400, Ia=150, Ib=150, II=300, III=400)
# SliME's alignment stages (I, II) train at 1e-3 and its stage III at a fiftieth of that;
# here a quarter. At the alignment rate, stage III moves the local tokens the LLM reads
# away from the text's embeddings, and the text-guided selection then drops them.
BATCH, LR, LR_III = 16, 2e-3, 5e-4
FILL = (16, 96)              # stage -1: fillers around a picture's words (see pretrain_llm)
# Stage -1's related words: each value's vector holds a part of its category's word (cosine
# RELATED), as a large LLM's "red" lies near "colour" and "vertical" near "stripes".
RELATED = 0.3
# What identifies the stand-in LLM a folder holds (llm/stage_args.json, and the report's
# "llm"): a folder without the record predates RELATED, so its words were all orthogonal.
LLM_ARGS, LLM_ARGS_BEFORE = {"related": RELATED}, {"related": 0.0}


def build_model(vocab_size, separator_id, image_mode="both", seed=0):
    """The demo's tiny SliME: a 2-layer CLIP-like tower 64 wide on 56-px crops, a 2-layer
    Llama-like decoder 96 wide, the gated connector; float32, random, seeded."""
    torch.manual_seed(seed)
    tower = VisionTower(VisionConfig(image_size=TILE, patch_size=PATCH, hidden_size=64,
                                     intermediate_size=128, num_hidden_layers=2,
                                     num_attention_heads=4, select_layer=-1))
    for name, p in tower.embeddings.named_parameters():
        # HF's CLIP initialisation (N(0, 0.02)) rather than torch's N(0, 1) embeddings, whose
        # position part would drown the pixels: pretraining learns much faster from it.
        torch.nn.init.normal_(p, std=0.02)
    llm = Decoder(DecoderConfig(vocab_size=vocab_size, hidden_size=96, intermediate_size=192,
                                num_layers=2, num_heads=4, num_kv_heads=4, bos_token_id=1,
                                eos_token_id=2, pad_token_id=0))
    cfg = SlimeConfig(image_mode=image_mode, connector="gated", num_heads=4,
                      local_grid=LOCAL_GRID, separator_token_id=separator_id)
    return SlimeModel(cfg, tower, llm)


COLOUR_NAMES = sorted(COLOURS)


def patch_targets(plan, scene, patch):
    """Per-patch labels of one image's crops, (crops, 3, side * side) int64: the colour of the
    shape a patch overlaps, its detail (the colour of the dot it overlaps, or the way of the
    shape's stripes), and the shape (1-based indices into COLOUR_NAMES, STRIPES, SHAPES;
    0: nothing there). scene: the image's entry of
    objects.json; plan: its preprocess Plan. Boxes are mapped through the global view's
    plain resize and through the tiles' resize-and-pad."""
    S, side = plan.tile_size, plan.tile_size // patch
    out = torch.zeros(plan.num_crops, 3, side, side, dtype=torch.int64)
    W, H = scene["width"], scene["height"]
    for o in scene["objects"]:
        labels = [(o["box"], 0, COLOUR_NAMES.index(o["colour"])),
                  (o["box"], 2, SHAPES.index(o["shape"]))]
        if "dot_box" in o:
            labels.append((o["dot_box"], 1, COLOUR_NAMES.index(o["dot_colour"])))
        if "stripes" in o:  # the detail slot: the stripes' way, over the whole shape
            labels.append((o["box"], 1, STRIPES.index(o["stripes"])))
        for (x0, y0, x1, y1), what, value in labels:
            views = []
            if plan.global_view:  # a plain resize of the whole image to S x S
                views.append((None, S / W, S / H, 0, 0))
            views.append(("tiles", plan.new_w / W, plan.new_h / H, plan.off_x, plan.off_y))
            for kind, sx, sy, ox, oy in views:
                # the box on the crop (or on the tiles' canvas), and the patches it touches
                bx0, bx1, by0, by1 = x0 * sx + ox, x1 * sx + ox, y0 * sy + oy, y1 * sy + oy
                c0, c1 = int(bx0 // patch), int((bx1 - 1e-6) // patch)
                r0, r1 = int(by0 // patch), int((by1 - 1e-6) // patch)
                area = (bx1 - bx0) * (by1 - by0)
                for r in range(r0, r1 + 1):
                    for c in range(c0, c1 + 1):
                        # a patch holds the object when it has 30% of it, or the object
                        # fills 30% of the patch; a sliver at an edge does not count
                        ov = (max(0.0, min(bx1, (c + 1) * patch) - max(bx0, c * patch)) *
                              max(0.0, min(by1, (r + 1) * patch) - max(by0, r * patch)))
                        if ov < 0.3 * min(area, patch * patch):
                            continue
                        if kind is None:
                            crop, rr, cc = 0, r, c
                        else:
                            ty, rr = divmod(r, side)
                            tx, cc = divmod(c, side)
                            if not (0 <= tx < plan.grid_w and 0 <= ty < plan.grid_h):
                                continue
                            crop = int(plan.global_view) + ty * plan.grid_w + tx
                        if 0 <= rr < side and 0 <= cc < side:
                            out[crop, what, rr, cc] = value + 1
    return out.flatten(2)


def _warmup_cosine(lr, step, steps):
    """The pretraining stages' learning rate: 5% linear warmup, then cosine to 0."""
    return lr * min(1.0, (step + 1) / max(1, steps // 20)) * 0.5 * (
        1 + math.cos(math.pi * step / steps))


def pretrain_tower(tower, paths, processor, steps, images_per_step=32, lr=1e-2, seed=0,
                   stream=None):
    """Stage 0, the demo's stand-in for CLIP's pretraining: the tower learns, per patch, the
    colour, shape and detail (stripes or dot) of what it holds (patch_targets, from
    objects.json), on the training images' crops, global views and tiles
    alike. Three linear heads read its features and are thrown away afterwards. Returns the
    per-step losses; the tower is left frozen, as SliME keeps CLIP."""
    with open(paths.objects_json, encoding="utf-8") as f:
        scenes = json.load(f)
    names = sorted(n for n in scenes if n.startswith("train_"))
    patch = tower.config.patch_size
    d = tower.config.hidden_size
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    heads = torch.nn.ModuleList([torch.nn.Linear(d, 1 + len(COLOUR_NAMES)),
                                 torch.nn.Linear(d, 1 + max(len(COLOUR_NAMES), len(STRIPES))),
                                 torch.nn.Linear(d, 1 + len(SHAPES))])
    tower.unfreeze()
    params = list(tower.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=lr)
    cache = {}
    losses = []
    for step in range(steps):
        pick = torch.randint(len(names), (images_per_step,), generator=g).tolist()
        pixels, targets, is_global = [], [], []
        for i in pick:
            name = names[i]
            if name not in cache:
                out = processor([os.path.join(paths.image_folder, name)])
                cache[name] = (out.pixel_values,
                               patch_targets(out.plans[0], scenes[name], patch))
            pixels.append(cache[name][0])
            targets.append(cache[name][1])
            is_global += [True] + [False] * (len(cache[name][0]) - 1)
        feats = tower(torch.cat(pixels))                        # (N, side*side, d)
        target = torch.cat(targets)                             # (N, 3, side*side)
        for group in opt.param_groups:
            group["lr"] = _warmup_cosine(lr, step, steps)
        logits = [h(feats) for h in heads]
        loss = 0.0
        for k, z in enumerate(logits):
            # The mean over the patches that hold something plus half the mean over the
            # empty ones, which outnumber them about 100 to 1.
            ce = torch.nn.functional.cross_entropy(z.flatten(0, 1), target[:, k].flatten(),
                                                   reduction="none")
            full = target[:, k].flatten() > 0
            for part, weight in ((full, 1.0), (~full, 0.5)):
                if part.any():  # no dots in the data: no dot term, rather than a NaN
                    loss = loss + weight * ce[part].mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        if stream is not None and (step + 1) % max(1, steps // 4) == 0:
            # accuracy on the patches that hold something, in tiles / in global views
            view = torch.tensor(is_global)[:, None]
            hits = []
            for k, z in enumerate(logits):
                for g_ in (False, True):
                    m = (target[:, k] > 0) & (view == g_)
                    hits.append(float((z.argmax(-1)[m] == target[:, k][m]).float().mean()))
            print(f"[tower] {step + 1:>5}/{steps}  loss {loss.item():.4f}  patch accuracy "
                  "tiles/global: colour {:.2f}/{:.2f} detail {:.2f}/{:.2f} shape {:.2f}/{:.2f}"
                  .format(*hits), file=stream, flush=True)
    tower.freeze()
    return losses


def _object_words(o):
    # what an object is, in the dataset's words: colour, shape, its details, its digit
    return [o["colour"], o["shape"], *(o[k] for k in ("stripes", "dot_colour") if k in o),
            o["digit"], *o.get("quadrant", "").split()]


def text_stand_ins(paths, tokenizer, bag=True):
    """The training set as text alone: every caption and instruction record tokenized as
    the trainer tokenizes it, split at the image placeholder, with what goes in the
    picture's place. bag: what the picture holds, one list of word ids per object (its
    colour, shape, stripes or dot and digit, from objects.json: all of it, whatever the
    captions leave out, as a pretrained LLM knows words the alignment captions never use),
    which pretrain_llm lays out among fillers; otherwise the caption's ids in order.
    Returns [(before, picture, after)]: (ids, labels) int64 tensor pairs before and after
    the picture, and the picture (bag: a list of id lists; otherwise a list of ids)."""
    from slime_core.text import IMAGE_TOKEN_INDEX, tokenize_conversation
    with open(paths.captions_json, encoding="utf-8") as f:
        captions = json.load(f)
    with open(paths.train_json, encoding="utf-8") as f:
        instruct = json.load(f)
    if bag:
        with open(paths.objects_json, encoding="utf-8") as f:
            scenes = json.load(f)
        # a word the dataset's text never uses has no id (the tokenizer is trained on that
        # text), and no question can ask for it: left out
        words = {image: [[i for i in map(tokenizer.token_to_id, _object_words(o))
                          if i is not None] for o in scene["objects"]]
                 for image, scene in scenes.items()}
    else:
        words = {r["image"]: tokenizer.encode(r["conversations"][1]["value"],
                                              add_special_tokens=False) for r in captions}
    out = []
    for template, records in (("plain", captions), (DEMO_TEMPLATE, instruct)):
        for r in records:
            ids, labels = tokenize_conversation(tokenizer, get_template(template),
                                                r["conversations"])
            at = ids.index(IMAGE_TOKEN_INDEX)
            out.append(((torch.tensor(ids[:at]), torch.tensor(labels[:at])), words[r["image"]],
                        (torch.tensor(ids[at + 1:]), torch.tensor(labels[at + 1:]))))
    return out


def pretrain_llm(llm, tokenizer, paths, steps, batch=32, lr=3e-3, seed=0, stream=None,
                 bag=True, orthogonal=True, noise=0.5, related=RELATED):
    """Stage -1, the demo's stand-in for a pretrained LLM: the decoder learns the dataset's
    language and to answer from a picture given in its own embedding space. With bag, the
    picture's place holds FILL fillers (<unk>) and, for each object it holds (text_stand_ins),
    at 1 to 4 random places among them, one vector holding all of the object's words (their
    embeddings summed, over the square root of their count), as an object lies in a few of
    an image's tokens that each hold all of it. That is what a large LLM brings to SliME
    and a tiny one trained for a minute lacks: word vectors that can be mixed and still
    read, and a habit of skipping what says nothing. Stages I and II then keep it frozen
    and teach the connector to speak to it, as they do with Vicuna. Without bag: the
    caption's words in order.

    orthogonal: the word vectors are orthonormal and fixed (see below); otherwise learned.
    noise: Gaussian noise on every place of the picture, fillers and object alike, its norm
    `noise` times a word vector's, so that the LLM reads the object's words through
    whatever else a token holds, as the connector's tokens will hold more than words.
    related: with orthogonal, the cosine of each colour name with "colour" and of each way
    of the stripes with "stripes" (related_words); 0 leaves every word orthogonal.
    Returns the per-step losses."""
    records = text_stand_ins(paths, tokenizer, bag=bag)
    filler = tokenizer.token_to_id("<unk>")
    g = torch.Generator().manual_seed(seed)
    params = list(llm.parameters())
    if orthogonal:
        # Orthonormal word vectors (the vocabulary, about 77 words, fits in 96 dimensions),
        # scaled to the N(0, 0.02) table's norm and fixed: a large LLM's unrelated words are
        # nearly orthogonal, which is what makes a cosine with the question's words mean
        # something. A table learned here in a minute is not: template tokens and the
        # filler end up correlated, by seed, and the selection's polarity with them.
        table = llm.embed_tokens.weight
        if table.shape[0] > table.shape[1]:
            raise ValueError(f"orthogonal word vectors need vocab ({table.shape[0]}) <= "
                             f"hidden size ({table.shape[1]})")
        with torch.no_grad():
            torch.nn.init.orthogonal_(table, generator=g)
            if related:
                related_words(table, tokenizer, related)
            table.mul_(0.02 * table.shape[1] ** 0.5)
        params = [p for p in params if p is not table]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    llm.train()
    losses = []
    for step in range(steps):
        pick = torch.randint(len(records), (batch,), generator=g).tolist()
        rows, objects = [], []
        for i in pick:
            (ids0, lab0), picture, (ids1, lab1) = records[i]
            spots = []
            if bag:  # the picture: fillers, and each object's vector at 1 to 4 places
                n = int(torch.randint(FILL[0], FILL[1] + 1, (1,), generator=g))
                ks = [int(torch.randint(1, 5, (1,), generator=g)) for _ in picture]
                spots = (len(ids0) + torch.randperm(n + sum(ks), generator=g)[:sum(ks)]).tolist()
                objects.append([w for w, k in zip(picture, ks) for _ in range(k)])
                w = torch.full((n + sum(ks),), filler, dtype=torch.int64)
            else:
                w = torch.tensor(picture, dtype=torch.int64)
            rows.append((torch.cat([ids0, w, ids1]),
                         torch.cat([lab0, torch.full_like(w, IGNORE_INDEX), lab1]), spots,
                         (len(ids0), len(ids0) + len(w))))
        T = max(len(r[0]) for r in rows)
        ids = torch.zeros(batch, T, dtype=torch.int64)
        labels = torch.full((batch, T), IGNORE_INDEX, dtype=torch.int64)
        mask = torch.zeros(batch, T, dtype=torch.int64)
        for b, (x, y, _, _) in enumerate(rows):
            ids[b, :len(x)], labels[b, :len(x)], mask[b, :len(x)] = x, y, 1
        for group in opt.param_groups:
            group["lr"] = _warmup_cosine(lr, step, steps)
        embeds = llm.embed_tokens(ids)
        if bag:
            table = llm.embed_tokens.weight
            embeds = torch.stack([
                embeds[b].index_put((torch.tensor(spots, dtype=torch.int64),), torch.stack(
                    [table[o].sum(0) / len(o) ** 0.5 for o in objects[b]]))
                if spots else embeds[b] for b, (_, _, spots, _) in enumerate(rows)])
            if noise:  # on the picture's places only, fillers and object alike
                picture = torch.zeros(batch, T, 1)
                for b, (_, _, _, (start, end)) in enumerate(rows):
                    picture[b, start:end] = 1
                std = noise * float(table.detach().norm(dim=-1).mean()) / embeds.shape[-1] ** 0.5
                embeds = embeds + picture * std * torch.randn(embeds.shape, generator=g)
        logits = llm(inputs_embeds=embeds, attention_mask=mask)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1),
                                                 labels[:, 1:].flatten(),
                                                 ignore_index=IGNORE_INDEX)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        if stream is not None and (step + 1) % max(1, steps // 4) == 0:
            print(f"[llm] {step + 1:>5}/{steps}  loss {loss.item():.4f}", file=stream,
                  flush=True)
    return losses


def related_words(table, tokenizer, cosine):
    """In place, on orthonormal rows: each colour name's row becomes normalize(row + a *
    row("colour")) and each way of the stripes' normalize(row + a * row("stripes")), with a
    chosen so that the cosine with the category's word is `cosine`; two values of one
    category then have cosine**2, and every other pair stays orthogonal. Why: with every
    word orthogonal, nothing links the question's "stripes" to the answer's "vertical", so
    which way the answer's carriers rank under the text-guided score is left to the seed
    (bench/results/2026-12-05-probe-prompt-words-cpu-2core.md); a large LLM's word vectors
    carry that link. Words the vocabulary lacks (a dataset without stripes questions has
    no "stripes") are left out. Returns {category: [value, ...]} as related."""
    if not 0 <= cosine < 1:
        raise ValueError(f"related: the cosine must lie in [0, 1), got {cosine}")
    a = cosine / (1 - cosine ** 2) ** 0.5
    done = {}
    for category, values in (("colour", COLOUR_NAMES), ("stripes", STRIPES)):
        c = tokenizer.token_to_id(category)
        present = [v for v in values if tokenizer.token_to_id(v) is not None]
        if c is None or not present or not cosine:
            continue
        ids = [tokenizer.token_to_id(v) for v in present]
        rows = table[ids] + a * table[c]
        table[ids] = rows / rows.norm(dim=-1, keepdim=True)
        done[category] = present
    return done


def _stage(name, data, steps, trainable, **overrides):
    return dict(name=name, data=data, steps=steps, global_batch=BATCH, micro_batch=BATCH,
                warmup_ratio=0.05, max_length=None, bf16=False, grad_checkpointing=False,
                overrides=overrides, trainable=trainable)


def recipes(steps, top_k):
    """{variant: recipe}: SliME's stages as data (recipes.Stage dicts)."""
    # The tower (stage 0) and the LLM (stage -1) are pretrained; as in SliME, stages I and II
    # train the connector alone and stage III the LLM with it.
    base = {"llm": LR} if steps.get("llm", 0) == 0 else {}
    ia = _stage("Ia", "captions", steps["Ia"], dict(base, **{"connector.mlp": LR}),
                image_mode="global", connector_expert=0)
    ib = _stage("Ib", "captions", steps["Ib"], dict(base, **{"connector.resampler": LR}),
                image_mode="global", connector_expert=1)
    ii = _stage("II", "captions", steps["II"], dict(base, local=LR), image_mode="local",
                selection="none")
    # Stage III trains the LLM but its word vectors: at this rate (a quarter of alignment's,
    # SliME's is a fiftieth) 400 AdamW steps can move each entry of the table by several
    # times its size (entries ~0.02, steps up to 5e-4), and the selection scores against
    # that table. Probe (seeds 0 and 3, same alignment): trained here, the table took the
    # share of the shape's tokens among SliME's 4 best from 9.6% and 7.3% after stage II to
    # 3.6% and 0.7%; left alone, to 8.8% and 2.7%.
    every = {"llm.body": LR_III, "connector": LR_III, "local": LR_III}

    def iii(**sel):
        return _stage("III", "instruct", steps["III"], every, image_mode="both",
                      connector_expert=-1, **sel)

    def iii_without_ii(**mode):
        # a variant without a local compressor has no stage II: its instruction stage gets
        # II's steps too, as many steps in all as SliME
        return _stage("III", "instruct", steps["II"] + steps["III"],
                      {"llm.body": LR_III, "connector": LR_III}, connector_expert=-1, **mode)
    return {
        "global": [ia, ib, iii_without_ii(image_mode="global")],
        # LLaVA-NeXT's AnyRes, the baseline for SliME's "less is more": every tile's patch
        # tokens, uncompressed, through the connector aligned on the global view (SliME's Ia
        # and Ib)
        "patches": [ia, ib, iii_without_ii(image_mode="both", selection="none",
                                           local_compressor="none")],
        "all_local": [ia, ib, ii, iii(selection="none")],
        "top_p": [ia, ib, ii, iii(selection="top_p")],
        "top_k": [ia, ib, ii, iii(selection="top_k", top_k=top_k)],
        # The paper's ablation: the global experts and the local compressor aligned together
        # in one stage of the same length as Ia + Ib + II, then the same stage III.
        "end_to_end": [_stage("I-II", "captions", steps["Ia"] + steps["Ib"] + steps["II"],
                              dict(base, connector=LR, local=LR), image_mode="both",
                              connector_expert=-1, selection="none"),
                       iii(selection="top_p")],
    }


LABELS = {"global": "global only", "patches": "global + every local patch (uncompressed)",
          "all_local": "global + all compressed local tokens",
          "top_p": "SliME: compression + top-p", "top_k": "top-k at equal budget",
          "end_to_end": "SliME trained end to end"}
BUDGET = 4                   # local tokens an image (of about 97) in the tight-budget rows
# The tight-budget rows: (trained variant, selection at evaluation) -> label. No training of
# their own: the models above, evaluated with BUDGET local tokens.
BUDGET_ROWS = {"top_p@budget": ("top_p", "top_k", f"SliME, its {BUDGET} best local tokens"),
               "random@budget": ("top_p", "random", f"SliME, {BUDGET} local tokens at random"),
               "end_to_end@budget": ("end_to_end", "top_k",
                                     f"end to end, its {BUDGET} best local tokens")}


@torch.no_grad()
def visual_tokens(model, dataset, batch_size=32):
    """Mean image tokens per prompt of `dataset` (prompt samples) the LLM receives."""
    model.eval()
    total = 0
    for start in range(0, len(dataset), batch_size):
        b = collate([dataset[i] for i in range(start, min(len(dataset), start + batch_size))],
                    pad_id=0)
        spliced = model.prepare_inputs(b["input_ids"], b["attention_mask"], b["pixel_values"],
                                       b["crops_per_image"], b["grids_wh"])
        # spliced length = text tokens - the placeholder + the image's tokens
        total += int(spliced.attention_mask.sum() - b["attention_mask"].sum()) + len(
            b["crops_per_image"])
    return total / max(1, len(dataset))


def object_cells(plan, scene, side):
    """The local-grid positions (raster over the whole tile canvas, side x side tokens a
    tile) whose cells the image's shapes overlap: where the answer to a question is."""
    cell = plan.tile_size / side
    cols = plan.grid_w * side
    sx, sy = plan.new_w / scene["width"], plan.new_h / scene["height"]
    out = set()
    for o in scene["objects"]:
        x0, y0, x1, y1 = o["box"]
        c0, c1 = int((x0 * sx + plan.off_x) // cell), int((x1 * sx + plan.off_x - 1e-6) // cell)
        r0, r1 = int((y0 * sy + plan.off_y) // cell), int((y1 * sy + plan.off_y - 1e-6) // cell)
        out.update(r * cols + c for r in range(max(0, r0), min(plan.grid_h * side, r1 + 1))
                   for c in range(max(0, c0), min(cols, c1 + 1)))
    return out


@torch.no_grad()
def kept_object_tokens(model, dataset, scenes, processor, batch_size=32):
    """(share of the object's local tokens the selection kept, share of all local tokens it
    kept), averaged over `dataset` (prompt samples, records in objects.json). A selection
    blind to the question keeps the object's tokens at the second rate."""
    model.eval()
    side = model.local_side
    hit = share = 0.0
    for start in range(0, len(dataset), batch_size):
        samples = [dataset[i] for i in range(start, min(len(dataset), start + batch_size))]
        b = collate(samples, pad_id=0)
        text, mask = model.selection_text(b["input_ids"], b["attention_mask"])
        _, _, (sel, kept, m) = model.image_tokens(b["pixel_values"], b["crops_per_image"],
                                                  b["grids_wh"], text, mask,
                                                  return_selection=True)
        for j, sample in enumerate(samples):
            scene = scenes[dataset.record(sample["index"])["image"]]
            want = object_cells(processor.plan(scene["width"], scene["height"]), scene, side)
            got = set(sel[j, :int(kept[j])].tolist())
            hit += len(want & got) / max(1, len(want))
            share += int(kept[j]) / max(1, int(m[j]))
    return hit / max(1, len(dataset)), share / max(1, len(dataset))


def _throughput(stage_dir):
    with open(os.path.join(stage_dir, "metrics.jsonl"), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    return BATCH / statistics.median(r["seconds"] for r in rows)


def _explain(model, tokenizer, processor, image_path, question, out):
    from PIL import Image

    from slime_core.explain import selection_png
    with Image.open(image_path) as im:
        picture = im.convert("RGB")
    return selection_png(model, tokenizer, processor, picture, question, out, DEMO_TEMPLATE)


def _steps(scale):
    """STEPS for a run at `scale` (run() records them; a finished run is matched by them)."""
    return {k: max(2, round(v * scale)) for k, v in STEPS.items()}


def run(out="runs/demo", scale=1.0, seed=0, stream=None, threads=None):
    """Runs the demo into `out`; returns the results dict (also results.json)."""
    stream = stream or sys.stdout
    if threads:
        torch.set_num_threads(threads)
    t_all = time.perf_counter()
    times = {}

    def say(msg):
        print(msg, file=stream, flush=True)

    data_args = dict(DATA, seed=seed)
    if scale != 1.0:
        data_args.update(n_train=max(16, round(DATA["n_train"] * scale)),
                         n_val=max(8, round(DATA["n_val"] * scale)))
    steps = _steps(scale)
    t = time.perf_counter()
    paths = ensure_builtin(os.path.join(out, "data"), workers=min(4, os.cpu_count() or 1),
                           **data_args)
    times["data"] = time.perf_counter() - t
    say(f"[demo] dataset in {paths.folder} ({times['data']:.0f} s)")
    tok = Tokenizer.from_folder(paths.tokenizer_folder)
    proc = ImageProcessor(tile_size=TILE)
    sep = tok.token_to_id(",")
    common = dict(cache_images={})  # one cache: captions and questions share the images
    datasets = {"captions": LlavaDataset(paths.captions_json, paths.image_folder, tok, "plain",
                                         proc, **common),
                "instruct": LlavaDataset(paths.train_json, paths.image_folder, tok,
                                         DEMO_TEMPLATE, proc, **common)}
    val_prompts = LlavaDataset(paths.val_json, paths.image_folder, tok, DEMO_TEMPLATE, proc,
                               prompt=True, **common)
    questions = load_questions(paths.val_json)
    with open(paths.objects_json, encoding="utf-8") as f:
        scenes = json.load(f)
    vocab = tok.max_id + 1

    def collate_fn(samples):
        return collate(samples, pad_id=0)

    results = {}
    tower_file = os.path.join(out, "tower", "model.safetensors")
    t = time.perf_counter()
    if not os.path.isfile(tower_file):
        model = build_model(vocab, sep, seed=seed)
        say(f"[demo] stage 0: pretraining the vision tower ({steps['tower']} steps)")
        pretrain_tower(model.vision_tower, paths, proc, steps["tower"], seed=seed,
                       stream=stream)
        model.vision_tower.save_pretrained(os.path.dirname(tower_file))
    tower_state = load_safetensors(tower_file, prefix="vision_model.")
    tower_state.pop("post_layernorm.weight", None)
    tower_state.pop("post_layernorm.bias", None)
    times["tower"] = time.perf_counter() - t
    t = time.perf_counter()
    llm_file = os.path.join(out, "llm", "model.safetensors")
    # A stand-in pretrained with other word vectors (a run from before RELATED) is redone,
    # and the variants trained on it with it.
    llm_args_file = os.path.join(out, "llm", "stage_args.json")
    llm_args = dict(LLM_ARGS)
    if not os.path.isfile(llm_file) or _read_json(llm_args_file, LLM_ARGS_BEFORE) != llm_args:
        shutil.rmtree(os.path.join(out, "variants"), ignore_errors=True)
        model = build_model(vocab, sep, seed=seed)
        say(f"[demo] stage -1: pretraining the LLM on the dataset's text, pictures as word "
            f"vectors ({steps['llm']} steps)")
        pretrain_llm(model.llm, tok, paths, steps["llm"], seed=seed, stream=stream)
        os.makedirs(os.path.dirname(llm_file), exist_ok=True)
        save_safetensors(model.llm.state_dict(), llm_file)
        with open(llm_args_file, "w") as f:
            json.dump(llm_args, f)
    llm_state = load_safetensors(llm_file)
    times["llm"] = time.perf_counter() - t

    def train_and_score(name, recipe):
        vdir = os.path.join(out, "variants", name)

        def build():
            # every variant is built whole (the global one too: its stages set
            # image_mode), so that SliME's stages Ia and Ib can be copied into it
            model = build_model(vocab, sep, seed=seed)
            load_into(model.vision_tower, tower_state, what="the demo's pretrained tower")
            load_into(model.llm, llm_state, what="the demo's pretrained LLM")
            return model
        t = time.perf_counter()
        # On the CPU even where a GPU is present: the table is the CPU's, bit for bit.
        model = run_recipe(build, recipe, datasets, collate_fn, vdir, seed=seed,
                           log_every=max(1, steps["III"] // 4), stream=stream, device="cpu")
        took = time.perf_counter() - t
        score(name, LABELS[name], model, local=name != "global",
              samples_per_s=_throughput(os.path.join(vdir, recipe[-1]["name"])),
              steps=sum(s["steps"] for s in recipe), train_s=took)
        return model

    def score_at_budget(key, model):
        name, selection, label = BUDGET_ROWS[key]
        trained = model.config
        model.config = dataclasses.replace(trained, selection=selection, top_k=BUDGET)
        score(key, label, model, local=True, samples_per_s=None, steps=results[name]["steps"])
        model.config = trained

    def score(key, label, model, local, samples_per_s, steps, train_s=None):
        """Evaluates `model` as it is configured into results[key] and times[key]."""
        t = time.perf_counter()
        scores = evaluate(model, tok, get_template(DEMO_TEMPLATE), proc, questions,
                          paths.image_folder, batch_size=32, max_new_tokens=3)
        tokens = visual_tokens(model, val_prompts)
        kept = kept_object_tokens(model, val_prompts, scenes, proc) if local else (None, None)
        times[key] = {"eval_s": time.perf_counter() - t}
        if train_s is not None:
            times[key]["train_s"] = train_s
        results[key] = {
            "variant": label, "visual_tokens": tokens, "accuracy": scores["accuracy"],
            "per_type": {k: v["accuracy"] for k, v in scores["per_type"].items()},
            "object_tokens_kept": kept[0], "local_tokens_kept": kept[1],
            "samples_per_s": samples_per_s, "steps": steps}
        say(f"[demo] {label}: accuracy {scores['accuracy']:.3f}, {tokens:.1f} visual tokens"
            + ("" if train_s is None else f" ({train_s:.0f} s)"))

    plan = recipes(steps, top_k=1)
    slime = train_and_score("top_p", plan["top_p"])
    # Equal budget: k = the mean number of local tokens top-p kept on the validation set
    # (visual tokens minus the global view's and the separator's).
    n_global = (TILE // PATCH) ** 2 + 1
    top_k = max(1, round(results["top_p"]["visual_tokens"] - n_global))
    plan = recipes(steps, top_k=top_k)
    for name in ("all_local", "top_k", "global", "patches"):
        # the stages that are the same as SliME's (same data, seed and trainable parts):
        # copied, not rerun
        for shared in [st["name"] for st in plan[name][:-1]]:
            dst = os.path.join(out, "variants", name, shared)
            if not os.path.isdir(dst):
                shutil.copytree(os.path.join(out, "variants", "top_p", shared), dst)
        train_and_score(name, plan[name])
    end_to_end = train_and_score("end_to_end", plan["end_to_end"])
    for key in BUDGET_ROWS:
        score_at_budget(key, end_to_end if BUDGET_ROWS[key][0] == "end_to_end" else slime)

    # The SliME model as users load it, and a picture of its selection on a val question.
    final = os.path.join(out, "slime")
    slime.save_pretrained(final, save_vision_tower=True, processor=proc, template=DEMO_TEMPLATE)
    for f in os.listdir(paths.tokenizer_folder):
        shutil.copy(os.path.join(paths.tokenizer_folder, f), final)
    q = next((q for q in questions if q["question_type"] == "stripes"), questions[0])
    q_image, q_text = os.path.join(paths.image_folder, q["image"]), q["question"].replace(
        "<image>\n", "")
    kept, n_local = _explain(slime, tok, proc, q_image, q_text, os.path.join(out, "explain.png"))
    series = {}
    for name in LABELS:
        for stage in plan[name]:
            path = os.path.join(out, "variants", name, stage["name"], "metrics.jsonl")
            with open(path, encoding="utf-8") as f:
                series[f"{name}/{stage['name']}" if name != "top_p" else stage["name"]] = [
                    (r["step"], r["loss"]) for r in map(json.loads, f)]
        if name == "top_p":
            plot_losses(dict(series), os.path.join(out, "loss.png"),
                        title="SliME (top-p): training loss, stages Ia, Ib, II, III")
    times["total"] = time.perf_counter() - t_all
    report = {"data": data_args, "steps": steps, "top_k": top_k, "seed": seed,
              "llm": llm_args, "variants": results, "times_s": times,
              "explain": {"question": q["question"], "kept": kept, "local": n_local}}
    with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    table = format_table(results)
    with open(os.path.join(out, "results.md"), "w", encoding="utf-8") as f:
        f.write(table + "\n")
    say("")
    say(table)
    say(f"\n[demo] {times['total']:.0f} s in all; wrote {out}/results.md, loss.png, "
        f"explain.png, slime/ (try: slime generate {final} {q_image} '{q_text}')")
    return report


def format_table(results):
    """The markdown table of the variants (results: run()'s "variants")."""
    types = sorted({t for r in results.values() for t in r["per_type"]})
    head = ["variant", "visual tokens / image", "val accuracy"] + [
        f"'{t}' questions" for t in types] + ["shape's local tokens kept (all local)",
                                              "train samples/s"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in list(LABELS) + list(BUDGET_ROWS):
        if name not in results:
            continue
        r = results[name]
        cells = [r["variant"], f"{r['visual_tokens']:.1f}", f"{r['accuracy']:.3f}"] + [
            f"{r['per_type'].get(t, float('nan')):.3f}" for t in types] + [
            "-" if r.get("object_tokens_kept") is None else
            f"{r['object_tokens_kept']:.0%} ({r['local_tokens_kept']:.0%})",
            "-" if r["samples_per_s"] is None else f"{r['samples_per_s']:.0f}"]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


# The paper's three claims as differences between rows of the table (summary over seeds).
# A claim holds on a seed where the difference is above its margin: 0 for "beats"; for
# "keeps", at or above -KEEP (6 of the 600 validation questions, about one standard error).
KEEP = 0.01
CLAIMS = (("local detail beats the global view alone", "all_local", "global", 0.0),
          (f"compression + selection keeps accuracy with fewer tokens (within {KEEP})",
           "top_p", "patches", -KEEP),
          ("the question's choice beats chance at a tight budget", "top_p@budget",
           "random@budget", 0.0),
          ("alternating beats end to end (top-p)", "top_p", "end_to_end", 0.0),
          ("alternating beats end to end (tight budget)", "top_p@budget", "end_to_end@budget",
           0.0))


def _read_json(path, default):
    """The JSON in `path`, or `default` where there is no such file."""
    if not os.path.isfile(path):
        return default
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _holds(difference, margin):
    """A "beats" claim (margin 0) holds above it; a "keeps" one (margin < 0) at it too.
    Rounded: 0.8 - 0.81 is -0.010000000000000009 in floats, and within 0.01."""
    difference = round(difference, 9)
    return difference >= margin if margin < 0 else difference > margin


def _finished(folder, seed, scale):
    """The report of a finished run in `folder` with these arguments, else None."""
    report = _read_json(os.path.join(folder, "results.json"), None)
    if report is None:
        return None
    same = report.get("seed") == seed and report.get("steps") == _steps(scale) and report.get(
        "llm", LLM_ARGS_BEFORE) == LLM_ARGS and set(
        report.get("variants", {})) == set(LABELS) | set(BUDGET_ROWS)
    return report if same else None


def run_seeds(out, seeds, scale=1.0, stream=None, threads=None, jobs=1):
    """The demo once per seed (out/seed_<n>; a finished run with the same arguments is
    read back, not rerun), then the table of every variant over the seeds and the paper's
    claims as per-seed differences: out/summary.md and summary.json. At this scale a
    claim can hold on average and fail on a seed (training puts the asked-about shape's
    tokens high or low in the selection by chance), which one seed's table cannot tell.

    jobs > 1 runs that many seeds at once, each in its own process (`python -m
    slime_core.demo --seed N`, its output in out/seed_<n>/demo.log) with `threads` torch
    threads (default: the CPUs over jobs). A seed's numbers depend on the thread count (how
    sums are rounded), not on jobs. A seed that fails is named with its log after the others
    finish; the summary then covers the seeds that finished, and RuntimeError is raised."""
    stream = stream or sys.stdout
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    reports = {seed: _finished(os.path.join(out, f"seed_{seed}"), seed, scale)
               for seed in seeds}
    failed = {}
    if jobs == 1:
        for seed in seeds:
            reports[seed] = reports[seed] or run(os.path.join(out, f"seed_{seed}"),
                                                 scale=scale, seed=seed, stream=stream,
                                                 threads=threads)
    else:
        todo = [s for s in seeds if reports[s] is None]
        threads = threads or max(1, (os.cpu_count() or 1) // jobs)
        failed = _run_in_processes(out, todo, scale, threads, jobs, stream)
        for seed in todo:
            reports[seed] = _finished(os.path.join(out, f"seed_{seed}"), seed, scale)
            if reports[seed] is None and seed not in failed:  # exit 0, yet no results.json
                failed[seed] = 0
    done = {s: r for s, r in reports.items() if r is not None}
    if done:
        table = format_summary(done)
        with open(os.path.join(out, "summary.md"), "w", encoding="utf-8") as f:
            f.write(table + "\n")
        with open(os.path.join(out, "summary.json"), "w", encoding="utf-8") as f:
            json.dump({str(k): v["variants"] for k, v in done.items()}, f, indent=1)
        print("\n" + table, file=stream, flush=True)
    if failed:
        raise RuntimeError("the demo failed for seed(s) " + ", ".join(
            f"{s} (exit code {rc}; see {os.path.join(out, f'seed_{s}', 'demo.log')})"
            for s, rc in sorted(failed.items()))
            + (f"; {out}/summary.md covers the {len(done)} that finished" if done else ""))
    return reports


def _run_in_processes(out, seeds, scale, threads, jobs, stream):
    """Runs the demo for `seeds`, `jobs` processes at a time; returns {seed: exit code} of
    those that failed. Ctrl-C, SIGTERM or any error here stops the running ones."""
    import signal
    import subprocess
    import threading
    # the children import this very package, wherever it was imported from
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    pending, running, failed, stopping = list(seeds), {}, {}, []

    def stop(signum, frame):
        # noted, and acted on at the top of the loop: raised here, it could land inside
        # Popen, between a child's start and its entry in `running`, and leave it orphaned
        stopping.append(signum)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, stop) if main_thread else None
    try:
        while pending or running:
            if stopping:
                raise SystemExit(128 + stopping[0])  # leaves through the finally below
            while pending and len(running) < jobs:
                seed = pending.pop(0)
                folder = os.path.join(out, f"seed_{seed}")
                os.makedirs(folder, exist_ok=True)
                log = open(os.path.join(folder, "demo.log"), "w", encoding="utf-8")
                cmd = [sys.executable, "-m", "slime_core.demo", "--out", folder, "--seed",
                       str(seed), "--scale", repr(scale), "--threads", str(threads)]
                try:
                    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
                except BaseException:
                    log.close()
                    raise
                running[seed] = (proc, log, time.perf_counter())
                print(f"[demo] seed {seed}: started, {threads} thread(s), log "
                      f"{log.name}", file=stream, flush=True)
            time.sleep(0.2)
            for seed, (proc, log, t0) in list(running.items()):
                if proc.poll() is None:
                    continue
                log.close()
                del running[seed]
                took = time.perf_counter() - t0
                if proc.returncode == 0:
                    print(f"[demo] seed {seed}: finished in {took:.0f} s", file=stream,
                          flush=True)
                else:
                    failed[seed] = proc.returncode
                    print(f"[demo] seed {seed}: FAILED (exit code {proc.returncode}) after "
                          f"{took:.0f} s; see {log.name}", file=stream, flush=True)
    finally:
        for proc, log, _ in running.values():
            proc.kill()
            proc.wait()
            log.close()
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    return failed


def mean_sd(xs):
    """(mean, sample standard deviation; 0 for one value) of a list of numbers."""
    m = statistics.fmean(xs)
    return m, statistics.stdev(xs) if len(xs) > 1 else 0.0


def format_summary(reports):
    """Markdown: each variant's accuracy over the seeds of `reports` ({seed: run()'s
    report}) and how much of the shape its selection kept, then each claim's difference per
    seed, its mean and how many seeds agree."""
    seeds = sorted(reports)
    per = {s: reports[s]["variants"] for s in seeds}

    def kept(name):
        # the asked-about shape's share of kept local tokens: the mean, and the seed where
        # the selection kept it least (a selection that ranks the shape low shows there)
        shape = [per[s][name].get("object_tokens_kept") for s in seeds]
        if None in shape:
            return "-"
        every = statistics.fmean(per[s][name]["local_tokens_kept"] for s in seeds)
        return f"{statistics.fmean(shape):.0%}, lowest {min(shape):.0%} ({every:.0%})"
    head = "| variant | visual tokens | val accuracy, mean (sd) | 'stripes', mean | " + \
        "shape's local tokens kept: mean, lowest seed (all local) | " + \
        " | ".join(f"seed {s}" for s in seeds) + " |"
    rows = [head, "|" + "---|" * (5 + len(seeds))]
    for name in list(LABELS) + list(BUDGET_ROWS):
        if not all(name in per[s] for s in seeds):
            continue
        acc = [per[s][name]["accuracy"] for s in seeds]
        stripes = [per[s][name]["per_type"].get("stripes", float("nan")) for s in seeds]
        m, sd = mean_sd(acc)
        rows.append(f"| {per[seeds[0]][name]['variant']} | "
                    f"{statistics.fmean(per[s][name]['visual_tokens'] for s in seeds):.1f} | "
                    f"{m:.3f} ({sd:.3f}) | {statistics.fmean(stripes):.3f} | {kept(name)} | "
                    + " | ".join(f"{a:.3f}" for a in acc) + " |")
    rows += ["", "| claim (row minus row) | mean difference (standard error) | " +
             " | ".join(f"seed {s}" for s in seeds) + " | seeds where it holds |",
             "|" + "---|" * (3 + len(seeds))]
    for text, a, b, margin in CLAIMS:
        if not all(a in per[s] and b in per[s] for s in seeds):
            continue
        d = [per[s][a]["accuracy"] - per[s][b]["accuracy"] for s in seeds]
        m, sd = mean_sd(d)
        rows.append(f"| {text} | {m:+.3f} ({sd / len(d) ** 0.5:.3f}) | "
                    + " | ".join(f"{x:+.3f}" for x in d)
                    + f" | {sum(_holds(x, margin) for x in d)} of {len(d)} |")
    return "\n".join(rows)


def _seed_list(text):
    """'0,1,2' or '0-5' -> [0, 1, 2] or [0, ..., 5]."""
    seeds = []
    for part in text.split(","):
        lo, dash, hi = part.strip().partition("-")
        if not lo.isdigit() or (dash and not hi.isdigit()):
            raise ValueError(f"--seeds takes numbers and ranges like 0,1,2 or 0-5, got {text!r}")
        seeds += list(range(int(lo), int(hi or lo) + 1))
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds needs distinct seeds, got {text!r}")
    return seeds


def main(argv=None):
    """python -m slime_core.demo [--out DIR] [--scale X] [--seed N | --seeds LIST [--jobs J]]
    [--threads N]"""
    import argparse
    p = argparse.ArgumentParser(prog="slime demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=None,
                   help="output folder (default runs/demo, or runs/demo_seeds with --seeds)")
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiplies images and steps (0.1: a quick smoke run)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", default=None,
                   help="run once per seed (e.g. 0-5; each one a full demo, in OUT/seed_N, "
                        "finished ones read back) and write the table over seeds, "
                        "OUT/summary.md")
    p.add_argument("--jobs", type=int, default=1,
                   help="with --seeds: how many seeds run at once, each in its own process "
                        "(default 1; a seed's numbers depend on --threads, not on --jobs)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: torch's; with --jobs, the CPUs over jobs)")
    args = p.parse_args(argv)
    if not 0 < args.scale <= 10:
        p.error(f"--scale must be in (0, 10], got {args.scale}")
    if args.jobs < 1 or (args.jobs > 1 and args.seeds is None):
        p.error(f"--jobs must be at least 1 and goes with --seeds, got --jobs {args.jobs}"
                + ("" if args.seeds else " without --seeds"))
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be at least 1, got {args.threads}")
    if args.seeds is not None:
        try:
            seeds = _seed_list(args.seeds)
        except ValueError as e:
            p.error(str(e))
        try:
            run_seeds(args.out or "runs/demo_seeds", seeds, scale=args.scale,
                      threads=args.threads, jobs=args.jobs)
        except RuntimeError as e:
            print(f"slime demo: {e}", file=sys.stderr)
            return 1
        return 0
    run(args.out or "runs/demo", scale=args.scale, seed=args.seed, threads=args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
