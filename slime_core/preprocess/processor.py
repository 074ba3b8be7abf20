"""The image processor users call: images in, the vision tower's pixel values out.

    proc = ImageProcessor()                        # SliME: UHD grid, 336 tiles, CLIP mean/std
    out = proc(["photo.jpg", pil_image, np_array])
    out.pixel_values     # (total_crops, 3, 336, 336) float32: per image [global] + tiles
    out.crops_per_image  # [1 + n_i, ...]
    out.grids_wh         # [(tiles across, tiles down), ...]
    out.image_sizes      # int64 (B, 2): (height, width) of the originals, as HF's

    hf = ImageProcessor.from_hf("llava-v1.6-mistral-7b-hf/")  # or its dict, or HF's processor
    out = hf(images)     # pixel_values (B, max_crops, 3, S, S), zero-padded, as HF's
    model(**out, input_ids=...)  # HF's LlavaNextForConditionalGeneration, as HF's output

Plans are computed on the host (slime_core.preprocess.planner); one tile_resize call then
produces every crop of the batch, bit-exact to the Pillow pipeline it reproduces."""
import collections.abc
import json
import os

import torch

from slime_core.ops._checks import check_backend
from slime_core.ops.tile_resize import CLIP_MEAN, CLIP_STD, MAX_SIDE, pillow_version, tile_resize
from slime_core.preprocess import planner as _planner
from slime_core.preprocess.adapters import ALPHA_MODES, to_rgb_tensor

LAYOUTS = ("flat", "hf")


