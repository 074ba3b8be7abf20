"""Reading and writing checkpoints in the layouts users bring: HF model folders
(`config.json` + `model.safetensors`, or shards listed in `model.safetensors.index.json`).

    cfg = read_config(folder)                       # dict from config.json
    sd = load_safetensors(folder, prefix="model.")  # {name: tensor}, prefix stripped
    load_into(module, sd)                           # strict: names every missing,
                                                    # unexpected or misshapen key
    save_safetensors(module.state_dict(), path)     # atomic: a crash leaves the old file

Only torch and safetensors are needed; nothing is downloaded.
"""
import json
import os
import tempfile

import torch
from safetensors import safe_open
from safetensors.torch import save_file

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


class CheckpointError(ValueError):
    """A checkpoint folder or file that cannot be read into the model as asked."""


def read_config(folder):
    """The dict in `folder/config.json` (a clear error if the folder or file is missing)."""
    path = os.path.join(folder, "config.json")
    if not os.path.isdir(folder):
        raise CheckpointError(f"checkpoint folder {folder!r} does not exist")
    if not os.path.isfile(path):
        raise CheckpointError(f"{folder!r} has no config.json; expected an HF model folder")
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path} is not valid JSON: {e}") from e


def safetensors_files(folder):
    """The safetensors files of a folder: the shards of its index file, else
    model.safetensors, else every *.safetensors file (sorted)."""
    index = os.path.join(folder, INDEX_FILE)
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            weight_map = json.load(f).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index} has no weight_map")
        files = sorted(set(weight_map.values()))
        missing = [n for n in files if not os.path.isfile(os.path.join(folder, n))]
        if missing:
            raise CheckpointError(f"{index} lists shards that are missing: {missing}")
        return [os.path.join(folder, n) for n in files]
    single = os.path.join(folder, SINGLE_FILE)
    if os.path.isfile(single):
        return [single]
    files = sorted(n for n in os.listdir(folder) if n.endswith(".safetensors"))
    if not files:
        raise CheckpointError(f"{folder!r} has no {SINGLE_FILE}, {INDEX_FILE} or *.safetensors")
    return [os.path.join(folder, n) for n in files]


def load_safetensors(path, prefix=None, device="cpu"):
    """{name: tensor} from a safetensors file or a folder (sharded or not). With `prefix`,
    only the keys that start with it are read, and the prefix is stripped."""
    files = safetensors_files(path) if os.path.isdir(path) else [path]
    out = {}
    for fn in files:
        if not os.path.isfile(fn):
            raise CheckpointError(f"checkpoint file {fn!r} does not exist")
        try:
            with safe_open(fn, framework="pt", device=str(device)) as f:
                for key in f.keys():
                    if prefix is not None and not key.startswith(prefix):
                        continue
                    name = key[len(prefix):] if prefix else key
                    if name in out:
                        raise CheckpointError(f"key {key!r} appears in more than one shard")
                    out[name] = f.get_tensor(key)
        except CheckpointError:
            raise
        except Exception as e:  # safetensors raises its own types for corrupt headers
            raise CheckpointError(f"cannot read {fn!r}: {e}") from e
    return out


def load_into(module, state_dict, strict=True, what=None):
    """Copies state_dict into module's parameters and buffers (cast to their dtypes).

    Every problem is reported at once, by name: missing keys, unexpected keys (when strict),
    and keys whose shape differs (with both shapes). Nothing is copied if anything is wrong.
    """
    what = what or type(module).__name__
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    misshapen = [f"{k}: checkpoint {tuple(state_dict[k].shape)}, model {tuple(own[k].shape)}"
                 for k in own if k in state_dict and state_dict[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected and strict:
        problems.append(f"unexpected keys {unexpected}")
    if misshapen:
        problems.append("shape mismatch: " + "; ".join(misshapen))
    if problems:
        raise CheckpointError(f"cannot load the checkpoint into {what}: " + "; ".join(problems))
    with torch.no_grad():
        for k, t in own.items():
            t.copy_(state_dict[k])
    return module


def save_safetensors(state_dict, path, metadata=None):
    """Writes state_dict to `path` atomically (a temporary file in the same folder, fsynced,
    then renamed over the target), so an interrupted save never leaves a torn file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".safetensors")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
