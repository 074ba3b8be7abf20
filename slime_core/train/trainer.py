"""The training loop: one stage of a recipe (Trainer) and a whole recipe (run_recipe).

    trainer = Trainer(model, stage, dataset, collate, out_dir="runs/x/Ia", layout="ddp")
    trainer.fit()            # resumes from out_dir's latest checkpoint if there is one

Each optimizer step reads `global_batch` indices from the sampler, gives each process its
contiguous share, splits that into micro-batches of `micro_batch` and accumulates. The loss
is the mean over every labelled token of the global batch (not a mean of micro-batch
means), so one process, DDP and FSDP with the same global batch compute the same step, up
to the order of floating-point sums. Backward runs on each micro-batch's summed loss; the
gradients are divided by the global token count once all are in.

A checkpoint (out_dir/checkpoints/step-NNNNNNNN/) holds
    model.safetensors      the full model state dict (unsharded, unwrapped names)
    optimizer.safetensors  AdamW's moments and step counts, keyed by parameter name
    trainer_state.json     step, schedule, sampler state, every process's RNG states, the
                           optimizer's param groups
It is written into a temporary folder and renamed into place, so a kill at any moment
leaves the previous checkpoint as it was; only complete folders are named step-*. Resuming
restores all of it: the next losses equal those of a run that was never interrupted (bit for
bit in float32 on the CPU), in any layout (single, ddp, fsdp).

The metrics log (out_dir/metrics.jsonl, one JSON object per step) and the loss curve
(out_dir/loss.png) are written by rank 0.
"""
import base64
import collections
import contextlib
import copy
import json
import math
import os
import random
import shutil
import sys
import time
from functools import partial

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.checkpoint import checkpoint

from slime_core.checkpoint import (MappedSafetensors, load_into, load_safetensors,
                                   save_safetensors)
from slime_core.ops.pack import IGNORE_INDEX
from slime_core.train import dist as tdist
from slime_core.train.plot import plot_losses
from slime_core.train.recipes import Stage, as_stages, configure
from slime_core.train.sampler import ResumableSampler

STATE_FILE = "trainer_state.json"
MODEL_FILE = "model.safetensors"
OPTIM_FILE = "optimizer.safetensors"
BATCH_KEYS = ("input_ids", "attention_mask", "labels", "pixel_values", "crops_per_image",
              "grids_wh")


def lr_scale(step, warmup, total):
    """The lr multiplier at optimizer step `step` (0-based): linear warmup from 0 over
    `warmup` steps, then half a cosine down to 0 at `total` (HF's
    get_cosine_schedule_with_warmup, which LLaVA's and SliME's trainers use)."""
    if step < warmup:
        return step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


# ----------------------------------------------------------------------------- RNG states

