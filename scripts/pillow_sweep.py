"""Random sweep of tile_resize against SliME's released Pillow pipeline with the installed
Pillow: random sizes (each side 1 to 2500, half of them drawn log-uniformly so that small
sides and extreme aspect ratios are common), both planners (slime, pinpoints), both filters,
tiles 336 / 384 / 448. Prints how many images differ (any uint8 value) with the default
pillow="installed" -- expected 0 -- and, to show the setting matters, with the other major
version's pass order.

    PYTHONPATH=$PWD python scripts/pillow_sweep.py -n 300 [--seed 1] [--device cpu]
"""
import argparse
import time

import numpy as np
import torch

import slime_core  # noqa: F401  (loads the extension)
from slime_core.ops.reference import tile_resize_ref
from slime_core.ops.tile_resize import installed_pillow_version, tile_resize
from slime_core.preprocess import plan_pinpoints, plan_slime

PLANNERS = {"slime": plan_slime, "pinpoints": plan_pinpoints}


def side(rng):
    if rng.random() < 0.5:
        return int(rng.integers(1, 2501))
    return int(np.clip(np.round(np.exp(rng.uniform(0, np.log(2500)))), 1, 2500))


def content(w, h, rng):
    """Noise on half the pixels, a ramp on the rest: both edges and gradients get resampled."""
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    ramp = ((xx * 255 // max(w - 1, 1) + yy * 97 // max(h - 1, 1)) % 256).astype(np.uint8)
    mask = rng.random((h, w)) < 0.5
    img[mask] = ramp[mask][:, None]
    return img


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=300)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    import PIL
    installed = installed_pillow_version()
    other = 12 if installed >= (13, 0) else 13
    rng = np.random.default_rng(args.seed)
    counts = {"installed": 0, other: 0}
    worst = {"installed": (0, None), other: (0, None)}  # largest difference, its case
    crops_total = 0
    t0 = time.time()
    for _ in range(args.n):
        w, h = side(rng), side(rng)
        planner = str(rng.choice(list(PLANNERS)))
        filt = str(rng.choice(["bicubic", "bilinear"]))
        S = int(rng.choice([336, 384, 448]))
        img = content(w, h, rng)
        plan = PLANNERS[planner](w, h, S)
        ref = tile_resize_ref(img, plan, filt)
        crops_total += ref.shape[0]
        t = [torch.from_numpy(img).to(args.device)]
        for setting in counts:
            out, _ = tile_resize(t, [plan], tile_size=S, filter=filt, dtype=torch.uint8,
                                 pillow=setting)
            d = int((out.cpu().int() - ref.int()).abs().max())
            if d:
                counts[setting] += 1
                if d > worst[setting][0]:
                    worst[setting] = (d, (w, h, planner, filt, S))
    print(f"Pillow {PIL.__version__}, {args.n} random images ({crops_total} crops), "
          f"seed {args.seed}, device {args.device}, {time.time() - t0:.0f} s")
    for setting, label in (("installed", "pillow='installed'"),
                           (other, f"pillow={other} (the other pass order)")):
        d, case = worst[setting]
        print(f"  {label}: {counts[setting]} of {args.n} images differ"
              + (f" (up to {d} grey levels, e.g. (w, h, planner, filter, S) = {case})"
                 if d else ""))
    return 1 if counts["installed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
