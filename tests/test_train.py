"""The trainer (issue 12, item 3) and evaluation (item 4) on a tiny random SliME and a
synthetic dataset (tests/train_fixtures.py). Checked: the schedule against transformers'
get_cosine_schedule_with_warmup; recipes configure exactly the parameters they name;
frozen parameters never move and per-component lrs are applied; accumulation equals one
big batch and the loss is the token mean of the global batch; clipping; a resumed run's
losses and weights equal an uninterrupted run's bit for bit; a run killed with SIGKILL while
writing checkpoints resumes from its last complete one; DDP and FSDP2 with 2 processes
(gloo) give the single-process losses and resume across layouts; a whole recipe resumed
mid-way equals one run straight; batched evaluation equals one-at-a-time; the metrics log,
progress lines and the PNG loss curve."""
import copy
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(__file__))
from train_fixtures import (STAGE_NOISELESS, SyntheticDataset, build_model,  # noqa: E402
                            collate)

from slime_core.checkpoint import load_safetensors  # noqa: E402
from slime_core.train import evaluate as ev  # noqa: E402
from slime_core.train.recipes import (RECIPES, Stage, as_stages, configure,  # noqa: E402
                                      scaled)
from slime_core.train.trainer import (Trainer, latest_checkpoint, load_checkpoint,  # noqa
                                      lr_scale, run_recipe, save_checkpoint)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Every part trains and every source of randomness is on (router noise, selection noise):
# resuming must restore the RNG states to give the same losses.
STAGE_NOISY = dict(name="noisy", data="instruct", steps=6, global_batch=4, micro_batch=2,
                   warmup_ratio=0.2, max_length=None,
                   overrides=dict(image_mode="both", connector_expert=-1, selection="top_p",
                                  top_p=0.8, selection_noise=0.1),
                   trainable={"llm": 3e-3, "connector": 1e-2, "local": 1e-2})


@pytest.fixture(autouse=True)
def one_thread():
    # Bit-for-bit comparisons with runs in other processes need the same thread count.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _trainer(tmp, stage=STAGE_NOISY, n=32, **kw):
    kw.setdefault("device", "cpu")  # bit-exact claims are the CPU's, on any machine
    return Trainer(build_model(), stage, SyntheticDataset(n), collate, str(tmp),
                   log_every=0, **kw)


# ----------------------------------------------------------------------------- schedule

@pytest.mark.parametrize("warmup,total", [(0, 1), (1, 1), (3, 100), (7, 10), (0, 9)])
def test_lr_schedule_matches_transformers(warmup, total):
    transformers = pytest.importorskip("transformers")
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = transformers.get_cosine_schedule_with_warmup(opt, warmup, total)
    for step in range(total):
        assert lr_scale(step, warmup, total) == pytest.approx(opt.param_groups[0]["lr"],
                                                              abs=1e-12), step
        opt.step()
        sched.step()


def test_warmup_steps_follow_hf_rounding():
    st = Stage(name="x", trainable={"llm": 1.0}, warmup_ratio=0.03)
    assert [st.warmup_steps(t) for t in (1, 33, 34, 100, 2166)] == [1, 1, 2, 3, 65]
    assert Stage(name="x", trainable={"llm": 1.0}, global_batch=256).total_steps(558128) == 2180
    assert Stage(name="x", trainable={"llm": 1.0}, steps=7).total_steps(10 ** 6) == 7


# ----------------------------------------------------------------------------- recipes

