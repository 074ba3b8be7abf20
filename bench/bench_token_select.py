"""token_select vs SliME's released selection chain at SliME's shapes.

Baselines, measured in the same run on the same inputs:
* "literal chain": slime_core.ops.reference.token_select_literal, the released sampler step
  for step (an M x T cosine matrix via broadcasting, mask, sum, softmax(/0.5), softmax,
  sort, cumsum, plus one, re-sort), one image at a time as the released code runs. It
  materialises M * T * H floats (1 GB at M = 1008, T = 64, H = 4096, float32), so it runs on
  a subset only: batch 1, T <= 64 (T = 32 as well without --quick).
* "torch gemv ref": slime_core.ops.reference.token_select_ref with compute_dtype float32,
  the same O(M*H + T*H) algorithm as the op written in plain PyTorch (batched GEMV, then
  a per-image softmax/sort loop): what a careful PyTorch user would write.
The indices are asserted equal to the baseline's before timing (top_p = 0.95 and SliME's
prenorm_temperature = 0.5; equal-probability ties aside, which random inputs do not hit).

Napkin math: the op must read every token and every text row once, so
nbytes = B * (M * H + T * H) * itemsize, compared with the copy bandwidth measured in the
same run (bound="memory"). Extra memory: B * (T + H + M) floats of scratch on CPU
(plus B * (T/64 + 1) * H floats and, beyond M = 8192, B * M * 9 bytes on CUDA).

    python -m bench --only token_select [--quick] [--device cuda]
"""
import torch

from bench.common import Row, sync, time_fn
from slime_core.ops import reference as R
from slime_core.ops.token_select import token_select

H = 4096
TOP_P = 0.95
PRENORM = 0.5


def _inputs(B, M, T, dtype, device, seed):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(B, M, H, generator=g).to(dtype).to(device)
    text = torch.randn(B, T, H, generator=g).to(dtype).to(device)
    mask = torch.ones(B, T, dtype=torch.bool, device=device)
    mask[:, T - T // 8:] = False  # padded prompts
    return tokens, text, mask


def _ours(tokens, text, mask):
    return token_select(tokens, text, mask, top_p=TOP_P, prenorm_temperature=PRENORM)


def _nbytes(tokens, text):
    return (tokens.numel() + text.numel()) * tokens.element_size()


def _literal_rows(device, quick):
    rows = []
    ns = (2, 7) if quick else (2, 3, 4, 5, 6, 7)
    Ts = (64,) if quick else (32, 64)
    for T in Ts:
        for n in ns:
            M = 144 * n
            tokens, text, mask = _inputs(1, M, T, torch.float32, device, seed=n * 1000 + T)

            def lit():
                return R.token_select_literal(tokens[0], text[0], mask[0], TOP_P,
                                              prenorm_temperature=PRENORM)

            sel = _ours(tokens, text, mask)
            ref_idx, _ = lit()
            assert sel.indices[0, :int(sel.counts[0])].cpu().tolist() == ref_idx.cpu().tolist(), \
                f"M={M} T={T}: token_select differs from the literal chain"
            base_t = time_fn(lit, device, warmup=1, min_repeats=3, max_repeats=5,
                             min_time=0.3 if quick else 1.0)
            ours_t = time_fn(lambda: _ours(tokens, text, mask), device, warmup=2,
                             min_repeats=10, min_time=0.3 if quick else 0.5)
            rows.append(Row(
                op="token_select", shape=f"B=1 M={M} T={T} H={H}", dtype="float32",
                device=str(device), baseline_name="literal chain", baseline=base_t,
                ours=ours_t, nbytes=_nbytes(tokens, text), bound="memory",
                note=("baseline on batch 1 only: the literal chain builds an M x T x H "
                      f"matrix ({M * T * H * 4 / 1e9:.2f} GB here)")))
    return rows


def _gemv_rows(device, quick):
    rows = []
    cases = [(16, 1008, 64, torch.bfloat16), (16, 1008, 512, torch.bfloat16),
             (1, 1008, 4096, torch.bfloat16)]
    if not quick:
        cases = [(16, 1008, T, torch.bfloat16) for T in (32, 64, 128, 256, 512)] + [
            (16, 288, 64, torch.bfloat16), (16, 1008, 64, torch.float32),
            (1, 1008, 4096, torch.bfloat16), (1, 1008, 4096, torch.float32)]
    for B, M, T, dtype in cases:
        tokens, text, mask = _inputs(B, M, T, dtype, device, seed=B * M + T)
        counts = torch.full((B,), M, dtype=torch.int64, device=device)

        def ref():
            return R.token_select_ref(tokens, text, mask, counts, top_p=TOP_P,
                                      prenorm_temperature=PRENORM, compute_dtype=torch.float32)

        sel = _ours(tokens, text, mask)
        ref_idx, ref_cnt, _ = ref()
        agree = int((sel.indices == ref_idx).all(dim=1).sum())
        base_t = time_fn(ref, device, warmup=1, min_repeats=3, max_repeats=10,
                         min_time=0.3 if quick else 1.0)
        ours_t = time_fn(lambda: _ours(tokens, text, mask), device, warmup=2, min_repeats=10,
                         min_time=0.3 if quick else 0.5)
        sync(device)
        rows.append(Row(
            op="token_select", shape=f"B={B} M={M} T={T} H={H}", dtype=str(dtype)[6:],
            device=str(device), baseline_name="torch gemv ref", baseline=base_t, ours=ours_t,
            nbytes=_nbytes(tokens, text), bound="memory",
            note=f"indices identical to the float32 reference on {agree}/{B} images"))
    return rows


def run(device, ceilings, quick):
    rows = []
    if torch.device(device).type == "cpu" or not quick:
        rows += _literal_rows(device, quick)
    rows += _gemv_rows(device, quick)
    return rows


# ---- pytest-benchmark -------------------------------------------------------------------

def test_token_select_slime_shape(benchmark):
    tokens, text, mask = _inputs(16, 1008, 64, torch.bfloat16, "cpu", seed=1)
    benchmark(lambda: _ours(tokens, text, mask))


def test_literal_chain_one_image(benchmark):
    tokens, text, mask = _inputs(1, 288, 64, torch.float32, "cpu", seed=2)
    benchmark(lambda: R.token_select_literal(tokens[0], text[0], mask[0], TOP_P,
                                             prenorm_temperature=PRENORM))
