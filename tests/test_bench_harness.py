"""The benchmark harness's arithmetic (bench/common.py): what every reported number rests on."""
import torch

from bench.common import Ceilings, Row, Timing, time_fn


def test_time_fn_reports_ordered_percentiles_and_counts_calls():
    calls = []
    t = time_fn(lambda: calls.append(1), warmup=2, min_repeats=5, max_repeats=7, min_time=0.0)
    assert t.n == 5 and len(calls) == 2 + 5
    assert 0 <= t.p10 <= t.median <= t.p90


def test_row_ratio_and_ceiling_share():
    base = Timing(median=0.2, p10=0.18, p90=0.25, n=10)
    ours = Timing(median=0.05, p10=0.05, p90=0.06, n=10)
    ceil = Ceilings(device="cpu", copy_gbps=10.0, matmul_gflops={"float32": 100.0})
    mem = Row("op", "s", "float32", "cpu", "base", base, ours, nbytes=0.25e9)
    assert mem.ratio == 4.0
    assert abs(mem.achieved() - 5.0) < 1e-9  # 0.25 GB in 0.05 s
    assert abs(mem.ceiling_share(ceil) - 0.5) < 1e-9
    comp = Row("op", "s", "bfloat16", "cpu", "base", base, ours, flops=2.5e9, bound="compute")
    # No bf16 ceiling measured: the float32 one applies instead of dividing by zero.
    assert abs(comp.ceiling_share(ceil) - 0.5) < 1e-9
    # A bf16 rate slower than float32 (no bf16 units) does not lower the ceiling either.
    ceil.matmul_gflops["bfloat16"] = 1.0
    assert abs(comp.ceiling_share(ceil) - 0.5) < 1e-9
    ceil.matmul_gflops["bfloat16"] = 200.0
    assert abs(comp.ceiling_share(ceil) - 0.25) < 1e-9
    assert abs(base.spread - 0.35) < 1e-9


def test_ceilings_are_measured_not_assumed():
    from bench.common import measure_copy_gbps, measure_matmul_gflops

    assert measure_copy_gbps("cpu", nbytes=1 << 20) > 0
    assert measure_matmul_gflops("cpu", torch.float32, n=64) > 0