def _trained(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_slime_recipe_trains_what_each_stage_names():
    model = build_model()
    names = {n for n, _ in model.named_parameters()}
    stages = as_stages("slime")
    assert [s.name for s in stages] == ["Ia", "Ib", "II", "III"]
    assert [s.global_batch for s in stages] == [256, 256, 256, 128]
    assert [s.groups()[next(iter(s.trainable))]["lr"] for s in stages] == [1e-3] * 3 + [2e-5]
    fixed = {n for n in names if n.endswith(("pos_embed", "w_noise"))}
    assert fixed and all(s.warmup_ratio == 0.03 and s.weight_decay == 0 for s in stages)

    configure(model, stages[0])
    assert _trained(model) == {n for n in names if n.startswith("mm_projector.projection.")}
    assert model.config.image_mode == "global" and model.mm_projector.expert == 0
    configure(model, stages[1])
    assert _trained(model) == {n for n in names if n.startswith("mm_projector.attn.")} - fixed
    assert model.mm_projector.expert == 1
    configure(model, stages[2])
    assert _trained(model) == {n for n in names if n.startswith("sampler.")} - fixed
    assert model.config.image_mode == "local" and model.config.selection == "none"
    comps = configure(model, stages[3])
    assert _trained(model) == {n for n in names if n.startswith(("llm.", "mm_projector.",
                                                                 "sampler."))} - fixed
    assert "mm_projector.w_gate" in comps["connector"]
    assert model.config.image_mode == "both" and model.config.top_p == 0.95
    assert model.mm_projector.expert == -1
    assert not any(n.startswith("vision_tower.") for n in _trained(model))


def test_tinyllava_recipes_and_partial_vision():
    model = build_model(connector="mlp2x_gelu", image_mode="global")
    base, share = as_stages("tinyllava_base"), as_stages("tinyllava_share")
    configure(model, base[0])
    assert _trained(model) == {n for n, _ in model.named_parameters()
                               if n.startswith("mm_projector.")}
    configure(model, base[1])
    assert _trained(model) == {n for n, _ in model.named_parameters()
                               if n.startswith(("mm_projector.", "llm."))}
    with pytest.raises(ValueError, match="from_layer must be in"):
        configure(model, share[0])  # the tiny tower has 2 layers, the recipe starts at 12
    stage = scaled([RECIPES["tinyllava_share"][0]], trainable={
        "connector": 2e-5, "vision": {"lr": 2e-5, "from_layer": 1}, "llm": 2e-5})[0]
    configure(model, Stage(**stage))
    vision = {n for n in _trained(model) if n.startswith("vision_tower.")}
    assert vision == {n for n, _ in model.named_parameters()
                      if n.startswith("vision_tower.encoder.layers.1.")}
    # "llm.body": the LLM but its input embedding table (a tied lm_head shares it)
    for tied in (False, True):
        model = build_model(connector="mlp2x_gelu", image_mode="global", tie=tied)
        configure(model, Stage(name="x", trainable={"llm.body": 1.0}))
        llm = {n for n, _ in model.named_parameters() if n.startswith("llm.")}
        assert _trained(model) == llm - {"llm.model.embed_tokens.weight"}
        assert not model.llm.embed_tokens.weight.requires_grad
        assert ("llm.lm_head.weight" in llm) is not tied


def test_bad_stages_are_refused():
    with pytest.raises(ValueError, match="unknown component"):
        Stage(name="x", trainable={"projector": 1e-3})
    with pytest.raises(ValueError, match="decide which modules exist"):
        Stage(name="x", trainable={"llm": 1e-3}, overrides={"local_grid": 3})
    with pytest.raises(ValueError, match="from_layer applies to 'vision' only"):
        Stage(name="x", trainable={"llm": {"lr": 1e-3, "from_layer": 2}})
    with pytest.raises(ValueError, match="unique"):
        as_stages([dict(name="a", trainable={"llm": 1.0})] * 2)
    model = build_model(connector="mlp2x_gelu", image_mode="global")
    with pytest.raises(ValueError, match="matches no parameter"):
        configure(model, Stage(name="x", trainable={"connector.mlp": 1.0}))
    with pytest.raises(ValueError, match="belongs to both"):
        configure(build_model(), Stage(name="x", trainable={"connector": 1.0,
                                                            "connector.mlp": 1.0}))
    with pytest.raises(ValueError, match="built global-only"):
        configure(model, Stage(name="x", trainable={"llm": 1.0}, overrides={"image_mode": "both"}))
    with pytest.raises(ValueError, match="must split"):
        _trainer("/nonexistent", dict(STAGE_NOISY, global_batch=5))


def test_scaled_changes_numbers_only():
    demo = scaled("slime", steps=3, global_batch=4, micro_batch=2, max_length=None,
                  warmup_ratio={"III": 0.5})
    assert [s["steps"] for s in demo] == [3] * 4
    assert [s["warmup_ratio"] for s in demo] == [0.03] * 3 + [0.5]
    for a, b in zip(demo, RECIPES["slime"]):
        assert a["trainable"] == b["trainable"] and a["overrides"] == b["overrides"]
    assert RECIPES["slime"][0].get("steps") is None  # the original is untouched


# ----------------------------------------------------------------------------- the loop

def test_frozen_unchanged_trainable_moved_and_lrs(tmp_path):
    stage = dict(STAGE_NOISY, steps=3, trainable={"llm": 5e-3, "connector": 0.0,
                                                  "local": 2e-2})
    tr = _trainer(tmp_path, stage)
    model = tr.model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    groups = {g["name"]: g for g in tr.optimizer.param_groups}
    tr.fit()
    after = dict(model.named_parameters())
    for n, p in after.items():
        moved = not torch.equal(before[n], p.detach())
        if n.startswith(("llm.", "sampler.")) and not n.endswith("pos_embed"):
            assert moved, n  # every trained parameter got an update
        else:
            assert not moved, n  # frozen, fixed, or lr 0
    scale = lr_scale(2, tr.warmup, tr.total_steps)  # the lr of the last step
    assert groups["llm"]["lr"] == pytest.approx(5e-3 * scale)
    assert groups["local"]["lr"] == pytest.approx(2e-2 * scale)
    assert {id(p) for p in groups["llm"]["params"]} == {
        id(p) for n, p in after.items() if n.startswith("llm.")}


def test_loss_is_the_token_mean_of_the_global_batch_and_accumulation_is_exact(tmp_path):
    stage = dict(STAGE_NOISELESS, steps=3)
    accum = _trainer(tmp_path / "a", stage, n=24)            # 4 micro-batches of 2
    assert accum.accum == 4
    big = _trainer(tmp_path / "b", dict(stage, micro_batch=8), n=24)
    assert big.accum == 1
    # The first step's loss by hand: one forward over the 8 samples, mean over all tokens.
    model = build_model()
    configure(model, Stage(**stage))
    model.train()
    batch = collate([accum.dataset[i] for i in list(iter_first(accum.sampler, 8))])
    batch.pop("index")
    with torch.no_grad():
        expected = model(**batch).loss.item()
    la = [m["loss"] for m in accum.fit()]
    lb = [m["loss"] for m in big.fit()]
    assert la[0] == pytest.approx(expected, rel=1e-6)
    # (Weights are not compared: Adam turns rounding-level differences of near-zero
    # gradients into full-size steps; the losses after them are compared instead.)
    np.testing.assert_allclose(la, lb, rtol=2e-6)


def iter_first(sampler, k):
    it = iter(copy.deepcopy(sampler))
    return [next(it) for _ in range(k)]


def test_gradients_are_clipped(tmp_path):
    tr = _trainer(tmp_path, dict(STAGE_NOISY, steps=2, max_grad_norm=1e-3))
    seen = []
    step = tr.optimizer.step

    def spy(*a, **k):
        grads = [p.grad for g in tr.optimizer.param_groups for p in g["params"]
                 if p.grad is not None]
        seen.append(float(torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(g) for g in grads]))))
        return step(*a, **k)

    tr.optimizer.step = spy
    hist = tr.fit()
    assert all(m["grad_norm"] > 1e-2 for m in hist)  # the norm before clipping is reported
    assert seen == pytest.approx([1e-3] * 2, rel=1e-4)


