"""Checks slime_core's connector, resampler and selector against the RELEASED SliME modules,
run from a SliME checkout (github.com/yfzhang114/SliME; not shipped, not copied: its files
are imported from where they lie), with the released modules' own state dicts.

    python scripts/check_released_slime.py /path/to/SliME          # a work tree
    python scripts/check_released_slime.py /path/to/SliME.git      # or a bare git dir

Only the four files below are loaded (the llava package itself imports the whole LLaVA
training stack); everything runs on the CPU in float32. Prints one line per check with the
largest relative error, and exits non-zero if one exceeds 1e-5 (or a kept set differs).
"""
import importlib.util
import os
import subprocess
import sys
import tempfile
import types

import torch

FILES = ["llava/model/multimodal_resampler/sampler.py", "llava/model/multimodal_projector/moe.py",
         "llava/model/multimodal_projector/builder.py",
         "llava/model/multimodal_resampler/builder.py"]


def released_modules(src):
    """{relative path: module} loaded from a SliME work tree or bare git dir."""
    if not os.path.isfile(os.path.join(src, FILES[0])):  # a bare repository: export the files
        out = tempfile.mkdtemp(prefix="slime-released-")
        for f in FILES:
            os.makedirs(os.path.join(out, os.path.dirname(f)), exist_ok=True)
            text = subprocess.run(["git", "--git-dir", src, "show", f"HEAD:{f}"], check=True,
                                  capture_output=True, text=True).stdout
            with open(os.path.join(out, f), "w") as fh:
                fh.write(text)
        src = out
    for pkg in ("llava", "llava.model", "llava.model.multimodal_resampler",
                "llava.model.multimodal_projector"):
        sys.modules.setdefault(pkg, types.ModuleType(pkg))
    mods = {}
    for f in FILES:
        name = f[:-3].replace("/", ".")
        spec = importlib.util.spec_from_file_location(name, os.path.join(src, f))
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
        mods[f] = mod
    return mods


def rel(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def main(argv):
    if len(argv) != 1:
        print(__doc__)
        return 2
    import slime_core  # noqa: F401
    from slime_core.models import GatedAdapters, Resampler
    from slime_core.ops import token_select

    mods = released_modules(argv[0])
    proj_builder = mods["llava/model/multimodal_projector/builder.py"]
    samp_builder = mods["llava/model/multimodal_resampler/builder.py"]
    torch.manual_seed(0)
    dv, h = 256, 96  # the released resamplers take dv // 128 heads: 2
    cfg = types.SimpleNamespace(mm_hidden_size=dv, hidden_size=h, mm_learnable_gated=-1,
                                mm_resampler_dim=144, mm_resampler_topp=0.95,
                                mm_resampler_temp=1.0, pad_token_id=0, mm_projector_type="gated")
    failures = 0

    def report(what, err, tol=1e-5):
        nonlocal failures
        ok = err <= tol
        failures += not ok
        print(f"{'ok ' if ok else 'BAD'} {what}: max relative error {err:.2e}")

    # The gated mixture of adapters (global view) and its MLP-only shortcut (local tokens).
    released = proj_builder.build_vision_projector(cfg).eval()
    with torch.no_grad():  # a trained router rather than the zero init
        released.w_gate.copy_(torch.randn_like(released.w_gate.float()))
    ours = GatedAdapters(dv, h, grid_size=24, num_heads=dv // 128).eval()
    ours.load_state_dict(released.state_dict())  # strict: every released key, same shapes
    x = torch.randn(3, 576, dv)
    with torch.no_grad():
        report("gated connector, 3 x 576 global tokens", rel(ours(x), released(x)))
        local = torch.randn(4, 144, dv)
        report("gated connector shortcut, 4 x 144 local tokens", rel(ours(local), released(local)))

    # The local compressor (sampler.post_qformer) and the text-guided selection.
    sampler = samp_builder.build_vision_sampler(types.SimpleNamespace(
        **vars(cfg), mm_resampler_type="cosine")).eval()
    comp = Resampler(12, dv, dv // 128, kv_dim=dv).eval()
    comp.load_state_dict(sampler.post_qformer.state_dict())
    tiles = torch.randn(6, 576, dv)
    with torch.no_grad():
        a, b = comp(tiles), sampler.post_qformer(tiles)
        report("local compressor, 6 tiles x 576 -> 144", rel(a, b))
        grid = released(b).view(2, 3, 12, 12, h).permute(0, 2, 1, 3, 4).reshape(-1, h)  # raster
        text = torch.randn(37, h)
        mask = torch.rand(37) > 0.2
        kept_released = sampler(grid, text_embedding=text, attn_mask=mask)
        sel = token_select(grid, text, mask, top_p=0.95)
        kept = grid[sel.indices[:int(sel.counts)]]
        same = kept.shape == kept_released.shape and torch.equal(kept, kept_released)
        failures += not same
        print(f"{'ok ' if same else 'BAD'} selection, top-p 0.95 over {grid.shape[0]} tokens: "
              f"released keeps {kept_released.shape[0]}, ours {kept.shape[0]}, "
              f"{'identical rows' if same else 'DIFFERENT'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
