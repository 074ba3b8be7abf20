"""Prints how slime_core was built and what it registered:  python -m slime_core.info"""
import json
import sys

import torch

_DISPATCH_KEYS = ("CPU", "CUDA", "Meta", "Autograd")


def registered_ops():
    """{"slime::op": [dispatch keys with a kernel]} for every op in the slime namespace."""
    names = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("slime::"))
    return {n: [k for k in _DISPATCH_KEYS if torch._C._dispatch_has_kernel_for_dispatch_key(n, k)]
            for n in names}


def gather():
    """What was built and registered, as a dict (the --json output)."""
    import slime_core

    build = slime_core._C.build_info()
    return {
        "slime_core": slime_core.__version__,
        "torch": torch.__version__,
        "built_against_torch": build["torch_version"],
        "source_hash": build["source_hash"],
        "compiler": build["compiler"],
        "debug_build": build["debug"],
        "cuda_kernels": build["cuda"],
        "cuda_archs": build["cuda_archs"].split(";") if build["cuda_archs"] else [],
        "cuda_runtime": build["cuda_runtime"],
        "cuda_available": torch.cuda.is_available(),
        "openmp": build["openmp"],
        "omp_max_threads": build["omp_max_threads"],
        "torch_threads": torch.get_num_threads(),
        "ops": registered_ops(),
    }


def main(argv=None):
    """`python -m slime_core.info [--json]`: prints gather() as a table or as JSON."""
    argv = sys.argv[1:] if argv is None else argv
    info = gather()
    if "--json" in argv:
        print(json.dumps(info, indent=2))
        return 0
    width = max(len(k) for k in info)
    for k, v in info.items():
        if k == "ops":
            continue
        print(f"{k:<{width}}  {v}")
    print(f"{'ops':<{width}}  {len(info['ops'])} registered")
    for name, keys in info["ops"].items():
        print(f"  {name:<{width + 10}}  {', '.join(keys) or '(schema only)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
