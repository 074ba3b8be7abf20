"""The package, its compiled extension and the build checks (issue: foundation)."""
import os
import shutil
import subprocess
import sys

import pytest
import torch

import slime_core
from slime_core import _ext, info

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_build_info_matches_this_environment():
    b = slime_core._C.build_info()
    assert b["version"] == slime_core.__version__
    assert b["torch_version"] == torch.__version__
    assert b["source_hash"] == _ext.checkout_source_hash(REPO)
    assert b["omp_max_threads"] >= 1
    if not torch.version.cuda:
        assert b["cuda"] is False  # a CPU torch can never get the CUDA kernels
    if b["cuda"]:
        assert b["cuda_archs"]


def test_info_command_prints_build_and_ops():
    out = subprocess.run([sys.executable, "-m", "slime_core.info", "--json"], check=True,
                         capture_output=True, text=True, cwd=REPO).stdout
    import json

    data = json.loads(out)
    assert data["torch"] == torch.__version__
    assert data["slime_core"] == slime_core.__version__
    assert set(data["ops"]) == set(info.registered_ops())
    plain = subprocess.run([sys.executable, "-m", "slime_core.info"], check=True,
                           capture_output=True, text=True, cwd=REPO).stdout
    assert "cuda_kernels" in plain and "omp_max_threads" in plain


def test_every_registered_op_has_a_cpu_kernel_and_a_fake():
    ops = info.registered_ops()
    for name, keys in ops.items():
        assert "CPU" in keys, f"{name} has no CPU kernel"
        # register_fake in Python installs a Meta kernel, which torch.compile needs.
        assert "Meta" in keys, f"{name} has no fake (Meta) kernel"
        if torch.cuda.is_available() and slime_core._C.build_info()["cuda"]:
            assert "CUDA" in keys, f"{name} has no CUDA kernel"


def test_torch_ops_slime_lists_the_ops():
    names = {n.split("::")[1] for n in info.registered_ops()}
    for n in names:
        assert hasattr(torch.ops.slime, n)


def test_missing_extension_names_the_rebuild_command():
    with pytest.raises(_ext.ExtensionError) as e:
        _ext.load("slime_core._C_that_was_never_built")
    msg = str(e.value)
    assert "could not be loaded" in msg
    assert "pip install --no-build-isolation -e ." in msg


def test_import_without_compiled_extension_explains(tmp_path):
    # A copy of the package with no .so in it: what a user gets after a failed build.
    shutil.copytree(os.path.join(REPO, "slime_core"), tmp_path / "slime_core",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    # An editable install maps `slime_core` to the checkout through a meta-path finder;
    # drop it so the import really resolves to the copy.
    code = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path "
            "if 'editable' not in repr(f).lower()]; sys.path.insert(0, '.'); import slime_core")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode != 0
    assert "ExtensionError" in r.stderr
    assert "pip install --no-build-isolation -e ." in r.stderr


def test_stale_build_is_detected(tmp_path):
    # A checkout whose csrc/ differs from what the extension was compiled from.
    shutil.copytree(os.path.join(REPO, "csrc"), tmp_path / "csrc")
    shutil.copy(os.path.join(REPO, "setup.py"), tmp_path / "setup.py")
    good = _ext.checkout_source_hash(str(tmp_path))
    assert good == slime_core._C.build_info()["source_hash"]
    with open(tmp_path / "csrc" / "cpu" / "runtime.cpp", "a") as f:
        f.write("\n// edited\n")
    changed = _ext.checkout_source_hash(str(tmp_path))
    assert changed != good
    b = dict(slime_core._C.build_info())
    problem = _ext.check_build(b, changed, torch.__version__)
    assert problem is not None and "csrc/ changed" in problem
    assert _ext.check_build(b, good, torch.__version__) is None
    problem = _ext.check_build(b, good, "0.0.1")
    assert "built against torch" in problem
    # Outside a source checkout (an installed wheel) there is nothing to compare.
    assert _ext.checkout_source_hash(str(tmp_path / "csrc")) is None
