"""tile_resize (issue 3): planners, the fused op against the installed Pillow (CI: the newest)
with zero differing pixels, its pillow=12 pass order against crops real Pillow 12.3.0 made
(tests/fixtures/pillow12, scripts/make_pillow_fixtures.py), the normalisation against the
float32 formula, the processor API and its errors."""
import io
import json
import pathlib

import numpy as np
import pytest
import torch
from PIL import Image

import slime_core  # noqa: F401  (loads the extension)
from slime_core.ops.reference import tile_resize_ref
from slime_core.ops.tile_resize import (CLIP_MEAN, CLIP_STD, MAX_SIDE, installed_pillow_version,
                                        pillow_version, pillow_vertical_first, tile_resize)
from slime_core.preprocess import (ImageInputError, ImageProcessor, Plan, plan_fixed,
                                   plan_pinpoints, plan_slime, resize_and_pad, slime_grid)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and slime_core._C.build_info()["cuda"]
                     else [])
PLANNERS = {"slime": plan_slime, "pinpoints": plan_pinpoints}


def rand_image(w, h, rng):
    """Random content with some smooth structure, so both noise and gradients are resampled."""
    noise = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    if w > 1 and h > 1:
        yy, xx = np.mgrid[0:h, 0:w]
        ramp = ((xx * 255 // max(w - 1, 1) + yy * 97 // max(h - 1, 1)) % 256).astype(np.uint8)
        mask = rng.random((h, w)) < 0.5
        noise[mask] = ramp[mask][:, None]
    return noise


@pytest.fixture
def rng():
    return np.random.default_rng()


# ---- planners ----

@pytest.mark.parametrize("size,grid", [((336, 336), (1, 2)), ((640, 480), (2, 2)),
                                       ((1920, 1080), (3, 2)), ((500, 2000), (1, 5)),
                                       ((3000, 300), (7, 1))])
def test_slime_grid_spec_examples(size, grid):
    assert slime_grid(*size) == grid
    p = plan_slime(*size)
    assert (p.grid_w, p.grid_h) == grid and p.global_view and p.num_crops == 1 + grid[0] * grid[1]


def test_slime_grid_tiles_between_2_and_7(rng):
    for _ in range(200):
        w, h = (int(v) for v in rng.integers(1, 5000, 2))
        gw, gh = slime_grid(w, h)
        assert 2 <= gw * gh <= 7


def test_resize_and_pad_rule():
    # 1920x1080 on 1008x672: width-limited, height rounded up, centred vertically.
    assert resize_and_pad(1920, 1080, 1008, 672) == (1008, 567, 0, 52)
    assert resize_and_pad(500, 2000, 336, 1680) == (336, 1344, 0, 168)
    assert resize_and_pad(100, 400, 672, 336) == (84, 336, 294, 0)
    assert resize_and_pad(336, 336, 336, 336) == (336, 336, 0, 0)


def test_pinpoints_and_fixed_and_tile_sizes():
    assert (plan_pinpoints(1920, 1080).grid_w, plan_pinpoints(1920, 1080).grid_h) == (2, 2)
    assert (plan_pinpoints(300, 1000).grid_w, plan_pinpoints(300, 1000).grid_h) == (1, 3)
    p = plan_pinpoints(1000, 300, tile_size=384, pinpoints_wh=[(768, 384), (1152, 384)])
    assert (p.grid_w, p.grid_h, p.canvas_wh) == (3, 1, (1152, 384))
    assert slime_grid(1920, 1080, 448) == (3, 2)
    f = plan_fixed(640, 480, grid_wh=(3, 1), tile_size=448, global_view=False)
    assert (f.grid_w, f.grid_h, f.num_crops, f.new_h) == (3, 1, 3, 448)
    assert plan_fixed(640, 480, grid_wh=(0, 0)).num_crops == 1
    with pytest.raises(ValueError, match="pinpoint"):
        plan_pinpoints(10, 10, pinpoints_wh=[(300, 336)])
    with pytest.raises(ValueError, match="tile_size"):
        plan_slime(10, 10, tile_size=8)
    with pytest.raises(ValueError, match="grid_wh"):
        plan_fixed(10, 10, grid_wh=(0, 3))


# ---- exactness against Pillow ----

def check_exact(images, plans, filter, device, S=336):
    tens = [torch.from_numpy(im).to(device) for im in images]
    out, crops = tile_resize(tens, plans, tile_size=S, filter=filter, dtype=torch.uint8)
    assert out.shape == (sum(p.num_crops for p in plans), 3, S, S) and out.dtype == torch.uint8
    assert crops == [p.num_crops for p in plans]
    ref = torch.cat([tile_resize_ref(im, p, filter) for im, p in zip(images, plans)])
    diff = int((out.cpu() != ref).sum())
    assert diff == 0, f"{diff} of {ref.numel()} values differ from Pillow"


# (7, 1500): over 100 times taller than wide, vertical pass first in Pillow 12.2+ and 13.
# (335, 337), (337, 1000), (500, 2000): vertical first in Pillow 13 only (its global view,
# its tiles); wide images and (337, 335): horizontal first in every version.
SIZES = [(1, 1), (1, 3000), (3000, 1), (335, 337), (336, 336), (337, 335), (17, 5), (7, 1500),
         (337, 1000), (500, 2000), (1920, 1080)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("filter", ["bicubic", "bilinear"])
@pytest.mark.parametrize("planner", ["slime", "pinpoints"])
@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_exact_vs_pillow(size, planner, filter, device, rng):
    w, h = size
    check_exact([rand_image(w, h, rng)], [PLANNERS[planner](w, h)], filter, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("planner,filter", [("slime", "bicubic"), ("pinpoints", "bilinear")])
def test_exact_vs_pillow_4000x3000(planner, filter, device, rng):
    check_exact([rand_image(4000, 3000, rng)], [PLANNERS[planner](4000, 3000)], filter, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("S", [384, 448])
def test_exact_other_tile_sizes(S, device, rng):
    sizes = [(1000, 700), (450, 449), (3, 900)]
    images = [rand_image(w, h, rng) for w, h in sizes]
    check_exact(images, [plan_slime(w, h, S) for w, h in sizes], "bicubic", device, S)
    check_exact(images[:1], [plan_fixed(1000, 700, (2, 3), S, False)], "bilinear", device, S)


@pytest.mark.parametrize("device", DEVICES)
def test_mixed_batch_one_call(device, rng):
    sizes = [(640, 480), (1, 1), (700, 90), (336, 336), (90, 700), (1280, 720), (51, 33)]
    images = [rand_image(w, h, rng) for w, h in sizes]
    plans = [plan_slime(w, h) for w, h in sizes]
    plans[3] = plan_fixed(336, 336, (0, 0))          # global view only
    plans[4] = plan_fixed(90, 700, (1, 2), global_view=False)  # tiles only
    plans[5] = plan_pinpoints(1280, 720)
    check_exact(images, plans, "bicubic", device)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_batch(device):
    out, crops = tile_resize([], torch.zeros(0, 7, dtype=torch.int32))
    assert out.shape == (0, 3, 336, 336) and out.dtype == torch.float32 and crops == []


# ---- Pillow versions: pass order ----

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "pillow12" / "crops.npz"


def test_pass_order_rules():
    v12, v13 = pillow_version(12), pillow_version(13)
    # Pillow 13: vertical first when the height shrinks by more than twice the width's shrink.
    assert pillow_vertical_first(335, 337, 336, 336, v13)
    assert not pillow_vertical_first(337, 335, 336, 336, v13)
    assert pillow_vertical_first(500, 2000, 336, 1344, v13)
    assert not pillow_vertical_first(1000, 2000, 500, 1000, v13)   # shrink 1000 = 2 * 500
    assert pillow_vertical_first(1000, 2001, 500, 1000, v13)
    assert not pillow_vertical_first(20, 25, 32, 32, v13)          # upscaled
    # Pillow 12.2 to 12.x: only images over 100 times taller than wide whose height shrinks.
    assert not pillow_vertical_first(335, 337, 336, 336, v12)
    assert not pillow_vertical_first(500, 2000, 336, 1344, v12)
    assert pillow_vertical_first(7, 1500, 336, 336, v12)
    assert not pillow_vertical_first(7, 700, 336, 336, v12)        # 700 = 100 * 7
    assert not pillow_vertical_first(3, 400, 3, 400, v12)          # no shrink
    # Pillow 12.1 and older: always horizontal first.
    assert not pillow_vertical_first(7, 1500, 336, 336, pillow_version("12.1"))
    assert pillow_vertical_first(7, 1500, 336, 336, pillow_version("12.2.0"))


def test_pillow_setting():
    import PIL
    major, minor = (int(x) for x in PIL.__version__.split(".")[:2])
    assert installed_pillow_version() == (major, minor) == pillow_version() \
        == pillow_version("installed")
    assert pillow_version("13.0.0") == (13, 0) and pillow_version("12.1") == (12, 1)
    assert pillow_version("13.1.0.dev0") == (13, 1)
    assert pillow_version(12) == pillow_version("12") and (12, 3) < pillow_version(12) < (13, 0)
    for bad in ("newest", "", "v13", "0.1"):
        with pytest.raises(ValueError, match="pillow"):
            pillow_version(bad)
    for bad in (13.0, True, None, (12, 3)):
        with pytest.raises(TypeError, match="pillow"):
            pillow_version(bad)
    with pytest.raises(ValueError, match="pillow"):
        pillow_version(0)
    with pytest.raises(TypeError, match="pillow"):
        ImageProcessor(pillow=12.3)
    with pytest.raises(ValueError, match="pillow"):
        ImageProcessor(pillow="latest")
    with pytest.raises(ValueError, match="pillow"):
        tile_resize([torch.zeros(4, 4, 3, dtype=torch.uint8)], [plan_slime(4, 4)], pillow="x")


def load_pillow12_fixtures():
    with np.load(FIXTURES, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        cases = [(z[f"image{i}"], c, z[f"crops{i}"]) for i, c in enumerate(meta["cases"])]
    return meta, cases


@pytest.mark.parametrize("device", DEVICES)
def test_pillow12_order_vs_real_pillow12(device):
    """Our pillow=12 crops equal Pillow 12.3.0's, committed; pillow=13 differs on some of them
    (the fixtures can tell the orders apart), and agrees wherever both orders are the same;
    12.1's order (never vertical first) differs on the images over 100 times taller than wide."""
    meta, cases = load_pillow12_fixtures()
    assert meta["pillow"] == "12.3.0" and len(cases) >= 8
    S = meta["tile_size"]
    differ13 = differ121 = 0
    for img, case, want in cases:
        w, h = case["size"]
        plan = torch.tensor([case["plan"]], dtype=torch.int32)
        t = [torch.from_numpy(img).to(device)]
        for setting in (12, "12.3", "12.3.0"):
            got, _ = tile_resize(t, plan, tile_size=S, filter=case["filter"], dtype=torch.uint8,
                                 pillow=setting)
            assert torch.equal(got.cpu(), torch.from_numpy(want)), (case, setting)
        got13, _ = tile_resize(t, plan, tile_size=S, filter=case["filter"], dtype=torch.uint8,
                               pillow=13)
        gw, gh, nw, nh, _, _, glob = case["plan"]
        same_order = all(pillow_vertical_first(w, h, ow, oh, pillow_version(12))
                         == pillow_vertical_first(w, h, ow, oh, pillow_version(13))
                         for ow, oh, used in ((S, S, glob), (nw, nh, gw)) if used)
        if same_order:
            assert torch.equal(got13.cpu(), torch.from_numpy(want)), case
        differ13 += not torch.equal(got13.cpu(), torch.from_numpy(want))
        got121, _ = tile_resize(t, plan, tile_size=S, filter=case["filter"], dtype=torch.uint8,
                                pillow="12.1")
        differ121 += not torch.equal(got121.cpu(), torch.from_numpy(want))
    assert differ13 >= 4 and differ121 >= 2


@pytest.mark.parametrize("device", DEVICES)
def test_pass_order_setting_reaches_the_kernel(device, rng):
    """Each resize of a plan follows its own order: the global view and the tiles of 335x337
    (13: global vertical first, tiles horizontal first) against Pillow-free expectations."""
    img = torch.from_numpy(rand_image(335, 337, rng)).to(device)
    plan = plan_slime(335, 337)
    a, _ = tile_resize([img], [plan], dtype=torch.uint8, pillow=12)
    b, _ = tile_resize([img], [plan], dtype=torch.uint8, pillow=13)
    c, _ = tile_resize([img], [plan], dtype=torch.uint8, pillow="12.1")
    assert torch.equal(a, c)
    assert not torch.equal(a[0], b[0])   # the global view's order differs ...
    assert torch.equal(a[1:], b[1:])     # ... the tiles' does not (12.x and 13 agree there)


@pytest.mark.parametrize("device", DEVICES)
def test_processor_pillow_setting(device, rng):
    arr = rand_image(500, 2000, rng)
    for setting in ("installed", 12, 13):
        out = ImageProcessor(dtype=torch.uint8, pillow=setting, device=device)(arr)
        want, _ = tile_resize([torch.from_numpy(arr)], [plan_slime(500, 2000)],
                              dtype=torch.uint8, pillow=setting)
        assert torch.equal(out.pixel_values.cpu(), want)
    assert torch.equal(ImageProcessor(dtype=torch.uint8, device=device)(arr).pixel_values.cpu(),
                       tile_resize_ref(arr, plan_slime(500, 2000)))


# ---- normalisation ----

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_normalised_matches_float32_formula(dtype, device, rng):
    sizes = [(640, 480), (200, 333)]
    images = [torch.from_numpy(rand_image(w, h, rng)).to(device) for w, h in sizes]
    plans = [plan_slime(w, h) for w, h in sizes]
    u8, _ = tile_resize(images, plans, dtype=torch.uint8)
    out, _ = tile_resize(images, plans, dtype=dtype)
    assert out.dtype == dtype and out.shape == u8.shape
    # The formula on the CPU: torch's CUDA division by a scalar multiplies by its reciprocal,
    # one ulp off the correctly rounded quotient that both our backends compute.
    out, u8 = out.cpu(), u8.cpu()
    m = torch.tensor(CLIP_MEAN, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(CLIP_STD, dtype=torch.float32).view(3, 1, 1)
    expect = (u8.to(torch.float32) / 255.0 - m) / s
    assert (out.float() - expect.to(dtype).float()).abs().max().item() == 0.0
    if dtype == torch.float32:
        assert (out - expect).abs().max().item() <= 1e-6
    # Every byte value appears in random content, so the whole per-channel table is checked.
    assert len(torch.unique(u8)) == 256


def test_normalised_custom_mean_std_and_reference(rng):
    img = rand_image(300, 200, rng)
    plan = plan_slime(300, 200)
    mean, std = (0.5, 0.25, 0.125), (0.2, 0.3, 0.4)
    out, _ = tile_resize([torch.from_numpy(img)], [plan], mean=mean, std=std, filter="bilinear")
    ref = tile_resize_ref(img, plan, "bilinear", mean, std, torch.float32)
    assert torch.equal(out, ref)


@pytest.mark.parametrize("device", DEVICES)
def test_out_buffer_reused(device, rng):
    sizes = [(500, 300), (64, 900)]
    images = [torch.from_numpy(rand_image(w, h, rng)).to(device) for w, h in sizes]
    plans = [plan_slime(w, h) for w, h in sizes]
    fresh, crops = tile_resize(images, plans, dtype=torch.bfloat16)
    buf = torch.full((sum(crops), 3, 336, 336), float("nan"), dtype=torch.bfloat16, device=device)
    out, crops2 = tile_resize(images, plans, out=buf)
    assert out is buf and crops2 == crops and torch.equal(buf, fresh)
    buf8 = torch.full((sum(crops), 3, 336, 336), 7, dtype=torch.uint8, device=device)
    tile_resize(images, plans, out=buf8)
    assert torch.equal(buf8, torch.cat([tile_resize_ref(im.cpu().numpy(), p)
                                        for im, p in zip(images, plans)]).to(device))
    with pytest.raises(ValueError, match="out must be a contiguous tensor of shape"):
        tile_resize(images, plans, out=buf[:-1])
    with pytest.raises(TypeError, match="out must have dtype"):
        tile_resize(images, plans, out=buf.double())


def test_opcheck(rng):
    images = [torch.from_numpy(rand_image(w, h, rng)) for w, h in [(40, 30), (17, 90)]]
    plist = [plan_slime(40, 30, 16), plan_fixed(17, 90, (1, 3), 16)]
    # The op's rows: geometry + the global / tiles vertical-first flags (both orders run).
    plans = torch.tensor([p.as_row() + [0, 1] for p in plist], dtype=torch.int32)
    plans[1, 7:] = torch.tensor([1, 0])
    total = sum(p.num_crops for p in plist)
    for dtype in (torch.float32, torch.uint8):
        torch.library.opcheck(torch.ops.slime.tile_resize.default,
                              (images, plans, total, 16, 3, list(CLIP_MEAN), list(CLIP_STD), dtype))
        out = torch.empty(total, 3, 16, 16, dtype=dtype)
        torch.library.opcheck(torch.ops.slime.tile_resize_out.default,
                              (images, plans, total, 16, 3, list(CLIP_MEAN), list(CLIP_STD), out))


# ---- processor ----

def test_processor_inputs_and_outputs(tmp_path, rng):
    arr = rand_image(500, 300, rng)
    pil = Image.fromarray(arr)
    path = tmp_path / "a.png"
    pil.save(path)
    rgba = Image.fromarray(rand_image(120, 80, rng)).convert("RGBA")
    gray = Image.fromarray(rand_image(64, 48, rng)).convert("L")
    pal = Image.fromarray(rand_image(90, 60, rng)).convert("P")
    cmyk = Image.fromarray(rand_image(70, 50, rng)).convert("CMYK")
    proc = ImageProcessor()
    out = proc([pil, arr, torch.from_numpy(arr), str(path), path, rgba, gray, pal, cmyk])
    assert out.image_sizes.tolist() == [[300, 500]] * 5 + [[80, 120], [48, 64], [60, 90], [50, 70]]
    assert out.grids_wh[0] == slime_grid(500, 300)
    n = out.crops_per_image[0]
    first = out.pixel_values[:n]
    for k in range(1, 5):
        assert torch.equal(out.pixel_values[k * n:(k + 1) * n], first)
    start = 5 * n
    for img, c in zip([rgba, gray, pal, cmyk], out.crops_per_image[5:]):
        conv = np.asarray(img.convert("RGB"))
        ref = tile_resize_ref(conv, plan_slime(img.width, img.height), "bicubic", CLIP_MEAN,
                              CLIP_STD, torch.float32)
        assert torch.equal(out.pixel_values[start:start + c], ref)
        start += c
    assert start == out.pixel_values.shape[0]


def test_processor_options(rng):
    arr = rand_image(800, 600, rng)
    out = ImageProcessor(planner="pinpoints", tile_size=384, dtype=torch.bfloat16)(arr)
    assert out.pixel_values.shape == (5, 3, 384, 384) and out.pixel_values.dtype == torch.bfloat16
    out = ImageProcessor(planner="fixed", grid_wh=(1, 1), global_view=False, dtype=torch.uint8)(arr)
    assert torch.equal(out.pixel_values,
                       tile_resize_ref(arr, plan_fixed(800, 600, (1, 1), global_view=False)))
    with pytest.raises(ValueError, match="planner"):
        ImageProcessor(planner="uhd")


# ---- bad input ----

def test_errors_name_the_image(tmp_path, rng):
    proc = ImageProcessor()
    good = rand_image(20, 10, rng)
    cases = [
        (good.astype(np.float32), "images\\[1\\] must have dtype uint8"),
        (good[:, :, :2].copy(), "images\\[1\\] must have shape \\(H, W, 3\\)"),
        (rand_image(20, 10, rng)[:, :, :1].repeat(4, 2), "images\\[1\\] must have shape"),
        (good[::-1], "images\\[1\\] is not C-contiguous"),
        (good[:, ::2], "images\\[1\\] is not C-contiguous"),
        (torch.from_numpy(good).permute(1, 0, 2), "images\\[1\\] is not contiguous"),
        (np.zeros((0, 5, 3), np.uint8), "images\\[1\\] is empty"),
        (torch.zeros(5, 0, 3, dtype=torch.uint8), "images\\[1\\] is empty"),
        (Image.new("RGB", (MAX_SIDE + 1, 1)), f"at most {MAX_SIDE}"),
        (torch.zeros(2, 2, 3, dtype=torch.int16), "must have dtype uint8"),
        (12, "unsupported type int"),
    ]
    for bad, msg in cases:
        with pytest.raises(ImageInputError, match=msg):
            proc([good, bad])
    missing = tmp_path / "missing.jpg"
    with pytest.raises(ImageInputError, match="missing.jpg.*no such file"):
        proc([good, missing])
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(ImageInputError, match=r"images\[1\] \(.*corrupt.png\): cannot read"):
        proc([good, corrupt])
    buf = io.BytesIO()
    Image.new("RGB", (40, 40)).save(buf, "JPEG")
    truncated = tmp_path / "trunc.jpg"
    truncated.write_bytes(buf.getvalue()[:200])
    with pytest.raises(ImageInputError, match="trunc.jpg.*cannot read"):
        proc([good, truncated])
    with pytest.raises(ImageInputError, match="at most 100"):
        ImageProcessor(max_side=100)(rand_image(101, 3, rng))


def test_op_errors(rng):
    img = torch.from_numpy(rand_image(30, 20, rng))
    plan = plan_slime(30, 20)
    with pytest.raises(TypeError, match="images\\[0\\] must be uint8"):
        tile_resize([img.float()], [plan])
    with pytest.raises(ValueError, match="images\\[1\\] must be contiguous"):
        tile_resize([img, img.transpose(0, 1)], [plan, plan_slime(20, 30)])
    with pytest.raises(ValueError, match="plans must have shape"):
        tile_resize([img], [plan, plan])
    with pytest.raises(TypeError, match="dtype"):
        tile_resize([img], [plan], dtype=torch.float64)
    with pytest.raises(ValueError, match="filter"):
        tile_resize([img], [plan], filter="lanczos")
    with pytest.raises(ValueError, match="std"):
        tile_resize([img], [plan], std=(1.0, 0.0, 1.0))
    # Plans that do not fit the image are refused by the op itself, naming the image.
    bad = Plan(1, 1, 400, 300, 0, 0, True, 336)
    with pytest.raises(ValueError, match=r"images\[0\].*fit in the grid canvas"):
        tile_resize([img], [bad])
    bad = Plan(2, 1, 300, 300, 400, 0, True, 336)
    with pytest.raises(ValueError, match=r"images\[0\].*outside the canvas"):
        tile_resize([img], [bad])
    with pytest.raises(ValueError, match=r"images\[0\].*plan grid"):
        tile_resize([img], torch.tensor([[-1, 2, 30, 20, 0, 0, 1]], dtype=torch.int32))
    with pytest.raises(ValueError, match=r"plans must have shape \(1, 7\)"):
        tile_resize([img], torch.tensor([plan.as_row() + [0, 0]], dtype=torch.int32))
    rows = torch.tensor([plan.as_row() + [0, 0]], dtype=torch.int32)
    n = plan.num_crops
    with pytest.raises(ValueError, match="total_crops"):
        torch.ops.slime.tile_resize([img], rows, n + 1, 336, 3, list(CLIP_MEAN), list(CLIP_STD),
                                    torch.float32)
    with pytest.raises(ValueError, match=r"plans must have shape \[1, 9\]"):
        torch.ops.slime.tile_resize([img], rows[:, :7], n, 336, 3, list(CLIP_MEAN),
                                    list(CLIP_STD), torch.float32)
    rows[0, 8] = 2
    with pytest.raises(ValueError, match=r"images\[0\].*pass-order flags must be 0 or 1"):
        torch.ops.slime.tile_resize([img], rows, n, 336, 3, list(CLIP_MEAN), list(CLIP_STD),
                                    torch.float32)