def test_gradient_checkpointing_changes_nothing(tmp_path):
    on = _trainer(tmp_path / "on", dict(STAGE_NOISY, steps=3))
    off = _trainer(tmp_path / "off", dict(STAGE_NOISY, steps=3, grad_checkpointing=False))
    assert all(layer._slime_checkpointed for layer in on.model.llm.model.layers)
    assert not any(hasattr(layer, "_slime_checkpointed") for layer in off.model.llm.model.layers)
    assert [m["loss"] for m in on.fit()] == [m["loss"] for m in off.fit()]
    for p, q in zip(on.model.parameters(), off.model.parameters()):
        assert torch.equal(p, q)


def test_bf16_autocast_step(tmp_path):
    fp32 = _trainer(tmp_path / "a", dict(STAGE_NOISY, steps=2))
    assert not fp32.autocast  # "auto": bf16 on CUDA only
    amp = _trainer(tmp_path / "b", dict(STAGE_NOISY, steps=2), autocast=True)
    la, lb = [m["loss"] for m in fp32.fit()], [m["loss"] for m in amp.fit()]
    np.testing.assert_allclose(lb, la, rtol=3e-2)
    assert la != lb  # it did run in bfloat16
    assert all(p.dtype != torch.bfloat16 or n.endswith(("w_gate", "w_noise"))
               for n, p in amp.model.named_parameters())  # weights stay in their dtypes


def test_sampler_stream_and_state():
    from slime_core.train.sampler import ResumableSampler
    s = ResumableSampler(5, seed=3)
    it = iter(s)
    first = [next(it) for _ in range(7)]
    assert sorted(first[:5]) == list(range(5)) and s.state_dict()["epoch"] == 1
    state = s.state_dict()
    rest = [next(it) for _ in range(6)]
    t = ResumableSampler(5, seed=99)
    t.load_state_dict(state)
    it2 = iter(t)
    assert [next(it2) for _ in range(6)] == rest
    with pytest.raises(ValueError, match="dataset of 5"):
        ResumableSampler(6).load_state_dict(state)
    with pytest.raises(ValueError, match="positive int"):
        ResumableSampler(0)


