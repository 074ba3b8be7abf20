"""Builds slime_core and its compiled extension slime_core._C against the installed torch.

    pip install --no-build-isolation -e .      # torch must already be installed

Environment switches:
    SLIME_CUDA=0|1          force the CUDA kernels off or on (default: on when torch has CUDA
                            and nvcc is found)
    TORCH_CUDA_ARCH_LIST    CUDA architectures (default "8.0;9.0")
    SLIME_DEBUG=1           -O0 -g instead of -O3
    SLIME_PORTABLE=1        no -march=native (for a wheel that must run on other CPUs)
    MAX_JOBS                parallel compile jobs (read by torch's ninja build)
"""
import glob
import hashlib
import os
import sys

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
VERSION = "0.1.0"

try:
    import torch
    from torch.utils import cpp_extension
except ImportError:
    sys.exit(
        "slime_core: torch is not installed in this environment. Install torch first "
        "(CPU: `pip install torch==2.13.0`; on a CUDA machine keep the CUDA torch you have), "
        "then build with `pip install --no-build-isolation -e .` so the extension is compiled "
        "against that torch instead of a fresh download."
    )


def source_files():
    """Every file that goes into the extension, in a stable order (also hashed, see below)."""
    patterns = ["csrc/include/slime/*.h", "csrc/cpu/*.cpp", "csrc/cpu/*.h", "csrc/cuda/*.cu",
                "csrc/cuda/*.cuh", "csrc/torch/*.cpp", "csrc/torch/*.h"]
    return sorted(f for p in patterns for f in glob.glob(os.path.join(HERE, p)))


def source_hash():
    """Hash of the C++/CUDA sources, compiled into _C so `import slime_core` can detect a
    build that no longer matches the checkout (slime_core/_ext.py computes the same)."""
    h = hashlib.sha256()
    for f in source_files():
        h.update(os.path.relpath(f, HERE).replace(os.sep, "/").encode())
        with open(f, "rb") as fh:
            h.update(fh.read())
    return h.hexdigest()[:16]


def want_cuda():
    flag = os.environ.get("SLIME_CUDA", "").strip().lower()
    has_cuda_torch = torch.version.cuda is not None
    has_nvcc = cpp_extension.CUDA_HOME is not None
    if flag in ("0", "off", "false", "no"):
        return False
    if flag in ("1", "on", "true", "yes"):
        if not has_cuda_torch:
            sys.exit("slime_core: SLIME_CUDA=1 but the installed torch is a CPU build "
                     f"({torch.__version__}); install a CUDA torch or unset SLIME_CUDA.")
        if not has_nvcc:
            sys.exit("slime_core: SLIME_CUDA=1 but nvcc was not found; set CUDA_HOME.")
        return True
    return has_cuda_torch and has_nvcc


def extension():
    debug = os.environ.get("SLIME_DEBUG", "") == "1"
    cuda = want_cuda()
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    archs = os.environ["TORCH_CUDA_ARCH_LIST"] if cuda else ""

    opt = ["-O0", "-g"] if debug else ["-O3"]
    defines = [
        ("SLIME_SOURCE_HASH", f'"{source_hash()}"'),
        ("SLIME_TORCH_VERSION", f'"{torch.__version__}"'),
        ("SLIME_CUDA_ARCHS", f'"{archs}"'),
    ]
    if debug:
        defines.append(("SLIME_DEBUG_BUILD", "1"))
    # No -std here: torch's build picks the standard its headers need (C++17 up to 2.9,
    # C++20 after); our sources compile under both.
    cxx = opt + ["-fopenmp", "-Wall", "-Wno-unknown-pragmas"]
    if os.environ.get("SLIME_PORTABLE", "") != "1":
        # The extension is built on the machine that runs it, so let the compiler use its
        # vector units (AVX2/AVX-512); SLIME_PORTABLE=1 builds for baseline x86-64.
        cxx.append("-march=native")
    srcs = sorted(glob.glob("csrc/cpu/*.cpp")) + sorted(
        f for f in glob.glob("csrc/torch/*.cpp") if not f.endswith("_cuda.cpp"))
    common = dict(
        name="slime_core._C",
        include_dirs=[os.path.join(HERE, "csrc", "include"), os.path.join(HERE, "csrc")],
        define_macros=defines,
        extra_link_args=["-fopenmp"],
    )
    if not cuda:
        # CppExtension links only libtorch/libc10 CPU libraries: a CPU build never asks for
        # torch's CUDA libraries.
        return cpp_extension.CppExtension(sources=srcs, extra_compile_args={"cxx": cxx}, **common)
    srcs += sorted(glob.glob("csrc/cuda/*.cu")) + sorted(glob.glob("csrc/torch/*_cuda.cpp"))
    common["define_macros"].append(("SLIME_WITH_CUDA", "1"))
    nvcc = opt + ["-lineinfo", "--expt-relaxed-constexpr",
                  "-Xcompiler=-fopenmp"]
    return cpp_extension.CUDAExtension(sources=srcs, extra_compile_args={"cxx": cxx, "nvcc": nvcc},
                                       **common)


setup(
    name="slime_core",
    version=VERSION,
    description="Fused CPU/CUDA kernels and a minimal model for SliME-style high-resolution LMMs",
    packages=find_packages(include=["slime_core", "slime_core.*"]),
    python_requires=">=3.9",
    # torch is deliberately a floor, not a pin: an installed CPU or CUDA torch >= 2.4 is kept.
    install_requires=["torch>=2.4", "numpy", "pillow", "safetensors", "tokenizers"],
    ext_modules=[extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
    entry_points={"console_scripts": ["slime=slime_core.cli:main"]},
    zip_safe=False,
)
