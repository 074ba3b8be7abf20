"""Image adapters: whatever the user hands the processor becomes a uint8 (H, W, 3) RGB tensor,
or a clear error naming the image and the problem.

Accepted: PIL images (any mode, converted to RGB), numpy uint8 arrays (H, W, 3), torch uint8
tensors (H, W, 3), and file paths (str or os.PathLike). Arrays and tensors are always channels
last: their layout is never guessed from their shape.

Transparency (alpha="drop" or "white"):
- "drop": image.convert("RGB"), as LLaVA's and SliME's loaders and transformers 4.x's
  CLIPImageProcessor do: RGBA loses its alpha, L is replicated, P and CMYK are mapped.
- "white": images with an alpha band or a transparency key are composited onto white first,
  as transformers' convert_to_rgb does from 5.21.0 on (up to 5.20.x it drops alpha, as
  "drop" does); other images as "drop"."""
import os

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from slime_core.ops.tile_resize import MAX_SIDE


class ImageInputError(ValueError):
    """An input image is unusable; the message names it (index or path) and the problem."""


def _check_size(name, width, height, max_side):
    if width == 0 or height == 0:
        raise ImageInputError(f"{name} is empty ({width}x{height})")
    if width > max_side or height > max_side:
        raise ImageInputError(f"{name} is {width}x{height}; each side must be at most "
                              f"{max_side}")


ALPHA_MODES = ("drop", "white")


def _from_pil(name, img, max_side, alpha):
    _check_size(name, img.width, img.height, max_side)
    if alpha == "white" and ("A" in img.getbands() or img.info.get("transparency") is not None):
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", img.size, (255, 255, 255, 255)), rgba)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return torch.from_numpy(np.asarray(img).copy())


def _from_path(name, path, max_side, alpha):
    try:
        with Image.open(path) as img:
            # The header gives the size before any pixel is decoded: refuse huge images early.
            _check_size(name, img.width, img.height, max_side)
            img.load()
            return _from_pil(name, img, max_side, alpha)
    except ImageInputError:
        raise
    except FileNotFoundError:
        raise ImageInputError(f"{name}: no such file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError,
            Image.DecompressionBombError) as e:
        raise ImageInputError(f"{name}: cannot read the image file ({type(e).__name__}: {e})") \
            from None


def _check_array_like(name, dtype, shape):
    if dtype not in (np.uint8, torch.uint8):
        fix = ("(x * 255).round().clamp(0, 255).to(torch.uint8)" if isinstance(dtype, torch.dtype)
               else "(x * 255).round().clip(0, 255).astype(np.uint8)")
        layout = ("; a CHW tensor (as torchvision's ToTensor gives) also needs .permute(1, 2, 0)"
                  if isinstance(dtype, torch.dtype) and len(shape) == 3 and shape[0] == 3
                  and shape[2] != 3 else "")
        raise ImageInputError(f"{name} must have dtype uint8 (0..255 pixel values), got "
                              f"{dtype}; if it holds values in [0, 1], convert it with {fix} "
                              f"first{layout}")
    if len(shape) != 3 or shape[2] != 3:
        raise ImageInputError(f"{name} must have shape (H, W, 3) (RGB, channels last), got "
                              f"{tuple(shape)}")


def _from_numpy(name, arr, max_side):
    _check_array_like(name, arr.dtype, arr.shape)
    _check_size(name, arr.shape[1], arr.shape[0], max_side)
    if not arr.flags.c_contiguous or any(s < 0 for s in arr.strides):
        raise ImageInputError(f"{name} is not C-contiguous (strides {arr.strides}, e.g. a "
                              "flipped or sliced view); pass np.ascontiguousarray(x)")
    return torch.from_numpy(arr)


def _from_tensor(name, t, max_side):
    _check_array_like(name, t.dtype, tuple(t.shape))
    _check_size(name, t.shape[1], t.shape[0], max_side)
    if not t.is_contiguous():
        raise ImageInputError(f"{name} is not contiguous (strides {t.stride()}); pass "
                              "x.contiguous()")
    return t


def to_rgb_tensor(image, index=0, max_side=MAX_SIDE, alpha="drop"):
    """One image -> uint8 (H, W, 3) contiguous tensor (CPU unless a tensor on another device
    was given). alpha: "drop" or "white", how transparent PIL images become RGB (see the
    module's docstring). Raises ImageInputError naming images[index] (and the path, for
    files)."""
    if alpha not in ALPHA_MODES:
        raise ValueError(f"alpha must be one of {ALPHA_MODES}, got {alpha!r}")
    name = f"images[{index}]"
    if isinstance(image, (str, os.PathLike)):
        return _from_path(f"{name} ({os.fspath(image)})", image, max_side, alpha)
    if isinstance(image, Image.Image):
        return _from_pil(name, image, max_side, alpha)
    if isinstance(image, np.ndarray):
        return _from_numpy(name, image, max_side)
    if isinstance(image, torch.Tensor):
        return _from_tensor(name, image, max_side)
    raise ImageInputError(f"{name} has unsupported type {type(image).__name__}; pass a PIL "
                          "image, a uint8 (H, W, 3) numpy array or torch tensor, or a file path")