# ----------------------------------------------------------------------------- checkpoints

def test_resume_is_bit_exact(tmp_path):
    straight = _trainer(tmp_path / "straight")
    ref = [m["loss"] for m in straight.fit()]
    half = _trainer(tmp_path / "resumed", save_every=2)
    first = [m["loss"] for m in half.fit(stop_after=3)]   # checkpoint at 2, step 3 is lost
    torch.manual_seed(12345)  # disturb the RNG: resuming must restore it
    np.random.seed(1)
    resumed = _trainer(tmp_path / "resumed", save_every=2)
    assert resumed.step == 2
    rest = [m["loss"] for m in resumed.fit()]
    assert first == ref[:3]
    assert rest == ref[2:]  # the same floats, not merely close
    for (n, p), q in zip(straight.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(p, q), n
    with open(tmp_path / "resumed" / "metrics.jsonl") as f:
        logged = [json.loads(ln) for ln in f]
    assert [m["step"] for m in logged] == list(range(1, 7))  # step 3 logged once
    assert [m["loss"] for m in logged] == ref
    done = _trainer(tmp_path / "resumed")
    assert done.done and done.fit() == []


def test_loader_workers_read_ahead_and_resume_exactly(tmp_path):
    ref = [m["loss"] for m in _trainer(tmp_path / "main").fit()]
    half = _trainer(tmp_path / "w", save_every=2, num_workers=2, keep=3)
    drawn = []
    half.train_step = lambda f=half.train_step: (f(), drawn.append(
        half.sampler.state_dict()["position"]))[0]
    first = [m["loss"] for m in half.fit(stop_after=3)]
    # The loader drew ahead of the steps; the checkpoint of step 2 holds the position after
    # step 2, and fit() leaves the sampler at the start of step 4.
    assert drawn[1] > 8 and half.sampler.state_dict()["position"] == 12
    state = load_checkpoint(latest_checkpoint(str(tmp_path / "w")))[2]
    assert state["step"] == 2 and state["sampler"]["position"] == 8
    assert first == ref[:3]
    assert [m["loss"] for m in half.fit()] == ref[3:]  # the same trainer goes on
    shutil.rmtree(tmp_path / "w" / "checkpoints" / "step-00000006")
    shutil.rmtree(tmp_path / "w" / "checkpoints" / "step-00000004")
    rest = [m["loss"] for m in _trainer(tmp_path / "w", save_every=2, num_workers=2).fit()]
    assert rest == ref[2:]  # resumed from step 2


def test_checkpoint_contents_and_atomic_folders(tmp_path):
    tr = _trainer(tmp_path, save_every=1, keep=2)
    tr.fit(stop_after=3)
    found = sorted(os.listdir(tmp_path / "checkpoints"))
    assert found == ["step-00000002", "step-00000003"]
    model_state, osd, state = load_checkpoint(latest_checkpoint(str(tmp_path)))
    assert state["step"] == 3 and state["sampler"]["position"] == 12
    assert set(model_state) == set(tr.model.state_dict())
    trained = {n for n, p in tr.model.named_parameters() if p.requires_grad}
    assert set(osd["state"]) == trained
    assert {k for v in osd["state"].values() for k in v} == {"step", "exp_avg", "exp_avg_sq"}
    # A save killed half-way leaves a temporary folder: never taken for a checkpoint,
    # removed by the next save.
    junk = tmp_path / "checkpoints" / ".tmp-step-00000004-999"
    junk.mkdir()
    (junk / "model.safetensors").write_bytes(b"torn")
    assert latest_checkpoint(str(tmp_path)).endswith("step-00000003")
    save_checkpoint(str(tmp_path), 9, {"w": torch.ones(2)}, None, {"step": 9}, keep=5)
    assert not junk.exists()


def test_save_interrupted_between_files_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import slime_core.train.trainer as trainer_mod
    tr = _trainer(tmp_path, save_every=2)
    tr.fit(stop_after=2)
    tr.train_step()
    real, calls = trainer_mod.save_safetensors, []

    def dies_on_the_optimizer_file(*a, **k):
        calls.append(a[1])
        if len(calls) == 2:  # model.safetensors is written, optimizer.safetensors is not
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(trainer_mod, "save_safetensors", dies_on_the_optimizer_file)
    with pytest.raises(KeyboardInterrupt):
        tr.save()
    monkeypatch.undo()
    assert calls[0].endswith("model.safetensors") and ".tmp-step-00000003" in calls[0]
    assert latest_checkpoint(str(tmp_path)).endswith("step-00000002")
    resumed = _trainer(tmp_path, save_every=2)
    assert resumed.step == 2
    ref = [m["loss"] for m in _trainer(tmp_path / "ref").fit()]
    assert [m["loss"] for m in resumed.fit()] == ref[2:]


def test_tied_weights_are_saved_once(tmp_path):
    emb = torch.randn(4, 3)
    path = save_checkpoint(str(tmp_path), 1, {"a": emb, "b": emb, "c": emb.clone()}, None,
                           {"step": 1})
    raw = load_safetensors(os.path.join(path, "model.safetensors"))
    assert set(raw) == {"a", "c"}
    state = load_checkpoint(path)[0]
    assert torch.equal(state["b"], emb) and torch.equal(state["c"], emb)


def test_resume_refuses_another_stage(tmp_path):
    _trainer(tmp_path, dict(STAGE_NOISY, steps=2)).fit()
    with pytest.raises(ValueError, match="checkpoint of stage 'noisy'"):
        _trainer(tmp_path, dict(STAGE_NOISY, name="other"))


def _fixture_cmd(*args):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")  # the CPU's claims, anywhere
    return [sys.executable, os.path.join(ROOT, "tests", "train_fixtures.py"), *args], env


def test_killed_run_resumes_from_its_last_complete_checkpoint(tmp_path):
    out = tmp_path / "run"
    cmd, env = _fixture_cmd("run", str(out), "1000", "1")  # a checkpoint after every step
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    ckpts = out / "checkpoints"
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if latest_checkpoint(str(out)) and int(latest_checkpoint(str(out))[-8:]) >= 2:
                break
            time.sleep(0.05)
        # Then kill it while it writes a checkpoint: as soon as a temporary folder is seen.
        deadline, writing = time.time() + 10, False
        while time.time() < deadline and proc.poll() is None and not writing:
            writing = any(n.startswith(".tmp-") for n in os.listdir(ckpts))
        assert writing and proc.poll() is None, proc.stdout.read().decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    with open(out / "metrics.jsonl") as f:
        logged = [json.loads(ln)["loss"] for ln in f if ln.strip()]
    last = latest_checkpoint(str(out))
    c = int(last[-8:])
    assert c >= 2 and len(logged) >= c
    load_checkpoint(last)  # complete and readable
    stage = dict(STAGE_NOISELESS, steps=1000)
    resumed = Trainer(build_model(), stage, SyntheticDataset(64), collate, str(out),
                      log_every=0, save_every=1, device="cpu")
    assert resumed.step == c
    rest = [m["loss"] for m in resumed.fit(stop_after=c + 2)]
    assert not any(n.startswith(".tmp-") for n in os.listdir(ckpts))  # cleaned by a save
    straight = Trainer(build_model(), stage, SyntheticDataset(64), collate,
                       str(tmp_path / "straight"), log_every=0, device="cpu")
    ref = [m["loss"] for m in straight.fit(stop_after=c + 2)]
    assert logged[:c] == ref[:c]  # the killed run, before its checkpoint
    assert rest == ref[c:]  # resumed: bit for bit
    overlap = min(len(logged), c + 2)
    assert logged[c:overlap] == ref[c:overlap]  # steps it ran after the checkpoint


# ----------------------------------------------------------------------------- 2 processes

@pytest.fixture(scope="module")
def dist_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    Trainer(build_model(), STAGE_NOISELESS, SyntheticDataset(64), collate,
            str(out / "single_half"), save_every=3, log_every=0, device="cpu").fit(stop_after=3)
    torch.set_num_threads(n)
    cmd, env = _fixture_cmd("dist", str(out))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2"] + cmd[1:]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    done = res.stdout.count("leaving the process group")
    assert res.returncode == 0, (f"{done} of 2 ranks trained (2: the failure came as they left "
                                 "the process group or at exit)\n"
                                 + (res.stdout + res.stderr)[-4000:])
    assert done == 2, res.stdout[-4000:]
    with open(out / "losses.json") as f:
        return out, json.load(f)


def test_shutdown_without_a_process_group_returns():
    # one process (no torchrun): nothing to leave, and the process must go on
    from slime_core.train import dist as tdist
    assert not torch.distributed.is_initialized()
    assert tdist.shutdown() is None


def _single_losses(tmp):
    tr = Trainer(build_model(), STAGE_NOISELESS, SyntheticDataset(64), collate, str(tmp),
                 log_every=0, device="cpu")
    return [m["loss"] for m in tr.fit()], tr


@pytest.mark.multiprocess
def test_ddp_and_fsdp_match_one_process_and_resume_across_layouts(dist_run, tmp_path):
    out, losses = dist_run
    single, tr = _single_losses(tmp_path / "single")
    assert len(single) == 6
    # Same global batch, same token-mean loss: equal up to the order of float sums.
    np.testing.assert_allclose(losses["ddp"], single, rtol=1e-6)
    np.testing.assert_allclose(losses["fsdp"], single, rtol=1e-6)
    np.testing.assert_allclose(losses["fsdp_to_ddp"], single[3:], rtol=1e-6)
    np.testing.assert_allclose(losses["single_to_fsdp"], single[3:], rtol=1e-6)
    # Every part of stage III training, the bfloat16 router in its own FSDP unit, with
    # router and selection noise: DDP and FSDP draw the same noise on each rank.
    assert len(losses["fsdp_all"]) == 2 and np.isfinite(losses["fsdp_all"]).all()
    np.testing.assert_allclose(losses["fsdp_all"], losses["ddp_all"], rtol=1e-5)
    # FSDP saved full (unsharded) tensors under the plain model's names.
    sd = load_checkpoint(latest_checkpoint(str(out / "fsdp")))[0]
    own = tr.model.state_dict()
    assert sd.keys() == own.keys()
    assert all(sd[k].shape == own[k].shape and sd[k].dtype == own[k].dtype for k in own)
    for k in own:
        a, b = sd[k], own[k]
        if k.endswith("attn.in_proj_bias"):
            # The key bias adds q.b_k to every score of a query: softmax ignores it, its
            # gradient is zero up to rounding, and Adam turns that rounding into full-size
            # steps of either sign. The query and value biases are compared.
            d = a.shape[0] // 3
            a, b = torch.cat([a[:d], a[2 * d:]]), torch.cat([b[:d], b[2 * d:]])
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=k)
    # Saved by DDP at step 3, resumed by one process.
    folder = tmp_path / "ddp_to_single"
    shutil.copytree(out / "ddp", folder)
    shutil.rmtree(folder / "checkpoints" / "step-00000006")
    resumed = Trainer(build_model(), STAGE_NOISELESS, SyntheticDataset(64), collate,
                      str(folder), log_every=0, device="cpu")
    assert resumed.step == 3
    np.testing.assert_allclose([m["loss"] for m in resumed.fit()], single[3:], rtol=1e-6)


