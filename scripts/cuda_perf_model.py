"""CUDA performance on paper: what ptxas says each kernel uses, the theoretical occupancy that
follows, and a roofline lower bound at SliME's shapes on an H100 SXM. A MODEL, not a
measurement: nothing here runs a kernel, and no GPU is needed (only nvcc).

    python scripts/cuda_perf_model.py        # writes bench/results/cuda-model-h100.{md,json}

Resources: every .cu in csrc/cuda is compiled to a cubin for sm_80 and sm_90 with the build's
flags and `-Xptxas -v`; every template instantiation is listed. Occupancy: the rules of
NVIDIA's occupancy calculator (cuda_occupancy.h), with each kernel's block size and dynamic
shared memory at SliME's shapes as its launcher computes them (mirrored below: change them
together). Roofline: compulsory bytes (inputs read once, outputs written once) and FLOPs from
the op's arguments; time >= max(bytes / HBM bandwidth, FLOPs / the peak of the unit the kernel
computes on).
"""
import argparse
import concurrent.futures
import dataclasses
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = ["tile_resize", "query_attention", "token_select"]
# The CUDA flags of setup.py / CMakeLists.txt that change code generation.
NVCC_FLAGS = ["-std=c++17", "-O3", "--expt-relaxed-constexpr", "-lineinfo"]

# H100 SXM5 (the roofline's machine). The int32 multiply-add rate is derived, not quoted:
# sm_90 issues 64 IMAD per SM per clock against 128 FFMA (CUDA programming guide, arithmetic
# instruction throughput), so it is half the fp32 rate.
H100 = dict(sms=132, hbm=3.35e12, bf16_tensor=989e12, fp32=67e12, int32=33.5e12)
PEAK_NAMES = {"bf16_tensor": "bf16 tensor core", "fp32": "fp32 FMA", "int32": "int32 IMAD"}


# ---- occupancy (the rules of cuda_occupancy.h for compute capability 8.0 / 9.0) -------------

@dataclasses.dataclass(frozen=True)
class Arch:
    name: str
    smem_per_sm: int      # bytes, largest carveout
    smem_per_block: int   # bytes, opt-in maximum of static + dynamic
    max_threads_per_sm: int = 2048
    max_blocks_per_sm: int = 32
    regs_per_sm: int = 65536
    reg_unit: int = 256        # registers are allocated per warp in units of 256
    sub_partitions: int = 4    # a warp's registers come from one of 4 quarter register files
    smem_unit: int = 128
    smem_reserved: int = 1024  # per block, taken by the driver
    max_threads_per_block: int = 1024


SM80 = Arch("sm_80 (A100)", smem_per_sm=164 * 1024, smem_per_block=163 * 1024)
SM90 = Arch("sm_90 (H100)", smem_per_sm=228 * 1024, smem_per_block=227 * 1024)
ARCHS = {"80": SM80, "90": SM90}