class ProcessorOutput(collections.abc.Mapping):
    """What ImageProcessor returns for a batch of B images.

    As a mapping it holds exactly the model inputs, pixel_values and image_sizes, like HF's
    BatchFeature, so `model(**out, input_ids=...)` and `out["pixel_values"]` work; the rest are
    attributes:

    pixel_values:    layout "flat": (total_crops, 3, S, S), every image's crops one after the
                     other; layout "hf": (B, max_crops, 3, S, S), each image's crops then zeros
    image_sizes:     int64 (B, 2): (height, width) of each original image, HF's order
    crops_per_image: list of B ints: crops of each image (global view + tiles)
    grids_wh:        list of B (tiles across, tiles down); (0, 0): global view only
    plans:           list of B planner.Plan
    layout:          "flat" or "hf"
    """

    _MODEL_INPUTS = ("pixel_values", "image_sizes")

    def __init__(self, pixel_values, image_sizes, crops_per_image, grids_wh, plans, layout):
        self.pixel_values = pixel_values
        self.image_sizes = image_sizes
        self.crops_per_image = crops_per_image
        self.grids_wh = grids_wh
        self.plans = plans
        self.layout = layout

    def __getitem__(self, key):
        if key not in self._MODEL_INPUTS:
            raise KeyError(f"{key!r}: the mapping holds the model inputs {self._MODEL_INPUTS}; "
                           "crops_per_image, grids_wh, plans and layout are attributes")
        return getattr(self, key)

    def __iter__(self):
        return iter(self._MODEL_INPUTS)

    def __len__(self):
        return len(self._MODEL_INPUTS)

    def __repr__(self):
        return (f"ProcessorOutput(pixel_values={tuple(self.pixel_values.shape)} "
                f"{self.pixel_values.dtype}, image_sizes={self.image_sizes.tolist()}, "
                f"crops_per_image={self.crops_per_image}, grids_wh={self.grids_wh}, "
                f"layout={self.layout!r})")

    def to(self, device=None, dtype=None):
        """Moves both tensors to `device` and casts the floating ones (pixel_values unless it is
        uint8) to `dtype`, in place, as BatchFeature.to does; returns self. A dtype may be
        passed as the only positional argument: out.to(torch.bfloat16)."""
        if isinstance(device, torch.dtype):
            if dtype is not None:
                raise TypeError("to() got two dtypes; pass to(device, dtype)")
            device, dtype = None, device
        if dtype is not None and not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating dtype, got {dtype}")
        pv_dtype = dtype if self.pixel_values.is_floating_point() else None
        self.pixel_values = self.pixel_values.to(device=device, dtype=pv_dtype)
        self.image_sizes = self.image_sizes.to(device=device)
        return self

    def image_tokens_llava_next(self, patch_size=14, vision_feature_select_strategy="default",
                                num_additional_image_tokens=1):
        """Image tokens each image takes in HF's LLaVA-NeXT (what LlavaNextProcessor puts in
        the prompt and the model fills): the global view's patches, plus the tiles' patches
        with the padding rows or columns removed, plus one newline token per remaining row.
        Defaults: the llava-v1.6 checkpoints' (14-pixel patches, CLS dropped by the "default"
        feature selection, one additional CLS token). Returns a list of B ints."""
        if not isinstance(patch_size, int) or patch_size < 1:
            raise ValueError(f"patch_size must be a positive integer, got {patch_size!r}")
        if vision_feature_select_strategy not in ("default", "full"):
            raise ValueError("vision_feature_select_strategy must be 'default' or 'full', got "
                             f"{vision_feature_select_strategy!r}")
        counts = []
        for i, (plan, (h, w)) in enumerate(zip(self.plans, self.image_sizes.tolist())):
            side = plan.tile_size // patch_size
            if not plan.global_view or plan.grid_w == 0 or plan.tile_size % patch_size:
                raise ValueError(f"image {i}: LLaVA-NeXT needs a global view and tiles whose "
                                 f"size ({plan.tile_size}) is a multiple of patch_size "
                                 f"({patch_size})")
            rows, cols = side * plan.grid_h, side * plan.grid_w
            # Unpadding as HF's model does it: the side the image does not fill loses its
            # padding, counted in patches; round(, 7) absorbs float error in the ratio.
            if w / h > cols / rows:
                rows -= 2 * ((rows - int(round(h * (cols / w), 7))) // 2)
            else:
                cols -= 2 * ((cols - int(round(w * (rows / h), 7))) // 2)
            base = side * side + num_additional_image_tokens
            base -= vision_feature_select_strategy == "default"
            counts.append(rows * cols + rows + base)
        return counts

    def image_tokens_slime(self, global_tokens=576, separator_tokens=1, tokens_per_tile=144):
        """At most how many visual tokens each image gives SliME's LLM: the global view's
        tokens and the separator after them (when the plan has a global view), plus
        tokens_per_tile compressed tokens per tile before text-guided selection keeps some of
        them. Returns a list of B ints."""
        return [(global_tokens + separator_tokens) * plan.global_view
                + tokens_per_tile * plan.grid_w * plan.grid_h for plan in self.plans]


# HF's LLaVA-NeXT image processor class defaults, used for keys a config leaves out.
_HF_DEFAULTS = {
    "do_resize": True, "size": {"shortest_edge": 224}, "resample": 3, "do_center_crop": True,
    "crop_size": {"height": 224, "width": 224}, "do_rescale": True, "rescale_factor": 1 / 255,
    "do_normalize": True, "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD),
    "do_convert_rgb": True, "do_pad": True,
    "image_grid_pinpoints": [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
}
_HF_TYPES = ("LlavaNextImageProcessor", "LlavaNextImageProcessorPil",
             "LlavaNextImageProcessorFast")
# Keys that carry no setting of LLaVA-NeXT's preprocessing (bookkeeping, or options that only
# matter for shapes this constructor already requires).
_HF_INERT = ("image_processor_type", "processor_class", "default_to_square", "data_format",
             "input_data_format", "return_tensors", "device", "disable_grouping",
             "image_seq_length", "aspect_ratio_setting", "pad_size")
_HF_RESAMPLE = {2: "bilinear", 3: "bicubic"}


def _hf_config(obj):
    """HF image processor config as a dict, from an image processor or a processor holding one,
    a dict, or a path (preprocessor_config.json, or transformers 5's processor_config.json,
    where the image processor's settings sit under "image_processor")."""
    if hasattr(obj, "to_dict") and callable(obj.to_dict):
        cfg = obj.to_dict()
    elif isinstance(obj, collections.abc.Mapping):
        cfg = dict(obj)
    elif isinstance(obj, (str, os.PathLike)):
        path = os.fspath(obj)
        if os.path.isdir(path):
            names = ("preprocessor_config.json", "processor_config.json")
            found = [n for n in names if os.path.isfile(os.path.join(path, n))]
            path = os.path.join(path, found[0] if found else names[0])
        try:
            with open(path, encoding="utf-8") as f:
                cfg = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(f"from_hf: no such file {path}") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"from_hf: {path} is not valid JSON ({e})") from None
        if not isinstance(cfg, dict):
            raise ValueError(f"from_hf: {path} does not hold a JSON object")
    else:
        raise TypeError("from_hf takes an HF image processor (or a processor holding one), its "
                        "config dict, or a path to preprocessor_config.json / "
                        f"processor_config.json or their folder; got {type(obj).__name__}")
    nested = cfg.get("image_processor")
    return dict(nested) if isinstance(nested, collections.abc.Mapping) else cfg


def _square(name, size):
    """The side of a square HF size dict ({"shortest_edge": s} or {"height": s, "width": s})."""
    if not isinstance(size, collections.abc.Mapping):
        raise ValueError(f"from_hf: {name} must be a dict, got {size!r}")
    keys = {k for k, v in size.items() if v is not None}
    if keys == {"shortest_edge"}:
        return size["shortest_edge"]
    if keys == {"height", "width"} and size["height"] == size["width"]:
        return size["height"]
    raise ValueError(f"from_hf: {name}={dict(size)} is not supported; LLaVA-NeXT's crops are "
                     "square: {'shortest_edge': S} or {'height': S, 'width': S}")


def _pairs(name, value, order):
    if value is None:
        return None
    try:
        return tuple(tuple(p) for p in value)
    except TypeError:
        raise TypeError(f"{name} must be a list of {order} pairs, got {value!r}") from None


class ImageProcessor:
    """Images -> the vision tower's pixel values: each image is planned (a global view and a
    grid of tile_size x tile_size tiles), then one tile_resize call resizes, pads, normalises
    and cuts every crop of the batch, exactly as Pillow's resize, paste and crop would.

    tile_size:    S, the side of every crop (16 to 1024)
    planner:      "slime" (SliME's UHD grid, 2 to 7 tiles), "pinpoints" (LLaVA-NeXT's anyres),
                  "fixed" (grid_wh for every image)
    filter:       "bicubic" or "bilinear"
    mean, std:    per RGB channel; the output is (x / 255 - mean) / std
    dtype:        float32, bfloat16, float16 (normalised), or uint8 (pixels, not normalised)
    global_view:  the whole image resized to S x S is each image's first crop
    grid_wh:      planner "fixed": (tiles across, tiles down); (0, 0): global view only
    pinpoints_wh: planner "pinpoints": candidates as (width, height) pairs in pixels, the
                  original LLaVA-NeXT code's order
    pinpoints_hw: planner "pinpoints": candidates as (height, width) pairs, HF's
                  `image_grid_pinpoints` order. Default (neither): LLaVA-NeXT's list read as
                  (width, height), which is what the original code does.
    layout:       "flat": pixel_values (total_crops, 3, S, S); "hf": (B, max_crops, 3, S, S)
                  zero-padded, for HF's LlavaNextForConditionalGeneration (needs planner
                  "pinpoints" with pinpoints_hw, the list the model picks grids from)
    alpha:        "drop" (convert("RGB"), as LLaVA does) or "white" (composite transparent
                  images onto white, as transformers does from 5.21.0 on)
    device:       where the crops are computed and returned
    max_side:     larger images are refused (at most 16384)
    pillow:       whose Image.resize to equal bit for bit (Pillow's pass order changed in 13):
                  "installed" (default), 12, 13 or a version string such as "12.1"

    Arguments are keyword-only. from_hf builds one that reproduces an HF LLaVA-NeXT image
    processor bit for bit."""

    def __init__(self, *, tile_size=336, planner="slime", filter="bicubic", mean=CLIP_MEAN,
                 std=CLIP_STD, dtype=torch.float32, global_view=True, grid_wh=(2, 2),
                 pinpoints_wh=None, pinpoints_hw=None, layout="flat", alpha="drop",
                 device="cpu", max_side=MAX_SIDE, pillow="installed", **unordered):
        if "pinpoints" in unordered:
            raise TypeError("pinpoints= is ambiguous; pass pinpoints_wh=[(width, height), ...] "
                            "(original LLaVA-NeXT order) or pinpoints_hw=[(height, width), ...]"
                            " (HF's image_grid_pinpoints), or use ImageProcessor.from_hf")
        if "grid" in unordered:
            raise TypeError("grid= is ambiguous; pass grid_wh=(tiles across, tiles down)")
        if unordered:
            raise TypeError(f"unexpected keyword argument(s) {sorted(unordered)}")
        self.tile_size, self.planner, self.filter = tile_size, planner, filter
        self.mean, self.std, self.dtype, self.global_view = tuple(mean), tuple(std), dtype, \
            global_view
        self.grid_wh = tuple(grid_wh)
        self.pinpoints_wh = _pairs("pinpoints_wh", pinpoints_wh, "(width, height)")
        self.pinpoints_hw = _pairs("pinpoints_hw", pinpoints_hw, "(height, width)")
        self.layout, self.alpha, self.device, self.max_side = layout, alpha, device, max_side
        self.pillow = pillow
        if planner not in _planner.PLANNERS:
            raise ValueError(f"planner must be one of {sorted(_planner.PLANNERS)}, got "
                             f"{planner!r}")
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        if layout == "hf" and (planner != "pinpoints" or pinpoints_hw is None or not global_view):
            # HF's model re-derives each image's grid from image_sizes and its own
            # image_grid_pinpoints; a grid chosen any other way is laid out wrong, silently.
            raise ValueError("layout='hf' needs planner='pinpoints' with pinpoints_hw= (the "
                             "model's image_grid_pinpoints) and global_view=True; "
                             "ImageProcessor.from_hf sets them")
        if alpha not in ALPHA_MODES:
            raise ValueError(f"alpha must be one of {ALPHA_MODES}, got {alpha!r}")
        if not isinstance(max_side, int) or not 1 <= max_side <= MAX_SIDE:
            raise ValueError(f"max_side must be an integer in [1, {MAX_SIDE}], got {max_side!r}")
        pillow_version(pillow)  # TypeError / ValueError now, not at the first batch
        self.plan(1, 1)  # validates tile_size, grid and pinpoints now, not at the first batch
        check_backend(device, "ImageProcessor")  # a CUDA device on a CPU-only build: now

    def __repr__(self):
        keys = ("tile_size", "planner", "filter", "mean", "std", "dtype", "global_view",
                "grid_wh", "pinpoints_wh", "pinpoints_hw", "layout", "alpha", "device",
                "max_side", "pillow")
        return "ImageProcessor(" + ", ".join(f"{k}={getattr(self, k)!r}" for k in keys) + ")"

    @classmethod
    def from_hf(cls, obj, *, dtype=torch.float32, device="cpu", max_side=MAX_SIDE,
                alpha="white", pillow="installed"):
        """An ImageProcessor that reproduces an HF LLaVA-NeXT image processor bit for bit
        (pixel_values and image_sizes, ties between pinpoints included).

        obj: HF's LlavaNextImageProcessor / LlavaNextImageProcessorPil (or a LlavaNextProcessor
             holding one), its config dict, or a path to preprocessor_config.json,
             processor_config.json or the folder holding them; the dict and path forms need no
             transformers. Keys the config leaves out take HF's class defaults.
        Maps image_grid_pinpoints ((height, width) pairs) to pinpoints_hw, crop_size to
        tile_size, image_mean / image_std, resample (3: bicubic, 2: bilinear), do_pad to
        layout "hf", do_convert_rgb to alpha "white" (the compositing of transformers 5.21.0
        and later; pass alpha="drop" to match transformers up to 5.20.x, 4.x included, which
        drops the alpha band). Raises ValueError naming the key for any setting whose output
        it would not reproduce:
        non-square or unequal size and crop_size (a centre crop that cuts), another resample,
        rescale_factor other than 1/255, do_rescale / do_convert_rgb / do_pad False, unknown
        keys.

        Note HF's processor guesses the channel axis of numpy arrays: an (H, W, 3) array with
        H of 1, 3 or 4 is read as channels-first. Arrays given here are always (H, W, 3)."""
        cfg = _hf_config(obj)
        kind = cfg.get("image_processor_type")
        if kind is not None and kind not in _HF_TYPES:
            raise ValueError(f"from_hf: image_processor_type {kind!r} is not one of {_HF_TYPES}")
        if cfg.get("aspect_ratio_setting", "anyres") != "anyres":
            raise ValueError(f"from_hf: aspect_ratio_setting {cfg['aspect_ratio_setting']!r}; "
                             "only 'anyres' is supported")
        unknown = sorted(k for k in cfg if k not in _HF_DEFAULTS and k not in _HF_INERT)
        if unknown:
            raise ValueError(f"from_hf: unknown setting(s) {unknown}; cannot tell whether they "
                             "change the output")
        if cfg.get("pad_size") is not None:
            raise ValueError(f"from_hf: pad_size={cfg['pad_size']!r} is not supported")
        if cfg.get("data_format") not in (None, "channels_first"):
            raise ValueError(f"from_hf: data_format={cfg['data_format']!r}; only channels_first "
                             "(C, H, W) crops are produced")
        cfg = {**_HF_DEFAULTS, **{k: v for k, v in cfg.items() if k in _HF_DEFAULTS}}
        tile = _square("crop_size", cfg["crop_size"])
        side = _square("size", cfg["size"])
        if side != tile:
            # HF resizes the global view to `size`, then centre-crops every crop to crop_size.
            raise ValueError(f"from_hf: size {cfg['size']} and crop_size {cfg['crop_size']} "
                             "differ; only equal sizes (no centre crop) are reproduced")
        resample = cfg["resample"]
        try:  # an int or PIL's Resampling enum; torchvision's InterpolationMode is not Pillow's
            resample = None if isinstance(resample, bool) else int(resample)
        except (TypeError, ValueError):
            resample = None
        if resample not in _HF_RESAMPLE:
            raise ValueError(f"from_hf: resample={cfg['resample']!r}; only 3 (bicubic) and 2 "
                             "(bilinear) are reproduced")
        for key in ("do_rescale", "do_convert_rgb", "do_pad"):
            if cfg[key] is not True:
                raise ValueError(f"from_hf: {key}={cfg[key]!r}; only True is reproduced")
        if cfg["rescale_factor"] != 1 / 255:
            raise ValueError(f"from_hf: rescale_factor={cfg['rescale_factor']!r}; only 1/255 "
                             "is reproduced")
        if cfg["do_normalize"]:
            mean, std = cfg["image_mean"], cfg["image_std"]
        else:
            mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        return cls(tile_size=tile, planner="pinpoints", filter=_HF_RESAMPLE[resample],
                   mean=mean, std=std, dtype=dtype, global_view=True,
                   pinpoints_hw=cfg["image_grid_pinpoints"], layout="hf", alpha=alpha,
                   device=device, max_side=max_side, pillow=pillow)

    def plan(self, width, height):
        """The planner.Plan for an image of width x height."""
        if self.planner == "slime":
            return _planner.plan_slime(width, height, self.tile_size, self.global_view)
        if self.planner == "pinpoints":
            return _planner.plan_pinpoints(width, height, self.tile_size,
                                           pinpoints_wh=self.pinpoints_wh,
                                           pinpoints_hw=self.pinpoints_hw,
                                           global_view=self.global_view)
        return _planner.plan_fixed(width, height, self.grid_wh, self.tile_size,
                                   self.global_view)

    def __call__(self, images):
        """images: one image or a list (PIL images, uint8 (H, W, 3) arrays or tensors, file
        paths). Returns a ProcessorOutput."""
        if not isinstance(images, (list, tuple)):
            images = [images]
        device = torch.device(self.device)
        tensors = [to_rgb_tensor(img, i, self.max_side, self.alpha).to(device)
                   for i, img in enumerate(images)]
        sizes_hw = [(int(t.shape[0]), int(t.shape[1])) for t in tensors]
        plans = [self.plan(w, h) for h, w in sizes_hw]
        pixels, crops = tile_resize(tensors, plans, tile_size=self.tile_size, filter=self.filter,
                                    mean=self.mean, std=self.std, dtype=self.dtype,
                                    pillow=self.pillow)
        if self.layout == "hf":
            S = self.tile_size
            padded = pixels.new_zeros((len(plans), max(crops, default=0), 3, S, S))
            start = 0
            for i, n in enumerate(crops):
                padded[i, :n] = pixels[start:start + n]
                start += n
            pixels = padded
        image_sizes = torch.tensor(sizes_hw, dtype=torch.int64).reshape(-1, 2)
        return ProcessorOutput(pixels, image_sizes, crops, [(p.grid_w, p.grid_h) for p in plans],
                               plans, self.layout)