# ----------------------------------------------------------------------------- a recipe

def _demo_recipe():
    return scaled("slime", steps=2, global_batch=4, micro_batch=2, max_length=None)


def test_recipe_runs_in_sequence_and_resumes(tmp_path):
    data = {"captions": SyntheticDataset(16, seed=1), "instruct": SyntheticDataset(16, seed=2)}
    log = io.StringIO()
    straight = run_recipe(build_model, _demo_recipe(), data, collate, str(tmp_path / "a"),
                          stream=log)
    assert straight.config.image_mode == "both" and straight.config.top_p == 0.95
    lines = log.getvalue().splitlines()
    assert len(lines) == 8 and lines[0].startswith("[Ia]      1/2 |")
    assert "tok/s" in lines[-1] and lines[-1].startswith("[III]      2/2")
    # Each stage changed only the parameters it trains.
    prev = build_model().state_dict()
    for st in as_stages(_demo_recipe()):
        now = load_checkpoint(latest_checkpoint(str(tmp_path / "a" / st.name)))[0]
        model = build_model()
        trained = configure(model, st)
        names = {n for v in trained.values() for n in v}
        for k in prev:
            assert torch.equal(prev[k], now[k]) == (k not in names), (st.name, k)
        prev = now
    # Interrupted in stage II, started again: the same final weights.
    assert run_recipe(build_model, _demo_recipe(), data, collate, str(tmp_path / "b"),
                      stream=io.StringIO(), stop_after={"II": 1}) is None
    again = run_recipe(build_model, _demo_recipe(), data, collate, str(tmp_path / "b"),
                       stream=io.StringIO())
    for (k, v), w in zip(straight.state_dict().items(), again.state_dict().values()):
        assert torch.equal(v, w), k
    img = Image.open(tmp_path / "a" / "loss.png")
    assert img.size == (800, 480)


