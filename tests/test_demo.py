"""The demo (issue 12, item 6), run at a tiny scale: every variant trains, the table and the
files are written, the same seed gives the same table, and the saved SliME model loads and
answers through the command line. The full-scale numbers are in the README (slime demo)."""
import json
import math
import os

import pytest
import torch

from slime_core import cli, demo
from slime_core.data import collate
from slime_core.data.builtin import COLOURS, SHAPES
from slime_core.preprocess.planner import Plan

SCALE = 0.03  # 24 training images, 2 to 12 steps a stage


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    return [demo.run(str(root / f"run{i}"), scale=SCALE, stream=open(os.devnull, "w"))
            for i in range(2)] + [root]


def _deterministic(report):
    return {name: {k: v for k, v in r.items() if k != "samples_per_s"}
            for name, r in report["variants"].items()}


def test_every_variant_and_every_file(runs):
    report, _, root = runs
    out = root / "run0"
    assert set(report["variants"]) == set(demo.LABELS) | set(demo.BUDGET_ROWS)
    for name in ("results.json", "results.md", "loss.png", "explain.png",
                 "slime/config.json", "slime/model.safetensors", "slime/tokenizer.json",
                 "slime/vision_tower/config.json", "tower/model.safetensors"):
        assert (out / name).is_file(), name
    for name in demo.LABELS:
        assert (out / "variants" / name / "loss.png").is_file(), name
    table = (out / "results.md").read_text()
    assert all(label in table for label in demo.LABELS.values())
    assert all(row[2] in table for row in demo.BUDGET_ROWS.values())


