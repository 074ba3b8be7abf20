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
    assert b["compiler"].split()[0] in ("gcc", "clang") and len(b["compiler"].split()) > 1
    if not torch.version.cuda:
        assert b["cuda"] is False  # a CPU torch can never get the CUDA kernels
    if b["cuda"]:
        assert b["cuda_archs"]


# Each op's C++ checks raise (torch.ops.slime.* called directly skips the Python checks);
# on CUDA too where the build has it. Run in a child process: if an exception cannot unwind
# through the extension (seen on two GPU machines of one image, see README), the
# child dies of a signal and this test says so, instead of the whole test run dying.
_CPP_ERRORS = r"""
import torch, slime_core
devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() and slime_core._C.build_info()["cuda"]
                     else [])
for dev in devices:
    img = torch.zeros(30, 20, 3, dtype=torch.uint8, device=dev)
    plan = torch.tensor([[1, 1, 400, 300, 0, 0, 1, 0, 0]], dtype=torch.int32)
    q, k, v = (torch.randn(2, 2, n, 16, device=dev) for n in (7, 9, 9))
    x, e = torch.randn(2, 8, 16, device=dev), torch.randn(2, 3, 16, device=dev)
    cases = {
        "tile_resize": lambda: torch.ops.slime.tile_resize(
            [img], plan, 2, 336, 3, [0.5] * 3, [0.5] * 3, torch.float32),
        "query_attention": lambda: torch.ops.slime.query_attention(
            q, k, v, torch.ones(1, 9, dtype=torch.bool, device=dev), 1.0),
        "token_select": lambda: torch.ops.slime.token_select(
            x, torch.tensor([8, 8]), e, torch.ones(2, 3, dtype=torch.bool, device=dev), None,
            2.0, None, 1.0, None),
    }
    for name, call in cases.items():
        try:
            call()
            print(dev, name, "no error", flush=True)
        except Exception as err:
            print(dev, name, type(err).__name__, str(err).splitlines()[0][:80], flush=True)
"""


def test_cpp_errors_reach_python_as_exceptions():
    r = subprocess.run([sys.executable, "-c", _CPP_ERRORS], capture_output=True, text=True,
                       cwd=REPO, timeout=300)
    assert r.returncode == 0, (
        f"a C++ check in slime_core's extension raised and the process died (exit code "
        f"{r.returncode}; negative: killed by that signal) instead of Python getting the "
        f"error: exceptions do not unwind through this build. Compiler: "
        f"{slime_core._C.build_info()['compiler']}. Output so far:\n{r.stdout}{r.stderr}")
    cuda = torch.cuda.is_available() and slime_core._C.build_info()["cuda"]
    lines = r.stdout.splitlines()
    assert [line.split()[:2] for line in lines] == [
        [dev, op] for dev in ["cpu"] + ["cuda"] * cuda
        for op in ("tile_resize", "query_attention", "token_select")], r.stdout
    for line in lines:
        assert line.split()[2] == "ValueError", line


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
