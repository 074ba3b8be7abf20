"""Process layouts for training: one process, DistributedDataParallel, or FSDP2.

    rank, world = init_distributed()   # reads torchrun's env; gloo on CPU, NCCL on CUDA
    model = wrap(model, "fsdp", device)

Under torchrun every process builds the same model; the layout decides how it is run:

    single  the model itself
    ddp     DistributedDataParallel: a full replica per process, gradients all-reduced
    fsdp    FSDP2 (torch.distributed.fsdp.fully_shard): each decoder layer, each vision
            layer, the connector's parts and the local compressor are their own units,
            the rest goes to the root unit; parameters, gradients and optimizer state are
            sharded, so a model that does not fit one device trains on several

Checkpoints are always full (unsharded) state dicts, keyed by the unwrapped model's
parameter names, so a run saved in one layout resumes in any other.
"""
import os
import sys
from functools import partial

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

LAYOUTS = ("single", "ddp", "fsdp")


def init_distributed(device=None):
    """Joins the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR, ...)
    unless one exists; without torchrun's environment it is a single process. Returns
    (rank, world_size)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1:
        return 0, 1
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


def shutdown(exit_code=0):
    """Ends a process torchrun started: a barrier, the process group destroyed, the output
    flushed, then os._exit(exit_code). Gloo's worker threads can still abort the
    interpreter's teardown after a clean destroy ("terminate called without an active
    exception", SIGABRT; seen in this project's two-process test, and described in
    pytorch/pytorch#179291), and torchrun then reports a finished run as failed; skipping
    the teardown avoids it. Files must be closed before the call. Without a process group it
    returns and the process ends as usual."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)


def rank_world():
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def unwrap(model):
    """The SlimeModel inside a layout (FSDP2 shards in place: the model itself)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def wrap(model, layout, device):
    """The model run in `layout` (LAYOUTS); call after the stage's trainable flags are set
    (FSDP2 groups parameters by what trains) and before the optimizer is built."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    _, world = rank_world()
    if layout == "single":
        if world > 1:
            raise ValueError(f"layout 'single' with {world} processes: use 'ddp' or 'fsdp'")
        return model
    if world == 1 and not dist.is_initialized():
        raise ValueError(f"layout {layout!r} needs a process group: start with torchrun")
    if layout == "ddp":
        # Unused trainable parameters are legitimate (a stage may switch a branch off), so
        # DDP must look for them instead of waiting for their gradients forever.
        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    # fully_shard keeps each rank's own values (DDP broadcasts rank 0's): they must agree.
    _check_same_weights(model, device)
    shard = partial(fully_shard, mesh=init_device_mesh(device.type, (world,)))
    for layer in model.llm.model.layers:
        shard(layer)
    for layer in model.vision_tower.encoder.layers:
        shard(layer)
    proj = model.mm_projector
    if hasattr(proj, "w_gate"):
        # The router's w_gate is bfloat16 (as released) and a unit's trainable parameters
        # must share one dtype, so the gated block's float32 parts get their own units.
        shard(proj.attn)
        shard(proj.projection)
    shard(proj)
    if model.sampler is not None:
        # The model calls sampler.post_qformer directly (Sampler has no forward of its
        # own), and a unit gathers its parameters in its own forward.
        shard(model.sampler.post_qformer)
    shard(model)
    return model


def _check_same_weights(model, device):
    """Raises unless every process holds the same weights (a float64 checksum each)."""
    with torch.no_grad():
        local = sum(float(p.double().sum()) + float((p.double() * (i + 1)).square().sum())
                    for i, p in enumerate(model.parameters()))
    sums = [None] * rank_world()[1]
    dist.all_gather_object(sums, local)
    if len(set(sums)) != 1:
        raise ValueError(f"the processes built different weights (checksums {sums}); build "
                         "the model from the same checkpoint or seed on every rank")


def set_grad_sync(model, layout, enabled):
    """Gradient reduction on or off for the next backward (accumulation micro-batches
    other than the last need none). DDP uses its no_sync context instead."""
    if layout == "fsdp":
        model.set_requires_gradient_sync(enabled)


def all_reduce_sum(values, device):
    """Sums a list of floats over the processes (float64, so counts stay exact)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if rank_world()[1] > 1:
        dist.all_reduce(t)
    return t.tolist()


def full_model_state(model, layout):
    """The full state dict of the unwrapped model on the CPU, on rank 0 (other ranks: {});
    a collective under FSDP, so every rank must call it."""
    if layout == "fsdp":
        from torch.distributed.checkpoint.state_dict import (StateDictOptions,
                                                             get_model_state_dict)
        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True,
                                                                    cpu_offload=True))
    if rank_world()[0] != 0:
        return {}
    return {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}


def full_optimizer_state(model, optimizer, layout):
    """{"state": {param name: {key: tensor}}, "param_groups": [...]} keyed by the unwrapped
    model's parameter names, full tensors on the CPU (rank 0; others may get {})."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions,
                                                         get_optimizer_state_dict)
    distributed = rank_world()[1] > 1
    opts = StateDictOptions(full_state_dict=True, cpu_offload=distributed)
    osd = get_optimizer_state_dict(model, optimizer, options=opts)
    if distributed and rank_world()[0] != 0:
        return {}
    return osd


def load_optimizer_state(model, optimizer, state, layout):
    """Loads a full optimizer state (full_optimizer_state's layout) into any layout. Under
    FSDP only rank 0 needs it (others pass None): it is broadcast and sharded."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions,
                                                         set_optimizer_state_dict)
    from_rank0 = layout == "fsdp" and rank_world()[1] > 1
    set_optimizer_state_dict(model, optimizer, state if state is not None else {},
                             options=StateDictOptions(full_state_dict=True,
                                                      broadcast_from_rank0=from_rank0))


def clip_grad_norm(parameters, max_norm):
    """Total gradient norm (float) before clipping to max_norm (<= 0: not clipped). Works
    on DTensor gradients (FSDP2) too: the norm is the full tensor's."""
    grads = [p for p in parameters if p.grad is not None]
    if not grads:
        return 0.0
    if max_norm and max_norm > 0:
        norm = torch.nn.utils.clip_grad_norm_(grads, max_norm, foreach=True)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in grads], foreach=True)
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return float(norm)
