"""The whole SliME forward, processor to the first generated token's logits, stage by stage,
against the same model built the released way; and generation with the KV cache against HF.

Ours: ImageProcessor (tile_resize) -> VisionTower -> GatedAdapters -> Resampler (local
compressor) -> the projector's MLP -> tile_raster_index + token_select -> pack_image_tokens +
splice_image_tokens -> Decoder prefill, the steps SlimeModel.generate takes, in its order
(tests/test_bench_model.py checks the staged run against SlimeModel's own calls).

Peer ("released design"), built from code we did not write where it exists: HF transformers'
CLIPVisionModel (all 24 layers, hidden_states[-2] as LLaVA selects) and LlamaForCausalLM
(SDPA attention, logits of the last position only, as HF generate asks), with SliME's released
steps restated in slime_core.ops.reference (the released code cannot be imported here): Pillow
crops + HF's CLIPImageProcessorPil (the PIL/numpy CLIP processor the released code called),
ReleasedGatedBlockRef, ResamplerRef (nn.MultiheadAttention, queries repeated per crop),
token_select_literal (the M x T cosine matrix), and LLaVA's splice (a per-sample loop over
text chunks, torch.cat, then a padded batch).

Both sides hold the same random weights (ours are loaded from the HF modules' state dicts,
sharing their storage), take the same PIL image and prompt, and one warm-up run of each chain
checks that they agree (the same pixels, kept tokens and first token, logits within float32
rounding). Then each stage is timed alone on the inputs that run left, the two sides
interleaved; the total is the sum of the stage medians. At SliME-7B widths one chain costs
~3.9 TFLOP (CLIP-L on 7 crops ~2.5, the 2-layer 4096-wide LLM on ~1.4k tokens ~1.2): half a
minute at this 2-core machine's best matmul rate and several minutes when it is shared, so the
vision tower and the prefill are timed twice (once with --quick), the other stages 5 times (3).

Generation: Decoder.generate against HF's generate, greedy, tiny widths (hidden 256, 4 layers,
vocab 1000, prompt 64, 64 new tokens), the same weights, tokens asserted identical.

    python -m bench --only model [--quick]
"""
import dataclasses
import os
import time

import torch

from bench.common import Row, Timing, sync, time_fn, timing_from
from slime_core.checkpoint import load_into
from slime_core.models.llm import Decoder, DecoderConfig
from slime_core.models.slime import (IMAGE_TOKEN_INDEX, SlimeConfig, SlimeModel,
                                     trim_left_padding)
from slime_core.models.vision import VisionConfig, VisionTower
from slime_core.ops import reference as R
from slime_core.ops.pack import (crop_rows, find_image_positions, gather_rows,
                                 splice_image_tokens, tile_raster_index)
from slime_core.ops.tile_resize import CLIP_MEAN, CLIP_STD
from slime_core.preprocess import ImageProcessor
from slime_core.preprocess.planner import plan_slime

TOP_P = 0.95
PRENORM = 0.5      # the first release's double softmax (the published checkpoints)
SEPARATOR = 29892  # "," in the Llama-2 vocabulary, SliME-7B's separator (config "seperator")


@dataclasses.dataclass(frozen=True)
class Widths:
    image: tuple = (1920, 1080)   # (width, height): a 3 x 2 grid, 7 crops
    tile: int = 336
    patch: int = 14
    vision_hidden: int = 1024     # CLIP ViT-L/14-336
    vision_mlp: int = 4096
    vision_layers: int = 24
    vision_heads: int = 16
    hidden: int = 4096            # Vicuna-7B's width, 2 of its 32 layers
    mlp: int = 11008
    layers: int = 2
    heads: int = 32
    vocab: int = 32000
    question: int = 40            # text tokens besides the <image> placeholder
    image_at: int = 5             # placeholder position (after the template's first tokens)
    local_grid: int = 12          # 144 queries per tile
    separator: int = SEPARATOR

    def label(self):
        return (f"{self.image[0]}x{self.image[1]}, CLIP {self.vision_hidden}x"
                f"{self.vision_layers}L/{self.tile}, LLM {self.hidden}x{self.layers}L, "
                f"T {self.question}")


