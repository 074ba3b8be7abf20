"""Input validation shared by the ops: every message names the argument and what was wrong."""
import torch


def check_tensor(name, t, *, dtypes=None, ndim=None, device=None):
    """Raises TypeError/ValueError naming `name` unless t is a tensor of the given kind."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if dtypes is not None and t.dtype not in dtypes:
        allowed = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        got = str(t.dtype).replace("torch.", "")
        raise TypeError(f"{name} must have dtype {allowed}; got {got}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if device is not None and t.device != torch.device(device):
        raise ValueError(f"{name} is on {t.device} but must be on {device}")
    return t


def check_backend(device, what="the fused ops"):
    """Refuses a CUDA device when the extension was built without its CUDA kernels (a CPU
    build, or nvcc missing at build time), with the command that fixes it; call it where a
    device is chosen, so the error comes at construction rather than at the first call."""
    device = torch.device(device)
    if device.type == "cuda":
        import slime_core
        if not slime_core.BUILT_WITH_CUDA:
            raise RuntimeError(
                f"{what} cannot run on {device}: slime_core was built without CUDA kernels (CPU "
                "torch or no nvcc at build time). With a CUDA torch and nvcc installed, rebuild: "
                "SLIME_CUDA=1 pip install --no-build-isolation -e .")
    elif device.type not in ("cpu", "meta"):
        raise RuntimeError(f"{what} run on cpu and cuda devices, not {device}")


def check_same_device(**tensors):
    """Raises ValueError naming two of the (non-None) tensors that sit on different devices."""
    named = [(n, t) for n, t in tensors.items() if t is not None]
    if not named:
        return
    first_name, first = named[0]
    check_backend(first.device)
    for n, t in named[1:]:
        if t.device != first.device:
            raise ValueError(f"{n} is on {t.device} but {first_name} is on {first.device}; "
                             "all inputs must be on one device")


def check_same_dtype(**tensors):
    """Raises TypeError naming two of the (non-None) tensors whose dtypes differ."""
    named = [(n, t) for n, t in tensors.items() if t is not None]
    if not named:
        return
    first_name, first = named[0]
    for n, t in named[1:]:
        if t.dtype != first.dtype:
            raise TypeError(f"{n} has dtype {t.dtype} but {first_name} has {first.dtype}; "
                            "they must match")
