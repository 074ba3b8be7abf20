"""tile_resize's single-thread CPU time per pass order, on the bench's photo-like images.

CPU time of one OpenMP thread (time.thread_time) is what an A/B of two kernels needs on a
shared, saturated machine, where wall-clock runs vary 2-3x. Prints one JSON line of
{case: [median ms, min ms]}; alternate runs of two builds and compare the minima, e.g.

    PYTHONPATH=$PWD python scripts/tile_resize_cpu_time.py 13
    PYTHONPATH=$PWD python scripts/tile_resize_cpu_time.py 12
    cd <older checkout> && PYTHONPATH=$PWD python <this script> none   # no pillow= argument
"""
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.getcwd())  # the checkout being measured, for its bench/ helpers
import slime_core  # noqa: E402,F401  (loads the extension)
from bench.bench_tile_resize import photo_like  # noqa: E402
from slime_core.ops.tile_resize import tile_resize  # noqa: E402
from slime_core.preprocess import plan_slime  # noqa: E402

MIXED = [(1920, 1080), (640, 480), (4000, 3000), (1280, 720), (500, 2000), (3000, 300),
         (1024, 1024), (800, 600), (2048, 1536), (336, 336), (1080, 1920), (720, 1280),
         (1600, 900), (300, 3000), (2592, 1944), (1000, 700)]
CASES = {"1920x1080": [(1920, 1080)], "4000x3000": [(4000, 3000)], "1080x1920": [(1080, 1920)],
         "500x2000": [(500, 2000)], "7x1500": [(7, 1500)], "40x2500": [(40, 2500)],
         "mixed16": MIXED}


def main():
    setting = sys.argv[1] if len(sys.argv) > 1 else "installed"
    kw = {} if setting == "none" else {"pillow": int(setting) if setting.isdigit() else setting}
    torch.set_num_threads(1)
    res = {"pillow": setting}
    for name, sizes in CASES.items():
        images = [torch.from_numpy(photo_like(w, h, i)) for i, (w, h) in enumerate(sizes)]
        plans = [plan_slime(w, h) for w, h in sizes]
        buf, _ = tile_resize(images, plans, **kw)
        ts = []
        for _ in range(5 if len(sizes) > 1 else 11):
            t0 = time.thread_time()
            tile_resize(images, plans, out=buf, **kw)
            ts.append(time.thread_time() - t0)
        res[name] = [round(float(np.median(ts)) * 1e3, 2), round(float(np.min(ts)) * 1e3, 2)]
    print(json.dumps(res))


if __name__ == "__main__":
    main()