SLIME_7B = Widths()
# For the smoke test: the same grid (3 x 2 tiles), every stage, a few milliseconds.
TOY = Widths(image=(160, 90), tile=28, patch=7, vision_hidden=32, vision_mlp=64,
             vision_layers=3, vision_heads=4, hidden=48, mlp=96, layers=2, heads=4, vocab=96,
             question=9, image_at=3, local_grid=2, separator=5)

STAGES = ("preprocess", "vision tower", "global connector", "local compression",
          "MLP on local tokens", "grid layout + selection", "pack + splice", "LLM prefill")


@dataclasses.dataclass
class Pair:
    """The two models over the same weights, and the inputs."""
    w: Widths
    model: SlimeModel        # ours
    processor: ImageProcessor
    hf_clip: torch.nn.Module
    hf_llama: torch.nn.Module
    gated_ref: torch.nn.Module
    resampler_ref: torch.nn.Module
    clip_processor: object
    image: object            # PIL image
    input_ids: torch.Tensor  # (1, question + 1) with IMAGE_TOKEN_INDEX at image_at


def build(w=SLIME_7B, seed=0):
    """HF CLIP + Llama at random init; our tower and decoder loaded from their state dicts
    (sharing storage, no copy); the connector and compressor random, then loaded into the
    released-design restatements."""
    import transformers
    from PIL import Image
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    torch.manual_seed(seed)
    vcfg = transformers.CLIPVisionConfig(
        hidden_size=w.vision_hidden, intermediate_size=w.vision_mlp,
        num_hidden_layers=w.vision_layers, num_attention_heads=w.vision_heads,
        image_size=w.tile, patch_size=w.patch)
    hf_clip = transformers.CLIPVisionModel(vcfg).eval()
    lcfg = transformers.LlamaConfig(
        hidden_size=w.hidden, intermediate_size=w.mlp, num_hidden_layers=w.layers,
        num_attention_heads=w.heads, num_key_value_heads=w.heads, vocab_size=w.vocab,
        max_position_embeddings=4096, bos_token_id=1, eos_token_id=2)
    hf_llama = transformers.LlamaForCausalLM(lcfg).eval()
    for m in (hf_clip, hf_llama):
        if m.config._attn_implementation != "sdpa":
            raise RuntimeError(f"{type(m).__name__} runs {m.config._attn_implementation} "
                               "attention, not SDPA")

    with torch.device("meta"):
        tower = VisionTower(VisionConfig.from_hf_config(hf_clip.config.to_dict()))
        llm = Decoder(DecoderConfig.from_hf_config(hf_llama.config.to_dict()))
    load_into(tower, {k: v for k, v in hf_clip.state_dict().items() if not tower._unused_key(k)},
              what="VisionTower from HF CLIP", assign=True)
    load_into(llm, hf_llama.state_dict(), what="Decoder from HF Llama", assign=True)
    llm.tie_weights()
    model = SlimeModel(SlimeConfig(separator_token_id=w.separator, prenorm_temperature=PRENORM,
                                   top_p=TOP_P, local_grid=w.local_grid), tower, llm).eval()
    proj = model.mm_projector
    with torch.no_grad():  # a trained router, not the zero init (which hides the gate math)
        proj.w_gate.copy_(torch.randn(proj.w_gate.shape) * 0.5)
    side, heads = w.tile // w.patch, proj.attn.num_heads
    gated_ref = R.ReleasedGatedBlockRef(w.vision_hidden, w.hidden, side, heads)
    gated_ref.load_state_dict(proj.state_dict())
    resampler_ref = R.ResamplerRef(w.local_grid, w.vision_hidden, heads, kv_dim=w.vision_hidden)
    resampler_ref.load_state_dict(model.sampler.post_qformer.state_dict())

    g = torch.Generator().manual_seed(seed + 1)
    width, height = w.image
    pixels = torch.randint(0, 256, (height, width, 3), dtype=torch.uint8, generator=g)
    image = Image.fromarray(pixels.numpy(), "RGB")
    ids = torch.randint(3, w.vocab, (1, w.question + 1), generator=g)
    ids[0, 0] = 1  # BOS
    ids[0, w.image_at] = IMAGE_TOKEN_INDEX
    clip_processor = CLIPImageProcessorPil(
        size={"shortest_edge": w.tile}, crop_size={"height": w.tile, "width": w.tile},
        image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))
    return Pair(w, model, ImageProcessor(tile_size=w.tile), hf_clip, hf_llama,
                gated_ref.eval(), resampler_ref.eval(), clip_processor, image, ids)


