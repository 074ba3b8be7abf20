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
"""
import argparse
import dataclasses
import json
import os

import torch

from slime_core import demo
from slime_core.checkpoint import load_into, load_safetensors
from slime_core.data import LlavaDataset
from slime_core.data.builtin import DEMO_TEMPLATE
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
    data = os.path.join(run_dir, "data")
    tok = Tokenizer.from_folder(os.path.join(data, "tokenizer"))
    proc = ImageProcessor(tile_size=demo.TILE)
    val = LlavaDataset(os.path.join(data, "val.json"), os.path.join(data, "images"), tok,
                       DEMO_TEMPLATE, proc, prompt=True, cache_images={})
    with open(os.path.join(data, "objects.json"), encoding="utf-8") as f:
        scenes = json.load(f)
    cells = []
    for _, variant, stage in STAGES:
        model = demo.build_model(tok.max_id + 1, tok.token_to_id(","), seed=seed)
        path = last_checkpoint(os.path.join(run_dir, "variants", variant, stage))
        load_into(model, load_safetensors(path), what=path)
        # as evaluated: both views, every global expert (alignment stages train with fewer)
        shares = []
        for selection in (dict(selection="top_p"), dict(selection="top_k", top_k=demo.BUDGET)):
            model.config = dataclasses.replace(model.config, image_mode="both",
                                               connector_expert=-1, **selection)
            shares.append(demo.kept_object_tokens(model, val, scenes, proc))
        (shape_p, all_p), (shape_k, _) = shares
        cells.append(f"{shape_p:.0%} ({all_p:.0%}) / {shape_k:.1%}")
    return f"| {seed} | " + " | ".join(cells) + " |"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="the folder of `slime demo --seeds` (seed_N inside)")
    p.add_argument("--seeds", default="0", help="e.g. 0-6 or 0,2,5")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    try:
        seeds = demo._seed_list(args.seeds)
    except ValueError as e:
        p.error(str(e))
    if args.threads:
        torch.set_num_threads(args.threads)
    print("shape's local tokens kept: top-p (all local) / top-k 4 (chance about 4%)\n")
    print("| seed | " + " | ".join(label for label, _, _ in STAGES) + " |")
    print("|" + "---|" * (1 + len(STAGES)))
    for seed in seeds:
        print(seed_row(os.path.join(args.out, f"seed_{seed}"), seed), flush=True)


if __name__ == "__main__":
    main()
