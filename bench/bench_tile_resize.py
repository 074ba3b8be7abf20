"""tile_resize vs SliME's Pillow + numpy pipeline on the same images.

Baseline (what the released code does per image, single-threaded): Image.resize to S x S
(global view), Image.resize to the planned size, paste on a black canvas, crop every tile,
then per crop numpy float32 x / 255, (x - mean) / std, HWC -> CHW; stacked. It starts from
decoded PIL images; ours from the same pixels as uint8 (H, W, 3) tensors. Plans are computed
beforehand for both. The outputs are asserted identical here (the tests check exactness);
ours follows the installed Pillow's pass order, as the baseline does (Pillow 13 filters many
portrait images vertically first, 12.x does not), so each run says which Pillow it used.

Napkin math: the op must read every source byte and write every output byte, so
nbytes = sum(H * W * 3) + total_crops * 3 * S * S * 4 (float32), compared with the copy
bandwidth measured in the same run (bound="memory").

    python -m bench --only tile_resize [--quick] [--device cuda]
"""
import numpy as np
import PIL
import torch
from PIL import Image

from bench.common import Row, sync, time_fn
from slime_core.ops.tile_resize import CLIP_MEAN, CLIP_STD, tile_resize
from slime_core.preprocess import plan_slime

S = 336


def photo_like(w, h, seed):
    """Smooth gradients and blobs plus sensor-like noise: resampling sees realistic content
    (noise alone or flat colour would flatter neither side)."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    x = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
    phase = rng.random(3).astype(np.float32) * 6.0
    base = 128 + 90 * np.sin(3 * x + 2 * y + phase) * np.cos(5 * y - x + phase[::-1])
    noise = rng.normal(0, 8, (h, w, 3)).astype(np.float32)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def pillow_pipeline(pil_images, plans, mean=CLIP_MEAN, std=CLIP_STD):
    m = np.asarray(mean, dtype=np.float32)
    s = np.asarray(std, dtype=np.float32)
    out = []
    for im, p in zip(pil_images, plans):
        crops = [im.resize((S, S), Image.BICUBIC)]
        canvas = Image.new("RGB", p.canvas_wh, (0, 0, 0))
        canvas.paste(im.resize((p.new_w, p.new_h), Image.BICUBIC), (p.off_x, p.off_y))
        crops += [canvas.crop((tx * S, ty * S, (tx + 1) * S, (ty + 1) * S))
                  for ty in range(p.grid_h) for tx in range(p.grid_w)]
        for c in crops:
            a = np.asarray(c).astype(np.float32)
            out.append(((a / np.float32(255.0) - m) / s).transpose(2, 0, 1))
    return np.stack(out)


def cases(device, quick):
    mixed = [(1920, 1080), (640, 480), (4000, 3000), (1280, 720), (500, 2000), (3000, 300),
             (1024, 1024), (800, 600), (2048, 1536), (336, 336), (1080, 1920), (720, 1280),
             (1600, 900), (300, 3000), (2592, 1944), (1000, 700)]
    out = [("1920x1080 x1", [(1920, 1080)]), ("4000x3000 x1", [(4000, 3000)])]
    if not quick:
        out.append(("mixed x16", mixed))
    if torch.device(device).type == "cuda" and not quick:
        out.append(("1920x1080 x64", [(1920, 1080)] * 64))
    return out


def run(device, ceilings, quick):
    rows = []
    for name, sizes in cases(device, quick):
        arrays = [photo_like(w, h, i) for i, (w, h) in enumerate(sizes)]
        pils = [Image.fromarray(a) for a in arrays]
        tensors = [torch.from_numpy(a).to(device) for a in arrays]
        plans = [plan_slime(w, h) for w, h in sizes]
        ours_out, _ = tile_resize(tensors, plans)
        sync(device)
        base_out = pillow_pipeline(pils, plans)
        assert np.array_equal(ours_out.cpu().numpy(), base_out), \
            f"{name}: fused output differs from the Pillow pipeline"
        base_t = time_fn(lambda: pillow_pipeline(pils, plans), "cpu", warmup=1, min_repeats=3,
                         max_repeats=10, min_time=0.5 if quick else 1.0)
        ours_t = time_fn(lambda: tile_resize(tensors, plans), device, warmup=1, min_repeats=5,
                         max_repeats=50, min_time=0.5 if quick else 1.0)
        # The same into a buffer reused across calls (out=): a fresh output's first write
        # costs a page fault per 4 KB, which dominates large batches on this machine.
        buf = torch.empty_like(ours_out)
        tile_resize(tensors, plans, out=buf)
        assert torch.equal(buf, ours_out)
        reuse_t = time_fn(lambda: tile_resize(tensors, plans, out=buf), device, warmup=1,
                          min_repeats=5, max_repeats=50, min_time=0.5 if quick else 1.0)
        n = len(sizes)
        nbytes = sum(w * h * 3 for w, h in sizes) + ours_out.numel() * 4
        for label, t in (("", ours_t), (", out= reused", reuse_t)):
            rows.append(Row(op="tile_resize", shape=f"{name} ({ours_out.shape[0]} crops){label}",
                            dtype="float32", device=str(device),
                            baseline_name="Pillow+numpy (1 thread)", baseline=base_t, ours=t,
                            nbytes=nbytes, bound="memory",
                            note=f"{n / t.median:.1f} images/s vs {n / base_t.median:.1f} "
                                 f"images/s; outputs identical (Pillow {PIL.__version__}, "
                                 f"its pass order)"))
    return rows


def _setup_1080p():
    a = photo_like(1920, 1080, 0)
    return a, [plan_slime(1920, 1080)]


def test_tile_resize_1080p(benchmark):
    a, plans = _setup_1080p()
    t = [torch.from_numpy(a)]
    benchmark(lambda: tile_resize(t, plans))


def test_pillow_pipeline_1080p(benchmark):
    a, plans = _setup_1080p()
    pils = [Image.fromarray(a)]
    benchmark(lambda: pillow_pipeline(pils, plans))
