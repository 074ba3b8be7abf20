"""slime_core: fused kernels and a minimal model for SliME-style high-resolution LMMs.

Importing the package loads the compiled extension, which registers the torch.ops.slime.*
operators; the public, validated functions live in slime_core.ops.
"""
import torch  # noqa: F401  (libtorch must be loaded before the extension)

from slime_core._ext import load as _load_extension

__version__ = "0.1.0"

_C = _load_extension()
# Read once here: a plain bool is a constant to torch.compile, where calling into _C from an
# op's input checks would break the graph.
BUILT_WITH_CUDA = bool(_C.build_info()["cuda"])

from slime_core import ops  # noqa: E402,F401