def rng_state():
    """This process's RNG states (torch, CUDA, numpy, Python) as JSON-able data."""
    b64 = lambda t: base64.b64encode(t.numpy().tobytes()).decode()  # noqa: E731
    np_state = np.random.get_state()
    out = {"torch": b64(torch.get_rng_state()),
           "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
           "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = [b64(s) for s in torch.cuda.get_rng_state_all()]
    return out


def seed_everything(seed):
    """Seeds torch (and CUDA), numpy and Python's random."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def set_rng_state(state):
    unb64 = lambda s: torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)  # noqa
    torch.set_rng_state(unb64(state["torch"]))
    n = state["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), *n[2:]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))
    if "cuda" in state and torch.cuda.is_available():
        cuda = [unb64(s) for s in state["cuda"]]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


# ----------------------------------------------------------------------------- checkpoints

def checkpoint_dirs(out_dir):
    """The complete checkpoints of a stage folder, oldest first: [(step, path)]."""
    root = os.path.join(out_dir, "checkpoints")
    if not os.path.isdir(root):
        return []
    found = []
    for name in os.listdir(root):
        if name.startswith("step-") and name[5:].isdigit():
            found.append((int(name[5:]), os.path.join(root, name)))
    return sorted(found)


def latest_checkpoint(out_dir):
    """The newest complete checkpoint folder of out_dir, or None."""
    found = checkpoint_dirs(out_dir)
    return found[-1][1] if found else None


def _dedupe(state):
    """Tied tensors (one storage under two names) stored once: (tensors, {alias: name})."""
    seen, tensors, aliases = {}, {}, {}
    for k, v in state.items():
        key = (v.data_ptr(), v.shape, v.stride(), v.dtype) if v.numel() else None
        if key is not None and key in seen:
            aliases[k] = seen[key]
        else:
            if key is not None:
                seen[key] = k
            tensors[k] = v
    return tensors, aliases


def _flatten_optimizer(osd):
    """Full optimizer state -> ({"param/key": tensor}, JSON-able rest)."""
    tensors, other = {}, {}
    for name, entry in osd["state"].items():
        for k, v in entry.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{name}/{k}"] = v.detach().cpu()
            else:
                other.setdefault(name, {})[k] = v
    return tensors, {"param_groups": osd["param_groups"], "other_state": other}


def _unflatten_optimizer(tensors, meta):
    state = {}
    for key, v in tensors.items():
        name, k = key.rsplit("/", 1)
        state.setdefault(name, {})[k] = v
    for name, entry in meta["other_state"].items():
        state.setdefault(name, {}).update(entry)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


def save_checkpoint(out_dir, step, model_state, optim_state, trainer_state, keep=2):
    """Writes checkpoints/step-<step>/ atomically (temporary folder, fsync, rename) and
    removes all but the newest `keep` complete ones. optim_state None: no optimizer file
    (a finished stage). Returns the folder."""
    root = os.path.join(out_dir, "checkpoints")
    os.makedirs(root, exist_ok=True)
    for name in os.listdir(root):  # leftovers of a save that was killed
        if name.startswith(".tmp-"):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    final = os.path.join(root, f"step-{step:08d}")
    tmp = os.path.join(root, f".tmp-step-{step:08d}-{os.getpid()}")
    os.makedirs(tmp)
    tensors, aliases = _dedupe(model_state)
    save_safetensors(tensors, os.path.join(tmp, MODEL_FILE))
    state = dict(trainer_state, tied=aliases)
    if optim_state is not None:
        otensors, ometa = _flatten_optimizer(optim_state)
        save_safetensors(otensors, os.path.join(tmp, OPTIM_FILE))
        state["optimizer"] = ometa
    path = os.path.join(tmp, STATE_FILE)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(state, f)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(tmp)
    if os.path.isdir(final):  # the same step saved again after a resume: replace it whole
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    for _, old in checkpoint_dirs(out_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path, optimizer=True):
    """(model_state, optimizer_state or None, trainer_state) of a checkpoint folder. The
    model's tensors are memory-mapped views (processes on one machine share the pages)."""
    with open(os.path.join(path, STATE_FILE), encoding="utf-8") as f:
        state = json.load(f)
    mapped = MappedSafetensors(os.path.join(path, MODEL_FILE))
    model_state = {k: mapped.get(k) for k in mapped.keys()}
    for alias, name in state.get("tied", {}).items():
        model_state[alias] = model_state[name]
    osd = None
    if optimizer and "optimizer" in state:
        osd = _unflatten_optimizer(load_safetensors(os.path.join(path, OPTIM_FILE)),
                                   state["optimizer"])
    return model_state, osd, state


# ----------------------------------------------------------------------------- the trainer

def enable_grad_checkpointing(decoder):
    """Recompute each decoder layer in backward instead of keeping its activations
    (non-reentrant torch.utils.checkpoint, which FSDP2's per-layer units support)."""
    for layer in decoder.model.layers:
        if not getattr(layer, "_slime_checkpointed", False):
            layer.forward = partial(checkpoint, layer.forward, use_reentrant=False)
            layer._slime_checkpointed = True


class Trainer:
    """Runs one stage (a recipes.Stage or a stage dict) on a SlimeModel.

    Args:
        model: an unwrapped SlimeModel, the same weights on every process.
        stage: recipes.Stage or dict.
        dataset: indexable; dataset[i] is one sample for `collate`.
        collate: list of samples -> the batch dict (input_ids, attention_mask, labels,
            pixel_values, crops_per_image, grids_wh, ...).
        out_dir: the stage's folder (checkpoints, metrics.jsonl, loss.png).
        sampler: an index stream with state_dict/load_state_dict (default: a
            ResumableSampler over the dataset with `seed`).
        layout: "single", "ddp" or "fsdp" (torchrun starts the processes).
        device: where to train (default: cuda:LOCAL_RANK if available, else cpu).
        save_every: steps between checkpoints (the last step is always saved; None: only
            the last); keep: how many to keep.
        autocast: "auto" (bf16 where the stage asks and the device supports it), True, False.
        log_every: steps between progress lines (0: none).
        num_workers: DataLoader worker processes that load and collate ahead of the step
            (0: in this process, when needed).
    """

    def __init__(self, model, stage, dataset, collate, out_dir, sampler=None, layout="single",
                 device=None, seed=0, save_every=None, keep=2, autocast="auto", log_every=1,
                 stream=None, num_workers=0):
        self.stage = stage if isinstance(stage, Stage) else Stage(**stage)
        self.rank, self.world = tdist.rank_world()
        if device is None and torch.cuda.is_available():
            local_rank = int(os.environ.get("LOCAL_RANK", 0))
            if local_rank >= torch.cuda.device_count():
                raise RuntimeError(
                    f"process {local_rank} of this node has no GPU of its own: "
                    f"{torch.cuda.device_count()} visible; start at most that many processes "
                    "per node (torchrun --nproc_per_node), or pass device='cpu'")
            device = f"cuda:{local_rank}"
        device = "cpu" if device is None else device
        self.device = torch.device(device)
        self.layout, self.out_dir = layout, out_dir
        self.dataset, self.collate = dataset, collate
        tokenizer = getattr(dataset, "tokenizer", None)
        if tokenizer is not None and hasattr(model, "llm"):
            # An id past the embedding table would fail deep in the first forward.
            tokenizer.check_fits(model.llm.embed_tokens.num_embeddings)
        self.save_every, self.keep, self.log_every = save_every, keep, log_every
        self.stream = stream if stream is not None else sys.stdout
        st = self.stage
        per_rank, rem = divmod(st.global_batch, self.world)
        if rem or per_rank % st.micro_batch:
            raise ValueError(f"global_batch {st.global_batch} must split into {self.world} "
                             f"process(es) x micro_batch {st.micro_batch} x accumulation steps")
        self.per_rank, self.accum = per_rank, per_rank // st.micro_batch
        self.sampler = sampler if sampler is not None else ResumableSampler(len(dataset), seed)
        self.total_steps = st.total_steps(len(dataset))
        self.warmup = st.warmup_steps(self.total_steps)
        if autocast == "auto":
            autocast = st.bf16 and self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        self.autocast = bool(autocast)

        self.components = configure(model, st)
        resume = latest_checkpoint(out_dir)
        # Under FSDP only rank 0 reads the (full, large) optimizer state; it is broadcast.
        saved = (load_checkpoint(resume, optimizer=layout != "fsdp" or self.rank == 0)
                 if resume else None)
        if saved is not None:
            load_into(model, saved[0], what=f"the model of {resume}")
        if st.grad_checkpointing and "llm" in self.components:
            enable_grad_checkpointing(model.llm)
        if layout != "fsdp":
            model.to(self.device)
        self.model = tdist.wrap(model, layout, self.device)
        self.optimizer = self._build_optimizer()
        self.step, self.seed = 0, seed
        # The RNG states the first step starts from: the checkpoint's, or seed + rank for a
        # fresh run; set when training starts, so that nothing run in between (building
        # another model, say) changes what the run draws.
        self._rng = None
        if saved is not None:
            self._restore(saved, resume)
        self.num_workers = num_workers
        self._ahead = collections.deque()  # sampler states at the start of read-ahead steps
        self._stream = iter(self.sampler)
        self._loader = None

    # The optimizer is built on the wrapped model's parameters (FSDP2 replaces them by
    # sharded ones), one param group per component with its own lr.
    def _build_optimizer(self):
        params = dict(tdist.unwrap(self.model).named_parameters())
        groups = []
        for comp, spec in self.stage.groups().items():
            groups.append({"params": [params[n] for n in self.components[comp]],
                           "lr": spec["lr"], "base_lr": spec["lr"], "name": comp})
        st = self.stage
        return torch.optim.AdamW(groups, betas=st.betas, eps=st.eps,
                                 weight_decay=st.weight_decay)

    def _restore(self, saved, path):
        _, osd, state = saved
        st = self.stage
        if state["stage"] != st.name or state["global_batch"] != st.global_batch:
            raise ValueError(f"{path} is a checkpoint of stage {state['stage']!r} with global "
                             f"batch {state['global_batch']}; this run is {st.name!r} with "
                             f"{st.global_batch}")
        if "optimizer" in state:
            tdist.load_optimizer_state(self.model, self.optimizer, osd, self.layout)
        self.sampler.load_state_dict(state["sampler"])
        self.step = state["step"]
        rngs = state["rng"]
        self._rng = rngs[self.rank % len(rngs)]
        if self.rank == 0:
            self._truncate_metrics(self.step)

    @property
    def done(self):
        return self.step >= self.total_steps

    def _metrics_path(self):
        return os.path.join(self.out_dir, "metrics.jsonl")

    def _truncate_metrics(self, step):
        """Keeps the logged steps up to `step` (a killed run may have logged past its last
        checkpoint; those steps are run again)."""
        path = self._metrics_path()
        if not os.path.isfile(path):
            return
        with open(path, encoding="utf-8") as f:
            lines = [ln for ln in f if ln.strip() and json.loads(ln)["step"] <= step]
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(lines)
        os.replace(tmp, path)

    def _batch(self, indices):
        return self._to_device(self.collate([self.dataset[i] for i in indices]))

    def _to_device(self, batch):
        missing = [k for k in BATCH_KEYS if k not in batch]
        if missing:
            raise KeyError(f"collate's batch has no {missing}")
        return {k: (batch[k].to(self.device, non_blocking=True)
                    if isinstance(batch[k], torch.Tensor) else batch[k]) for k in BATCH_KEYS}

    def _step_indices(self):
        """This process's micro-batches of the next step (index lists)."""
        st = self.stage
        indices = [next(self._stream) for _ in range(st.global_batch)]
        mine = indices[self.rank * self.per_rank:(self.rank + 1) * self.per_rank]
        return [mine[m * st.micro_batch:(m + 1) * st.micro_batch] for m in range(self.accum)]

    def _micro_batches(self):
        """An iterator over the next step's micro-batches (batch dicts on the device)."""
        if not self.num_workers:
            return (self._batch(ix) for ix in self._step_indices())
        if self._loader is None:
            self._loader = iter(torch.utils.data.DataLoader(
                self.dataset, batch_sampler=_AheadSampler(self), collate_fn=self.collate,
                num_workers=self.num_workers, persistent_workers=True,
                # its own generator: the workers' seeds must not be drawn from the RNG the
                # model's noise comes from
                generator=torch.Generator().manual_seed(self.seed)))
        # The loader reads ahead; the sampler state of the step now starting was recorded
        # when its indices were drawn, and is what a checkpoint after it must not include.
        self._ahead.popleft()
        return (self._to_device(next(self._loader)) for _ in range(self.accum))

    def _close_loader(self):
        """Stops the loader's workers; the sampler goes back to the start of the next step
        (the loader had drawn past it), so a later fit() reads the same batches."""
        if self._loader is None:
            return
        if self._ahead:
            self.sampler.load_state_dict(self._ahead[0])
            self._stream = iter(self.sampler)
        self._ahead.clear()
        self._loader = None  # the iterator's finaliser shuts its workers down

    def sampler_state(self):
        """The sampler's state at the start of the next step (what a checkpoint stores)."""
        if self.num_workers and self._ahead:
            return self._ahead[0]
        return self.sampler.state_dict()

    def train_step(self):
        """One optimizer step; returns its metrics dict."""
        st, model = self.stage, self.model
        if self._rng is not None:
            set_rng_state(self._rng)
            self._rng = None
        elif self.step == 0:
            seed_everything(self.seed + self.rank)
        t0 = time.perf_counter()
        scale = lr_scale(self.step, self.warmup, self.total_steps)
        for g in self.optimizer.param_groups:
            g["lr"] = g["base_lr"] * scale
        micro_batches = self._micro_batches()
        model.train()
        loss_sum, labelled, tokens = 0.0, 0, 0
        for m in range(self.accum):
            last = m == self.accum - 1
            batch = next(micro_batches)
            sync = (model.no_sync() if isinstance(model, DistributedDataParallel) and not last
                    else contextlib.nullcontext())
            tdist.set_grad_sync(model, self.layout, last)
            with sync:
                with torch.autocast(self.device.type, dtype=torch.bfloat16,
                                    enabled=self.autocast):
                    out = model(**batch)
                n = int((out.inputs.labels[:, 1:] != IGNORE_INDEX).sum())
                # forward's loss is a mean; the step's loss is a mean over the global batch.
                loss = out.loss * n if n else out.logits.sum() * 0.0
                loss.backward()
            loss_sum += float(loss.detach())
            labelled += n
            tokens += int(out.inputs.attention_mask.sum())
        loss_sum, labelled, tokens = tdist.all_reduce_sum([loss_sum, labelled, tokens],
                                                          self.device)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        if labelled:
            # DDP and FSDP averaged the gradients over the processes: undo that, divide by
            # the tokens instead.
            factor = self.world / labelled
            with torch.no_grad():
                for p in params:
                    if p.grad is not None:
                        p.grad.mul_(factor)
        grad_norm = tdist.clip_grad_norm(params, st.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        dt = time.perf_counter() - t0
        return {"stage": st.name, "step": self.step, "loss": loss_sum / max(labelled, 1),
                "lr_scale": scale,
                "lrs": {g["name"]: g["lr"] for g in self.optimizer.param_groups},
                "grad_norm": grad_norm, "tokens": int(tokens), "labelled_tokens": int(labelled),
                "seconds": dt, "tokens_per_s": tokens / dt if dt > 0 else 0.0}

    def save(self):
        """Writes a checkpoint of the current step (collective: every rank calls it)."""
        final = self.done
        model_state = tdist.full_model_state(self.model, self.layout)
        osd = None if final else tdist.full_optimizer_state(self.model, self.optimizer,
                                                            self.layout)
        rngs = [rng_state()]
        if self.world > 1:
            rngs = [None] * self.world
            torch.distributed.all_gather_object(rngs, rng_state())
        path = None
        if self.rank == 0:
            state = {"format": 1, "stage": self.stage.name, "step": self.step,
                     "total_steps": self.total_steps, "global_batch": self.stage.global_batch,
                     "done": final, "layout": self.layout, "world_size": self.world,
                     "sampler": self.sampler_state(), "rng": rngs}
            path = save_checkpoint(self.out_dir, self.step, model_state, osd, state,
                                   keep=self.keep)
        if self.world > 1:
            torch.distributed.barrier()
        return path

    def fit(self, stop_after=None):
        """Trains to the stage's last step (or stops after step `stop_after`, as if
        interrupted there). Returns the metrics of the steps run."""
        history = []
        if self.rank == 0:
            os.makedirs(self.out_dir, exist_ok=True)
            if self.step == 0:
                open(self._metrics_path(), "w").close()
        start = time.perf_counter()
        while not self.done and (stop_after is None or self.step < stop_after):
            metrics = self.train_step()
            history.append(metrics)
            if self.rank == 0:
                with open(self._metrics_path(), "a", encoding="utf-8") as f:
                    f.write(json.dumps(metrics) + "\n")
                if self.log_every and (self.step % self.log_every == 0 or self.done):
                    self._progress(metrics, time.perf_counter() - start, len(history))
            if self.done or (self.save_every and self.step % self.save_every == 0):
                self.save()
        self._close_loader()
        if self.rank == 0 and history:
            self.plot()
        return history

    def _progress(self, m, elapsed, steps_run):
        width, total = 24, self.total_steps
        filled = int(width * m["step"] / total)
        eta = elapsed / steps_run * (total - m["step"])
        print(f"[{m['stage']}] {m['step']:>6}/{total} |{'#' * filled}{'.' * (width - filled)}| "
              f"loss {m['loss']:.4f}  lr x{m['lr_scale']:.3f}  |g| {m['grad_norm']:.3f}  "
              f"{m['tokens_per_s']:.0f} tok/s  eta {eta:.0f}s", file=self.stream, flush=True)

    def plot(self):
        """Draws out_dir/loss.png from the metrics log."""
        with open(self._metrics_path(), encoding="utf-8") as f:
            rows = [json.loads(ln) for ln in f if ln.strip()]
        plot_losses({self.stage.name: [(r["step"], r["loss"]) for r in rows]},
                    os.path.join(self.out_dir, "loss.png"))


class _AheadSampler:
    """The DataLoader's batch sampler: each step's micro-batches, noting the sampler state
    at the start of each step as the loader draws it (it draws ahead of training)."""

    def __init__(self, trainer):
        self.trainer = trainer

    def __iter__(self):
        t = self.trainer
        while True:
            t._ahead.append(copy.deepcopy(t.sampler.state_dict()))
            yield from t._step_indices()


# ----------------------------------------------------------------------------- a recipe

def run_recipe(build_model, recipe, datasets, collate, out_dir, layout="single", seed=0,
               save_every=None, keep=2, log_every=1, device=None, stream=None,
               stop_after=None, num_workers=0):
    """Runs every stage of a recipe in order, each in out_dir/<stage name>/, each starting
    from the previous stage's final weights; a stage that finished is skipped, one that was
    interrupted resumes. build_model() returns a fresh unwrapped SlimeModel (the same on
    every process). datasets: {"captions": ..., "instruct": ...}. stop_after: {stage name:
    step} to stop early (tests). Returns the final model (unwrapped, rank 0: full weights;
    the last stage's checkpoint holds them on every layout)."""
    stages = as_stages(recipe)
    rank, _ = tdist.rank_world()
    previous, series = None, {}
    for st in stages:
        stage_dir = os.path.join(out_dir, st.name)
        if st.data not in datasets:
            raise KeyError(f"stage {st.name!r} reads {st.data!r}, but datasets has "
                           f"{sorted(datasets)}")
        model = build_model()
        if previous is not None and latest_checkpoint(stage_dir) is None:
            load_into(model, load_checkpoint(previous, optimizer=False)[0],
                      what=f"the model of {previous}")
        trainer = Trainer(model, st, datasets[st.data], collate, stage_dir, layout=layout,
                          device=device, seed=seed, save_every=save_every, keep=keep,
                          log_every=log_every, stream=stream, num_workers=num_workers)
        if not trainer.done:
            trainer.fit(stop_after=(stop_after or {}).get(st.name))
            if not trainer.done:
                return None
        previous = latest_checkpoint(stage_dir)
        if rank == 0 and os.path.isfile(os.path.join(stage_dir, "metrics.jsonl")):
            with open(os.path.join(stage_dir, "metrics.jsonl"), encoding="utf-8") as f:
                series[st.name] = [(r["step"], r["loss"]) for r in map(json.loads, f)]
    if rank == 0 and series:
        plot_losses(series, os.path.join(out_dir, "loss.png"))
    final = build_model()
    load_into(final, load_checkpoint(previous, optimizer=False)[0],
              what=f"the model of {previous}")
    configure(final, stages[-1])
    return final
