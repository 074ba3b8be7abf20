"""Small CUDA cases of every kernel, forward and backward, for compute-sanitizer:

    compute-sanitizer --tool memcheck  python scripts/sanitize_cases.py
    compute-sanitizer --tool racecheck python scripts/sanitize_cases.py

Sizes are odd and small (the sanitizers slow kernels down 10-100x) but still cross every
tiling boundary: partial tiles, masked keys, ragged images, more than one block. Each case
is also compared with the CPU kernel so a silent wrong answer fails here too."""
import sys

import torch

import slime_core  # noqa: F401
from slime_core.ops.query_attention import query_attention
from slime_core.ops.tile_resize import tile_resize
from slime_core.ops.token_select import token_pack, token_select
from slime_core.preprocess import plan_slime


def tile_resize_cases(dev):
    g = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=g)
              for h, w in ((37, 53), (300, 500), (1, 1), (700, 90))]
    plans = [plan_slime(im.shape[1], im.shape[0], tile_size=64) for im in images]
    for filt in ("bicubic", "bilinear"):
        for dtype in (torch.uint8, torch.float32, torch.bfloat16):
            want, _ = tile_resize(images, plans, tile_size=64, filter=filt, dtype=dtype)
            got, _ = tile_resize([im.to(dev) for im in images], plans, tile_size=64,
                                 filter=filt, dtype=dtype)
            assert torch.equal(got.cpu(), want), f"tile_resize {filt} {dtype} differs from CPU"


def query_attention_cases(dev):
    g = torch.Generator().manual_seed(1)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for shared in (True, False):
            b, h, lq, lk, d = 3, 2, 19, 77, 64
            q = torch.randn((h, lq, d) if shared else (b, h, lq, d), generator=g)
            k = torch.randn(b, h, lk, d, generator=g)
            v = torch.randn(b, h, lk, d, generator=g)
            keep = torch.rand(b, lk, generator=g) > 0.3
            keep[1] = False  # a fully masked item: zeros, never NaN
            outs = []
            for device in ("cpu", dev):
                # detach: .to() returns q itself when nothing changes, and q must stay a leaf.
                qq, kk, vv = (t.to(device, dtype).detach().requires_grad_() for t in (q, k, v))
                out = query_attention(qq, kk, vv, key_mask=keep.to(device),
                                      allow_fully_masked=True, backend="fused")
                out.float().square().sum().backward()
                outs.append([t.float().cpu() for t in (out, qq.grad, kk.grad, vv.grad)])
            tol = 1e-4 if dtype == torch.float32 else 5e-2
            for name, a, c in zip(("out", "dq", "dk", "dv"), outs[0], outs[1]):
                assert torch.isfinite(c).all(), f"query_attention {dtype} {name} not finite"
                assert torch.allclose(a, c, atol=tol, rtol=tol), \
                    f"query_attention {dtype} shared={shared} {name} differs from CPU"


def token_select_cases(dev):
    g = torch.Generator().manual_seed(2)
    for dtype in (torch.float32, torch.bfloat16):
        tokens = torch.randn(3, 301, 64, generator=g).to(dtype)
        text = torch.randn(3, 9, 64, generator=g).to(dtype)
        mask = torch.rand(3, 9, generator=g) > 0.2
        counts = torch.tensor([301, 144, 0])
        for kw in ({"top_p": 0.9}, {"top_k": 50}):
            want = token_select(tokens, text, mask, counts, **kw)
            got = token_select(tokens.to(dev), text.to(dev), mask.to(dev), counts.to(dev), **kw)
            assert torch.equal(got.indices.cpu(), want.indices), f"token_select {kw} indices"
            assert torch.equal(got.counts.cpu(), want.counts), f"token_select {kw} counts"
            x = tokens.to(dev).detach().requires_grad_()
            packed = token_pack(x, got.indices, got.counts)
            packed.float().sum().backward()
            assert torch.equal(packed.cpu(), token_pack(tokens, want.indices, want.counts))
            assert int(x.grad.float().sum().item()) == int(got.counts.sum()) * 64


def main():
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to sanitize")
        return 1
    for case in (tile_resize_cases, query_attention_cases, token_select_cases):
        case("cuda")
        torch.cuda.synchronize()
        print(f"ok {case.__name__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