# ---- the two chains, as stages: fn(state) -> new state entries, pure, so any stage can be
# re-run alone on the state the first run left ----

def ours_stages(p):
    """SlimeModel.generate's steps up to the first token's logits (the order of
    SlimeModel.image_tokens, prepare_inputs and Decoder.generate's prefill)."""
    model, cfg = p.model, p.model.config
    llm = model.llm

    def preprocess(s):
        return dict(out=p.processor([p.image]))

    def vision(s):
        return dict(feats=model.vision_tower(s["out"].pixel_values))       # (7, 576, D_v)

    def global_connector(s):
        global_rows, tile_rows = crop_rows(s["out"].crops_per_image)
        prefix = model.mm_projector(s["feats"].index_select(0, global_rows))  # (1, 576, H)
        sep = llm.embed_tokens.weight[cfg.separator_token_id]
        return dict(prefix=torch.cat([prefix, sep.expand(1, 1, -1)], dim=1), tile_rows=tile_rows)

    def local_compression(s):
        return dict(tiles=model.sampler.post_qformer(
            s["feats"].index_select(0, s["tile_rows"])))                    # (6, 144, D_v)

    def mlp(s):
        return dict(tiles_h=model.mm_projector(s["tiles"]))                # (6, 144, H)

    def selection(s):
        ids = p.input_ids
        mask = torch.ones_like(ids)
        text = llm.embed_tokens(ids.masked_fill(ids < 0, 0))                # (1, T + 1, H)
        text_mask = mask.bool() & (ids != cfg.image_token_id)
        index, m = tile_raster_index(s["out"].grids_wh, cfg.local_grid, order=cfg.local_order)
        local = gather_rows(s["tiles_h"].flatten(0, 1), index)               # (1, M, H)
        kept, counts = model._select(model, local, text, text_mask, m)
        return dict(mask=mask, text=text, local=local, kept=kept, counts=counts)

    def splice(s):
        image, n_image = model._pack(s["local"], s["kept"], s["counts"], prefix=s["prefix"])
        pos = find_image_positions(p.input_ids, cfg.image_token_id, s["mask"])
        spliced = splice_image_tokens(s["text"], s["mask"], pos, image, n_image,
                                      padding_side="left")
        x, amask = trim_left_padding(spliced.inputs_embeds, spliced.attention_mask)
        return dict(x=x, amask=amask, padded_length=spliced.inputs_embeds.shape[1])

    def prefill(s):
        x, amask = s["x"], s["amask"]
        cache = llm.new_cache(x.shape[0], x.shape[1] + 1)
        amask = None if bool(amask.all()) else amask
        h = llm.hidden_states(inputs_embeds=x, attention_mask=amask, cache=cache)[:, -1]
        return dict(logits=llm.lm_head(h).float()[0])

    return dict(zip(STAGES, (preprocess, vision, global_connector, local_compression, mlp,
                             selection, splice, prefill)))


