"""The `slime` command line.

    slime demo [--out DIR]           the main job: data, a tiny SliME and its ablations
                                     trained on the CPU, one table (slime_core.demo)
    slime info                       what was built and registered (torch, CUDA, ops)
    slime generate CKPT IMAGE PROMPT answer a question about an image with a checkpoint
    slime explain CKPT IMAGE PROMPT  PNG of the grid, the tiles and the local tokens kept
    slime bench [--only OP]          the kernel benchmarks (from a source checkout)
    slime train --recipe R ...       every stage of a training recipe (python -m slime_core.train)
    slime eval --model CKPT ...      exact-match accuracy on a question file

A checkpoint folder is what SlimeModel.save_pretrained writes (config.json with the mm_*
fields, model.safetensors) plus the tokenizer (tokenizer.json, tokenizer_config.json); the
vision tower comes from the folder named in config.json, or --vision-tower.
"""
import argparse
import os
import sys


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


def _existing(path, what):
    if not os.path.exists(path):
        raise CliError(f"{what} {path!r} does not exist")
    return path


def _load(args):
    import torch

    from slime_core.checkpoint import read_config
    from slime_core.models.slime import SlimeModel, processor_for
    from slime_core.text import Tokenizer, get_template
    ckpt = _existing(args.checkpoint, "checkpoint folder")
    tok_dir = args.tokenizer or ckpt
    if not os.path.isfile(os.path.join(tok_dir, "tokenizer.json")):
        raise CliError(f"no tokenizer.json in {tok_dir!r}; pass --tokenizer <folder>")
    model = SlimeModel.from_pretrained(ckpt, vision_tower=args.vision_tower, dtype=torch.float32)
    tok = Tokenizer.from_folder(tok_dir)
    tok.check_fits(model.llm.embed_tokens.num_embeddings)
    if args.template is None:
        args.template = read_config(ckpt).get("slime_core_template", "vicuna_v1")
    try:
        get_template(args.template)
    except ValueError as e:
        raise CliError(str(e)) from None
    return model, tok, processor_for(ckpt)


def cmd_info(args):
    """`slime info`: prints slime_core.info (or its JSON)."""
    from slime_core import info
    return info.main(["--json"] if args.json else [])


def cmd_generate(args):
    """`slime generate`: the model's answer to a prompt about one image."""
    import torch

    from slime_core.explain import prompt_ids
    from slime_core.text import get_template
    from slime_core.train.evaluate import answer_text, stop_ids
    model, tok, proc = _load(args)
    images = proc([_existing(args.image, "image")])
    template = get_template(args.template)
    ids = prompt_ids(tok, args.template, args.prompt)
    stop = stop_ids(tok, template)
    out = model.generate(ids, torch.ones_like(ids), images.pixel_values,
                         images.crops_per_image, images.grids_wh,
                         max_new_tokens=args.max_new_tokens, stop_token_ids=stop,
                         pad_token_id=tok.pad_id if tok.pad_id is not None else 0)
    print(answer_text(tok, template, out[0].tolist()))
    return 0


def cmd_explain(args):
    """`slime explain`: a PNG of the grid, the tiles and the local tokens kept."""
    from PIL import Image

    from slime_core.explain import selection_png
    model, tok, proc = _load(args)
    with Image.open(_existing(args.image, "image")) as im:
        picture = im.convert("RGB")
    try:
        kept, local = selection_png(model, tok, proc, picture, args.prompt, args.out,
                                    args.template)
    except ValueError as e:
        raise CliError(str(e)) from None
    print(f"kept {kept} of {local} local tokens; wrote {args.out}")
    return 0


def cmd_bench(args):
    """`slime bench ...`: python -m bench from the source checkout."""
    import runpy
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not os.path.isfile(os.path.join(repo, "bench", "__main__.py")):
        raise CliError("the benchmarks ship with the source checkout (bench/); run from a clone")
    sys.path.insert(0, repo)
    sys.argv = ["bench"] + args.rest
    runpy.run_module("bench", run_name="__main__")
    return 0


def cmd_demo(args):
    """`slime demo ...`: python -m slime_core.demo with the same arguments."""
    from slime_core.demo import main as demo_main
    return demo_main(args.rest)


def cmd_train(args):
    """`slime train ...`: python -m slime_core.train with the same arguments."""
    from slime_core.train.__main__ import main as train_main
    train_main(args.rest)
    from slime_core.train.dist import shutdown
    shutdown()  # under torchrun: leave the process group, skip gloo's teardown
    return 0


def cmd_eval(args):
    """`slime eval ...`: python -m slime_core.train.evaluate with the same arguments."""
    from slime_core.train.evaluate import main as eval_main
    result = eval_main(args.rest)
    return result if isinstance(result, int) else 0


def _model_args(p):
    p.add_argument("checkpoint", help="checkpoint folder (config.json, model.safetensors, "
                                      "tokenizer.json)")
    p.add_argument("image", help="an image file")
    p.add_argument("prompt", help="the question")
    p.add_argument("--vision-tower", help="vision tower folder (overrides mm_vision_tower)")
    p.add_argument("--tokenizer", help="tokenizer folder (default: the checkpoint folder)")
    p.add_argument("--template", default=None,
                   help="conversation template (plain, vicuna_v1, llama3, phi, bare; default: the "
                        "one the checkpoint records, else vicuna_v1)")


def parser():
    """The argparse parser of the `slime` command."""
    ap = argparse.ArgumentParser(prog="slime", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="what was built and registered")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)
    p = sub.add_parser("generate", help="answer a question about an image")
    _model_args(p)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.set_defaults(func=cmd_generate)
    p = sub.add_parser("explain", help="PNG of the grid, tiles and kept local tokens")
    _model_args(p)
    p.add_argument("--out", default="explain.png", help="PNG to write (default explain.png)")
    p.set_defaults(func=cmd_explain)
    p = sub.add_parser("bench", help="kernel benchmarks (python -m bench ...)")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="arguments for python -m bench")
    p.set_defaults(func=cmd_bench)
    p = sub.add_parser("demo", help="train a tiny SliME and its ablations, print the table "
                                    "(see `slime demo --help`)", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("train", help="train a recipe (see `slime train --help`)", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("eval", help="exact-match evaluation (see `slime eval --help`)",
                       add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_eval)
    return ap


# Subcommands whose arguments belong to another parser, passed through untouched (argparse's
# REMAINDER would swallow neither a leading --help nor other leading options).
_PASSTHROUGH = {"demo": cmd_demo, "train": cmd_train, "eval": cmd_eval, "bench": cmd_bench}


def main(argv=None):
    """Entry point of the `slime` console script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in _PASSTHROUGH:
        try:
            return _PASSTHROUGH[argv[0]](argparse.Namespace(rest=argv[1:]))
        except CliError as e:
            print(f"slime {argv[0]}: {e}", file=sys.stderr)
            return 2
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except CliError as e:
        print(f"slime {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
