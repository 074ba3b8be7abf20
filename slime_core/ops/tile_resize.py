"""tile_resize: SliME's image slicing in one call. Every image of a batch (uint8 HWC RGB, any
sizes) becomes its global view plus its padded tiles, resized exactly as Pillow's
Image.resize does, normalised with CLIP's mean/std, CHW.

Plans (how each image is sliced) come from slime_core.preprocess.planner; most users want
slime_core.preprocess.ImageProcessor, which also accepts PIL images, arrays and paths.

Pillow's versions differ in one thing that changes pixels: the order of its two passes
(pillow_vertical_first). The `pillow` setting says which version's order to follow: by default
the installed Pillow's, so our crops equal what the user's own Pillow code produces."""
import functools
import re

import torch

from slime_core.ops._checks import check_tensor

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

BILINEAR = 2  # Pillow's Image.Resampling.BILINEAR
BICUBIC = 3   # Pillow's Image.Resampling.BICUBIC (its default for RGB)
_FILTERS = {"bilinear": BILINEAR, "bicubic": BICUBIC, BILINEAR: BILINEAR, BICUBIC: BICUBIC}

PLAN_FIELDS = 7     # a plan's geometry row (Plan.as_row)
OP_PLAN_FIELDS = 9  # the op's row: geometry + global / tiles vertical-first flags
MAX_SIDE = 16384  # largest image side the op accepts (slime/tile_resize.h kTileResizeMaxSide)

_OUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.uint8)


def _filter_code(filter):
    try:
        return _FILTERS[filter.lower() if isinstance(filter, str) else int(filter)]
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"filter must be 'bicubic' or 'bilinear' (or Pillow's Image.BICUBIC / "
                         f"Image.BILINEAR), got {filter!r}") from None


# ---- Pillow's pass order ----
# Image.resize filters horizontally then vertically, each pass rounded to uint8, except:
#   Pillow 13.x (ImagingResampleInner): vertical first when the height shrinks, and by more
#     than twice as many pixels as the width does;
#   Pillow 12.2 to 12.x (Image.resize in Python): vertical first when the image is more than
#     100 times taller than wide and the height shrinks;
#   Pillow 12.1 and older: always horizontal first.
# The resampling arithmetic itself (windows, coefficients, rounding) is the same in all of them
# (Resample.c and Image.resize diffed across 11.3.0, 12.0.0, 12.1.0, 12.2.0, 12.3.0, 13.0.0).

def _parse_version(text):
    """(major, minor) of "13.0.0", "12.1", "13.1.0.dev0"; a bare major "12" gives that series'
    newest rule: (12, inf) compares above every (12, minor) and below (13, 0)."""
    m = re.fullmatch(r"(\d+)(?:\.(\d+)\S*)?", text.strip())
    if not m:
        return None
    return (int(m.group(1)), int(m.group(2)) if m.group(2) is not None else float("inf"))


@functools.cache
def installed_pillow_version():
    """(major, minor) of the installed Pillow, read once; None when Pillow is absent."""
    try:
        import PIL
    except ImportError:
        return None
    return _parse_version(getattr(PIL, "__version__", ""))


def pillow_version(pillow="installed"):
    """The (major, minor) whose pass order a `pillow` setting means.

    pillow: "installed" (the installed Pillow; the newest rule when Pillow is absent), a major
    version such as 12 or 13 (that series' newest rule: 12 means 12.2 to 12.x), or a version
    string such as "12.1" or "13.0.0"."""
    if isinstance(pillow, str):
        if pillow == "installed":
            v = installed_pillow_version()
            return v if v is not None else (13, 0)
        v = _parse_version(pillow)
        if v is None or v[0] < 1:
            raise ValueError(f"pillow must be 'installed', a major version (12, 13) or a "
                             f"version string like '12.1', got {pillow!r}")
        return v
    if isinstance(pillow, bool) or not isinstance(pillow, int):
        raise TypeError(f"pillow must be 'installed', an int major version or a version string, "
                        f"got {type(pillow).__name__}")
    if pillow < 1:
        raise ValueError(f"pillow major version must be positive, got {pillow}")
    return (pillow, float("inf"))  # that series' newest rule, as for the string "12"


def pillow_vertical_first(in_w, in_h, out_w, out_h, version):
    """Whether Pillow `version` ((major, minor), see pillow_version) resizes in_w x in_h to
    out_w x out_h with the vertical pass first. The one place the rule is written."""
    if version >= (13, 0):
        return in_h - out_h > 0 and in_h - out_h > 2 * (in_w - out_w)
    if version >= (12, 2):
        return in_h > 100 * in_w and out_h < in_h
    return False


def op_plan_rows(rows, sizes, tile_size, version):
    """The op's plan rows: each geometry row (PLAN_FIELDS) plus the vertical-first flags of its
    global view (S x S) and of its resize-and-pad (new_w x new_h). sizes: (width, height)."""
    out = []
    for r, (w, h) in zip(rows, sizes):
        g = r[6] and pillow_vertical_first(w, h, tile_size, tile_size, version)
        t = r[0] > 0 and pillow_vertical_first(w, h, r[2], r[3], version)
        out.append(list(r) + [int(bool(g)), int(bool(t))])
    return out