def released_crops(image, plan):
    """SliME's process_anyres_image with Pillow: the global view, then resize-and-pad on black
    and S x S tiles row-major (PIL images)."""
    from PIL import Image
    S = plan.tile_size
    crops = [image.resize((S, S), Image.BICUBIC)]
    canvas = Image.new("RGB", plan.canvas_wh, (0, 0, 0))
    canvas.paste(image.resize((plan.new_w, plan.new_h), Image.BICUBIC), (plan.off_x, plan.off_y))
    for ty in range(plan.grid_h):
        for tx in range(plan.grid_w):
            crops.append(canvas.crop((tx * S, ty * S, (tx + 1) * S, (ty + 1) * S)))
    return crops


def llava_splice(input_ids, embed, image_features):
    """LLaVA's prepare_inputs_labels_for_multimodal for inference: per sample, the text
    between placeholders embedded in one call and split, the image features put in between,
    concatenated, then a right-padded batch with its mask and positions."""
    new_embeds = []
    for b in range(input_ids.shape[0]):
        ids = input_ids[b]
        where = [-1] + torch.where(ids == IMAGE_TOKEN_INDEX)[0].tolist() + [ids.shape[0]]
        chunks = [ids[where[i] + 1:where[i + 1]] for i in range(len(where) - 1)]
        text = torch.split(embed(torch.cat(chunks)), [c.shape[0] for c in chunks], dim=0)
        parts = []
        for i, t in enumerate(text):
            parts.append(t)
            if i < len(text) - 1:
                parts.append(image_features[b])
        new_embeds.append(torch.cat(parts))
    L = max(e.shape[0] for e in new_embeds)
    B, H = len(new_embeds), new_embeds[0].shape[1]
    padded = torch.zeros(B, L, H, dtype=new_embeds[0].dtype)
    mask = torch.zeros(B, L, dtype=torch.bool)
    position_ids = torch.zeros(B, L, dtype=torch.long)
    for b, e in enumerate(new_embeds):
        n = e.shape[0]
        padded[b, :n] = e
        mask[b, :n] = True
        position_ids[b, :n] = torch.arange(n)
    return padded, mask, position_ids


def peer_stages(p):
    """The released pipeline on HF modules: one image, Python loops where it has them."""
    w = p.w
    embed = p.hf_llama.get_input_embeddings()

    def preprocess(s):
        plan = plan_slime(*p.image.size, w.tile)
        crops = released_crops(p.image, plan)
        pixels = p.clip_processor.preprocess(crops, return_tensors="pt")["pixel_values"]
        return dict(plan=plan, pixels=pixels)

    def vision(s):
        out = p.hf_clip(pixel_values=s["pixels"], output_hidden_states=True)
        return dict(feats=out.hidden_states[-2][:, 1:])                     # (7, 576, D_v)

    def global_connector(s):
        glob = p.gated_ref(s["feats"][:1])[0]                               # (576, H)
        return dict(prefix=torch.cat([glob, embed(torch.tensor([w.separator]))]))

    def local_compression(s):
        return dict(tiles=p.resampler_ref(s["feats"][1:]))                  # (6, 144, D_v)

    def mlp(s):
        return dict(tiles_h=p.gated_ref(s["tiles"]))                        # (6, 144, H)

    def selection(s):
        g, plan, tiles = w.local_grid, s["plan"], s["tiles_h"]
        H = tiles.shape[-1]
        local = tiles.view(plan.grid_h, plan.grid_w, g, g, H).permute(0, 2, 1, 3, 4)
        local = local.reshape(-1, H)                                        # (M, H) raster
        ids = p.input_ids[0]
        text = embed(ids[ids != IMAGE_TOKEN_INDEX])                         # (T, H)
        kept, _ = R.token_select_literal(local, text, torch.ones(len(text), dtype=torch.bool),
                                         TOP_P, prenorm_temperature=PRENORM)
        return dict(local=local, kept=kept)

    def splice(s):
        features = torch.cat([s["prefix"], s["local"][s["kept"]]])
        x, mask, position_ids = llava_splice(p.input_ids, embed, features[None])
        return dict(x=x, amask=mask, position_ids=position_ids)

    def prefill(s):
        out = p.hf_llama(inputs_embeds=s["x"], attention_mask=s["amask"].long(),
                         position_ids=s["position_ids"], use_cache=True, logits_to_keep=1)
        return dict(logits=out.logits[0, -1].float())

    return dict(zip(STAGES, (preprocess, vision, global_connector, local_compression, mlp,
                             selection, splice, prefill)))


