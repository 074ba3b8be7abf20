"""python -m bench [--device cpu|cuda] [--quick] [--only NAME] [--out DIR]

Measures the machine's ceilings, runs every bench module's cases against their baselines in
the same run, prints a markdown table and writes it (with machine information) under
bench/results/."""
import os

# Pin OpenMP threads to cores before torch (and its OpenMP runtime) is loaded: unpinned threads
# migrating between cores are a main source of run-to-run noise on small machines.
os.environ.setdefault("OMP_PROC_BIND", "close")
os.environ.setdefault("OMP_PLACES", "cores")

import argparse  # noqa: E402
import datetime  # noqa: E402
import importlib
import json
import platform
import sys

import torch

from bench.common import measure_ceilings

# Explicit list, no directory scanning: a module is benchmarked because it is named here.
MODULES = ["bench.bench_tile_resize", "bench.bench_query_attention", "bench.bench_token_select",
           "bench.bench_model"]


def machine_info(device):
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"date": datetime.date.today().isoformat(), "cpu": cpu, "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "device": str(device)}
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def fmt_ms(t):
    return f"{t.median * 1e3:.3f} ms (±{t.spread * 50:.0f}%)"


def table(rows, ceilings):
    head = ("| op | shape | dtype | device | baseline | baseline time | ours | ratio | achieved |"
            " % of ceiling |\n|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        unit = "GFLOP/s" if r.bound == "compute" else "GB/s"
        lines.append(f"| {r.op} | {r.shape} | {r.dtype} | {r.device} | {r.baseline_name} | "
                     f"{fmt_ms(r.baseline)} | {fmt_ms(r.ours)} | {r.ratio:.2f}x | "
                     f"{r.achieved():.1f} {unit} | {100 * r.ceiling_share(ceilings):.0f}% |")
    return head + "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="fewer, smaller cases")
    ap.add_argument("--only", action="append", help="run only modules containing this name")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = ap.parse_args(argv)

    torch.set_num_threads(os.cpu_count() or 1)
    import slime_core  # noqa: F401  (registers the ops)

    info = machine_info(args.device)
    ceilings = measure_ceilings(args.device)
    rows = []
    for name in MODULES:
        if args.only and not any(o in name for o in args.only):
            continue
        mod = importlib.import_module(name)
        print(f"running {name} ...", file=sys.stderr, flush=True)
        rows += mod.run(args.device, ceilings, args.quick)

    mm = ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in ceilings.matmul_gflops.items())
    header = (f"# slime_core benchmarks, {info['date']}\n\n"
              f"Machine: {info.get('gpu', info['cpu'])} ({info['cores']} CPU cores, torch "
              f"{info['torch']}, {info['torch_threads']} threads), device `{args.device}`.\n"
              f"Ceilings measured in this run: copy {ceilings.copy_gbps:.1f} GB/s, matmul {mm}.\n"
              "Times are medians; ± is half the 10-90% spread. Ratio = baseline / ours.\n\n")
    report = header + table(rows, ceilings)
    for r in rows:
        if r.note:
            report += f"\n- {r.op} {r.shape}: {r.note}"
    print(report)
    os.makedirs(args.out, exist_ok=True)
    tag = info.get("gpu", f"{info['cores']}core").replace(" ", "-")
    # A partial run (--only) is named after what it ran, so it never overwrites a full one.
    name = f"{'-'.join(args.only)}-{args.device}" if args.only else f"{args.device}-{tag}"
    stem = os.path.join(args.out, f"{info['date']}-{name}")
    with open(stem + ".md", "w") as f:
        f.write(report + "\n")
    with open(stem + ".json", "w") as f:
        json.dump({"machine": info, "ceilings": ceilings.__dict__,
                   "rows": [{**r.__dict__, "baseline": r.baseline.__dict__,
                             "ours": r.ours.__dict__, "ratio": r.ratio,
                             "ceiling_share": r.ceiling_share(ceilings)} for r in rows]},
                  f, indent=1)
    print(f"wrote {stem}.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
