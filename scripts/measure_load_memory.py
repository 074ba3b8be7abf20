"""Peak resident memory of loading a synthetic >= 1 GB LLM checkpoint (issue 11, item 6).

    python scripts/measure_load_memory.py [--dir DIR] [--keep]

Writes a random Llama-layout checkpoint in float32 (about 1.2 GB, in 500 MB shards with an
index) and loads it in fresh subprocesses, each reporting its peak RSS (ru_maxrss, which
counts mapped file pages as well as allocations) after a forward pass and a sum over
every weight (so every page of the file has been read):
- mmap:      Decoder.from_pretrained, float32 (the file's dtype: parameters are the mapped pages)
- mmap-bf16: Decoder.from_pretrained, bfloat16 (converted tensor by tensor, pages released)
- naive:     build the model (random init), then load_state_dict(safetensors load_file)
The import baseline (torch etc.) is measured in each subprocess and subtracted.
"""
import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile

import torch

from slime_core.models.llm import Decoder, DecoderConfig

CONFIG = DecoderConfig(model_type="llama", vocab_size=50000, hidden_size=2048,
                       intermediate_size=5632, num_layers=2, num_heads=16, num_kv_heads=4)


def rss_kib():
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("VmRSS")).split()[1])


def write_checkpoint(folder):
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in Decoder(CONFIG).state_dict().items()}
    from slime_core.checkpoint import save_safetensors_folder, write_config
    sd = {k: torch.randn(s) * 0.02 for k, s in shapes.items()}
    save_safetensors_folder(sd, folder, max_shard_bytes=500 * 2**20)
    write_config(CONFIG.to_hf_config(dtype=torch.float32), folder)


def load(folder, mode):
    """Runs in the subprocess: loads, reads every weight, prints a JSON line."""
    base = rss_kib()
    if mode == "naive":
        from safetensors.torch import load_file
        from slime_core.checkpoint import safetensors_files
        model = Decoder(CONFIG)
        for fn in safetensors_files(folder):
            model.load_state_dict(load_file(fn), strict=False)
    else:
        dtype = torch.bfloat16 if mode == "mmap-bf16" else torch.float32
        model = Decoder.from_pretrained(folder, dtype=dtype)
    after_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.no_grad():  # every weight is read, so every mapped page is resident
        logits = model(torch.arange(8)[None])
        total = sum(float(p.sum()) for p in model.parameters())
    assert torch.isfinite(logits).all() and total == total
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    print(json.dumps({"mode": mode, "baseline_kib": base, "peak_after_load_kib": after_load,
                      "peak_kib": peak, "model_bytes": params}))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", help="where to write the checkpoint (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the checkpoint afterwards")
    ap.add_argument("--child", nargs=2, metavar=("FOLDER", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return load(*args.child)
    folder = args.dir or tempfile.mkdtemp(prefix="slime-mem-")
    try:
        subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, %r); "
                        "from scripts.measure_load_memory import write_checkpoint; "
                        "write_checkpoint(%r)" % (os.getcwd(), folder)], check=True)
        size = sum(os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder)
                   if n.endswith(".safetensors"))
        print(f"checkpoint: {folder}, {size / 2**20:.0f} MiB of safetensors "
              f"({', '.join(sorted(os.listdir(folder)))})")
        print(f"{'mode':10s} {'peak-base MiB':>14s} {'x file':>7s} {'after load MiB':>15s} "
              f"{'model MiB':>10s}")
        for mode in ("mmap", "mmap-bf16", "naive"):
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", folder,
                                  mode], check=True, capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            peak = (r["peak_kib"] - r["baseline_kib"]) / 1024
            load_only = (r["peak_after_load_kib"] - r["baseline_kib"]) / 1024
            print(f"{mode:10s} {peak:14.0f} {peak * 2**20 / size:7.2f} {load_only:15.0f} "
                  f"{r['model_bytes'] / 2**20:10.0f}")
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