def occupancy(arch, regs, threads, smem_static=0, smem_dynamic=0):
    """Resident blocks per SM, what limits them, and the fraction of the SM's warp slots
    they fill. 0 blocks means the launch cannot run."""
    warps = -(-threads // 32)
    max_warps = arch.max_threads_per_sm // 32
    limits = {"blocks": arch.max_blocks_per_sm, "warps": max_warps // warps}
    regs_per_warp = -(-max(regs, 1) * 32 // arch.reg_unit) * arch.reg_unit
    # The hardware checks a block's registers as if its warps filled all four quarters.
    regs_block = regs_per_warp * (-(-warps // arch.sub_partitions) * arch.sub_partitions)
    if regs > 255 or regs_block > arch.regs_per_sm:
        limits["registers"] = 0
    else:
        warps_per_quarter = arch.regs_per_sm // arch.sub_partitions // regs_per_warp
        limits["registers"] = warps_per_quarter * arch.sub_partitions // warps
    smem = smem_static + smem_dynamic
    alloc = -(-(smem + arch.smem_reserved) // arch.smem_unit) * arch.smem_unit
    limits["shared memory"] = 0 if smem > arch.smem_per_block else arch.smem_per_sm // alloc
    if threads > arch.max_threads_per_block:
        limits["warps"] = 0
    blocks = min(limits.values())
    limiter = ", ".join(k for k, v in limits.items() if v == blocks)
    return blocks, limiter, blocks * warps / max_warps


# ---- ptxas resource usage -----------------------------------------------------------------

@dataclasses.dataclass
class Usage:
    kernel: str  # readable name with template arguments
    arch: str    # "80" or "90"
    regs: int
    spill_stores: int
    spill_loads: int
    stack: int        # bytes of stack frame (local memory), spills included
    smem_static: int


def find_nvcc():
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        cuda = os.environ.get("CUDA_HOME", "/usr/local/cuda")
        nvcc = os.path.join(cuda, "bin", "nvcc")
    if not os.path.exists(nvcc):
        sys.exit("cuda_perf_model: nvcc not found (put it on PATH or set CUDA_HOME)")
    return nvcc


def ptxas_log(nvcc, src, arch, tmp):
    cmd = [nvcc, "-cubin", f"-arch=sm_{arch}", *NVCC_FLAGS, "-Xptxas", "-v",
           "-I" + os.path.join(ROOT, "csrc", "include"), "-I" + os.path.join(ROOT, "csrc"),
           os.path.join(ROOT, "csrc", "cuda", src + ".cu"),
           "-o", os.path.join(tmp, f"{src}.sm_{arch}.cubin")]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"cuda_perf_model: nvcc failed on {src}.cu for sm_{arch}:\n{r.stderr}")
    return r.stderr


_TYPES = {"__nv_bfloat16": "bf16", "__half": "f16", "float": "f32", "unsigned char": "u8",
          "unsigned int": "u32", "unsigned short": "u16"}


def readable(demangled):
    """'void slime::(anonymous namespace)::k<__nv_bfloat16, 128>(...)' -> 'k<bf16, 128>'."""
    s = demangled.replace("(anonymous namespace)::", "").replace("slime::", "")
    s = s.replace("cuda::", "")
    s = s[len("void "):] if s.startswith("void ") else s
    s = s[:s.index("(")]
    return re.sub(r"\b(" + "|".join(map(re.escape, _TYPES)) + r")\b",
                  lambda m: _TYPES[m.group(1)], s)


def parse_ptxas(log, arch):
    entries = []  # (mangled, stack, spill stores, spill loads, regs, smem)
    for line in log.splitlines():
        if m := re.search(r"Compiling entry function '(\S+)'", line):
            entries.append([m.group(1), 0, 0, 0, 0, 0])
        elif m := re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, "
                            r"(\d+) bytes spill loads", line):
            entries[-1][1:4] = map(int, m.groups())
        elif m := re.search(r"Used (\d+) registers", line):
            entries[-1][4] = int(m.group(1))
            if s := re.search(r"(\d+) bytes smem", line):
                entries[-1][5] = int(s.group(1))
    names = subprocess.run(["c++filt"], input="\n".join(e[0] for e in entries),
                           capture_output=True, text=True, check=True).stdout.split("\n")
    return [Usage(readable(n), arch, e[4], e[2], e[3], e[1], e[5])
            for n, e in zip(names, entries)]


def resource_usage():
    nvcc = find_nvcc()
    jobs = [(src, arch) for src in SOURCES for arch in ARCHS]
    with tempfile.TemporaryDirectory() as tmp, \
            concurrent.futures.ThreadPoolExecutor(max(os.cpu_count() or 1, 2)) as pool:
        logs = pool.map(lambda j: (j, ptxas_log(nvcc, *j, tmp)), jobs)
        usage = [u for (src, arch), log in logs for u in parse_ptxas(log, arch)]
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    return usage, version.strip().splitlines()[-1]


# ---- SliME's shapes and the launchers' configurations ------------------------------------

S = 336  # tile size
IMG_W, IMG_H = 1920, 1080
GRID_W, GRID_H = 3, 2  # the UHD picker's choice for 1920x1080 (SLIME_SPEC section 2)
CROPS = 1 + GRID_W * GRID_H
HEADS, HEAD_DIM, LQ, LK = 8, 128, 144, 576
# The most local tokens an image has: 7 tiles x 144 (1920x1080 has 6 tiles; 3000x300 has 7).
M_TOK, HIDDEN = 7 * 144, 4096
KEPT = 958  # ~95% of 1008: the first release's double softmax with top-p 0.95 (SLIME_SPEC 5)


def windows(n_in, n_out):
    """Pillow's bicubic input window (first, count) of every output pixel (resample_window)."""
    scale = n_in / n_out
    support = 2.0 * max(scale, 1.0)
    out = []
    for o in range(n_out):
        c = (o + 0.5) * scale
        lo, hi = max(int(c - support + 0.5), 0), min(int(c + support + 0.5), n_in)
        out.append((lo, hi - lo))
    return out, math.ceil(support) * 2 + 1


def resized_local():
    """Resize-and-pad of the local view: resized width and height, left and top padding."""
    tw, th = GRID_W * S, GRID_H * S
    if tw / IMG_W < th / IMG_H:
        w, h = tw, min(math.ceil(IMG_H * tw / IMG_W), th)
    else:
        w, h = min(math.ceil(IMG_W * th / IMG_H), tw), th
    return w, h, (tw - w) // 2, (th - h) // 2


def tile_views():
    """Per view (global, local): h and v windows, their ksizes, and the first resized row of
    each row of crops (negative: the top padding)."""
    lw, lh, _, py = resized_local()
    views = []
    for out_w, out_h, y0s in [(S, S, [0]), (lw, lh, [r * S - py for r in range(GRID_H)])]:
        hw, hk = windows(IMG_W, out_w)
        vw, vk = windows(IMG_H, out_h)
        views.append(dict(h=hw, v=vw, hk=hk, vk=vk, y0s=y0s))
    return views


def tile_resize_launch():
    """tile_resize_cuda's band height R, shared-memory chunk and dynamic shared memory."""
    views = tile_views()
    R = 16
    while True:
        rows = 1
        for view in views:
            v = view["v"]
            for y0 in view["y0s"]:
                for r0 in range(0, S, R):
                    ry0, ry1 = max(r0 + y0, 0), min(min(r0 + R, S) + y0, len(v))
                    if ry0 < ry1:
                        rows = max(rows, v[ry1 - 1][0] + v[ry1 - 1][1] - v[ry0][0])
        chunk = min(32, 48 * 1024 // (rows * 3))
        if chunk >= 16 or R == 1:
            return R, chunk, rows * chunk * 3
        R //= 2


def tile_resize_layout_bytes(images):
    """The int32 layout: 8 fields per crop, then per table 7 fields + first, count, coeffs.
    Images of one size share their tables."""
    tables = 0
    for view in tile_views():
        for win, k in [(view["h"], view["hk"]), (view["v"], view["vk"])]:
            tables += 7 + len(win) * (2 + k)
    return 4 * (images * CROPS * 8 + tables) + 8 * images  # + the image pointer table


def attention_fwd_smem(elem, dp):
    """FwdLayout<T, DP>::bytes of query_attention.cu (64 query rows, 32 keys per tile)."""
    mma = elem == 2
    s = elem if mma else 4
    ld_qk, ld_v = (dp + 8, dp + 8) if mma else (dp + 1, dp)
    a128 = lambda x: -(-x // 128) * 128
    k_off = a128(s * 64 * ld_qk)
    if mma:
        s_off = a128(a128(k_off + s * 32 * ld_qk) + s * 32 * ld_v)
    else:  # float32 loads V into K's buffer once the scores are done (kKVShared)
        s_off = a128(k_off + s * 32 * ld_qk)
    p_off = a128(s_off + 4 * 64 * (32 + 4))
    o_off = a128(p_off + (elem * 64 * (32 + 8) if mma else 0))
    a_off = a128(o_off + 4 * 64 * (dp + 4))
    return a_off + 4 * 64


def attention_bwd_smem(dp):
    """bwd_shared_bytes<DP>(): four 32 x (DP+1) float tiles, P and dS 32 x 33, lse, delta."""
    return 4 * (4 * 32 * (dp + 1) + 2 * 32 * 33 + 2 * 32)


def sort_n(m):
    n = 1
    while n < m:
        n *= 2
    return n


_ELEM = {"f32": 4, "f16": 2, "bf16": 2, "u8": 1}


def launch(kernel):
    """(threads per block, dynamic shared memory) of a kernel at SliME's shapes."""
    base, _, targs = kernel.partition("<")
    targs = [t.strip() for t in targs.rstrip(">").split(",")] if targs else []
    if base == "tile_resize_kernel":
        return 256, tile_resize_launch()[2]
    if base == "query_attention_fwd_kernel":
        return 128, attention_fwd_smem(_ELEM[targs[0]], int(targs[1]))
    if base in ("query_attention_bwd_dkdv_kernel", "query_attention_bwd_dq_kernel"):
        return 128, attention_bwd_smem(int(targs[1]))
    if base == "select_kernel":
        return 1024, sort_n(M_TOK) * 9  # uint64 key + uint8 flag per sorted slot
    if base == "pack_kernel":
        return 128, 0
    if base in ("query_attention_dq_reduce_kernel", "text_inv_kernel", "text_partial_kernel",
                "text_reduce_kernel", "scores_kernel"):
        return 256, 0
    raise KeyError(f"cuda_perf_model: no launch configuration known for {kernel}; add it")


# The instantiations SliME runs: bf16 everywhere (and float32 images), head dim 128,
# H = 4096 rows aligned for 16-byte loads.
HOT = {"tile_resize_kernel<f32>", "tile_resize_kernel<bf16>",
       "query_attention_fwd_kernel<bf16, 128>", "query_attention_bwd_dkdv_kernel<bf16, 128>",
       "query_attention_bwd_dq_kernel<bf16, 128>", "query_attention_dq_reduce_kernel<bf16>",
       "text_inv_kernel<bf16, true>", "text_partial_kernel<bf16>", "text_reduce_kernel",
       "scores_kernel<bf16, true>", "select_kernel", "pack_kernel<uint4, false>",
       "pack_kernel<uint4, true>"}


# ---- roofline -----------------------------------------------------------------------------

@dataclasses.dataclass
class Case:
    op: str
    shape: str
    bytes: float
    flops: float
    peak: str          # key of H100
    kernel: str        # the kernel that does the work
    blocks: int        # its grid


def tile_resize_cases():
    views = tile_views()
    macs = 0
    for view in views:
        macs += IMG_H * sum(c for _, c in view["h"]) * 3             # horizontal pass
        macs += sum(c for _, c in view["v"]) * len(view["h"]) * 3    # vertical pass
    out_elems = CROPS * 3 * S * S
    R = tile_resize_launch()[0]
    cases = []
    for images in (1, 16):
        for dtype, elem in (("f32", 4), ("bf16", 2)):
            read = images * IMG_W * IMG_H * 3 + tile_resize_layout_bytes(images)
            cases.append(Case(
                "tile_resize", f"{images} x {IMG_W}x{IMG_H} u8 -> {images * CROPS} x 3x{S}x{S} "
                f"{dtype}", read + images * out_elems * elem,
                images * (2 * macs + 3 * out_elems), "int32", f"tile_resize_kernel<{dtype}>",
                images * CROPS * -(-S // R)))
    return cases


def attention_cases():
    h, d = HEADS, HEAD_DIM
    cases = []
    for b, lq, what in ((7, LQ, "local"), (64, LQ, "local"), (1, LK, "global expert"),
                        (16, LK, "global expert")):
        mm = 2 * b * h * lq * LK * d  # FLOPs of one Lq x Lk x d matmul over the batch
        q = h * lq * d * 2            # the learnable queries: shared by every crop
        kv = 2 * b * h * LK * d * 2
        o = b * h * lq * d * 2
        lse = b * h * lq * 4
        shape = f"B={b} {what}, Lq {lq}, Lk {LK}, {h}x{d} bf16"
        cases.append(Case("query_attention fwd", shape, q + kv + o + lse, 2 * mm, "bf16_tensor",
                          "query_attention_fwd_kernel<bf16, 128>", b * h * -(-lq // 64)))
        # Backward: recompute S (and P from lse), dP = dO V^T, dV, dK, dQ: five matmuls.
        # Reads q, k, v, out, dout, lse; writes dq (shared: once), dk, dv.
        cases.append(Case("query_attention bwd", shape, q + kv + 2 * o + lse + q + kv, 5 * mm,
                          "fp32", "query_attention_bwd_dkdv_kernel<bf16, 128>",
                          b * h * -(-LK // 32)))
    return cases


def token_cases():
    H, M = HIDDEN, M_TOK
    cases = []
    for b in (1, 16):
        for t in (40, 2048):
            read = b * (M + t) * H * 2 + b * t + b * 8          # tokens, text, mask, counts
            write = b * M * 8 + b * 8 + b * M * 4               # indices, counts, probs
            cases.append(Case("token_select", f"B={b} M={M} T={t} H={H} bf16", read + write,
                              4 * b * (M + t) * H, "fp32", "scores_kernel<bf16, true>",
                              -(-b * M // 8)))
    t = 40
    for b in (1, 16):
        n = b * (t + 576 + 1 + KEPT)  # the LLM input rows: text, global, separator, kept local
        # out = base with the kept rows gathered in: each output row is read from base or from
        # a kept token row and written once; indices, counts and offsets are int64.
        nbytes = 2 * n * H * 2 + b * (KEPT + 2) * 8
        cases.append(Case("token_pack", f"B={b} N={n} kept {b}x{KEPT} H={H} bf16", nbytes, 0,
                          "fp32", "pack_kernel<uint4, false>", b * KEPT))
    b = 16
    n = b * (t + 577 + KEPT)
    # Backward: read grad_out; write grad_tokens (every token row, zeros included) and grad_base.
    nbytes = n * H * 2 + b * M * H * 2 + n * H * 2 + b * (KEPT + 2) * 8
    cases.append(Case("token_pack bwd", f"B={b} N={n} kept {b}x{KEPT} H={H} bf16", nbytes, 0,
                      "fp32", "pack_kernel<uint4, true>", b * KEPT))
    return cases


def roofline(case):
    t_mem = case.bytes / H100["hbm"]
    t_math = case.flops / H100[case.peak]
    return dict(t_mem=t_mem, t_math=t_math, t_min=max(t_mem, t_math),
                bound="memory" if t_mem >= t_math else "compute",
                intensity=case.flops / case.bytes)


# ---- report -------------------------------------------------------------------------------

# Why a hot kernel keeps local memory, when the cause is known (shown only while it happens).
KNOWN_CAUSES = {
    "tile_resize_kernel": (
        "the stack frame is the by-value KernelArgs copied to local memory because "
        "`mean[ch]` / `stdev[ch]` are indexed by a runtime channel; selecting the channel's "
        "value with `ch == 0 ? mean[0] : ch == 1 ? mean[1] : mean[2]` in `out_value` removes it "
        "(checked with ptxas: 0 bytes stack, same 48 registers)."),
    "select_kernel": (
        "on sm_90 ptxas compiles `__launch_bounds__(1024)` to 32 registers (two resident "
        "blocks) and spills; `__launch_bounds__(kSelectThreads, 1)` lets it use 64 registers "
        "with no spill (checked with ptxas). The kernel runs one block per image (B blocks "
        "in all), so the second resident block it gives up never existed."),
    "query_attention_bwd_dkdv_kernel": (
        "on sm_80 ptxas holds the d <= 64 instantiations to 72 registers and spills; "
        "`__launch_bounds__(kThreads, 1)` gives 109 registers and no spill (checked with ptxas); "
        "shared memory already limits these blocks to 3 per SM, which 109 registers still allow."),
}


def fmt_bytes(n):
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def fmt_time(s):
    return f"{s * 1e6:.1f} us" if s >= 1e-6 else f"{s * 1e9:.0f} ns"


def build(usage, nvcc_version):
    kernels = []
    for u in sorted(usage, key=lambda u: (u.kernel not in HOT, u.kernel, u.arch)):
        threads, dyn = launch(u.kernel)
        blocks, limiter, occ = occupancy(ARCHS[u.arch], u.regs, threads, u.smem_static, dyn)
        kernels.append(dict(dataclasses.asdict(u), hot=u.kernel in HOT, threads=threads,
                            smem_dynamic=dyn, blocks_per_sm=blocks, limiter=limiter,
                            occupancy=occ))
    per_sm90 = {k["kernel"]: k["blocks_per_sm"] for k in kernels if k["arch"] == "90"}
    cases = []
    for c in tile_resize_cases() + attention_cases() + token_cases():
        slots = per_sm90[c.kernel] * H100["sms"]
        cases.append(dict(dataclasses.asdict(c), **roofline(c), waves=c.blocks / slots))
    return dict(note="MODEL, not a measurement", nvcc=nvcc_version, flags=NVCC_FLAGS,
                device="H100 SXM5 (model)", peaks=H100, kernels=kernels, roofline=cases)


def notes(r):
    """What the table leaves out, with numbers from the same model."""
    cases = {(c["op"], c["shape"]): c for c in r["roofline"]}
    hbm, tensor = r["peaks"]["hbm"], r["peaks"]["bf16_tensor"]
    shape7 = f"B=7 local, Lq {LQ}, Lk {LK}, {HEADS}x{HEAD_DIM} bf16"
    fwd, bwd = cases[("query_attention fwd", shape7)], cases[("query_attention bwd", shape7)]
    bwd_tc = max(bwd["bytes"] / hbm, bwd["flops"] / tensor)
    rows = -(-LQ // 64) * 64
    thin = [f"{c['op']} {c['shape']} ({c['waves']:.2f})" for c in r["roofline"] if c["waves"] < 1]
    pack = cases[("token_pack", next(s for o, s in cases if o == "token_pack"))]
    n1 = 40 + 577 + KEPT
    tighter = []
    for k in r["kernels"]:
        if k["hot"] and k["limiter"] == "shared memory":
            arch = ARCHS[k["arch"]]
            fits = arch.smem_per_sm // (k["blocks_per_sm"] + 1) // arch.smem_unit * arch.smem_unit
            over = k["smem_static"] + k["smem_dynamic"] + arch.smem_reserved - fits
            tighter.append(f"{k['kernel']} on sm_{k['arch']}: {over} B")
    return [
        "- Shared memory per block to give up for one more resident block per SM: "
        + "; ".join(tighter) + ".",
        f"- The attention backward computes in float32 FMA: at B=7 its bound is "
        f"{fmt_time(bwd['t_min'])} against the forward's {fmt_time(fwd['t_min'])}; on bf16 "
        f"tensor cores the same bytes and FLOPs would bound it at {fmt_time(bwd_tc)}. Its two "
        "kernels each recompute S and dP, 7 matmuls executed for the 5 counted (+40%).",
        f"- Forward tiles are 64 query rows: Lq = {LQ} runs {rows} rows, {rows / LQ:.2f}x the "
        f"counted tensor work ({fmt_time(fwd['t_math'] * rows / LQ)} at B=7, still under the "
        f"memory bound {fmt_time(fwd['t_mem'])}).",
        "- Grids under one wave (waves < 1) leave most of the H100's resident-block slots empty; "
        "those cases are latency-bound and their lower bound is not reachable: " + "; ".join(thin)
        + ".",
        "- Traffic the kernels add to the compulsory: token_select reads the text twice "
        "(text_inv, then text_partial) plus its float32 partial sums and scores; token_pack "
        f"copies `base` whole, then overwrites the kept rows ({(n1 + KEPT) / n1:.2f}x the rows "
        f"at B=1, bound {fmt_time(pack['t_min'] * (n1 + KEPT) / n1)}); the attention backward "
        "with shared queries writes and re-reads B float32 partials of dq; tile_resize "
        "re-reads the source rows neighbouring bands share (through L1/L2).",
        f"- select_kernel (one 1024-thread block per image, a bitonic sort of "
        f"{sort_n(M_TOK)} keys in {int(math.log2(sort_n(M_TOK)) * (math.log2(sort_n(M_TOK)) + 1) / 2)} "
        "barrier-separated steps, two softmaxes and scans) is latency-bound and not in the "
        "roofline; nor is launch latency.",
    ]


def markdown(r):
    L = ["# CUDA kernels on paper: resources, occupancy, roofline (H100 SXM)", "",
         "**MODEL, not a measurement.** No kernel ran: the numbers below come from ptxas, the",
         "occupancy calculator's rules and arithmetic on the ops' arguments. Regenerate with",
         "`python scripts/cuda_perf_model.py` (needs nvcc, no GPU).", "",
         f"Compiler: {r['nvcc']}; flags `{' '.join(r['flags'])}`, one cubin per architecture.",
         "", "## Resources and theoretical occupancy", "",
         "Every instantiation; **bold** = the ones SliME runs (bf16, head dim 128, H = 4096). "
         "Threads and dynamic shared memory are the launchers' at SliME's shapes (tile_resize: "
         f"{IMG_W}x{IMG_H} into {CROPS} crops; select: M = {M_TOK}). Occupancy = resident "
         "warps / 64; A100: 164 KB shared memory per SM, H100: 228 KB, 1 KB reserved per "
         "block, registers in units of 256 per warp, at most 32 blocks and 2048 threads.", "",
         "| kernel | arch | regs | spill st/ld (B) | stack (B) | static smem | threads | "
         "dyn smem | blocks/SM | limited by | occupancy |",
         "|---|---|---|---|---|---|---|---|---|---|---|"]
    for k in r["kernels"]:
        name = f"**{k['kernel']}**" if k["hot"] else k["kernel"]
        L.append(f"| {name} | sm_{k['arch']} | {k['regs']} | {k['spill_stores']}/"
                 f"{k['spill_loads']} | {k['stack']} | {k['smem_static']} | {k['threads']} | "
                 f"{k['smem_dynamic']} | {k['blocks_per_sm']} | {k['limiter']} | "
                 f"{k['occupancy']:.1%} |")
    L += ["", "## Local memory (spills and stack frames)", ""]
    flagged = [k for k in r["kernels"] if k["spill_stores"] or k["spill_loads"] or k["stack"]]
    if not flagged:
        L.append("None: no kernel spills or uses a stack frame on sm_80 or sm_90.")
    for k in flagged:
        L.append(f"- {'hot: ' if k['hot'] else ''}`{k['kernel']}` on sm_{k['arch']}: "
                 f"{k['spill_stores']} B spill stores, {k['spill_loads']} B spill loads, "
                 f"{k['stack']} B stack frame, {k['regs']} registers.")
    causes = {k["kernel"].partition("<")[0] for k in flagged}
    for base in sorted(causes & KNOWN_CAUSES.keys()):
        L.append(f"- Why `{base}`: {KNOWN_CAUSES[base]}")
    p = r["peaks"]
    L += ["", "## Roofline lower bounds at SliME's shapes", "",
          f"H100 SXM: HBM {p['hbm'] / 1e12:.2f} TB/s; bf16 tensor core {p['bf16_tensor'] / 1e12:.0f} "
          f"TFLOP/s dense; fp32 {p['fp32'] / 1e12:.0f} TFLOP/s; int32 multiply-add "
          f"{p['int32'] / 1e12:.1f} Tops/s (64 IMAD per SM per clock, half the fp32 rate). "
          "Bytes: compulsory traffic, inputs read once and outputs written once. FLOPs: the "
          "math of the op. The peak is that of the unit the kernel computes on: tensor cores "
          "for the bf16 attention forward (wmma), fp32 FMA for the attention backward (it "
          "computes in float32 without wmma) and token_select, int32 for the Pillow-exact "
          f"fixed-point filters of tile_resize (2 ops per multiply-add). Waves = grid / "
          f"(blocks per SM x {p['sms']} SMs) at sm_90's theoretical occupancy. "
          f"token_select: M = {M_TOK} local tokens (7 tiles, the most an image has). token_pack: "
          f"{KEPT} of them kept per image (the first release's top-p 0.95 keeps ~95%) into N "
          "LLM input rows (40 text + 576 global + separator + kept, per image).", "",
          "| op | shape | bytes | FLOPs | FLOP/B | peak | t(mem) | t(math) | lower bound | "
          "bound | grid | waves |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in r["roofline"]:
        L.append(f"| {c['op']} | {c['shape']} | {fmt_bytes(c['bytes'])} | "
                 f"{c['flops'] / 1e9:.3g} G | {c['intensity']:.3g} | "
                 f"{PEAK_NAMES[c['peak']] if c['flops'] else '-'} | "
                 f"{fmt_time(c['t_mem'])} | {fmt_time(c['t_math'])} | "
                 f"**{fmt_time(c['t_min'])}** | {c['bound']} | {c['blocks']} | "
                 f"{c['waves']:.2f} |")
    L += ["", "## What the bounds leave out", ""] + notes(r)
    return "\n".join(L) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "cuda-model-h100"),
                    help="output path without extension (.md and .json are written)")
    args = ap.parse_args(argv)
    report = build(*resource_usage())
    with open(args.out + ".json", "w") as f:
        json.dump(report, f, indent=1)
    with open(args.out + ".md", "w") as f:
        f.write(markdown(report))
    for k in report["kernels"]:
        if k["hot"] and (k["spill_stores"] or k["spill_loads"]):
            print(f"warning: {k['kernel']} spills on sm_{k['arch']}", file=sys.stderr)
    print(f"wrote {args.out}.md and .json")


if __name__ == "__main__":
    main()
