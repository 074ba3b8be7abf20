"""Reading and writing checkpoints in the layouts users bring: HF model folders
(`config.json` + `model.safetensors`, or shards listed in `model.safetensors.index.json`).

    cfg = read_config(folder)                       # dict from config.json
    sd = load_safetensors(folder, prefix="model.")  # {name: tensor}, prefix stripped
    load_into(module, sd)                           # strict: names every missing,
                                                    # unexpected or misshapen key
    save_safetensors(module.state_dict(), path)     # atomic: a crash leaves the old file

    ckpt = MappedSafetensors(folder)                # headers only; bytes stay on disk
    w = ckpt.take("lm_head.weight", torch.bfloat16) # zero-copy when the dtype matches
    save_safetensors_folder(sd, folder, max_shard_bytes=...)  # one file, or shards + index

Only torch and safetensors are needed; nothing is downloaded.

Why memory-mapped loading: a model built on the meta device and filled from
MappedSafetensors holds the checkpoint's pages once, as its own parameters (a private,
copy-on-write mapping, so writing to a parameter never writes the file), instead of a read
copy plus a model copy. A tensor that has to be converted (dtype, device) is copied 64 MiB at
a time, each chunk's mapped pages released once copied, so the peak stays near the size of
the loaded model.
"""
import json
import math
import mmap
import os
import tempfile

import torch
from safetensors import safe_open
from safetensors.torch import save_file

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
SHARD_FILE = "model-{:05d}-of-{:05d}.safetensors"

# The safetensors format's dtype names (https://github.com/huggingface/safetensors).
SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
                      "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32,
                      "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}
for _name, _attr in (("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2")):
    if hasattr(torch, _attr):
        SAFETENSORS_DTYPES[_name] = getattr(torch, _attr)


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


def check_state_dict(module, state_dict, strict=True, what=None):
    """Raises CheckpointError naming every missing key, unexpected key (when strict) and
    misshapen key (with both shapes) of state_dict against module's. Only shapes are read,
    so a module on the meta device and memory-mapped tensors cost nothing here."""
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


def load_into(module, state_dict, strict=True, what=None, assign=False):
    """Copies state_dict into module's parameters and buffers (cast to their dtypes).

    Every problem is reported at once, by name: missing keys, unexpected keys (when strict),
    and keys whose shape differs (with both shapes). Nothing is copied if anything is wrong.
    With assign=True the module's tensors become the given tensors themselves (no copy, no
    cast): how a module built on the meta device gets its weights.
    """
    check_state_dict(module, state_dict, strict=strict, what=what)
    own = module.state_dict()
    if assign:
        module.load_state_dict({k: state_dict[k] for k in own}, strict=True, assign=True)
        return module
    with torch.no_grad():
        for k, t in own.items():
            t.copy_(state_dict[k])
    return module