@torch.no_grad()
def run_chain(stages):
    """One end-to-end run: the final state (every stage's outputs)."""
    state = {}
    for name in STAGES:
        state.update(stages[name](state))
    return state


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def agreement(ours, peer):
    """What the two chains computed alike (a dict); an AssertionError names what differs
    beyond float32 rounding."""
    kept = ours["kept"][0, :int(ours["counts"][0])]
    checks = dict(
        pixels_max_abs=float((ours["out"].pixel_values - peer["pixels"]).abs().max()),
        vision_rel=rel(ours["feats"], peer["feats"]),
        global_rel=rel(ours["prefix"][0], peer["prefix"]),
        local_rel=rel(ours["local"][0], peer["local"]),
        kept_equal=torch.equal(kept, peer["kept"]), kept=int(peer["kept"].numel()),
        M=int(peer["local"].shape[0]), length=int(peer["x"].shape[1]),
        padded_length=ours["padded_length"],
        logits_rel=rel(ours["logits"], peer["logits"]),
        same_token=int(ours["logits"].argmax()) == int(peer["logits"].argmax()))
    assert checks["pixels_max_abs"] < 1e-5, checks  # the same Pillow pixels, rounding only
    assert checks["kept_equal"] and ours["x"].shape[1] == checks["length"], checks
    assert checks["logits_rel"] < 1e-3 and checks["same_token"], checks
    return checks


