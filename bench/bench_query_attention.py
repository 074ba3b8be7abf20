"""query_attention and the Resampler at SliME's shapes, against their PyTorch baselines
measured in the same run.

    python -m bench --only query_attention [--quick] [--device cuda]
    python -m pytest bench/bench_query_attention.py        (pytest-benchmark cases)

Attention core: SliME compresses each crop's 576 tokens with 144 shared queries (local
tiles) or 576 (global expert), 8 heads of 128. Ours: the fused kernels (backend="fused"; the
op's default, "auto", takes SDPA on CUDA). Baseline: torch's scaled_dot_product_attention on
the same device with q expanded over the crops (a view, no copy). FLOPs: forward 4 B H Lq
Lk d (two GEMMs); forward+backward 3.5x that (two forward GEMMs, five backward GEMMs: the
flash-attention convention), against the matmul ceiling.

Module: the Resampler (query projection once, K|V in one GEMM with the position term folded
into a cached bias, query_attention with its default backend) against the released design
(ResamplerRef: nn.MultiheadAttention with the queries repeated per crop), 7 crops of 576
tokens, 144 queries, D 1024. FLOPs counted are those of the minimal computation (ours), so the
baseline's extra work shows as its lower speed, not as a higher achieved rate.
"""
import torch
import torch.nn.functional as F

from bench.common import Row, time_fn
from slime_core.models import Resampler
from slime_core.ops.query_attention import query_attention
from slime_core.ops.reference import ResamplerRef

HEADS, HEAD_DIM, KEYS = 8, 128, 576


def _timer(device, quick):
    if quick:
        return lambda fn: time_fn(fn, device, warmup=1, min_repeats=3, max_repeats=10,
                                  min_time=0.2)
    return lambda fn: time_fn(fn, device, warmup=2, min_repeats=5, max_repeats=30, min_time=0.5)


def _attention_cases(device, quick):
    """(crops, Lq, dtype, with backward) at SliME's shapes, sized for the device."""
    dtypes = [torch.float32, torch.bfloat16]
    if torch.device(device).type == "cuda":
        dtypes.append(torch.float16)
        return [(c, lq, dt, bwd) for bwd in (False, True) for dt in dtypes
                for c in ((8, 64) if quick else (8, 16, 32, 64)) for lq in (144, 576)]
    if quick:
        return [(8, 144, dt, bwd) for bwd in (False, True) for dt in dtypes]
    # 2 CPU cores: the 64-crop cases forward only (PyTorch's bfloat16 backward alone takes
    # tens of seconds there).
    return ([(c, lq, dt, False) for dt in dtypes for c in (8, 64) for lq in (144, 576)]
            + [(8, lq, dt, True) for dt in dtypes for lq in (144, 576)])


def _attention_inputs(crops, lq, dtype, device, grad):
    q = torch.randn(HEADS, lq, HEAD_DIM, device=device, dtype=dtype, requires_grad=grad)
    k = torch.randn(crops, HEADS, KEYS, HEAD_DIM, device=device, dtype=dtype, requires_grad=grad)
    v = torch.randn(crops, HEADS, KEYS, HEAD_DIM, device=device, dtype=dtype, requires_grad=grad)
    return q, k, v


def _sdpa(q, k, v):
    return F.scaled_dot_product_attention(q.expand(k.shape[0], -1, -1, -1), k, v)


def attention_rows(device, quick):
    timed = _timer(device, quick)
    rows = []
    for crops, lq, dtype, bwd in _attention_cases(device, quick):
        q, k, v = _attention_inputs(crops, lq, dtype, device, bwd)
        flops = 4 * crops * HEADS * lq * KEYS * HEAD_DIM
        if bwd:
            g = torch.randn(crops, HEADS, lq, HEAD_DIM, device=device, dtype=dtype)

            def ours():
                query_attention(q, k, v, backend="fused").backward(g)

            def base():
                _sdpa(q, k, v).backward(g)

            flops = flops * 7 // 2
        else:
            def ours():
                with torch.no_grad():
                    query_attention(q, k, v, backend="fused")

            def base():
                with torch.no_grad():
                    _sdpa(q, k, v)
        rows.append(Row(
            op="query_attention" + (" fwd+bwd" if bwd else " fwd"),
            shape=f"{crops} crops, Lq {lq}, Lk {KEYS}, {HEADS}x{HEAD_DIM}",
            dtype=str(dtype).replace("torch.", ""), device=str(device),
            baseline_name="SDPA (q expanded)", baseline=timed(base), ours=timed(ours),
            flops=float(flops), bound="compute"))
    return rows


def _module_pair(device, dtype, grid=12, dim=1024):
    ours = Resampler(grid, dim, HEADS).to(device)
    ref = ResamplerRef(grid, dim, HEADS).to(device)
    ref.load_state_dict(ours.state_dict())
    return ours.to(dtype), ref.to(dtype)


def module_rows(device, quick):
    timed = _timer(device, quick)
    crops, dim, lq = 7, 1024, 144
    flops = (2 * crops * KEYS * dim * 2 * dim + 2 * lq * dim * dim + 2 * crops * lq * dim * dim
             + 4 * crops * HEADS * lq * KEYS * HEAD_DIM)
    cases = [(torch.float32, False), (torch.float32, True)]
    if torch.device(device).type == "cuda":
        cases.append((torch.bfloat16, False))  # this CPU's torch bf16 matmul runs ~1 GFLOP/s
    rows = []
    for dtype, train in cases:
        ours, ref = _module_pair(device, dtype)
        x = torch.randn(crops, KEYS, dim, device=device, dtype=dtype)
        if train:
            def run_ours():
                ours(x).sum().backward()

            def run_ref():
                ref(x).sum().backward()
        else:
            def run_ours():
                with torch.no_grad():
                    ours(x)

            def run_ref():
                with torch.no_grad():
                    ref(x)
        rows.append(Row(
            op="Resampler " + ("fwd+bwd" if train else "fwd (no grad)"),
            shape=f"{crops} crops x {KEYS} tokens -> {lq} queries, D {dim}, {HEADS} heads",
            dtype=str(dtype).replace("torch.", ""), device=str(device),
            baseline_name="nn.MultiheadAttention, repeated queries",
            baseline=timed(run_ref), ours=timed(run_ours),
            flops=float(flops * (3 if train else 1)), bound="compute",
            note=("FLOPs: minimal computation (K|V, one query projection, attention, output "
                  "projection); fwd+bwd counted as 3x forward")))
    return rows


def run(device, ceilings, quick):
    return attention_rows(device, quick) + module_rows(device, quick)


def test_query_attention_fwd_8_crops(benchmark):
    q, k, v = _attention_inputs(8, 144, torch.float32, "cpu", False)
    benchmark(lambda: query_attention(q, k, v, backend="fused"))


def test_sdpa_fwd_8_crops(benchmark):
    q, k, v = _attention_inputs(8, 144, torch.float32, "cpu", False)
    benchmark(lambda: _sdpa(q, k, v))


def test_resampler_fwd_7_crops(benchmark):
    ours, _ = _module_pair("cpu", torch.float32)
    x = torch.randn(7, KEYS, 1024)
    with torch.no_grad():
        benchmark(lambda: ours(x))


def test_mha_resampler_fwd_7_crops(benchmark):
    _, ref = _module_pair("cpu", torch.float32)
    x = torch.randn(7, KEYS, 1024)
    with torch.no_grad():
        benchmark(lambda: ref(x))