def _check_image(i, img, device):
    if not isinstance(img, torch.Tensor):
        raise TypeError(f"images[{i}] must be a torch.Tensor, got {type(img).__name__}")
    if img.dtype != torch.uint8:
        raise TypeError(f"images[{i}] must be uint8 (H, W, 3), got dtype "
                        f"{str(img.dtype).replace('torch.', '')}")
    if img.dim() != 3 or img.shape[2] != 3:
        raise ValueError(f"images[{i}] must have shape (H, W, 3) (RGB, channels last), got "
                         f"{tuple(img.shape)}")
    h, w = img.shape[0], img.shape[1]
    if h == 0 or w == 0:
        raise ValueError(f"images[{i}] is empty ({w}x{h})")
    if h > MAX_SIDE or w > MAX_SIDE:
        raise ValueError(f"images[{i}] is {w}x{h}; each side must be at most {MAX_SIDE}")
    if not img.is_contiguous():
        raise ValueError(f"images[{i}] must be contiguous (strides {img.stride()}); call "
                         ".contiguous() first")
    if img.device != device:
        raise ValueError(f"images[{i}] is on {img.device} but images[0] is on {device}")


def tile_resize(images, plans, *, tile_size=336, filter="bicubic", mean=CLIP_MEAN, std=CLIP_STD,
                dtype=torch.float32, out=None, pillow="installed"):
    """All crops of all images in one call.

    images: list of uint8 tensors, each (H_i, W_i, 3), contiguous, all on one device
    plans:  (N, 7) int32 CPU tensor, one Plan.as_row() per image (or a list of Plans)
    dtype:  float32 / bfloat16 / float16: normalised ((x / 255 - mean) / std in float32, then
            rounded to dtype); uint8: the resized, padded pixels, not normalised
    out:    optional (total_crops, 3, S, S) contiguous tensor on the images' device to write
            into (its dtype is used; e.g. a pinned buffer reused across batches)
    pillow: whose Image.resize to equal bit for bit: "installed" (default), 12, 13 or a version
            string (see pillow_version); it decides each resize's pass order
    Returns (pixel_values (total_crops, 3, S, S), crops_per_image list of int)."""
    if isinstance(images, torch.Tensor) or not isinstance(images, (list, tuple)):
        raise TypeError(f"images must be a list of (H, W, 3) uint8 tensors, got "
                        f"{type(images).__name__}")
    images = list(images)
    if not isinstance(plans, torch.Tensor):
        plans = torch.tensor([p.as_row() for p in plans], dtype=torch.int32).reshape(
            -1, PLAN_FIELDS)
    check_tensor("plans", plans, dtypes=(torch.int32,), ndim=2, device="cpu")
    if plans.shape != (len(images), PLAN_FIELDS):
        raise ValueError(f"plans must have shape ({len(images)}, {PLAN_FIELDS}), one row per "
                         f"image, got {tuple(plans.shape)}")
    device = images[0].device if images else torch.device("cpu")
    for i, img in enumerate(images):
        _check_image(i, img, device)
    if not isinstance(tile_size, int) or not 16 <= tile_size <= 1024:
        raise ValueError(f"tile_size must be an integer in [16, 1024], got {tile_size!r}")
    if out is not None:
        check_tensor("out", out, dtypes=_OUT_DTYPES, device=device)
        dtype = out.dtype
    if dtype not in _OUT_DTYPES:
        raise TypeError(f"dtype must be one of float32, bfloat16, float16, uint8; got {dtype}")
    mean = [float(v) for v in mean]
    std = [float(v) for v in std]
    if len(mean) != 3 or len(std) != 3 or any(v == 0 for v in std):
        raise ValueError(f"mean and std must have 3 values each, std nonzero; got {mean}, {std}")
    version = pillow_version(pillow)
    rows = plans.tolist()
    crops = [(1 if r[6] else 0) + r[0] * r[1] for r in rows]
    total = sum(crops)
    sizes = [(int(img.shape[1]), int(img.shape[0])) for img in images]
    plans = torch.tensor(op_plan_rows(rows, sizes, tile_size, version),
                         dtype=torch.int32).reshape(-1, OP_PLAN_FIELDS)
    if out is None:
        return torch.ops.slime.tile_resize(images, plans, total, tile_size, _filter_code(filter),
                                           mean, std, dtype), crops
    if tuple(out.shape) != (total, 3, tile_size, tile_size) or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous tensor of shape "
                         f"{(total, 3, tile_size, tile_size)}, got {tuple(out.shape)} "
                         f"(contiguous: {out.is_contiguous()})")
    torch.ops.slime.tile_resize_out(images, plans, total, tile_size, _filter_code(filter), mean,
                                    std, out)
    return out, crops


@torch.library.register_fake("slime::tile_resize")
def _(images, plans, total_crops, tile_size, filter, mean, std, out_dtype):
    device = images[0].device if images else plans.device
    return torch.empty((total_crops, 3, tile_size, tile_size), dtype=out_dtype, device=device)


@torch.library.register_fake("slime::tile_resize_out")
def _(images, plans, total_crops, tile_size, filter, mean, std, out):
    return None
