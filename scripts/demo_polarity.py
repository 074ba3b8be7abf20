"""Where the demo's selection turns for or against the asked-about shape: before stage III
or in it. Reads the checkpoints of finished `slime demo --seeds` runs; trains nothing.

    PYTHONPATH=. python scripts/demo_polarity.py runs/demo_seeds --seeds 0-6

For each seed, SliME's model after its alignment stages (Ia, Ib, II) and after stage III,
and the end-to-end model after its single alignment stage (I-II) and after stage III, are
scored on the validation prompts with the selection they are evaluated with: top-p 0.95, and
top-k 4 (the demo's tight budget). Each cell is the share of the shape's local tokens kept;
top-p's cells give the share of all local tokens in brackets, top-k 4's chance level is
about 4%. SliME's score has no parameters (cosine with the prompt's word embeddings), so the
share says whether training put the shape's tokens near the question's words.

    PYTHONPATH=. python scripts/demo_polarity.py runs/demo_seeds --seeds 0-6 --parts

--parts splits SliME's score (after stage III) in two: against the prompt's colour, shape
and stripes words, and against its other words (the template, "which", "the", ...). For
the local tokens outside the shape's tile and inside it: the mean of each part, and the
highest word part. Where the outside tokens' other-words part beats what the shape's tile
gets from the question's words, the selection keeps empty tiles.
"""
import argparse
import dataclasses
import functools
import json
import os

import torch

from slime_core import demo
from slime_core.checkpoint import load_into, load_safetensors
from slime_core.data import LlavaDataset, collate
from slime_core.data.builtin import COLOURS, DEMO_TEMPLATE, SHAPES, STRIPES
from slime_core.preprocess import ImageProcessor
from slime_core.text import Tokenizer
from slime_core.train.trainer import latest_checkpoint

STAGES = (("SliME after II", "top_p", "II"), ("SliME after III", "top_p", "III"),
          ("end to end after I-II", "end_to_end", "I-II"),
          ("end to end after III", "end_to_end", "III"))


def last_checkpoint(stage_dir):
    found = latest_checkpoint(stage_dir)
    if found is None:
        raise FileNotFoundError(f"no checkpoint in {stage_dir}/checkpoints: is the run finished?")
    return os.path.join(found, "model.safetensors")


def seed_row(run_dir, seed):
    cells = []
    for _, variant, stage in STAGES:
        _, proc, val, scenes, model = _load(run_dir, seed, variant, stage)
        # as evaluated: both views, every global expert (alignment stages train with fewer)
        shares = []
        for selection in (dict(selection="top_p"), dict(selection="top_k", top_k=demo.BUDGET)):
            model.config = dataclasses.replace(model.config, image_mode="both",
                                               connector_expert=-1, **selection)
            shares.append(demo.kept_object_tokens(model, val, scenes, proc))
        (shape_p, all_p), (shape_k, _) = shares
        cells.append(f"{shape_p:.0%} ({all_p:.0%}) / {shape_k:.1%}")
    return f"| {seed} | " + " | ".join(cells) + " |"


@functools.lru_cache(maxsize=1)
def _data(run_dir):
    # one seed's data for all its stages: its images are resized once, not once a stage
    data = os.path.join(run_dir, "data")
    tok = Tokenizer.from_folder(os.path.join(data, "tokenizer"))
    proc = ImageProcessor(tile_size=demo.TILE)
    val = LlavaDataset(os.path.join(data, "val.json"), os.path.join(data, "images"), tok,
                       DEMO_TEMPLATE, proc, prompt=True, cache_images={})
    with open(os.path.join(data, "objects.json"), encoding="utf-8") as f:
        scenes = json.load(f)
    return tok, proc, val, scenes


def _load(run_dir, seed, variant, stage):
    path = last_checkpoint(os.path.join(run_dir, "variants", variant, stage))
    tok, proc, val, scenes = _data(run_dir)
    model = demo.build_model(tok.max_id + 1, tok.token_to_id(","), seed=seed)
    load_into(model, load_safetensors(path), what=path)
    return tok, proc, val, scenes, model.eval()


@torch.no_grad()
def parts_row(run_dir, seed, batch_size=32):
    tok, proc, val, scenes, model = _load(run_dir, seed, "top_p", "III")
    model.config = dataclasses.replace(model.config, image_mode="both", connector_expert=-1,
                                       selection="none")  # every local token, raster order
    side, n_global = model.local_side, (demo.TILE // demo.PATCH) ** 2 + 1
    words = torch.tensor([tok.token_to_id(w) for w in (*COLOURS, *SHAPES, *STRIPES)])
    table = torch.nn.functional.normalize(model.llm.embed_tokens.weight, dim=-1)
    sums = torch.zeros(2, 2)  # [outside, inside] x [other words' part (mean), words' (max)]
    for start in range(0, len(val), batch_size):
        samples = [val[i] for i in range(start, min(len(val), start + batch_size))]
        b = collate(samples, pad_id=0)
        text, mask = model.selection_text(b["input_ids"], b["attention_mask"])
        image, counts = model.image_tokens(b["pixel_values"], b["crops_per_image"],
                                           b["grids_wh"], text, mask)
        for j, sample in enumerate(samples):
            scene = scenes[val.record(sample["index"])["image"]]
            plan = proc.plan(scene["width"], scene["height"])
            cols = plan.grid_w * side
            tile = [(c // cols // side, c % cols // side)
                    for c in range(int(counts[j]) - n_global)]
            shape = {tile[c] for c in demo.object_cells(plan, scene, side)}
            inside = torch.tensor([t in shape for t in tile])
            local = torch.nn.functional.normalize(image[j, n_global:int(counts[j])], dim=-1)
            ids = b["input_ids"][j][mask[j]]
            is_word = torch.isin(ids, words)
            other = local @ table[ids[~is_word]].sum(0)
            said = local @ table[ids[is_word]].sum(0)
            for k, where in enumerate((~inside, inside)):
                sums[k, 0] += other[where].mean()
                sums[k, 1] += said[where].max()
    m = (sums / len(val)).tolist()
    return f"| {seed} | {m[0][0]:+.2f} | {m[0][1]:+.2f} | {m[1][0]:+.2f} | {m[1][1]:+.2f} |"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="the folder of `slime demo --seeds` (seed_N inside)")
    p.add_argument("--seeds", default="0", help="e.g. 0-6 or 0,2,5")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--parts", action="store_true",
                   help="instead: SliME's score split into the question's words and the rest")
    args = p.parse_args(argv)
    try:
        seeds = demo._seed_list(args.seeds)
    except ValueError as e:
        p.error(str(e))
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.parts:
        print("SliME after stage III, mean over the validation prompts of each token "
              "group's score parts\n")
        print("| seed | outside the shape's tile: other words (mean) | question's words (max) "
              "| the shape's tile: other words (mean) | question's words (max) |")
        print("|---|---|---|---|---|")
        for seed in seeds:
            print(parts_row(os.path.join(args.out, f"seed_{seed}"), seed), flush=True)
        return
    print("shape's local tokens kept: top-p (all local) / top-k 4 (chance about 4%)\n")
    print("| seed | " + " | ".join(label for label, _, _ in STAGES) + " |")
    print("|" + "---|" * (1 + len(STAGES)))
    for seed in seeds:
        print(seed_row(os.path.join(args.out, f"seed_{seed}"), seed), flush=True)


if __name__ == "__main__":
    main()
