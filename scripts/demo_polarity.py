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

    PYTHONPATH=. python scripts/demo_polarity.py runs/demo_seeds --seeds 0-18 --lean

--lean: SliME after stage II and after stage III, per question type. Two numbers each: the
share of the shape's local tokens that the score ranks in the bottom third of the image's
(chance 1/3), and the lean. The lean is the cosine of the mean local token with the sum of
the prompt's other words. Most of a local token is a component all local tokens share, and
the shape's tokens hold less of it. Where it leans toward the prompt's other words, the
empty tokens outscore the shape's.

    PYTHONPATH=. python scripts/demo_polarity.py runs/demo_seeds --seeds 0-18 --words 4,32

--words K,...: SliME after stage III evaluated with K local tokens an image, chosen three
ways: by SliME's score (the whole prompt), by the score against BOS and the question's
colour and shape words alone (an ablation, not SliME's rule: what the prompt's other words
cost the choice), and at random. Each cell: accuracy on the validation questions (the LLM
reads the whole prompt either way) and the share of the shape's local tokens kept.

    PYTHONPATH=. python scripts/demo_polarity.py runs/demo_seeds --seeds 0-18 \
        --budgets 4,8,16,32,64 --json sweep.json

--budgets K,...: the demo's tight-budget rows at other budgets (no training). SliME and the
end-to-end model after stage III, each with its K best local tokens by the question's score,
and SliME with K at random, as `slime demo` scores them at BUDGET. A row per seed, then the
summary over the seeds: mean accuracies, alternating minus end to end and the question's
choice minus random (mean, standard error, seeds ahead). --json writes every cell.
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
from slime_core.text import Tokenizer, get_template
from slime_core.train.evaluate import evaluate, load_questions
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


