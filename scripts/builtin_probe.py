"""How much of the built-in dataset's answers each of SliME's views still holds.

    PYTHONPATH=. python scripts/builtin_probe.py [--images 300] [--tile 112] [--detail 0.02]

For every cell of every image, the pixels around the cell's cluster (the record's "box") are
cut from (a) the global view (the whole image resized to tile x tile) and (b) the local view
(the image resized into SliME's grid canvas, which the tiles are cut from), both with
Pillow's bicubic resize as the processor does, and scaled to one fixed feature size. A linear
classifier per view then predicts the cluster's digit and the shape of its first object from
those pixels, trained on 80% of the cells and scored on the rest. The classifier is told
where to look, so the scores measure what each view's resolution keeps, not localisation.
"""
import argparse
import os
import tempfile

import numpy as np
import torch
from PIL import Image

from slime_core.data import builtin as bi
from slime_core.preprocess import plan_slime

FEATURE_HW = (12, 48)  # a cluster is about 1 x 5.5 shapes


def crop_features(view, box, scale_x, scale_y, off_x=0, off_y=0):
    x0, y0, x1, y1 = box
    pad = 0.25 * (y1 - y0)  # a margin so that antialiased edges are kept
    region = (off_x + (x0 - pad) * scale_x, off_y + (y0 - pad) * scale_y,
              off_x + (x1 + pad) * scale_x, off_y + (y1 + pad) * scale_y)
    # Resampling a box of the view, not of the original: no detail the view lacks comes back.
    patch = view.resize(FEATURE_HW[::-1], Image.BILINEAR, box=region)
    return np.asarray(patch, dtype=np.float32).reshape(-1) / 255


def probe(features, labels, classes, seed):
    x = torch.tensor(np.stack(features))
    y = torch.tensor(labels)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(y), generator=g)
    cut = int(0.8 * len(y))
    tr, te = perm[:cut], perm[cut:]
    mean, std = x[tr].mean(0), x[tr].std(0) + 1e-3
    x = (x - mean) / std
    model = torch.nn.Linear(x.shape[1], classes)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(300):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[tr]), y[tr]).backward()
        opt.step()
    with torch.no_grad():
        return (model(x[te]).argmax(1) == y[te]).float().mean().item()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--tile", type=int, default=112)
    ap.add_argument("--detail", type=float, default=0.02)
    ap.add_argument("--jitter", type=float, default=0.25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        paths = bi.build_builtin(folder, seed=args.seed, n_train=args.images, n_val=1,
                                 detail_frac=args.detail, jitter=args.jitter,
                                 workers=args.workers)
        # One row per (image, cell), every cell's truth from its scene (the generator's
        # defaults but detail_frac, as built above).
        feats = {"global": [], "local": []}
        digits, shapes = [], []
        for i in range(args.images):
            scene = bi._scene(args.seed, "train", i, (1000, 2000), (0.5, 0.8), args.detail, 3,
                              args.jitter)
            image = Image.open(os.path.join(paths.image_folder, f"train_{i:06d}.png"))
            w, h = image.size
            S = args.tile
            plan = plan_slime(w, h, S)
            global_view = image.resize((S, S), Image.BICUBIC)
            local_view = image.resize((plan.new_w, plan.new_h), Image.BICUBIC)
            for cell in scene["cells"]:
                feats["global"].append(crop_features(global_view, cell["box"], S / w, S / h))
                feats["local"].append(crop_features(local_view, cell["box"], plan.new_w / w,
                                                    plan.new_h / h))
                digits.append(bi.DIGITS.index(cell["digit"]))
                shapes.append(bi.SHAPES.index(cell["shapes"][0]))
        size = round(args.detail * 1500)
        print(f"{args.images} images x 9 cells, tile {S}, detail_frac {args.detail}, jitter "
              f"{args.jitter} (a shape "
              f"of a 1500 x 1000 image: {size} px, {size * S / 1500:.1f} px in the global "
              f"view, {size * 3 * S / 1500:.1f} px in the local view)")
        print("view     digit (chance 0.10)   first shape (chance 0.25)")
        for view in ("global", "local"):
            d = probe(feats[view], digits, 10, args.seed)
            s = probe(feats[view], shapes, 4, args.seed)
            print(f"{view:8s} {d:19.3f}   {s:25.3f}")


if __name__ == "__main__":
    main()