def test_one_command_runs_a_scaled_recipe_end_to_end(tmp_path, tokenizer):
    """python -m slime_core.train on HF-layout folders (tiny CLIP saved by transformers, a
    decoder saved by ours), then python -m slime_core.train.evaluate on its final model."""
    transformers = pytest.importorskip("transformers")
    from slime_core.models.llm import Decoder, DecoderConfig
    from slime_core.train.__main__ import main as train_main
    torch.manual_seed(0)
    vision, llm = tmp_path / "clip", tmp_path / "llm"
    transformers.CLIPVisionModel(transformers.CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        image_size=28, patch_size=7)).save_pretrained(vision)
    Decoder(DecoderConfig(vocab_size=tokenizer.vocab_size, hidden_size=48,
                          intermediate_size=96, num_layers=2, num_heads=4, num_kv_heads=2,
                          bos_token_id=1, eos_token_id=2)).save_pretrained(str(llm))
    out = tmp_path / "run"
    args = ["--recipe", "slime", "--out", str(out), "--vision", str(vision), "--llm", str(llm),
            "--config", "num_heads=4", "--config", "local_grid=2",
            "--config", "separator_token_id=5",
            "--data", "train_fixtures:cli_data", "--data-arg", "n=8", "--set", "steps=1",
            "--set", "global_batch=4", "--set", "micro_batch=2", "--set", "max_length=null",
            "--log-every", "0", "--workers", "1"]
    model = train_main(args)
    assert sorted(os.listdir(out)) == ["II", "III", "Ia", "Ib", "final", "loss.png"]
    assert train_main(args) is not None  # run again: every stage is done, nothing trains
    with open(out / "III" / "metrics.jsonl") as f:
        assert len(f.readlines()) == 1
    # The final folder is a LLaVA-layout checkpoint the evaluation command loads.
    from slime_core.train.evaluate import main as eval_main
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    q = tmp_path / "q.jsonl"
    q.write_text(json.dumps({"question_id": 1, "image": "a.png", "text": "Colour?",
                             "answer": "red", "category": "color"}) + "\n")
    res = eval_main(["--model", str(out / "final"), "--vision", str(vision), "--tokenizer",
                     tokenizer.folder, "--questions", str(q), "--image-folder", str(tmp_path),
                     "--max-new-tokens", "3", "--out", str(tmp_path / "pred.jsonl")])
    assert res["count"] == 1 and set(res["per_type"]) == {"color"}
    from slime_core.models.slime import SlimeModel
    loaded = SlimeModel.from_pretrained(str(out / "final"), vision_tower=str(vision))
    for (k, v), w in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(v, w), k


