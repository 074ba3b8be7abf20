"""What every benchmark shares: timing with warm-up and medians, the machine's measured
ceilings (copy bandwidth, matmul rate), and one result row with its napkin math.

A bench module (bench/bench_<op>.py) exposes `run(device, ceilings, quick) -> list[Row]`,
comparing against its baselines in the same run, and pytest-benchmark tests."""
import dataclasses
import statistics
import time

import torch


@dataclasses.dataclass
class Timing:
    median: float  # seconds
    p10: float
    p90: float
    n: int

    @property
    def spread(self):
        """(p90 - p10) / median: how noisy the measurement was."""
        return (self.p90 - self.p10) / self.median if self.median > 0 else 0.0


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_fn(fn, device="cpu", *, warmup=2, min_repeats=5, max_repeats=50, min_time=0.5):
    """Runs fn() after `warmup` calls until `min_time` seconds or `max_repeats` calls have
    passed (at least `min_repeats`); returns the median and the 10th/90th percentiles."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    start = time.perf_counter()
    while len(times) < max_repeats and (len(times) < min_repeats
                                         or time.perf_counter() - start < min_time):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return timing_from(times)


def timing_from(times):
    """Timing (median, 10th/90th percentiles, count) of measured durations in seconds."""
    times = sorted(times)
    q = statistics.quantiles(times, n=10) if len(times) > 1 else [times[0]] * 9
    return Timing(statistics.median(times), q[0], q[-1], len(times))


@dataclasses.dataclass
class Ceilings:
    device: str
    copy_gbps: float     # bytes read + written per second by a large tensor copy
    matmul_gflops: dict  # dtype name -> achieved GFLOP/s of a large square matmul


def measure_copy_gbps(device, nbytes=None):
    nbytes = nbytes or (1 << 30 if torch.device(device).type == "cuda" else 256 << 20)
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).random_(0, 255)
    dst = torch.empty_like(src)
    t = time_fn(lambda: dst.copy_(src), device, min_time=0.3)
    return 2 * nbytes / t.median / 1e9


def measure_matmul_gflops(device, dtype, n=None):
    n = n or (8192 if torch.device(device).type == "cuda" else 1536)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    t = time_fn(lambda: a @ b, device, min_time=0.3)
    return 2 * n**3 / t.median / 1e9


def measure_ceilings(device, dtypes=(torch.float32, torch.bfloat16)):
    return Ceilings(device=str(device), copy_gbps=measure_copy_gbps(device),
                    matmul_gflops={str(d).replace("torch.", ""): measure_matmul_gflops(device, d)
                                   for d in dtypes})


@dataclasses.dataclass
class Row:
    op: str
    shape: str
    dtype: str
    device: str
    baseline_name: str
    baseline: Timing
    ours: Timing
    nbytes: float = 0.0  # bytes the op must move at least (napkin math)
    flops: float = 0.0   # floating-point operations of the op
    bound: str = "memory"  # "memory": compare GB/s to copy_gbps; "compute": GFLOP/s to matmul
    note: str = ""

    @property
    def ratio(self):
        """How many times faster ours is than the baseline (> 1 is better)."""
        return self.baseline.median / self.ours.median

    def achieved(self):
        if self.bound == "compute":
            return self.flops / self.ours.median / 1e9
        return self.nbytes / self.ours.median / 1e9

    def ceiling_share(self, ceilings):
        if self.bound == "compute":
            # Narrow floats can always be multiplied at the float32 rate by converting them
            # (what our CPU kernels do where the hardware has no bf16/fp16 units), so the
            # ceiling is the better of the two measured rates, never the slower one.
            peak = max(ceilings.matmul_gflops.get(self.dtype, 0.0),
                       ceilings.matmul_gflops["float32"])
        else:
            peak = ceilings.copy_gbps
        return self.achieved() / peak if peak else 0.0
