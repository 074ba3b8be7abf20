"""One command for a whole recipe, every stage in order, resuming where a run stopped:

    python -m slime_core.train --recipe slime --out runs/slime7b \\
        --vision clip-vit-large-patch14-336 --llm vicuna-7b-v1.5 \\
        --data slime_core.data:recipe_datasets --data-arg captions=blip_558k.json ...
    torchrun --nproc_per_node 8 -m slime_core.train ... --layout fsdp
    python -m slime_core.train ... --set steps=20 --set global_batch=8 --set micro_batch=2

--data names a function (module:function) returning ({"captions": dataset, "instruct":
dataset}, collate), called with the --data-arg key=value pairs; --model may name a function
returning a fresh SlimeModel instead of --vision/--llm folders. --set changes a number in
every stage (recipes.scaled); --config sets SlimeConfig fields of the model built.
At the end rank 0 writes the final model in the LLaVA layout to OUT/final.
"""
import argparse
import importlib
import json
import os
import sys

import torch

from slime_core.models.llm import Decoder
from slime_core.models.slime import SlimeConfig, SlimeModel
from slime_core.models.vision import VisionTower
from slime_core.train import dist as tdist
from slime_core.train.recipes import RECIPES, scaled
from slime_core.train.trainer import run_recipe

# The model each recipe trains, unless --config says otherwise.
_MODEL_DEFAULTS = {"slime": dict(connector="gated", image_mode="both"),
                   "tinyllava_base": dict(connector="mlp2x_gelu", image_mode="global"),
                   "tinyllava_share": dict(connector="mlp2x_gelu", image_mode="global")}


def _value(text):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _pairs(items, what):
    out = {}
    for item in items or []:
        if "=" not in item:
            raise SystemExit(f"{what} takes key=value, got {item!r}")
        k, v = item.split("=", 1)
        out[k] = _value(v)
    return out


def _function(spec, what):
    if ":" not in spec:
        raise SystemExit(f"{what} must be module:function, got {spec!r}")
    module, name = spec.split(":", 1)
    return getattr(importlib.import_module(module), name)


def parser():
    p = argparse.ArgumentParser(prog="python -m slime_core.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", required=True, choices=sorted(RECIPES))
    p.add_argument("--out", required=True, help="run folder (one subfolder per stage)")
    p.add_argument("--data", required=True, help="module:function -> (datasets, collate)")
    p.add_argument("--data-arg", action="append", help="key=value for the data function")
    p.add_argument("--model", help="module:function -> a fresh SlimeModel")
    p.add_argument("--vision", help="HF CLIP/SigLIP folder")
    p.add_argument("--llm", help="HF decoder folder")
    p.add_argument("--config", action="append", help="SlimeConfig field=value")
    p.add_argument("--set", action="append", help="stage field=value, every stage")
    p.add_argument("--layout", default="single", choices=tdist.LAYOUTS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-every", type=int, default=None)
    p.add_argument("--keep", type=int, default=2)
    p.add_argument("--log-every", type=int, default=1)
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    tdist.init_distributed()
    if args.model:
        build = _function(args.model, "--model")
    elif args.vision and args.llm:
        cfg = dict(_MODEL_DEFAULTS[args.recipe], **_pairs(args.config, "--config"))

        def build():
            torch.manual_seed(args.seed)  # the new modules start the same on every rank
            return SlimeModel(SlimeConfig(**cfg), VisionTower.from_pretrained(args.vision),
                              Decoder.from_pretrained(args.llm))
    else:
        raise SystemExit("give --model, or both --vision and --llm")
    datasets, collate = _function(args.data, "--data")(**_pairs(args.data_arg, "--data-arg"))
    recipe = scaled(args.recipe, **_pairs(args.set, "--set"))
    model = run_recipe(build, recipe, datasets, collate, args.out, layout=args.layout,
                       seed=args.seed, save_every=args.save_every, keep=args.keep,
                       log_every=args.log_every, num_workers=args.workers)
    if tdist.rank_world()[0] == 0 and model is not None:
        model.save_pretrained(os.path.join(args.out, "final"), vision_tower_path=args.vision)
        print(f"final model: {os.path.join(args.out, 'final')}", flush=True)
    return model


if __name__ == "__main__":
    main(sys.argv[1:])
    tdist.shutdown()  # under torchrun: leave the process group, skip gloo's teardown