class MappedSafetensors:
    """The tensors of a safetensors file, or of an HF folder's shards, memory-mapped
    copy-on-write. Opening reads only the headers; a tensor's bytes are read from disk when
    first touched, and count towards resident memory once, however many views share them.

        ckpt = MappedSafetensors(folder)
        ckpt.keys(), ckpt.shape(name), ckpt.dtype(name)
        t = ckpt.get(name)                   # zero-copy view of the file
        t = ckpt.take(name, dtype, device)   # a view when dtype and device match, else a
                                             # converted copy, and the view's pages released
    """

    def __init__(self, path):
        files = safetensors_files(path) if os.path.isdir(path) else [path]
        self._entries = {}  # name -> (file, mmap, dtype, shape, first byte, end byte)
        for fn in files:
            self._map(fn)

    def _map(self, fn):
        if not os.path.isfile(fn):
            raise CheckpointError(f"checkpoint file {fn!r} does not exist")
        size = os.path.getsize(fn)
        with open(fn, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if n < 2 or 8 + n > size:
                raise CheckpointError(f"{fn!r} is not a safetensors file (header length {n}, "
                                      f"file size {size})")
            try:
                header = json.loads(f.read(n))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise CheckpointError(f"{fn!r} has a corrupt safetensors header: {e}") from e
            # ACCESS_COPY is MAP_PRIVATE: writes to a loaded parameter stay in this process.
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if size else None
        data_start, data_len = 8 + n, size - 8 - n
        for key, info in header.items():
            if key == "__metadata__":
                continue
            if key in self._entries:
                raise CheckpointError(f"key {key!r} appears in more than one shard "
                                      f"({self._entries[key][0]!r} and {fn!r})")
            if not isinstance(info, dict):
                raise CheckpointError(f"{fn!r}: header entry {key!r} is not a tensor: {info!r}")
            dtype = SAFETENSORS_DTYPES.get(info.get("dtype"))
            if dtype is None:
                raise CheckpointError(f"{fn!r}: tensor {key!r} has an unsupported or missing "
                                      f"dtype {info.get('dtype')!r}")
            shape, offsets = info.get("shape"), info.get("data_offsets")
            if (not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape)
                    or not isinstance(offsets, list) or len(offsets) != 2
                    or not all(isinstance(o, int) for o in offsets)):
                raise CheckpointError(f"{fn!r}: tensor {key!r} has a malformed shape {shape!r} "
                                      f"or data_offsets {offsets!r}")
            shape, (begin, end) = tuple(shape), offsets
            nbytes = math.prod(shape) * dtype.itemsize
            if not 0 <= begin <= end <= data_len or end - begin != nbytes:
                raise CheckpointError(f"{fn!r}: tensor {key!r} of shape {shape} and dtype "
                                      f"{dtype} has data offsets [{begin}, {end}] that do not "
                                      f"fit its size {nbytes} or the file's {data_len} data bytes")
            self._entries[key] = (fn, mm, dtype, shape, data_start + begin, data_start + end)

    def keys(self):
        """The tensor names in the mapped files."""
        return list(self._entries)

    def __contains__(self, key):
        return key in self._entries

    def __len__(self):
        return len(self._entries)

    def _entry(self, key):
        if key not in self._entries:
            raise CheckpointError(f"the checkpoint has no tensor {key!r}")
        return self._entries[key]

    def shape(self, key):
        """The shape of tensor `key`, from the header (nothing is read)."""
        return torch.Size(self._entry(key)[3])

    def dtype(self, key):
        """The torch dtype of tensor `key`, from the header."""
        return self._entry(key)[2]

    def get(self, key):
        """The tensor as a zero-copy view of the mapped file (copied only when the file
        places it at an offset its dtype cannot be read from)."""
        fn, mm, dtype, shape, begin, end = self._entry(key)
        if begin == end:
            return torch.empty(shape, dtype=dtype)
        if begin % dtype.itemsize:
            return torch.frombuffer(bytearray(mm[begin:end]), dtype=dtype).view(shape)
        return torch.frombuffer(mm, dtype=dtype, count=(end - begin) // dtype.itemsize,
                                offset=begin).view(shape)

    def take(self, key, dtype=None, device=None, chunk_bytes=64 * 2**20):
        """The tensor in `dtype` on `device`: the zero-copy view when both already match;
        otherwise a converted copy, made chunk_bytes of the file at a time, each chunk's
        pages released once copied, so the conversion never holds the whole source."""
        view = self.get(key)
        dtype, device = dtype or view.dtype, torch.device(device or "cpu")
        if view.dtype == dtype and device.type == "cpu":
            return view
        out = torch.empty(view.shape, dtype=dtype, device=device)
        if view.dim() == 0 or view.numel() == 0:
            return out.copy_(view)
        _, _, _, _, begin, end = self._entry(key)
        row_bytes = (end - begin) // view.shape[0]
        step = max(1, chunk_bytes // max(row_bytes, 1))
        for i in range(0, view.shape[0], step):
            j = min(i + step, view.shape[0])
            out[i:j].copy_(view[i:j])
            self._release(key, begin + i * row_bytes, begin + j * row_bytes)
        return out

    def release(self, key):
        """Drops the resident pages lying wholly inside key's bytes; untouched data is read
        from disk again if the tensor is used later (views of it stay valid)."""
        _, _, _, _, begin, end = self._entry(key)
        self._release(key, begin, end)

    def _release(self, key, begin, end):
        mm = self._entry(key)[1]
        if mm is None or not hasattr(mm, "madvise"):
            return
        page = mmap.PAGESIZE
        first, last = -(-begin // page) * page, end // page * page
        if last > first:
            mm.madvise(mmap.MADV_DONTNEED, first, last - first)

def save_safetensors(state_dict, path, metadata=None):
    """Writes state_dict to `path` atomically (a temporary file in the same folder, fsynced,
    then renamed over the target), so an interrupted save never leaves a torn file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    _replace_atomic(path, lambda tmp: save_file(tensors, tmp, metadata=metadata),
                    suffix=".safetensors")


def save_safetensors_folder(state_dict, folder, max_shard_bytes=5 * 2**30, metadata=None):
    """Writes state_dict into an HF folder: model.safetensors, or, above max_shard_bytes,
    shards model-0000i-of-0000n.safetensors and model.safetensors.index.json. Each file is
    written atomically and the index last; then the files of an earlier save that the new
    one does not use are removed, so the folder never points at stale weights.
    Returns the file names written."""
    if max_shard_bytes <= 0:
        raise ValueError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
    metadata = {"format": "pt", **(metadata or {})}  # HF loaders check the format entry
    shards, size = [{}], 0
    for k, t in state_dict.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = t
        size += nbytes
    os.makedirs(folder, exist_ok=True)
    if len(shards) == 1:
        names = [SINGLE_FILE]
    else:
        names = [SHARD_FILE.format(i + 1, len(shards)) for i in range(len(shards))]
    for name, shard in zip(names, shards):
        save_safetensors(shard, os.path.join(folder, name), metadata=metadata)
    written = list(names)
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(t.numel() * t.element_size()
                                                for t in state_dict.values())},
                 "weight_map": {k: name for name, shard in zip(names, shards) for k in shard}}
        _write_atomic(os.path.join(folder, INDEX_FILE), json.dumps(index, indent=2))
        written.append(INDEX_FILE)
    for old in os.listdir(folder):
        stale = old == INDEX_FILE or old == SINGLE_FILE or (
            old.startswith("model-") and old.endswith(".safetensors"))
        if stale and old not in written:
            os.remove(os.path.join(folder, old))
    return written


def _replace_atomic(path, write, suffix=""):
    """write(tmp) into a temporary file beside `path`, fsync it, rename it over `path`: a
    crash at any point leaves the old file whole (or no file), never a torn one."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=suffix)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _write_atomic(path, text):
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    _replace_atomic(path, write)


def write_config(config, folder):
    """Writes config.json atomically."""
    os.makedirs(folder, exist_ok=True)
    _write_atomic(os.path.join(folder, "config.json"), json.dumps(config, indent=2) + "\n")