def test_visual_token_counts_follow_each_variant(runs):
    """global: the 64 global tokens; all local: + separator + 16 a tile; top-k: exactly k
    local tokens (every validation image has more); top-p: between."""
    report = runs[0]
    v = report["variants"]
    n_global = (demo.TILE // demo.PATCH) ** 2
    assert v["global"]["visual_tokens"] == n_global
    # DATA's aspects give SliME's planner a 3 x 2 grid for every image
    assert v["all_local"]["visual_tokens"] == n_global + 1 + 6 * demo.LOCAL_GRID ** 2
    # uncompressed: every patch of every tile (the tower's 8 x 8 grid)
    assert v["patches"]["visual_tokens"] == n_global + 1 + 6 * n_global
    assert v["patches"]["local_tokens_kept"] == 1.0
    assert v["top_k"]["visual_tokens"] == n_global + 1 + report["top_k"]
    assert n_global + 1 < v["top_p"]["visual_tokens"] <= v["all_local"]["visual_tokens"]
    for key in demo.BUDGET_ROWS:  # the trained models, evaluated with BUDGET local tokens
        assert v[key]["visual_tokens"] == n_global + 1 + demo.BUDGET
        share = demo.BUDGET / (6 * demo.LOCAL_GRID ** 2)
        assert v[key]["local_tokens_kept"] == pytest.approx(share)
        assert v[key]["samples_per_s"] is None
    for name in demo.LABELS:
        r = v[name]
        assert 0.0 <= r["accuracy"] <= 1.0 and r["samples_per_s"] > 0
    # the rows leave their models as trained: the saved SliME selects by top-p
    assert json.loads((runs[2] / "run0" / "slime" / "config.json").read_text())[
        "mm_resampler_topp"] == pytest.approx(0.95)


def test_same_seed_same_table(runs):
    first, second, _ = runs
    assert _deterministic(first) == _deterministic(second)


def test_saved_model_answers_from_the_command_line(runs, capsys):
    _, _, root = runs
    out = root / "run0"
    q = next(r for r in json.loads((out / "data" / "val.json").read_text()))
    image = str(out / "data" / "images" / q["image"])
    prompt = q["conversations"][0]["value"].replace("<image>\n", "")
    # the template it was trained with is recorded, and generate/explain default to it
    config = json.loads((out / "slime" / "config.json").read_text())
    assert config["slime_core_template"] == demo.DEMO_TEMPLATE == "bare"
    assert cli.main(["generate", str(out / "slime"), image, prompt, "--max-new-tokens",
                     "3"]) == 0
    # a 24-image model may answer with the end of answer at once: only the run is checked
    capsys.readouterr()
    png = str(root / "e.png")
    assert cli.main(["explain", str(out / "slime"), image, prompt, "--out", png]) == 0
    assert os.path.isfile(png)


def test_patch_targets_follow_the_boxes_through_both_views():
    """A 224 x 100 image, 2 x 1 tiles of 56 (resized to 112 x 50, pasted 3 px down): the
    labels sit where the boxes land in the global view (x / 4, y * 0.56) and in the tiles."""
    plan = Plan(grid_w=2, grid_h=1, new_w=112, new_h=50, off_x=0, off_y=3, global_view=True,
                tile_size=56)
    scene = {"width": 224, "height": 100, "objects": [
        {"shape": "circle", "colour": "red", "box": [120, 40, 148, 68],
         "dot_colour": "blue", "dot_box": [128, 50, 140, 62]}]}
    t = demo.patch_targets(plan, scene, 7).view(3, 3, 8, 8)
    red, blue = demo.COLOUR_NAMES.index("red") + 1, demo.COLOUR_NAMES.index("blue") + 1
    circle = demo.SHAPES.index("circle") + 1

    def where(crop, what):
        return {tuple(p) for p in (t[crop, what] > 0).nonzero().tolist()}
    # global view: shape box x 30..37, y 22.4..38.1 -> columns 4..5, rows 3..5
    assert where(0, 0) <= {(r, c) for r in (3, 4, 5) for c in (4, 5)} and (4, 4) in where(0, 0)
    # tiles: canvas x 60..74 -> tile 1, x 4..18; y 23..37 -> rows 3..5
    assert where(1, 0) == set() and where(2, 0) and where(2, 0) <= {
        (r, c) for r in (3, 4, 5) for c in (0, 1, 2)}
    dot = where(2, 1)  # canvas x 64..70, y 28..34 -> tile 1 x 8..14, the patch (4, 1)
    assert dot == {(4, 1)}
    assert set(t[2, 0][t[2, 0] > 0].tolist()) == {red}
    assert set(t[2, 1][t[2, 1] > 0].tolist()) == {blue}
    assert set(t[2, 2][t[2, 2] > 0].tolist()) == {circle}


def test_demo_command_help_and_bad_scale(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["demo", "--help"])
    assert e.value.code == 0 and "--scale" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        cli.main(["demo", "--scale", "0"])
    assert e.value.code == 2 and "--scale" in capsys.readouterr().err


def test_bad_seed_lists_are_refused(capsys):
    assert demo._seed_list("0-2,5") == [0, 1, 2, 5]
    for bad in ("", "a", "1-", "0,0", "2-1"):
        with pytest.raises(SystemExit) as e:
            cli.main(["demo", "--seeds", bad])
        assert e.value.code == 2 and "--seeds" in capsys.readouterr().err, bad


def test_seeds_read_back_finished_runs_and_summarise(runs, tmp_path):
    """--seeds: a finished run with the same arguments is read back, not retrained; the
    summary has every row and each claim's per-seed differences."""
    import io
    import shutil
    _, _, root = runs
    shutil.copytree(root / "run0", tmp_path / "seed_0")
    log = io.StringIO()
    reports = demo.run_seeds(str(tmp_path), [0], scale=SCALE, stream=log)
    assert "[demo]" not in log.getvalue()  # nothing trained or evaluated again
    assert reports[0] == json.loads((root / "run0" / "results.json").read_text())
    summary = (tmp_path / "summary.md").read_text()
    assert all(label in summary for label in demo.LABELS.values())
    assert all(text in summary for text, *_ in demo.CLAIMS)
    # another scale is another run: not read back
    assert demo._finished(str(tmp_path / "seed_0"), 0, 2 * SCALE) is None
    assert demo._finished(str(tmp_path / "seed_0"), 1, SCALE) is None
    # a run from before the related word vectors (no "llm" in its report) is another run
    report = json.loads((tmp_path / "seed_0" / "results.json").read_text())
    assert report["llm"] == {"related": demo.RELATED}
    del report["llm"]
    (tmp_path / "seed_0" / "results.json").write_text(json.dumps(report))
    assert demo._finished(str(tmp_path / "seed_0"), 0, SCALE) is None


def test_a_stand_in_llm_from_other_word_vectors_is_redone_with_the_variants(runs, tmp_path):
    """An output folder whose stage -1 LLM has no record of its word vectors (pretrained
    before RELATED) gets stage -1 again and every variant with it, not the old variants'
    checkpoints: the table equals a fresh run's."""
    import io
    import shutil
    first, _, root = runs
    shutil.copytree(root / "run0", tmp_path / "old")
    (tmp_path / "old" / "llm" / "stage_args.json").unlink()
    log = io.StringIO()
    again = demo.run(str(tmp_path / "old"), scale=SCALE, stream=log)
    assert "stage -1" in log.getvalue() and "stage 0" not in log.getvalue()
    assert _deterministic(again) == _deterministic(first)
    assert json.loads((tmp_path / "old" / "llm" / "stage_args.json").read_text()) == {
        "related": demo.RELATED}
    # with the record in place, a finished folder trains nothing again
    log = io.StringIO()
    demo.run(str(tmp_path / "old"), scale=SCALE, stream=log)
    assert "stage -1" not in log.getvalue()


def test_seeds_in_processes_match_one_process_and_name_a_failed_seed(runs, tmp_path):
    """--jobs: seeds run in processes of their own, two at once; a seed's table equals the
    one-process run's at the same thread count; a seed that fails is named with its log,
    the others still finish and are summarised."""
    import io
    report, _, _ = runs
    (tmp_path / "seed_5").mkdir()
    (tmp_path / "seed_5" / "data").write_text("not a folder")  # the dataset cannot be built
    log = io.StringIO()
    with pytest.raises(RuntimeError, match=r"seed\(s\) 5 \(exit code 1; see .*seed_5.demo\.log"):
        demo.run_seeds(str(tmp_path), [0, 5], scale=SCALE, stream=log,
                       threads=torch.get_num_threads(), jobs=2)
    assert "seed 0: finished" in log.getvalue() and "seed 5: FAILED" in log.getvalue()
    assert "Traceback" in (tmp_path / "seed_5" / "demo.log").read_text()
    child = json.loads((tmp_path / "seed_0" / "results.json").read_text())
    assert _deterministic(child) == _deterministic(report)
    summary = (tmp_path / "summary.md").read_text()
    assert "| seed 0 |" in summary and "seed 5" not in summary


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the processes through /proc")
def test_seeds_in_processes_stop_with_the_parent(tmp_path):
    """SIGTERM to `slime demo --seeds ... --jobs 2` stops the seeds' processes too."""
    import signal
    import subprocess
    import sys
    import time

    def children():
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().decode(errors="replace")
            except OSError:
                continue
            if str(tmp_path) in cmd and "--seed\0" in cmd:
                found.append(int(pid))
        return found
    parent = subprocess.Popen([sys.executable, "-m", "slime_core.demo", "--seeds", "0-1",
                               "--jobs", "2", "--threads", "1", "--scale", str(SCALE),
                               "--out", str(tmp_path)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 60
        while len(children()) < 2 and time.time() < deadline and parent.poll() is None:
            time.sleep(0.2)
        running = children()
        assert len(running) == 2, running
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=60) == 128 + signal.SIGTERM
        assert not [pid for pid in running if os.path.exists(f"/proc/{pid}")], running
    finally:
        if parent.poll() is None:
            os.killpg(parent.pid, signal.SIGKILL)
        for pid in children():
            os.kill(pid, signal.SIGKILL)


def test_bad_jobs_and_threads_are_refused(capsys):
    for bad in (["--seeds", "0-1", "--jobs", "0"], ["--jobs", "2"],
                ["--seeds", "0", "--threads", "0"]):
        with pytest.raises(SystemExit) as e:
            cli.main(["demo", *bad])
        err = capsys.readouterr().err
        assert e.value.code == 2 and ("--jobs" in err or "--threads" in err), (bad, err)


def test_polarity_script_reads_a_finished_run(runs):
    """scripts/demo_polarity.py on the tiny run: the shares of the shape's tokens kept per
    stage, and SliME's score split into the question's words and the rest."""
    import importlib.util
    import re
    path = os.path.join(os.path.dirname(__file__), "..", "scripts", "demo_polarity.py")
    spec = importlib.util.spec_from_file_location("demo_polarity", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    run = str(runs[2] / "run0")
    row = script.seed_row(run, 0)
    assert re.fullmatch(r"\| 0 \|( \d+% \(\d+%\) / \d+\.\d% \|){4}", row), row
    parts = script.parts_row(run, 0)
    assert re.fullmatch(r"\| 0 \|( [+-]\d\.\d\d \|){4}", parts), parts
    lean = script.lean_row(run, 0)
    # both question types asked: a share in [0, 1] and a cosine for each, after II and III
    assert re.fullmatch(r"\| 0 \|( [01]\.\d\d / [01]\.\d\d \| [+-][01]\.\d{3} / "
                        r"[+-][01]\.\d{3} \|){2}", lean), lean
    tok, _, val, _, model = script._load(run, 0, "top_p", "III")
    ids = collate([val[0]], pad_id=0)["input_ids"]
    _, mask = script.question_words_text(tok, model)(ids)
    kept = ids[mask].tolist()
    # "the stripes on the green circle?" -> BOS, green, circle; "What colour is the circle?"
    # -> BOS, circle
    said = {tok.token_to_id(w) for w in (*COLOURS, *SHAPES)}
    assert kept[0] == tok.bos_id and set(kept[1:]) <= said and len(kept) >= 2, kept
    assert len(kept) < int((ids >= 0).sum()) - 1, kept  # the other words are left out
    words = script.words_row(run, 0, [4])
    # accuracy and the shape's share for SliME's score, the question's words, random
    assert re.fullmatch(r"\| 0 \|( [01]\.\d{3} \(\d+%\) \|){3}", words), words
    # the budget sweep at the demo's own budget scores what the run's budget rows scored
    cells = script.budget_cells(run, 0, [demo.BUDGET])[demo.BUDGET]
    with open(os.path.join(run, "results.json"), encoding="utf-8") as f:
        rows = json.load(f)["variants"]
    for (label, _, _), key in zip(script.SWEEP, demo.BUDGET_ROWS):
        assert cells[label]["accuracy"] == rows[key]["accuracy"], (label, key)
        assert 0 <= cells[label]["kept"] <= 1 and set(cells[label]) >= {"colour", "stripes"}
    with pytest.raises(FileNotFoundError, match="is the run finished"):
        script.seed_row(str(runs[2] / "nothing_here"), 0)
    # the sweep's summary: means, differences with their standard error, seeds ahead
    best, rand, e2e = (label for label, _, _ in script.SWEEP)
    per_seed = {s: {8: {best: {"accuracy": b}, rand: {"accuracy": r}, e2e: {"accuracy": e}}}
                for s, (b, r, e) in enumerate([(0.9, 0.7, 0.8), (0.7, 0.7, 0.9)])}
    line = script.budget_summary(per_seed, [8])[-1]
    assert line == "| 8 | 0.800 | 0.700 | 0.850 | -0.050 (0.150), 1 of 2 | +0.100 (0.100), 1 of 2 |"


def test_summary_differences_and_counts():
    def report(**acc):
        return {"variants": {k: {"variant": k, "visual_tokens": 1.0, "accuracy": a,
                                 "per_type": {"stripes": a}} for k, a in acc.items()}}
    rows = dict(all_local=0.9, global_=0.5, top_p=0.8, end_to_end=0.7)
    one = report(**{k.rstrip("_"): v for k, v in rows.items()}, patches=0.81,
                 **{"top_p@budget": 0.6, "random@budget": 0.7, "end_to_end@budget": 0.5})
    two = report(**{k.rstrip("_"): v for k, v in rows.items()}, patches=0.83,
                 **{"top_p@budget": 0.8, "random@budget": 0.5, "end_to_end@budget": 0.9})
    table = demo.format_summary({3: one, 7: two})
    line = {row.split(" | ")[0].lstrip("| "): row for row in table.splitlines()}
    assert line["the question's choice beats chance at a tight budget"].endswith(
        "+0.100 (0.200) | -0.100 | +0.300 | 1 of 2 |")
    assert line["local detail beats the global view alone"].endswith(
        "+0.400 (0.000) | +0.400 | +0.400 | 2 of 2 |")
    # "keeps" holds within demo.KEEP, its edge included: -0.010 does, -0.030 does not
    keep = next(text for text, _, b, _ in demo.CLAIMS if b == "patches")
    assert line[keep].endswith("-0.020 (0.010) | -0.010 | -0.030 | 1 of 2 |")
    assert "| seed 3 | seed 7 |" in table
    # the shape's share of kept tokens: mean and lowest seed, "-" where a run has none
    three = {k: dict(v, object_tokens_kept=0.2, local_tokens_kept=0.9)
             for k, v in one["variants"].items()}
    seven = {k: dict(v, object_tokens_kept=0.6, local_tokens_kept=0.7)
             for k, v in two["variants"].items()}
    line = {row.split(" | ")[0].lstrip("| "): row
            for row in demo.format_summary({3: {"variants": three},
                                            7: {"variants": seven}}).splitlines()}
    assert "| 40%, lowest 20% (80%) |" in line["end_to_end"]
    assert "| 0.700 (0.000) | 0.700 | - |" in table.splitlines()[6]


def test_tower_pretraining_learns_colours_in_both_views(tmp_path):
    """Stage 0 on a few images: the per-patch colour loss falls (the labels are readable),
    and the tower comes back frozen."""
    from slime_core.data import ensure_builtin
    from slime_core.preprocess import ImageProcessor
    paths = ensure_builtin(str(tmp_path), **dict(demo.DATA, n_train=16, n_val=2))
    model = demo.build_model(80, 6)
    losses = demo.pretrain_tower(model.vision_tower, paths, ImageProcessor(tile_size=demo.TILE),
                                 60, images_per_step=8)
    assert sum(losses[-10:]) < 0.8 * sum(losses[:10])
    assert not any(p.requires_grad for p in model.vision_tower.parameters())
    assert torch.isfinite(torch.tensor(losses)).all()


def test_object_cells_follow_the_box_onto_the_local_grid():
    """2 x 1 tiles of 56, 4 x 4 tokens a tile (cells of 14 px): a box that lands on canvas
    x 60..74, y 23..37 covers columns 4..5 and rows 1..2 of the 8-wide token grid."""
    plan = Plan(grid_w=2, grid_h=1, new_w=112, new_h=50, off_x=0, off_y=3, global_view=True,
                tile_size=56)
    scene = {"width": 224, "height": 100, "objects": [
        {"shape": "circle", "colour": "red", "box": [120, 40, 148, 68]}]}
    assert demo.object_cells(plan, scene, 4) == {1 * 8 + 4, 1 * 8 + 5, 2 * 8 + 4, 2 * 8 + 5}
    # a box at the very edge stays on the grid
    scene["objects"][0]["box"] = [200, 80, 224, 100]
    assert all(0 <= c < 8 * 4 for c in demo.object_cells(plan, scene, 4))


def test_llm_pretraining_reads_a_pictures_words_where_the_image_goes(tmp_path):
    """Stage -1's text: each record tokenized as the trainer does, split at the placeholder,
    with what the picture holds (each object's colour, shape, stripes and digit from
    objects.json, whatever the captions say; no loss on them) to go in its place among
    fillers; the loss falls."""
    from slime_core.data import ensure_builtin
    from slime_core.text import IGNORE_INDEX, IMAGE_TOKEN_INDEX, Tokenizer
    paths = ensure_builtin(str(tmp_path), **dict(demo.DATA, n_train=16, n_val=2))
    tok = Tokenizer.from_folder(paths.tokenizer_folder)
    records = demo.text_stand_ins(paths, tok)
    captions = json.loads(open(paths.captions_json).read())
    train = json.loads(open(paths.train_json).read())
    assert len(records) == len(captions) + len(train)
    (ids0, labels0), (words,), (ids1, labels1) = records[0]
    caption = captions[0]["conversations"][1]["value"]
    scene = json.loads(open(paths.objects_json).read())[captions[0]["image"]]
    (o,) = scene["objects"]
    assert tok.decode(words).split() == [o["colour"], o["shape"], o["stripes"], o["digit"]]
    assert caption == (f"picture: {o['colour']} {o['shape']} with {o['stripes']} stripes, "
                       f"digit {o['digit']}.")
    # an instruction record on the same image gets the same picture
    same = [r for r, t in zip(records[len(captions):], train)
            if t["image"] == captions[0]["image"]]
    assert same and all(r[1] == [words] for r in same)
    # captions that leave the stripes out (caption_details=False) leave the picture whole
    brief = ensure_builtin(str(tmp_path / "brief"), **dict(demo.DATA, n_train=16, n_val=2,
                                                          caption_details=False))
    brief_tok = Tokenizer.from_folder(brief.tokenizer_folder)
    assert "stripes" not in open(brief.captions_json).read()
    # (and the same token ids: the tokenizer learns the detailed captions either way)
    assert brief_tok.max_id == tok.max_id
    assert [r[1] for r in demo.text_stand_ins(brief, brief_tok)] == [r[1] for r in records]
    for ids, labels in ((ids0, labels0), (ids1, labels1)):
        assert IMAGE_TOKEN_INDEX not in ids.tolist() and ids.shape == labels.shape
    # "plain": BOS before the picture, then the caption to generate, all of it labels
    assert (labels0 == IGNORE_INDEX).all()
    cap = tok.encode(caption, add_special_tokens=False)
    assert ids1.tolist()[:len(cap)] == cap and labels1.tolist()[:len(cap)] == cap
    # an instruction record: the question after the picture, no loss on it; the answer's
    (_, _), words2, (ids2, labels2) = records[len(captions)]
    assert (labels2 != IGNORE_INDEX).sum() > 0 and (labels2 == IGNORE_INDEX).sum() > 0
    model = demo.build_model(tok.max_id + 1, tok.token_to_id(","))
    losses = demo.pretrain_llm(model.llm, tok, paths, 40, batch=8)
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5])
    # the word vectors: unit rows at the N(0, 0.02) table's norm, fixed in training, each
    # orthogonal to every other but for the related words: a colour name has cosine 0.3
    # with "colour", a way of the stripes with "stripes", two of one kind 0.09
    table = model.llm.embed_tokens.weight.detach()
    d = table.shape[1]
    gram = table @ table.T / (0.02 ** 2 * d)
    expected = torch.eye(len(table))
    for category, values in (("colour", demo.COLOUR_NAMES), ("stripes", demo.STRIPES)):
        c, vs = tok.token_to_id(category), [tok.token_to_id(v) for v in values]
        assert c is not None and None not in vs and len(vs) >= 3
        for v in vs:
            expected[c, v] = expected[v, c] = demo.RELATED
            for w in vs:
                if w != v:
                    expected[v, w] = demo.RELATED ** 2
    assert demo.RELATED == 0.3
    torch.testing.assert_close(gram, expected, atol=1e-5, rtol=0)
    # related=0: every word orthogonal; a cosine outside [0, 1) is refused by name
    q = torch.linalg.qr(torch.randn(d, len(table), dtype=torch.float64))[0].T.float()
    plain = q.clone()
    assert demo.related_words(plain, tok, 0.0) == {}
    torch.testing.assert_close(plain @ plain.T, torch.eye(len(table)), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"cosine must lie in \[0, 1\), got 1.0"):
        demo.related_words(q.clone(), tok, 1.0)

    # words the vocabulary lacks are left out: a value alone, or a category and its values
    class Lacking:
        def token_to_id(self, word):
            return None if word in ("diagonal", "colour") else tok.token_to_id(word)
    some = q.clone()
    assert demo.related_words(some, Lacking(), 0.3) == {"stripes": ["horizontal", "vertical"]}
    h, v, s, r = (tok.token_to_id(w) for w in ("horizontal", "vertical", "stripes", "red"))
    g = some @ some.T
    assert abs(g[h, s] - 0.3) < 1e-5 and abs(g[h, v] - 0.09) < 1e-5
    assert abs(g[tok.token_to_id("diagonal"), s]) < 1e-5 and abs(g[r, r] - 1) < 1e-5
    assert abs(g[r, tok.token_to_id("colour")]) < 1e-5
    # learned instead (orthogonal=False): the table trains and is no longer orthonormal
    other = demo.build_model(tok.max_id + 1, tok.token_to_id(","))
    before = other.llm.embed_tokens.weight.detach().clone()
    demo.pretrain_llm(other.llm, tok, paths, 3, batch=4, orthogonal=False, noise=0.0)
    assert not torch.equal(other.llm.embed_tokens.weight.detach(), before)
    wide = demo.Decoder(demo.DecoderConfig(vocab_size=d + 1, hidden_size=d, intermediate_size=8,
                                           num_layers=1, num_heads=4, num_kv_heads=4))
    with pytest.raises(ValueError, match="vocab .* <= hidden size"):
        demo.pretrain_llm(wide, tok, paths, 1, batch=2)


def test_llm_pretraining_lays_out_every_object_of_a_picture(tmp_path, monkeypatch):
    """A picture of several objects (the 3 x 3 grid, two shapes a cell): one list of words
    per object, and stage -1 puts each object's own vector at 1 to 4 places among the
    fillers, the vectors of the picture's objects and nothing else."""
    from slime_core.data import ensure_builtin
    from slime_core.text import Tokenizer
    paths = ensure_builtin(str(tmp_path), seed=1, n_train=3, n_val=1, image_width=(600, 800),
                           detail_frac=0.03, shapes_per_cell=2, stripes=True,
                           question_types=("stripes",), questions_per_image=1)
    tok = Tokenizer.from_folder(paths.tokenizer_folder)
    scenes = json.loads(open(paths.objects_json).read())
    records = demo.text_stand_ins(paths, tok)
    captions = json.loads(open(paths.captions_json).read())
    picture = records[0][1]
    # every word of every object, but those the dataset's text never uses
    assert [tok.decode(w).split() for w in picture] == \
        [[w for w in demo._object_words(o) if tok.token_to_id(w) is not None]
         for o in scenes[captions[0]["image"]]["objects"]]
    assert sum(map(len, picture)) > 3 * 18
    assert len(picture) == 18
    model = demo.build_model(tok.max_id + 1, tok.token_to_id(","))
    seen = []
    forward = model.llm.forward

    def spy(*args, inputs_embeds=None, **kwargs):
        seen.append(inputs_embeds.detach().clone())
        return forward(*args, inputs_embeds=inputs_embeds, **kwargs)
    monkeypatch.setattr(model.llm, "forward", spy)
    losses = demo.pretrain_llm(model.llm, tok, paths, 2, batch=4, noise=0.0)
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    table = model.llm.embed_tokens.weight.detach()
    vector = {tuple(w): table[w].sum(0) / len(w) ** 0.5 for r in records for w in r[1]}
    pictures = {tuple(map(tuple, r[1])) for r in records}
    for row in seen[0]:  # the first step's rows, before any update
        placed = [w for w, v in vector.items() for x in row if torch.equal(x, v)]
        # one picture's objects, each at 1 to 4 places
        assert any(set(placed) == set(p) and all(1 <= placed.count(w) <= 4 for w in p)
                   for p in pictures), placed


def test_llm_stand_in_learns_the_quadrant_where_questions_ask_for(tmp_path):
    """With question type "where", stage -1's picture of an object holds its quadrant's
    words too (objects.json's), so that the LLM can answer "Where is the cross?" from it."""
    from slime_core.data import ensure_builtin
    from slime_core.text import Tokenizer
    paths = ensure_builtin(str(tmp_path), seed=2, n_train=4, n_val=1, image_width=(600, 800),
                           detail_frac=0.07, shapes_per_cell=1, stripes=True, single=True,
                           question_types=("where", "stripes"), caption_cells=1)
    tok = Tokenizer.from_folder(paths.tokenizer_folder)
    scenes = json.loads(open(paths.objects_json).read())
    captions = json.loads(open(paths.captions_json).read())
    for (_, picture, _), caption in zip(demo.text_stand_ins(paths, tok), captions):
        (o,) = scenes[caption["image"]]["objects"]
        assert [tok.decode(w).split() for w in picture] == [
            [o["colour"], o["shape"], o["stripes"], o["digit"], *o["quadrant"].split()]]
