"""Plain-PyTorch references of the fused ops: readable, slow, used by the tests and the
benchmarks as the ground truth the kernels are checked against."""
import torch  # noqa: F401


# ---- tile_resize ----

def tile_resize_ref(image, plan, filter="bicubic", mean=None, std=None, dtype=torch.uint8):
    """SliME's crops of one image as its released pipeline makes them, with Pillow: global view
    (plain resize to S x S), then resize-and-pad on black and S x S tiles row-major.

    image: uint8 (H, W, 3) numpy array or tensor; plan: slime_core.preprocess.Plan.
    Returns (n_crops, 3, S, S): uint8, or for a float dtype (x / 255 - mean) / std computed in
    float32 then rounded to dtype."""
    import numpy as np
    from PIL import Image

    resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}[filter]
    S = plan.tile_size
    im = Image.fromarray(np.asarray(image), "RGB")
    crops = []
    if plan.global_view:
        crops.append(np.asarray(im.resize((S, S), resample)))
    if plan.grid_w:
        canvas = Image.new("RGB", plan.canvas, (0, 0, 0))
        canvas.paste(im.resize((plan.new_w, plan.new_h), resample), (plan.off_x, plan.off_y))
        for ty in range(plan.grid_h):
            for tx in range(plan.grid_w):
                crops.append(np.asarray(canvas.crop((tx * S, ty * S, (tx + 1) * S, (ty + 1) * S))))
    out = torch.from_numpy(np.stack(crops).transpose(0, 3, 1, 2).copy())
    if dtype == torch.uint8:
        return out
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return ((out.to(torch.float32) / 255.0 - m) / s).to(dtype)