def model_flops(w, crops, kept):
    """FLOPs per stage of ours (the minimal computation, 2 per multiply-add), for the napkin
    math. The peer does more in places: a 24th CLIP layer, the query projection per tile,
    the MLP of both gated experts computed and then mixed."""
    S = (w.tile // w.patch) ** 2 + 1                 # CLIP tokens, class token included
    D, F_ = w.vision_hidden, w.vision_mlp
    layer = 2 * S * (4 * D * D + 2 * D * F_) + 4 * S * S * D
    conv = 2 * (S - 1) * D * 3 * w.patch ** 2
    vision = crops * (conv + (w.vision_layers - 1) * layer)
    H, Lk, Lq, tiles = w.hidden, S - 1, w.local_grid ** 2, crops - 1
    mlp = 2 * (D * H + H * H)                        # per token

    def resampler(lq, n):  # K|V for n crops, Q once, attention, output projection
        return 2 * n * Lk * D * 2 * D + 2 * lq * D * D + 4 * n * lq * Lk * D + 2 * n * lq * D * D

    L = w.question + Lk + 1 + kept
    llm = w.layers * (2 * L * (4 * H * H + 3 * H * w.mlp) + 2 * L * L * H) + 2 * H * w.vocab
    return {"vision tower": vision, "global connector": 2 * Lk * mlp + resampler(Lk, 1),
            "local compression": resampler(Lq, tiles), "MLP on local tokens": tiles * Lq * mlp,
            "LLM prefill": llm}


def model_rows(device="cpu", quick=False, w=SLIME_7B, big_reps=None, small_reps=None):
    """One row per stage and the total. A warm-up run of each chain checks that they agree;
    then every stage is timed alone on the inputs that run left, the two sides interleaved:
    big_reps times for the vision tower and the LLM prefill (default 2, --quick 1; each is
    tens of seconds per side at SliME-7B widths on 2 cores), small_reps times for the rest
    (default 5, --quick 3). The total is the sum of the stage medians."""
    if torch.device(device).type != "cpu":
        return []  # the peer's preprocessing and selection are CPU code; CPU only for now
    big_reps = big_reps or (1 if quick else 2)
    small_reps = small_reps or (3 if quick else 5)
    load = os.getloadavg()[0]
    p = build(w)
    sides = {"ours": ours_stages(p), "peer": peer_stages(p)}
    states = {side: run_chain(stages) for side, stages in sides.items()}
    checks = agreement(states["ours"], states["peer"])
    times = {side: {s: [] for s in STAGES} for side in sides}
    with torch.no_grad():
        for s in STAGES:
            for i in range(big_reps if s in ("vision tower", "LLM prefill") else small_reps):
                for side in (("peer", "ours") if i % 2 == 0 else ("ours", "peer")):
                    sync(device)
                    t = time.perf_counter()
                    sides[side][s](states[side])
                    sync(device)
                    times[side][s].append(time.perf_counter() - t)

    crops, M, T, H = len(states["peer"]["pixels"]), checks["M"], w.question, w.hidden
    flops = model_flops(w, crops, checks["kept"])
    nbytes = {
        "preprocess": w.image[0] * w.image[1] * 3 + crops * 3 * w.tile ** 2 * 4,  # read, write
        "grid layout + selection": (M + T) * H * 4,  # every local token and text row once
        "pack + splice": checks["length"] * H * 4,   # write the spliced sequence once
    }
    notes = {
        "preprocess": ("peer: Pillow crops + HF CLIPImageProcessorPil (1 thread); ours: one "
                       "tile_resize call (OpenMP); max |pixel difference| "
                       f"{checks['pixels_max_abs']:.1e}"),
        "vision tower": ("HF runs all 24 layers and keeps hidden_states[-2] (as LLaVA does); "
                         "ours builds 23, the last never reaching the features; the layers "
                         "run the same kernels; features rel. difference "
                         f"{checks['vision_rel']:.1e}"),
        "global connector": ("576 tokens; peer: both experts' MLP computed on every token, "
                             "router softmax + top-2 scatter + stack-matmul, "
                             "nn.MultiheadAttention resampler; rel. difference "
                             f"{checks['global_rel']:.1e}"),
        "local compression": (f"{crops - 1} tiles x 576 -> 144; peer: nn.MultiheadAttention "
                              "with the queries repeated and projected per tile; ours: query "
                              "projection once, fused query_attention"),
        "MLP on local tokens": (f"{M} tokens, the same nn.Sequential on both sides; local "
                                f"tokens rel. difference {checks['local_rel']:.1e}"),
        "grid layout + selection": (f"M={M} T={T} H={H}; peer: token_select_literal, an M x T "
                                    f"x H cosine tensor ({M * T * H * 4 / 1e9:.2f} GB); "
                                    f"{checks['kept']} tokens kept on both sides"),
        "pack + splice": (f"{checks['length']} tokens; ours: fixed-shape pack and splice over "
                          f"{checks['padded_length']} positions, then the padding trimmed"),
        "LLM prefill": (f"L={checks['length']}, logits of the last position only on both "
                        "sides; first-token logits rel. difference "
                        f"{checks['logits_rel']:.1e}, same argmax"),
    }
    rows = []
    shape, base = w.label(), "HF CLIP+Llama, released SliME steps"
    total = {side: Timing(*(sum(getattr(timing_from(times[side][s]), f) for s in STAGES)
                            for f in ("median", "p10", "p90")),
                          min(len(v) for v in times[side].values())) for side in sides}
    for s in STAGES:
        f = flops.get(s, 0.0)
        rows.append(Row(op=f"SliME forward: {s}", shape=shape, dtype="float32",
                        device=str(device), baseline_name=base,
                        baseline=timing_from(times["peer"][s]),
                        ours=timing_from(times["ours"][s]), flops=f, nbytes=nbytes.get(s, 0.0),
                        bound="compute" if f else "memory", note=notes[s]))
    rows.append(Row(
        op="SliME forward: total", shape=shape, dtype="float32", device=str(device),
        baseline_name=base, baseline=total["peer"], ours=total["ours"],
        flops=sum(flops.values()), bound="compute",
        note=(f"sum of the stage medians (and of their 10/90% points); vision tower and "
              f"prefill timed {big_reps}x, the other stages {small_reps}x, after a warm-up run "
              f"of both chains; one chain is ~{sum(flops.values()) / 1e12:.1f} TFLOP; load "
              f"average {load:.1f} before and {os.getloadavg()[0]:.1f} after on "
              f"{os.cpu_count()} cores")))
    return rows


# ---- generation with the KV cache ----

def build_generation(hidden=256, layers=4, heads=4, vocab=1000, seed=0):
    import transformers
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(hidden_size=hidden, intermediate_size=hidden * 11 // 4,
                                   num_hidden_layers=layers, num_attention_heads=heads,
                                   num_key_value_heads=heads, vocab_size=vocab,
                                   bos_token_id=1, eos_token_id=None, pad_token_id=0)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    with torch.device("meta"):
        ours = Decoder(DecoderConfig.from_hf_config(hf.config.to_dict()))
    load_into(ours, hf.state_dict(), what="Decoder from HF Llama", assign=True)
    return ours.eval(), hf


def generation_rows(device="cpu", quick=False, prompt=64, new=64, threads=1, **widths):
    """Tokens per second of greedy generation, ours against HF generate. At these widths a
    token is microseconds of arithmetic and the rest is per-step overhead, which a second
    OpenMP thread only adds to (and on a loaded machine multiplies: every op waits for both
    threads), so both run on `threads` threads (default 1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _generation_rows(device, quick, prompt, new, **widths)
    finally:
        torch.set_num_threads(before)


def _generation_rows(device, quick, prompt, new, **widths):
    ours, hf = build_generation(**widths)
    ours, hf = ours.to(device), hf.to(device)
    ids = torch.randint(3, ours.config.vocab_size, (1, prompt),
                        generator=torch.Generator().manual_seed(1)).to(device)
    mask = torch.ones_like(ids)

    def run_ours():
        return ours.generate(ids, mask, max_new_tokens=new, stop_token_ids=[])

    @torch.no_grad()
    def run_hf():
        return hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new,
                           do_sample=False)[:, prompt:]

    a, b = run_ours(), run_hf()
    assert a.shape == b.shape == (1, new) and torch.equal(a, b), \
        "greedy tokens differ from HF generate's"
    kw = dict(warmup=1, min_repeats=3, max_repeats=10, min_time=0.5 if quick else 2.0)
    base_t, ours_t = time_fn(run_hf, device, **kw), time_fn(run_ours, device, **kw)
    c = ours.config
    params = c.num_layers * (4 * c.hidden_size ** 2 + 3 * c.hidden_size * c.intermediate_size)
    params += c.hidden_size * c.vocab_size
    return [Row(op="generate, KV cache, greedy", shape=(
        f"Llama {c.hidden_size}x{c.num_layers}L, vocab {c.vocab_size}, prompt {prompt}, "
        f"{new} new, batch 1"), dtype="float32", device=str(device),
        baseline_name="HF generate", baseline=base_t, ours=ours_t,
        flops=2 * params * (prompt + new), bound="compute",
        note=(f"{new / ours_t.median:.0f} tokens/s vs {new / base_t.median:.0f} tokens/s "
              f"(prefill included), {torch.get_num_threads()} thread(s); tokens identical"))]


def run(device, ceilings, quick):
    return model_rows(device, quick) + generation_rows(device, quick)
