"""Regenerates tests/fixtures/pillow12/crops.npz: SliME's crops of a few small images made by
real Pillow 12.3.0, so that tests/test_tile_resize.py checks our pillow=12 pass order against
Pillow 12 while the test environment has the newest Pillow.

Run it under Pillow 12.3.0, e.g.
    python -m venv --system-site-packages /tmp/venv-pil12
    /tmp/venv-pil12/bin/pip install pillow==12.3.0
    PYTHONPATH=$PWD /tmp/venv-pil12/bin/python scripts/make_pillow_fixtures.py

The cases are small (tile size 32) and chosen where Pillow 12's and 13's pass orders differ
(global views of images a little taller than the tile, resize-and-pad of tall images) or where
12.x's own rule (100 times taller than wide) applies. Each case stores its input image, its
plan row (PLAN_FIELDS order, so the test does not depend on the planners) and Pillow's uint8
crops (n, 3, S, S). The pipeline below is SliME's released one: Image.resize for the global
view, Image.resize + paste on black + crop for the tiles."""
import argparse
import json
import os

import numpy as np
from PIL import Image

from slime_core.preprocess import plan_pinpoints, plan_slime

S = 32
# (width, height, planner, filter); plan_slime / plan_pinpoints with tile size S.
CASES = [
    (33, 35, "slime", "bicubic"),      # global view: 13 filters vertically first, 12 does not
    (31, 37, "slime", "bilinear"),
    (34, 101, "slime", "bicubic"),     # tiles of a tall image (the 337x1000)
    (48, 190, "pinpoints", "bicubic"),  # (the 500x2000)
    (47, 140, "pinpoints", "bilinear"),
    (3, 400, "slime", "bicubic"),      # more than 100 times taller than wide: 12's rule
    (2, 333, "pinpoints", "bilinear"),
    (190, 48, "slime", "bicubic"),     # wide: horizontal first in every version
    (20, 25, "slime", "bicubic"),      # upscaled: horizontal first in every version
]
PLANNERS = {"slime": plan_slime, "pinpoints": plan_pinpoints}
FILTERS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}


def image(w, h, rng):
    """Smooth gradients plus mild noise: rounding between the passes shows, and it compresses."""
    y = np.linspace(0, 1, h)[:, None, None]
    x = np.linspace(0, 1, w)[None, :, None]
    phase = rng.random(3) * 6
    base = 128 + 100 * np.sin(7 * x + 5 * y + phase) * np.cos(9 * y - 3 * x + phase[::-1])
    return np.clip(base + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.uint8)


def pillow_crops(arr, row, resample):
    """SliME's released preprocessing of one image with the installed Pillow."""
    gw, gh, nw, nh, ox, oy, glob = row
    im = Image.fromarray(arr, "RGB")
    crops = []
    if glob:
        crops.append(np.asarray(im.resize((S, S), resample)))
    if gw:
        canvas = Image.new("RGB", (gw * S, gh * S), (0, 0, 0))
        canvas.paste(im.resize((nw, nh), resample), (ox, oy))
        crops += [np.asarray(canvas.crop((tx * S, ty * S, (tx + 1) * S, (ty + 1) * S)))
                  for ty in range(gh) for tx in range(gw)]
    return np.stack(crops).transpose(0, 3, 1, 2).copy()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests",
                                                  "fixtures", "pillow12", "crops.npz"))
    args = ap.parse_args()
    import PIL
    if PIL.__version__ != "12.3.0":
        raise SystemExit(f"run this under Pillow 12.3.0 (installed: {PIL.__version__})")
    rng = np.random.default_rng(20261122)
    arrays, meta = {}, []
    for i, (w, h, planner, filt) in enumerate(CASES):
        arr = image(w, h, rng)
        row = PLANNERS[planner](w, h, S).as_row()
        arrays[f"image{i}"] = arr
        arrays[f"crops{i}"] = pillow_crops(arr, row, FILTERS[filt])
        meta.append({"size": [w, h], "planner": planner, "filter": filt, "plan": row})
    arrays["meta"] = np.array(json.dumps({"pillow": PIL.__version__, "tile_size": S,
                                          "cases": meta}))
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes, {len(CASES)} cases, "
          f"Pillow {PIL.__version__})")


if __name__ == "__main__":
    main()
