"""A tiny random SliME model and a synthetic in-memory dataset for the trainer's tests, and
the entry points the tests start as separate processes:

    python tests/train_fixtures.py run OUT_DIR STEPS SAVE_EVERY      (the kill test)
    python -m torch.distributed.run --nproc_per_node 2 tests/train_fixtures.py dist OUT_DIR

The dataset produces the batch dict slime_core.data's collate produces: input_ids (B, T)
right-padded, attention_mask, labels (-100 ignored), pixel_values (N_crops, 3, S, S),
crops_per_image, grids_wh, index. Images have random sizes, so the crop counts are ragged.
"""
import json
import os
import sys

import numpy as np
import torch

from slime_core.models.llm import Decoder, DecoderConfig
from slime_core.models.slime import IMAGE_TOKEN_INDEX, SlimeConfig, SlimeModel
from slime_core.models.vision import VisionConfig, VisionTower
from slime_core.preprocess import ImageProcessor

TILE, PATCH, VOCAB, SEP = 28, 7, 96, 5


def build_model(seed=0, connector="gated", image_mode="both", tie=False, **overrides):
    """A tiny SliME (CLIP-like tower 32 wide, Llama-like decoder 48 wide), float32; tie: the
    decoder's lm_head shares its embedding table."""
    torch.manual_seed(seed)
    tower = VisionTower(VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                     num_attention_heads=4, image_size=TILE, patch_size=PATCH))
    llm = Decoder(DecoderConfig(vocab_size=VOCAB, hidden_size=48, intermediate_size=96,
                                num_layers=2, num_heads=4, num_kv_heads=2, bos_token_id=1,
                                eos_token_id=2, pad_token_id=0, tie_word_embeddings=tie))
    cfg = dict(num_heads=4, local_grid=2, separator_token_id=SEP, top_p=0.8,
               connector=connector, image_mode=image_mode)
    cfg.update(overrides)
    return SlimeModel(SlimeConfig(**cfg), tower, llm)


