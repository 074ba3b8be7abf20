"""The image processor users call: images in, the vision tower's pixel values out.

    proc = ImageProcessor()                        # SliME: UHD grid, 336 tiles, CLIP mean/std
    out = proc(["photo.jpg", pil_image, np_array])
    out.pixel_values     # (total_crops, 3, 336, 336) float32: per image [global] + tiles
    out.crops_per_image  # [1 + n_i, ...]
    out.grids            # [(tiles across, tiles down), ...]
    out.image_sizes      # [(width, height), ...] of the originals

Plans are computed on the host (slime_core.preprocess.planner); one tile_resize call then
produces every crop of the batch, bit-exact to SliME's Pillow pipeline."""
import dataclasses

import torch

from slime_core.ops.tile_resize import CLIP_MEAN, CLIP_STD, MAX_SIDE, pillow_version, tile_resize
from slime_core.preprocess import planner as _planner
from slime_core.preprocess.adapters import to_rgb_tensor


@dataclasses.dataclass
class ProcessorOutput:
    pixel_values: torch.Tensor  # (total_crops, 3, S, S)
    crops_per_image: list       # int per image
    grids: list                 # (grid_w, grid_h) per image; (0, 0): global view only
    image_sizes: list           # (width, height) per image
    plans: list                 # planner.Plan per image


@dataclasses.dataclass
class ImageProcessor:
    tile_size: int = 336
    planner: str = "slime"          # "slime" (UHD picker), "pinpoints" (LLaVA-NeXT), "fixed"
    filter: str = "bicubic"         # or "bilinear"
    mean: tuple = CLIP_MEAN
    std: tuple = CLIP_STD
    dtype: torch.dtype = torch.float32  # float32 / bfloat16 / float16; uint8: not normalised
    global_view: bool = True
    grid: tuple = (2, 2)            # planner "fixed"
    pinpoints: tuple = None         # planner "pinpoints": (width, height) pairs in pixels
    device: str = "cpu"             # where the crops are computed and returned
    max_side: int = MAX_SIDE        # larger images are refused (at most MAX_SIDE)
    pillow: object = "installed"    # whose resize to equal: installed Pillow, 12, 13, "12.1"

    def __post_init__(self):
        if self.planner not in _planner.PLANNERS:
            raise ValueError(f"planner must be one of {sorted(_planner.PLANNERS)}, got "
                             f"{self.planner!r}")
        if not 1 <= self.max_side <= MAX_SIDE:
            raise ValueError(f"max_side must be in [1, {MAX_SIDE}], got {self.max_side}")
        pillow_version(self.pillow)  # TypeError / ValueError now, not at the first batch
        self.plan(1, 1)  # validates tile_size, grid and pinpoints now, not at the first batch

    def plan(self, width, height):
        if self.planner == "slime":
            return _planner.plan_slime(width, height, self.tile_size, self.global_view)
        if self.planner == "pinpoints":
            return _planner.plan_pinpoints(width, height, self.tile_size, self.pinpoints,
                                           self.global_view)
        return _planner.plan_fixed(width, height, tuple(self.grid), self.tile_size,
                                   self.global_view)

    def __call__(self, images):
        if not isinstance(images, (list, tuple)):
            images = [images]
        device = torch.device(self.device)
        tensors = [to_rgb_tensor(img, i, self.max_side).to(device) for i, img in
                   enumerate(images)]
        sizes = [(int(t.shape[1]), int(t.shape[0])) for t in tensors]
        plans = [self.plan(w, h) for w, h in sizes]
        pixels, crops = tile_resize(tensors, plans, tile_size=self.tile_size, filter=self.filter,
                                    mean=self.mean, std=self.std, dtype=self.dtype,
                                    pillow=self.pillow)
        return ProcessorOutput(pixels, crops, [(p.grid_w, p.grid_h) for p in plans], sizes, plans)
