"""Test oracle (tests only): LLaVA-NeXT's original "anyres" preprocessing.

A step-for-step re-implementation, with Pillow, of what `process_anyres_image` in
llava/mm_utils.py of haotian-liu/LLaVA does (SliME's released llava/mm_utils.py carries the same
select_best_resolution, resize_and_pad_image and divide_to_patches), followed by the arithmetic
of the CLIPImageProcessor it hands every crop to. It is written from those functions' semantics,
not copied, and it is kept minimal so that it can be read against them:

- select_best_resolution: among (width, height) candidates, the one whose aspect-preserving fit
  keeps the most of the image's pixels (int() of the scaled sides); on a tie the one wasting
  the least canvas; on a full tie the earlier candidate.
- resize_and_pad_image: Image.resize to the fit (the scaled side rounded up with math.ceil,
  clamped to the canvas; Pillow's default filter, bicubic for RGB), pasted at
  ((W - w) // 2, (H - h) // 2) on a black RGB canvas.
- divide_to_patches: Image.crop of S x S boxes, rows top to bottom, left to right in a row.
- global view: Image.resize of the whole image to (shortest_edge, shortest_edge), first.
- CLIPImageProcessor on each S x S crop (its resize and centre crop change nothing there):
  rescale x * (1/255) in float64 then float32, normalise (x - mean) / std in float32.

All sizes here are (width, height), as in the original code.
"""
import math

import numpy as np
import torch
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
LLAVA_V16_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


def select_best_resolution(original_size, possible_resolutions):
    ow, oh = original_size
    best_fit, max_effective, min_wasted = None, 0, float("inf")
    for width, height in possible_resolutions:
        scale = min(width / ow, height / oh)
        effective = min(int(ow * scale) * int(oh * scale), ow * oh)
        wasted = width * height - effective
        if effective > max_effective or (effective == max_effective and wasted < min_wasted):
            best_fit, max_effective, min_wasted = (width, height), effective, wasted
    return best_fit


def resize_and_pad_image(image, target_resolution):
    ow, oh = image.size
    tw, th = target_resolution
    sw, sh = tw / ow, th / oh
    if sw < sh:
        nw, nh = tw, min(math.ceil(oh * sw), th)
    else:
        nw, nh = min(math.ceil(ow * sh), tw), th
    canvas = Image.new("RGB", (tw, th), (0, 0, 0))
    canvas.paste(image.resize((nw, nh)), ((tw - nw) // 2, (th - nh) // 2))
    return canvas


def divide_to_patches(image, patch_size):
    w, h = image.size
    return [image.crop((x, y, x + patch_size, y + patch_size))
            for y in range(0, h, patch_size) for x in range(0, w, patch_size)]


def clip_normalise(crop, mean=CLIP_MEAN, std=CLIP_STD):
    """CLIPImageProcessor's rescale and normalise of one RGB crop -> float32 (3, S, S)."""
    x = (np.asarray(crop).astype(np.float64) * (1 / 255)).astype(np.float32)
    x = (x - np.array(mean, np.float32)) / np.array(std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


def process_anyres_image(image, grid_pinpoints=LLAVA_V16_PINPOINTS, patch_size=336,
                         shortest_edge=336, mean=CLIP_MEAN, std=CLIP_STD):
    """The original pipeline on one RGB PIL image -> float32 (1 + tiles, 3, S, S)."""
    best = select_best_resolution(image.size, grid_pinpoints)
    patches = divide_to_patches(resize_and_pad_image(image, best), patch_size)
    crops = [image.resize((shortest_edge, shortest_edge))] + patches
    return torch.stack([clip_normalise(c, mean, std) for c in crops])