class SyntheticDataset:
    """n samples; sample i is fixed by (seed, i): a random image of random size and a random
    prompt with one <image> placeholder, its second half labelled."""

    def __init__(self, n, seed=0, max_side=80):
        self.n, self.seed, self.max_side = n, seed, max_side
        self.processor = ImageProcessor(tile_size=TILE)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        rng = np.random.default_rng([self.seed, i])
        w, h = rng.integers(8, self.max_side, 2)
        out = self.processor([rng.integers(0, 256, (h, w, 3), dtype=np.uint8)])
        T = int(rng.integers(5, 13))
        ids = torch.from_numpy(rng.integers(6, VOCAB, T)).long()
        ids[0] = 1
        ids[int(rng.integers(1, T // 2 + 1))] = IMAGE_TOKEN_INDEX
        labels = ids.clone()
        labels[:T // 2 + 1] = -100
        return {"input_ids": ids, "labels": labels, "pixel_values": out.pixel_values,
                "crops_per_image": out.crops_per_image[0], "grid_wh": out.grids_wh[0], "index": i}


def collate(samples):
    """The batch dict (right padding with id 0, label -100)."""
    T = max(len(s["input_ids"]) for s in samples)
    B = len(samples)
    ids = torch.zeros(B, T, dtype=torch.int64)
    mask = torch.zeros(B, T, dtype=torch.int64)
    labels = torch.full((B, T), -100, dtype=torch.int64)
    for b, s in enumerate(samples):
        n = len(s["input_ids"])
        ids[b, :n], mask[b, :n], labels[b, :n] = s["input_ids"], 1, s["labels"]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels,
            "pixel_values": torch.cat([s["pixel_values"] for s in samples]),
            "crops_per_image": [s["crops_per_image"] for s in samples],
            "grids_wh": [s["grid_wh"] for s in samples],
            "index": [s["index"] for s in samples]}


# A stage whose step has no randomness in the model (stage Ia: MLP expert alone, no
# selection noise), so different layouts can be compared; and one with every part training.
STAGE_NOISELESS = dict(name="s", data="instruct", steps=6, global_batch=8, micro_batch=2,
                       warmup_ratio=0.3, max_length=None, max_grad_norm=0.5,
                       overrides=dict(image_mode="both", connector_expert=0, selection_noise=0.0),
                       trainable={"llm": 3e-3, "connector.mlp": 1e-2, "local": 1e-2})

# Everything SliME's stage III trains (the bfloat16 router included), with its noise.
STAGE_ALL = dict(name="all", data="instruct", steps=2, global_batch=4, micro_batch=2,
                 warmup_ratio=0.0, max_length=None,
                 overrides=dict(image_mode="both", connector_expert=-1, selection="top_p",
                                top_p=0.8, selection_noise=0.1),
                 trainable={"llm": 3e-3, "connector": 1e-2, "local": 1e-2})


def _run(out_dir, steps, save_every):
    """Trains STAGE_NOISELESS with `steps` steps, printing a line per step (the kill test)."""
    from slime_core.train.trainer import Trainer
    torch.set_num_threads(1)
    stage = dict(STAGE_NOISELESS, steps=int(steps))
    trainer = Trainer(build_model(), stage, SyntheticDataset(64), collate, out_dir,
                      save_every=int(save_every), keep=2, log_every=1)
    trainer.fit()


def _dist(out_dir):
    """Under torchrun with 2 processes: DDP and FSDP runs of STAGE_NOISELESS, and resumes
    across layouts (out_dir/single_half, if there, is a one-process run saved at step 3);
    the losses go to out_dir/losses.json (rank 0)."""
    from slime_core.train import dist as tdist
    from slime_core.train.trainer import Trainer
    torch.set_num_threads(1)
    rank, world = tdist.init_distributed("cpu")
    assert world == 2, world
    results = {}

    def train(name, layout, resume_from=None, stage=STAGE_NOISELESS):
        folder = os.path.join(out_dir, name)
        if resume_from is not None and rank == 0:  # its checkpoint of step 3
            import shutil
            shutil.copytree(os.path.join(out_dir, resume_from), folder)
            shutil.rmtree(os.path.join(folder, "checkpoints", "step-00000006"),
                          ignore_errors=True)
        torch.distributed.barrier()
        trainer = Trainer(build_model(), stage, SyntheticDataset(64), collate,
                          folder, layout=layout, save_every=3, log_every=0)
        results[name] = [m["loss"] for m in trainer.fit()]

    train("ddp", "ddp")     # 6 steps straight, checkpoints at 3 and 6
    train("fsdp", "fsdp")   # the same with FSDP
    train("fsdp_to_ddp", "ddp", resume_from="fsdp")  # FSDP's step 3 resumed by DDP
    # With noise: rank r draws the same noise in both layouts (seeded with seed + r).
    train("ddp_all", "ddp", stage=STAGE_ALL)
    train("fsdp_all", "fsdp", stage=STAGE_ALL)
    if os.path.isdir(os.path.join(out_dir, "single_half")):  # saved by one process (test)
        train("single_to_fsdp", "fsdp", resume_from="single_half")
    if rank == 0:
        with open(os.path.join(out_dir, "losses.json"), "w") as f:
            json.dump(results, f)
    # tells a failure at exit from one in training; shutdown then skips the interpreter's
    # teardown, where gloo's threads can abort a finished run
    print(f"[dist] rank {rank}: trained, leaving the process group", flush=True)
    tdist.shutdown()


def cli_data(n=16):
    """The --data function of `python -m slime_core.train` for the tests."""
    data = {"captions": SyntheticDataset(n, seed=1), "instruct": SyntheticDataset(n, seed=2)}
    return data, collate


if __name__ == "__main__":
    role = sys.argv[1]
    if role == "run":
        _run(*sys.argv[2:5])
    elif role == "dist":
        _dist(sys.argv[2])
    else:
        raise SystemExit(f"unknown role {role!r}")

