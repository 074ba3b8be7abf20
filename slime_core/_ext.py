"""Loads the compiled extension slime_core._C and refuses a missing or stale one with the
exact command that rebuilds it (an opaque "undefined symbol" or a schema mismatch deep inside
an op is much harder to act on)."""
import glob
import hashlib
import importlib
import os

import torch

_PKG_DIR = os.path.dirname(os.path.abspath(__file__))
_REPO_DIR = os.path.dirname(_PKG_DIR)
# Must list the same files as setup.py's source_files(), which compiles their hash into _C.
_SOURCE_PATTERNS = ["csrc/include/slime/*.h", "csrc/cpu/*.cpp", "csrc/cpu/*.h", "csrc/cuda/*.cu",
                    "csrc/cuda/*.cuh", "csrc/torch/*.cpp", "csrc/torch/*.h"]

REBUILD_HINT = (
    "Rebuild it against the installed torch from the repository root with:\n"
    "    pip install --no-build-isolation -e .\n"
    "(torch must be installed first; add SLIME_CUDA=1 to force the CUDA kernels.)"
)


class ExtensionError(ImportError):
    """The compiled extension is missing, broken or built from other sources."""


def checkout_source_hash(repo_dir=_REPO_DIR):
    """Hash of the C++/CUDA sources next to the package, or None outside a source checkout
    (an installed wheel carries no csrc/ and cannot be stale in this sense)."""
    if not os.path.isfile(os.path.join(repo_dir, "setup.py")):
        return None
    files = sorted(f for p in _SOURCE_PATTERNS for f in glob.glob(os.path.join(repo_dir, p)))
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        h.update(os.path.relpath(f, repo_dir).replace(os.sep, "/").encode())
        with open(f, "rb") as fh:
            h.update(fh.read())
    return h.hexdigest()[:16]


def check_build(info, source_hash, torch_version):
    """Returns None if `info` (the dict _C.build_info() gives) matches this checkout and this
    torch, else a sentence saying what is stale."""
    if info["torch_version"] != torch_version:
        return (f"it was built against torch {info['torch_version']} but torch {torch_version} "
                "is installed")
    if source_hash is not None and info["source_hash"] != source_hash:
        return (f"it was built from other sources (build {info['source_hash']}, checkout "
                f"{source_hash}): csrc/ changed since the last build")
    return None


def load(module_name="slime_core._C"):
    """Imports the extension (which registers torch.ops.slime.*) and returns it."""
    try:
        mod = importlib.import_module(module_name)
    except ImportError as e:
        raise ExtensionError(
            f"slime_core's compiled extension {module_name} could not be loaded: {e}\n"
            + REBUILD_HINT) from e
    if os.environ.get("SLIME_ALLOW_STALE") != "1":
        problem = check_build(mod.build_info(), checkout_source_hash(), torch.__version__)
        if problem is not None:
            raise ExtensionError(
                f"slime_core's compiled extension {module_name} is stale: {problem}.\n"
                + REBUILD_HINT + "\n(Set SLIME_ALLOW_STALE=1 to load it anyway.)")
    return mod
