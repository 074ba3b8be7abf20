"""Plain-PyTorch references of the fused ops: readable, slow, used by the tests and the
benchmarks as the ground truth the kernels are checked against."""
import torch  # noqa: F401
