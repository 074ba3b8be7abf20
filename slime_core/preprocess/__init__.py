"""Preprocessing: grid planners, image adapters and the processor that turns images into the
vision tower's pixel values (via the fused tile_resize op)."""
from slime_core.preprocess.adapters import ImageInputError, to_rgb_tensor
from slime_core.preprocess.planner import (Plan, pinpoints_to_wh, plan_fixed, plan_pinpoints,
                                           plan_slime, resize_and_pad, select_best_resolution,
                                           slime_grid)
from slime_core.preprocess.processor import ImageProcessor, ProcessorOutput

__all__ = ["ImageInputError", "ImageProcessor", "Plan", "ProcessorOutput", "pinpoints_to_wh",
           "plan_fixed", "plan_pinpoints", "plan_slime", "resize_and_pad", "select_best_resolution",
           "slime_grid", "to_rgb_tensor"]