# ----------------------------------------------------------------------------- logs

def test_metrics_log_progress_and_loss_curve(tmp_path):
    log = io.StringIO()
    tr = Trainer(build_model(), dict(STAGE_NOISY, steps=4), SyntheticDataset(16), collate,
                 str(tmp_path), log_every=2, stream=log, device="cpu")
    hist = tr.fit()
    with open(tmp_path / "metrics.jsonl") as f:
        rows = [json.loads(ln) for ln in f]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [r["loss"] for r in rows] == [m["loss"] for m in hist]
    assert all(r["tokens"] > r["labelled_tokens"] > 0 and r["tokens_per_s"] > 0
               for r in rows)
    lines = log.getvalue().splitlines()
    assert len(lines) == 2 and lines[1].startswith("[noisy]      4/4 |####")
    assert f"loss {rows[3]['loss']:.4f}" in lines[1]
    img = np.asarray(Image.open(tmp_path / "loss.png").convert("RGB"))
    assert img.shape == (480, 800, 3)
    blue = (img[..., 0] == 31) & (img[..., 1] == 119) & (img[..., 2] == 180)
    assert blue.sum() > 50  # the smoothed curve is drawn


# ----------------------------------------------------------------------------- evaluation

def test_normalised_exact_match():
    assert ev.exact_match("  Blue.", "blue")
    assert ev.exact_match("TWO", ["2", "two"])
    assert not ev.exact_match("blue car", "blue")
    assert not ev.exact_match("", "blue")
    assert ev.normalize_answer("Yes. ") == "yes"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from text_fixtures import save_llama
    from slime_core.text import Tokenizer
    folder = save_llama(str(tmp_path_factory.mktemp("tok")))
    tok = Tokenizer.from_folder(folder)
    tok.folder = folder
    return tok


def _eval_model(vocab):
    from slime_core.models.llm import Decoder, DecoderConfig
    model = build_model()
    torch.manual_seed(7)
    model.llm = Decoder(DecoderConfig(vocab_size=vocab, hidden_size=48, intermediate_size=96,
                                      num_layers=2, num_heads=4, num_kv_heads=2,
                                      bos_token_id=1, eos_token_id=2))
    return model.eval()