def _local_tokens(model, val, batch_size=32):
    """Yields, for every validation prompt: its record, its image's local tokens (M, H),
    every one in raster order, and the ids the text-guided selection reads (T,)."""
    model.config = dataclasses.replace(model.config, image_mode="both", connector_expert=-1,
                                       selection="none")
    n_global = (demo.TILE // demo.PATCH) ** 2 + 1
    for start in range(0, len(val), batch_size):
        samples = [val[i] for i in range(start, min(len(val), start + batch_size))]
        b = collate(samples, pad_id=0)
        text, mask = model.selection_text(b["input_ids"], b["attention_mask"])
        image, counts = model.image_tokens(b["pixel_values"], b["crops_per_image"],
                                           b["grids_wh"], text, mask)
        for j, sample in enumerate(samples):
            yield (val.record(sample["index"]), image[j, n_global:int(counts[j])],
                   b["input_ids"][j][mask[j]])


def _unit_words(tok, model):
    """(the unit word vectors (vocab, H), the ids of the colour, shape and stripes words)."""
    words = torch.tensor([tok.token_to_id(w) for w in (*COLOURS, *SHAPES, *STRIPES)])
    return torch.nn.functional.normalize(model.llm.embed_tokens.weight, dim=-1), words


@torch.no_grad()
def parts_row(run_dir, seed):
    tok, proc, val, scenes, model = _load(run_dir, seed, "top_p", "III")
    side = model.local_side
    table, words = _unit_words(tok, model)
    sums = torch.zeros(2, 2)  # [outside, inside] x [other words' part (mean), words' (max)]
    for record, local, ids in _local_tokens(model, val):
        scene = scenes[record["image"]]
        plan = proc.plan(scene["width"], scene["height"])
        cols = plan.grid_w * side
        tile = [(c // cols // side, c % cols // side) for c in range(len(local))]
        shape = {tile[c] for c in demo.object_cells(plan, scene, side)}
        inside = torch.tensor([t in shape for t in tile])
        local = torch.nn.functional.normalize(local, dim=-1)
        is_word = torch.isin(ids, words)
        other = local @ table[ids[~is_word]].sum(0)
        said = local @ table[ids[is_word]].sum(0)
        for k, where in enumerate((~inside, inside)):
            sums[k, 0] += other[where].mean()
            sums[k, 1] += said[where].max()
    m = (sums / len(val)).tolist()
    return f"| {seed} | {m[0][0]:+.2f} | {m[0][1]:+.2f} | {m[1][0]:+.2f} | {m[1][1]:+.2f} |"


LEAN_STAGES = ("II", "III")


@torch.no_grad()
def lean_row(run_dir, seed, types=("colour", "stripes")):
    """SliME after II and after III, per question type: the share of the shape's local
    tokens its score ranks in the bottom third of the image's (chance 1/3), and the lean:
    the cosine of the mean local token (over every validation prompt's image) with the sum
    of the prompt's other words' unit vectors, averaged over the prompts."""
    cells = []
    for stage in LEAN_STAGES:
        tok, proc, val, scenes, model = _load(run_dir, seed, "top_p", stage)
        table, words = _unit_words(tok, model)
        low, total, mean, others = {}, {}, 0.0, {}
        for record, local, ids in _local_tokens(model, val):
            scene = scenes[record["image"]]
            shape = demo.object_cells(proc.plan(scene["width"], scene["height"]), scene,
                                      model.local_side)
            score = torch.nn.functional.normalize(local, dim=-1) @ table[ids].sum(0)
            rank = score.argsort(descending=True).argsort()  # 0: the best
            t = record["question_type"]
            low[t] = low.get(t, 0) + sum(int(rank[c]) * 3 >= 2 * len(score) for c in shape)
            total[t] = total.get(t, 0) + len(shape)
            mean = mean + local.mean(0) / len(val)
            others.setdefault(t, []).append(table[ids[~torch.isin(ids, words)]].sum(0))
        lean = {t: float(torch.nn.functional.cosine_similarity(
            torch.stack(v), mean[None], dim=-1).mean()) for t, v in others.items()}
        cells += [" / ".join(f"{low[t] / max(1, total[t]):.2f}" if t in total else "-"
                             for t in types),
                  " / ".join(f"{lean[t]:+.3f}" if t in lean else "-" for t in types)]
    return f"| {seed} | " + " | ".join(cells) + " |"


WORD_RULES = ("whole prompt", "question's words", "random")


def question_words_text(tok, model):
    """A stand-in for model.selection_text that leaves only BOS and the colour, shape and
    stripes words in the mask: the --words ablation's score."""
    _, words = _unit_words(tok, model)
    said = torch.cat([words, torch.tensor([model.llm.config.bos_token_id])])
    whole = model.selection_text

    def question_words(input_ids, attention_mask=None):
        text, mask = whole(input_ids, attention_mask)
        return text, mask & torch.isin(input_ids, said)
    return question_words


@torch.no_grad()
def words_row(run_dir, seed, budgets):
    """SliME after stage III at each budget (local tokens an image), for each of WORD_RULES:
    (accuracy, share of the shape's local tokens kept); a row of the --words table."""
    tok, proc, val, scenes, model = _load(run_dir, seed, "top_p", "III")
    questions = load_questions(os.path.join(run_dir, "data", "val.json"))
    whole, question_words = model.selection_text, question_words_text(tok, model)
    cells = []
    for k in budgets:
        for rule in WORD_RULES:
            model.selection_text = question_words if rule == "question's words" else whole
            model.config = dataclasses.replace(
                model.config, image_mode="both", connector_expert=-1, top_k=k,
                selection="random" if rule == "random" else "top_k")
            scores = evaluate(model, tok, get_template(DEMO_TEMPLATE), proc, questions,
                              os.path.join(run_dir, "data", "images"), batch_size=32,
                              max_new_tokens=3)
            shape, _ = demo.kept_object_tokens(model, val, scenes, proc)
            cells.append(f"{scores['accuracy']:.3f} ({shape:.0%})")
    return f"| {seed} | " + " | ".join(cells) + " |"


SWEEP = (("SliME, its best", "top_p", "top_k"), ("SliME, at random", "top_p", "random"),
         ("end to end, its best", "end_to_end", "top_k"))


@torch.no_grad()
def budget_cells(run_dir, seed, budgets):
    """{budget: {SWEEP label: {"accuracy", "stripes", "colour", "kept"}}} for one seed."""
    questions = load_questions(os.path.join(run_dir, "data", "val.json"))
    cells = {k: {} for k in budgets}
    for label, variant, selection in SWEEP:
        tok, proc, val, scenes, model = _load(run_dir, seed, variant, "III")
        for k in budgets:
            model.config = dataclasses.replace(model.config, image_mode="both",
                                               connector_expert=-1, top_k=k,
                                               selection=selection)
            scores = evaluate(model, tok, get_template(DEMO_TEMPLATE), proc, questions,
                              os.path.join(run_dir, "data", "images"), batch_size=32,
                              max_new_tokens=3)
            shape, _ = demo.kept_object_tokens(model, val, scenes, proc)
            cells[k][label] = {"accuracy": scores["accuracy"], "kept": shape,
                               **{t: v["accuracy"] for t, v in scores["per_type"].items()}}
    return cells


def budget_summary(per_seed, budgets):
    """The sweep's summary table over seeds (markdown lines)."""
    best, rand, e2e = (label for label, _, _ in SWEEP)
    lines = ["| local tokens kept | " + " | ".join(label for label, _, _ in SWEEP) +
             " | alternating minus end to end (se), seeds ahead | question's choice minus "
             "random (se), seeds ahead |", "|---|---|---|---|---|---|"]
    n = len(per_seed)
    for k in budgets:
        acc = {label: [per_seed[s][k][label]["accuracy"] for s in per_seed]
               for label, _, _ in SWEEP}
        cols = [f"{sum(acc[label]) / n:.3f}" for label, _, _ in SWEEP]
        for a, b in ((best, e2e), (best, rand)):
            d = [x - y for x, y in zip(acc[a], acc[b])]
            mean, sd = demo.mean_sd(d)
            cols.append(f"{mean:+.3f} ({sd / n ** 0.5:.3f}), "
                        f"{sum(demo._holds(x, 0) for x in d)} of {n}")
        lines.append(f"| {k} | " + " | ".join(cols) + " |")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="the folder of `slime demo --seeds` (seed_N inside)")
    p.add_argument("--seeds", default="0", help="e.g. 0-6 or 0,2,5")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--parts", action="store_true",
                   help="instead: SliME's score split into the question's words and the rest")
    p.add_argument("--lean", action="store_true",
                   help="instead: where SliME's score ranks the shape's tokens after II and "
                        "III, and the mean local token's lean toward the prompt's other words")
    p.add_argument("--words", default=None, metavar="K,...",
                   help="instead: SliME at K local tokens chosen by its score, by the "
                        "question's words alone, and at random")
    p.add_argument("--budgets", default=None, metavar="K,...",
                   help="instead: the tight-budget rows (SliME's best, at random, end to "
                        "end's best) at K local tokens")
    p.add_argument("--json", default=None, help="with --budgets: write every cell here")
    args = p.parse_args(argv)
    try:
        seeds = demo._seed_list(args.seeds)
    except ValueError as e:
        p.error(str(e))
    flag = "--budgets" if args.budgets else "--words"
    given = args.budgets or args.words
    try:  # budgets are written as seeds are; the error names the flag, not --seeds
        budgets = demo._seed_list(given) if given else None
    except ValueError:
        p.error(f"{flag} takes numbers and ranges like 4,32 or 4-8, got {given!r}")
    if budgets and min(budgets) < 1:
        p.error(f"{flag} takes budgets of at least 1 local token")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.budgets:
        print("At K local tokens an image: accuracy of " + ", ".join(
            label for label, _, _ in SWEEP) + "\n")
        print("| seed | " + " | ".join(f"{k}: {label}" for k in budgets for label, _, _ in SWEEP)
              + " |")
        print("|" + "---|" * (1 + len(budgets) * len(SWEEP)))
        per_seed = {}
        for seed in seeds:
            cells = budget_cells(os.path.join(args.out, f"seed_{seed}"), seed, budgets)
            per_seed[seed] = cells
            print(f"| {seed} | " + " | ".join(f"{cells[k][label]['accuracy']:.3f}" for k in
                                            budgets for label, _, _ in SWEEP) + " |", flush=True)
        print(f"\nOver {len(seeds)} seeds:\n")
        print("\n".join(budget_summary(per_seed, budgets)))
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump({str(s): {str(k): v for k, v in c.items()} for s, c in
                           per_seed.items()}, f, indent=1)
        return
    if budgets:
        print("SliME after stage III at K local tokens an image, chosen by: " +
              ", ".join(WORD_RULES) + ". Each cell: accuracy (share of the shape's local "
              "tokens kept)\n")
        print("| seed | " + " | ".join(f"{k}: {rule}" for k in budgets for rule in WORD_RULES)
              + " |")
        print("|" + "---|" * (1 + len(budgets) * len(WORD_RULES)))
        for seed in seeds:
            print(words_row(os.path.join(args.out, f"seed_{seed}"), seed, budgets), flush=True)
        return
    if args.lean:
        print("SliME's score, per question type (colour / stripes): the share of the shape's "
              "local tokens ranked in the bottom third (chance 0.33), and the lean of the mean "
              "local token toward the prompt's other words (cosine)\n")
        print("| seed | " + " | ".join(f"after {st}: {what}" for st in LEAN_STAGES for what in
                                      ("bottom third", "lean")) + " |")
        print("|" + "---|" * (1 + 2 * len(LEAN_STAGES)))
        for seed in seeds:
            print(lean_row(os.path.join(args.out, f"seed_{seed}"), seed), flush=True)
        return
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