def test_batched_evaluation_equals_one_at_a_time_and_scores_per_type(tmp_path, tokenizer):
    from slime_core.preprocess import ImageProcessor
    from slime_core.text import get_template
    model = _eval_model(tokenizer.vocab_size)
    tpl = get_template("vicuna_v1")
    proc = ImageProcessor(tile_size=28)
    rng = np.random.default_rng(0)
    folder = tmp_path / "img"
    folder.mkdir()
    questions = []
    for i in range(7):
        w, h = rng.integers(10, 90, 2)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        questions.append({"question_id": i, "image": f"{i}.png",
                          "text": "What color is the car?" + " detail" * i,
                          "category": "color" if i % 2 else "count", "answer": "?"})
    qs = ev.load_questions(questions)
    alone = [ev.generate_answers(model, tokenizer, tpl, proc, [q], str(folder),
                                 batch_size=1, max_new_tokens=6)[0] for q in qs]
    batched = ev.generate_answers(model, tokenizer, tpl, proc, qs, str(folder), batch_size=4,
                                  max_new_tokens=6)
    assert batched == alone and any(alone)
    # A question file whose answers are right for questions 0, 1, 2, 5 (by type: count
    # 0, 2 right of 0, 2, 4, 6; color 1, 5 right of 1, 3, 5), in LLaVA's JSONL format.
    path = tmp_path / "q.jsonl"
    with open(path, "w") as f:
        for q, a in zip(questions, alone):
            right = q["question_id"] in (0, 1, 2, 5)
            f.write(json.dumps(dict(q, answer=(a.upper() + ".") if right else a + " x")) + "\n")
    res = ev.evaluate(model, tokenizer, tpl, proc, str(path), str(folder), batch_size=3,
                      max_new_tokens=6)
    assert res["count"] == 7 and res["correct"] == 4
    assert res["per_type"]["count"]["accuracy"] == 0.5
    assert res["per_type"]["color"]["accuracy"] == pytest.approx(2 / 3)
    assert [r["correct"] for r in res["predictions"]] == [True, True, True, False, False,
                                                          True, False]


def test_cached_generation_equals_recomputing_every_step(tokenizer):
    from slime_core.preprocess import ImageProcessor
    from slime_core.text import build_prompt, get_template, tokenize_prompt
    model = _eval_model(tokenizer.vocab_size)
    # Global-only: with local tokens the text-guided selection would see the new tokens
    # when everything is recomputed, and choose differently.
    model.config.image_mode = "global"
    tpl = get_template("vicuna_v1")
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (45, 31, 3), dtype=np.uint8)
    q = {"question_id": 0, "image": img, "question": "What is shown?", "answer": "x"}
    (answer,) = ev.generate_answers(model, tokenizer, tpl, ImageProcessor(tile_size=28), [q],
                                    max_new_tokens=5)
    ids = tokenize_prompt(tokenizer, build_prompt(tpl, [{"from": "human",
                                                         "value": "<image>\nWhat is shown?"}]))
    px = ImageProcessor(tile_size=28)([img])
    new = []
    with torch.no_grad():
        for _ in range(5):
            x = torch.tensor([ids + new])
            logits = model(x, torch.ones_like(x), px.pixel_values, px.crops_per_image,
                           px.grids_wh).logits
            new.append(int(logits[0, -1].argmax()))
            if new[-1] == tokenizer.eos_id:
                break
    assert len(new) == 5 and answer  # five real tokens, no early stop
    assert answer == tokenizer.decode(new, skip_special_tokens=True).strip()


def test_conversation_format_questions(tmp_path):
    path = tmp_path / "q.json"
    path.write_text(json.dumps([{"id": "a", "image": "x.png", "conversations": [
        {"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": "Red"}]}]))
    (q,) = ev.load_questions(str(path))
    assert q == {"question_id": "a", "image": "x.png", "question": "<image>\nColour?",
                 "answer": "Red", "question_type": "all"}
    with pytest.raises(ValueError, match="no answer field"):
        ev.load_questions([{"image": "x.png", "text": "hi"}])
    with pytest.raises(ValueError, match="no image"):
        ev.load_questions([{"text": "hi", "answer": "a"}])
    with pytest.raises(ValueError, match="3 questions but 2"):
        ev.score(ev.load_questions([{"image": "x", "text": "t", "answer": "a"}] * 3), ["a"] * 2)


def test_a_tokenizer_larger_than_the_embedding_table_is_refused_up_front(tmp_path):
    from slime_core.text import Tokenizer
    from text_fixtures import save_llama
    dataset = SyntheticDataset(4)
    dataset.tokenizer = Tokenizer.from_folder(save_llama(tmp_path / "tok"))  # ~680 ids
    model = build_model()
    assert model.llm.embed_tokens.num_embeddings <= dataset.tokenizer.max_id
    with pytest.raises(ValueError, match="embedding table has only"):
        Trainer(model, STAGE_NOISY, dataset, collate, str(tmp_path / "run"), log_every=0,
                device="cpu")
