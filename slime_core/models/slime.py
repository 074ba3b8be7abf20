"""The SliME model: a vision tower, a connector, a local compressor and a decoder LLM, with
the image tokens chosen per prompt. One class covers SliME and TinyLLaVA-style models (a
vision tower + an MLP or resampler connector + a small LLM): a config, not a hierarchy.

    image -> processor crops [global view, tiles...]          (slime_core.preprocess)
      -> vision tower (all crops of the batch at once)         (N, 576, D_v)
      global view -> mm_projector (SliME: the gated mixture)   (B, 576, H)
      tiles -> sampler.post_qformer (Resampler, 144 queries) -> mm_projector (MLP path)
            (local_compressor="none": every patch, through mm_projector as the global view)
            -> laid on one grid per image (raster order)       (B, M_max, H) ragged
            -> token_select against the prompt's embeddings    kept indices, counts
      [global, separator, kept local] spliced at <image>       (B, L, H) + mask + positions
      -> LLM -> logits, loss on the labelled tokens

Every step runs on the whole ragged batch (no per-image Python loop): images with different
tile counts and prompts of different lengths are padded, with the counts carried as data.
Module names follow the released checkpoints (LLaVA layout: model.mm_projector.*,
model.sampler.post_qformer.*, the LLM's own keys), see from_pretrained / save_pretrained.
"""
import dataclasses
import os
from typing import NamedTuple, Optional

import torch
from torch import nn
from torch.nn import functional as F

from slime_core.checkpoint import (CheckpointError, load_into, load_safetensors, read_config,
                                   save_safetensors, write_config)
from slime_core.models.connectors import build_connector
from slime_core.models.llm import Decoder, DecoderConfig
from slime_core.models.resampler import Resampler
from slime_core.models.vision import VisionConfig, VisionTower
from slime_core.ops import reference as ref
from slime_core.ops.pack import (IGNORE_INDEX, crop_rows, find_image_positions, gather_rows,
                                 pack_image_tokens, splice_image_tokens, tile_raster_index)
from slime_core.ops.token_select import token_select

VISION_SUBFOLDER = "vision_tower"  # save_pretrained(save_vision_tower=True)
IMAGE_TOKEN_INDEX = -200  # LLaVA's placeholder id for <image>: never an embedding row


@dataclasses.dataclass
class SlimeConfig:
    """What sits between the vision tower and the LLM (both have their own configs)."""
    image_mode: str = "both"        # "both": SliME; "global": LLaVA-1.5 / TinyLLaVA (one
    #                                 crop per image); "local": tiles only
    connector: str = "gated"        # mm_projector_type: gated, mlp2x_gelu, linear, resampler
    connector_expert: int = -1      # gated only: -1 mixture, 0 MLP only (stage Ia), 1
    #                                 resampler expert only (stage Ib) (mm_learnable_gated)
    connector_grid: int = 12        # "resampler" connector: query grid side (144 tokens)
    num_heads: Optional[int] = None  # resampler heads; None: D_v // 128, as released
    local_grid: int = 12            # local compressor queries per tile side (144 = 12 x 12)
    local_compressor: str = "resampler"  # "none": every tile's patch tokens go uncompressed
    #                                 through mm_projector, as the global view's do (LLaVA-NeXT's
    #                                 AnyRes: the baseline SliME's compression is measured
    #                                 against); built so, the model has no sampler
    local_order: str = "raster"     # "raster" (mm_patch_merge_type spatial) or "tile" (flat)
    selection: str = "top_p"        # "top_p" (SliME), "top_k", "none" (keep every token), or
    #                                 "random" (top_k tokens blind to the text: an ablation)
    top_p: float = 0.95             # mm_resampler_topp; 1.0 keeps all (pre-training)
    top_k: int = 576
    temperature: float = 1.0        # mm_resampler_temp
    prenorm_temperature: Optional[float] = None  # 0.5: SliME's first release (its checkpoints)
    selection_noise: float = 0.1    # std of the score noise in training (released: 0.1)
    separator_token_id: Optional[int] = None     # SliME: the id of ","; config "seperator"
    image_token_id: int = IMAGE_TOKEN_INDEX      # placeholder id in input_ids
    max_length: Optional[int] = None  # truncate spliced sequences (tokenizer_model_max_length)
    use_fused_ops: bool = True      # False: the plain-PyTorch reference ops (same function)

    def __post_init__(self):
        choices = {"image_mode": ("both", "global", "local"),
                   "local_order": ("raster", "tile"),
                   "local_compressor": ("resampler", "none"),
                   "selection": ("top_p", "top_k", "none", "random")}
        for field, allowed in choices.items():
            if getattr(self, field) not in allowed:
                raise ValueError(f"{field} must be one of {allowed}, got {getattr(self, field)!r}")
        if self.image_mode != "global" and self.connector == "resampler":
            raise ValueError("the 'resampler' connector compresses whole crops; use it with "
                             "image_mode='global' (local tiles already have a compressor)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


class Sampler(nn.Module):
    """SliME's local branch parameters (released name: model.sampler): the tile compressor.
    The text-guided selection itself has no parameters (cosine scores, top-p)."""

    def __init__(self, grid_size, vision_dim, num_heads):
        super().__init__()
        self.post_qformer = Resampler(grid_size, vision_dim, num_heads, kv_dim=vision_dim)


class SlimeOutput(NamedTuple):
    """Forward's result: loss (None without labels), logits (B, L, vocab), and the spliced
    input it was computed on (for inspection: which tokens went in)."""
    loss: Optional[torch.Tensor]
    logits: torch.Tensor
    inputs: object  # slime_core.ops.SplicedInputs


class SlimeModel(nn.Module):
    """SliME (or a TinyLLaVA-style model) around a VisionTower and a Decoder.

    Args:
        config: SlimeConfig.
        vision_tower: slime_core.models.VisionTower (frozen unless unfrozen).
        llm: slime_core.models.llm.Decoder.
    """

    def __init__(self, config, vision_tower, llm):
        super().__init__()
        if not isinstance(config, SlimeConfig):
            raise TypeError(f"config must be a SlimeConfig, got {type(config).__name__}")
        self.config = config
        self.vision_tower = vision_tower
        self.llm = llm
        dv, h = vision_tower.config.hidden_size, llm.config.hidden_size
        heads = config.num_heads or max(1, dv // 128)
        side = vision_tower.config.image_size // vision_tower.config.patch_size
        self.mm_projector = build_connector(config.connector, dv, h, grid_size=(
            side if config.connector == "gated" else config.connector_grid), num_heads=heads,
            expert=config.connector_expert)
        self.sampler = (Sampler(config.local_grid, dv, heads)
                        if config.image_mode != "global" and config.local_compressor != "none"
                        else None)
        self.set_fused_ops(config.use_fused_ops)

    def set_fused_ops(self, enabled):
        """Chooses the fused kernels (True) or the plain-PyTorch reference path (False)."""
        self.config.use_fused_ops = bool(enabled)
        for m in self.modules():
            if isinstance(m, Resampler):
                m.use_fused_ops = bool(enabled)
        self._select = _select_fused if enabled else _select_reference
        self._pack = pack_image_tokens if enabled else _pack_reference
        return self

    # ---------------------------------------------------------------- image tokens

    def image_tokens(self, pixel_values, crops_per_image, grids_wh, text, text_mask,
                     return_selection=False):
        """Each image's tokens for the LLM and how many: ((B, K, H), (B,) int64); with
        return_selection also (indices (B, M_max), kept counts (B,), local counts (B,)) of
        the local tokens kept (None in global mode), positions in config.local_order.

        pixel_values (N_crops, 3, S, S) in the processor's flat layout (per image: the global
        view, then its tiles row-major); crops_per_image and grids_wh (tiles across, down)
        per image, as the processor returns them; text (B, T, H) the prompt's input
        embeddings and text_mask (B, T) the tokens that count for the selection."""
        cfg, dev = self.config, pixel_values.device
        B = len(crops_per_image)
        if len(grids_wh) != B:
            raise ValueError(f"{B} crop counts but {len(grids_wh)} grids")
        bad = [i for i, (c, (w, h)) in enumerate(zip(crops_per_image, grids_wh))
               if c != 1 + w * h]
        if bad:
            raise ValueError(f"image(s) {bad}: crops_per_image must be 1 + tiles across * "
                             "down (the processor's global view first)")
        global_rows, tile_rows = crop_rows(crops_per_image, dev)
        feats = self.vision_tower(pixel_values)                      # (N, Lv, D_v)
        prefix = None
        if cfg.image_mode != "local":
            prefix = self.mm_projector(feats.index_select(0, global_rows))   # (B, Lg, H)
            if cfg.image_mode == "both" and cfg.separator_token_id is not None:
                sep = self.llm.embed_tokens.weight[cfg.separator_token_id].to(prefix.dtype)
                prefix = torch.cat([prefix, sep.expand(B, 1, -1)], dim=1)
        if cfg.image_mode == "global":
            counts = torch.full((B,), prefix.shape[1], dtype=torch.int64, device=dev)
            return (prefix, counts, None) if return_selection else (prefix, counts)
        tiles = feats.index_select(0, tile_rows)                             # (N_t, Lv, D_v)
        side = self.local_side
        if cfg.local_compressor == "none":
            if tiles.shape[1] != side * side:
                raise ValueError(f"local_compressor='none' lays a tile's {tiles.shape[1]} "
                                 f"tower tokens on its {side} x {side} patch grid; use a "
                                 "tower whose select_feature gives patches only")
        elif self.sampler is None:
            raise ValueError("this model was built without a local compressor (image_mode "
                             "'global' or local_compressor 'none'); it cannot compress tiles")
        else:
            tiles = self.sampler.post_qformer(tiles)                         # (N_t, g*g, D_v)
        tiles = self.mm_projector(tiles)          # compressed: the MLP path; else as global
        index, m = tile_raster_index(grids_wh, side, device=dev, order=cfg.local_order)
        local = gather_rows(tiles.flatten(0, 1), index)                      # (B, M_max, H)
        sel = self._select(self, local, text.to(local.dtype), text_mask, m)
        if prefix is not None:  # under autocast the two branches can end in different dtypes
            prefix = prefix.to(local.dtype)
        image, counts = self._pack(local, sel[0], sel[1], prefix=prefix)
        return (image, counts, (sel[0], sel[1], m)) if return_selection else (image, counts)

    @property
    def local_side(self):
        """Local tokens across one tile: the compressor's query grid (config.local_grid), or
        the tower's patch grid when tiles go uncompressed (local_compressor='none')."""
        if self.config.local_compressor == "none":
            return self.vision_tower.config.image_size // self.vision_tower.config.patch_size
        return self.config.local_grid

    def selection_text(self, input_ids, attention_mask=None):
        """(text (B, T, H), text_mask (B, T)): the input embeddings of a batch and the tokens
        the text-guided selection reads, as image_tokens takes them. It reads every real
        token but the placeholder: BOS, the template and, in training, the answers too (the
        released code does the same)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        text = self.llm.embed_tokens(input_ids.masked_fill(input_ids < 0, 0))
        return text, attention_mask.bool() & (input_ids != self.config.image_token_id)

    def prepare_inputs(self, input_ids, attention_mask, pixel_values, crops_per_image,
                       grids_wh, labels=None, padding_side="right"):
        """The LLM input of a batch: SplicedInputs(inputs_embeds, attention_mask,
        position_ids, labels) with each <image> placeholder replaced by its image tokens.

        input_ids (B, T) with one placeholder (config.image_token_id) per sequence (a
        sequence without one is text only); attention_mask (B, T), 1 = real token; labels
        (B, T) or None."""
        cfg = self.config
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        text, text_mask = self.selection_text(input_ids, attention_mask)
        image, counts = self.image_tokens(pixel_values, crops_per_image, grids_wh, text,
                                          text_mask)
        pos = find_image_positions(input_ids, cfg.image_token_id, attention_mask)
        counts = torch.where(pos >= 0, counts, 0)
        spliced = splice_image_tokens(text, attention_mask, pos, image.to(text.dtype), counts,
                                      labels=labels, padding_side=padding_side)
        L, limit = spliced.inputs_embeds.shape[1], cfg.max_length
        if limit is not None and L > limit:
            if padding_side == "left":
                raise ValueError(f"a prompt with its image tokens is longer than max_length "
                                 f"{limit}; shorten it for generation")
            # Right padding: keeping the first max_length positions truncates every sequence
            # to its first max_length tokens, as the released training code does.
            spliced = type(spliced)(*(None if t is None else t[:, :limit] for t in spliced))
        return spliced

    def forward(self, input_ids, attention_mask, pixel_values, crops_per_image, grids_wh,
                labels=None):
        """SlimeOutput(loss, logits, inputs). loss: mean cross-entropy of the next token over
        the labelled positions (labels != -100), shifted by one as in causal LMs."""
        inputs = self.prepare_inputs(input_ids, attention_mask, pixel_values, crops_per_image,
                                     grids_wh, labels)
        logits = self.llm(inputs_embeds=inputs.inputs_embeds,
                          attention_mask=inputs.attention_mask,
                          position_ids=inputs.position_ids)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(),
                                   inputs.labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX)
        return SlimeOutput(loss, logits, inputs)

    @torch.no_grad()
    def generate(self, input_ids, attention_mask, pixel_values, crops_per_image, grids_wh,
                 **generate_kwargs):
        """New tokens (B, n) for a batch of prompts with images (any padding of the input;
        the spliced batch is left-padded); generate_kwargs go to Decoder.generate
        (max_new_tokens, do_sample, temperature, top_p, stop_token_ids, pad_token_id)."""
        inputs = self.prepare_inputs(input_ids, attention_mask, pixel_values, crops_per_image,
                                     grids_wh, padding_side="left")
        embeds, mask = trim_left_padding(inputs.inputs_embeds, inputs.attention_mask)
        return self.llm.generate(inputs_embeds=embeds, attention_mask=mask, **generate_kwargs)

    # ---------------------------------------------------------------- checkpoints

    def llava_state_dict(self):
        """The state dict in the released LLaVA layout: the LLM's own keys (model.*,
        lm_head.*), model.mm_projector.*, model.sampler.*; the vision tower is not included
        (it loads from its own folder, as released)."""
        out = {}
        for k, v in self.llm.state_dict().items():
            if k == "lm_head.weight" and self.llm.config.tie_word_embeddings:
                continue
            out[k] = v
        for k, v in self.mm_projector.state_dict().items():
            out["model.mm_projector." + k] = v
        if self.sampler is not None:
            for k, v in self.sampler.state_dict().items():
                out["model.sampler." + k] = v
        return out

    def save_pretrained(self, folder, vision_tower_path=None, processor=None,
                        save_vision_tower=False, template=None):
        """Writes config.json (the LLM's HF config plus the mm_* fields) and
        model.safetensors in the LLaVA layout, atomically. vision_tower_path is recorded as
        mm_vision_tower (default: where the tower was loaded from). save_vision_tower: also
        write the tower (one trained here, or built at random) into folder/vision_tower, as an
        HF folder, and point mm_vision_tower at it (relative: the folder can move).
        processor: the ImageProcessor the model was trained with; its settings are recorded
        so that processor_for(folder) rebuilds it (default: SliME's at the tower's image
        size). template: the conversation template it was trained with, recorded as
        slime_core_template for `slime generate` and `slime explain` to default to."""
        os.makedirs(folder, exist_ok=True)
        cfg = self.config
        dtype = self.llm.lm_head.weight.dtype
        hf = self.llm.config.to_hf_config(dtype=dtype)
        tower = vision_tower_path or getattr(self.vision_tower, "source", None)
        select_layer = self.vision_tower.config.select_layer
        if save_vision_tower:
            if self.vision_tower.config.post_layernorm:
                raise ValueError("save_vision_tower: a tower whose output goes through its "
                                 "final LayerNorm cannot be described by mm_* fields; save "
                                 "it with VisionTower.save_pretrained and load it yourself")
            self.vision_tower.save_pretrained(os.path.join(folder, VISION_SUBFOLDER))
            # The folder holds exactly the layers built, the last of them the one selected.
            tower, select_layer = VISION_SUBFOLDER, -1
        hf.update({
            "mm_vision_tower": tower,
            "mm_vision_select_layer": select_layer,
            "mm_vision_select_feature": self.vision_tower.config.select_feature,
            "mm_hidden_size": self.vision_tower.config.hidden_size,
            "mm_projector_type": cfg.connector,
            "mm_learnable_gated": cfg.connector_expert,
            "mm_resampler_type": None if cfg.image_mode == "global" else "cosine",
            "mm_resampler_dim": cfg.local_grid ** 2,
            "mm_resampler_topp": cfg.top_p if cfg.selection == "top_p" else 1.0,
            "mm_resampler_temp": cfg.temperature,
            "mm_patch_merge_type": "spatial" if cfg.local_order == "raster" else "flat",
            "use_global_only": cfg.image_mode == "global",
            "use_local_only": cfg.image_mode == "local",
            "seperator": cfg.separator_token_id,   # the released spelling
            "tokenizer_model_max_length": cfg.max_length,
            "slime_core": dataclasses.asdict(cfg),
            "slime_core_processor": _processor_settings(processor),
        })
        if template is not None:
            from slime_core.text import get_template
            hf["slime_core_template"] = get_template(template).name  # unknown: an error
        save_safetensors(self.llava_state_dict(), os.path.join(folder, "model.safetensors"))
        write_config(hf, folder)

    @classmethod
    def from_pretrained(cls, folder, vision_tower=None, dtype=torch.float32, device="cpu",
                        **overrides):
        """Loads a SliME / LLaVA-style checkpoint folder: config.json with the mm_* fields,
        safetensors with the LLM's keys, model.mm_projector.* and model.sampler.*.

        vision_tower: a folder (or a loaded VisionTower) overriding config's
        mm_vision_tower, which is often an absolute path of the machine that trained it.
        overrides: SlimeConfig fields to change (e.g. prenorm_temperature=0.5 to run the
        first release's checkpoints as trained). Keys of the vision tower saved in the
        checkpoint are ignored, as the released loader does; every other key must match."""
        hf = read_config(folder)
        cfg = slime_config_from_hf(hf, **overrides)
        if vision_tower is None:
            vision_tower = hf.get("mm_vision_tower")
            if isinstance(vision_tower, str) and not os.path.isabs(vision_tower) and \
                    os.path.isdir(os.path.join(folder, vision_tower)):
                vision_tower = os.path.join(folder, vision_tower)  # save_vision_tower's
            if not vision_tower or not os.path.isdir(vision_tower):
                raise CheckpointError(
                    f"the vision tower folder {vision_tower!r} named by mm_vision_tower in "
                    f"{folder}/config.json does not exist here; pass vision_tower=<folder> (an "
                    "HF CLIP/SigLIP folder)")
        if not isinstance(vision_tower, VisionTower):
            source = vision_tower
            vision_tower = VisionTower.from_pretrained(
                vision_tower, select_layer=hf.get("mm_vision_select_layer", -2),
                select_feature=hf.get("mm_vision_select_feature", "patch"), dtype=dtype,
                device=device)
            vision_tower.source = source
        llm_hf = dict(hf)
        llm_hf["model_type"] = _llm_type(hf.get("model_type", "llama"))
        dcfg = DecoderConfig.from_hf_config(llm_hf)
        with torch.device("meta"):
            llm = Decoder(dcfg)
        llm = llm.to(dtype).to_empty(device=device)
        model = cls(cfg, vision_tower, llm).to(device)
        state = load_safetensors(folder, device=device)
        state = {k: v for k, v in state.items()
                 if not k.startswith(("model.vision_tower.", "model.image_newline"))}
        parts = {"mm_projector": {}, "sampler": {}, "llm": {}}
        for k, v in state.items():
            if k.startswith("model.mm_projector."):
                parts["mm_projector"][k[len("model.mm_projector."):]] = v
            elif k.startswith("model.sampler."):
                parts["sampler"][k[len("model.sampler."):]] = v
            else:
                parts["llm"][k] = v
        if dcfg.tie_word_embeddings and "model.embed_tokens.weight" in parts["llm"]:
            parts["llm"].setdefault("lm_head.weight", parts["llm"]["model.embed_tokens.weight"])
        load_into(llm, parts["llm"], what=f"the LLM of {folder!r}")
        llm.tie_weights()
        load_into(model.mm_projector, parts["mm_projector"],
                  what=f"model.mm_projector of {folder!r}")
        if model.sampler is not None:
            load_into(model.sampler, parts["sampler"], what=f"model.sampler of {folder!r}")
        elif parts["sampler"]:
            raise CheckpointError(f"{folder!r} has model.sampler.* keys but the config has "
                                  "no local compressor (global-only: use_global_only / no "
                                  "mm_resampler_type; or local_compressor 'none')")
        return model.eval()


_PROCESSOR_FIELDS = ("tile_size", "planner", "filter", "mean", "std", "global_view", "grid_wh",
                     "pinpoints_wh", "pillow")


def _processor_settings(processor):
    if processor is None:
        return None
    return {k: (list(v) if isinstance(v, tuple) else v)
            for k, v in ((k, getattr(processor, k)) for k in _PROCESSOR_FIELDS)}


def processor_for(folder, device="cpu"):
    """The ImageProcessor a checkpoint folder was saved with (SliME's defaults at the vision
    tower's image size when the folder records none)."""
    from slime_core.preprocess import ImageProcessor
    hf = read_config(folder)
    settings = hf.get("slime_core_processor")
    if settings:
        settings = {k: (tuple(map(tuple, v)) if k == "pinpoints_wh" and v else
                        tuple(v) if isinstance(v, list) else v) for k, v in settings.items()}
        return ImageProcessor(device=device, **settings)
    tower = hf.get("mm_vision_tower")
    size = (VisionConfig.from_hf_config(read_config(tower)).image_size
            if tower and os.path.isdir(tower) else 336)
    return ImageProcessor(tile_size=size, device=device)


def trim_left_padding(inputs_embeds, attention_mask):
    """Drops the leading columns that are padding in every row of a left-padded batch.

    The fixed-shape splice pads each image block to the most tokens any image could keep
    (all M local tokens), so a prompt carries ~5% padding at top-p 0.95, and a lone prompt
    would need a padding mask at all; generation is not compiled and syncs anyway, so the
    prefill runs on the real tokens only (without a mask when no row is padded).
    inputs_embeds (B, L, H), attention_mask (B, L) -> the same, L cut to the longest row."""
    if attention_mask.shape[0] == 0:
        return inputs_embeds, attention_mask
    start = attention_mask.shape[1] - int(attention_mask.sum(1).max())
    return inputs_embeds[:, start:], attention_mask[:, start:]


def slime_config_from_hf(hf, **overrides):
    """SlimeConfig from a released (LLaVA-style) config.json dict; overrides win."""
    if "slime_core" in hf:  # written by save_pretrained: exact round trip
        fields = dict(hf["slime_core"])
    else:
        global_only = bool(hf.get("use_global_only")) or hf.get("mm_resampler_type") in (
            None, "identity", "spatial")
        local_only = bool(hf.get("use_local_only"))
        topp = hf.get("mm_resampler_topp", 0.95)
        fields = dict(
            image_mode="global" if global_only else ("local" if local_only else "both"),
            connector=hf.get("mm_projector_type", "linear"),
            connector_expert=hf.get("mm_learnable_gated", -1),
            local_grid=int(round(hf.get("mm_resampler_dim", 144) ** 0.5)),
            local_order="raster" if str(hf.get("mm_patch_merge_type", "flat")).startswith(
                "spatial") else "tile",
            selection="none" if topp >= 1.0 else "top_p",
            top_p=min(float(topp), 1.0),
            temperature=float(hf.get("mm_resampler_temp", 1.0)),
            separator_token_id=hf.get("seperator"),
            max_length=hf.get("tokenizer_model_max_length"),
        )
    fields.update(overrides)
    return SlimeConfig(**fields)


def _llm_type(model_type):
    """The decoder family of a LLaVA model_type (llava_llama, llava_qwen, ...)."""
    t = model_type[len("llava_"):] if model_type.startswith("llava_") else model_type
    return {"llama3": "llama", "mistral": "llama", "qwen": "qwen2"}.get(t, t)


# The two paths chosen once in set_fused_ops: the fused kernels, or the plain references.

def _selection_args(model):
    cfg = model.config
    if cfg.selection in ("top_k", "random"):
        return dict(top_k=cfg.top_k)
    return dict(top_p=1.0 if cfg.selection == "none" else cfg.top_p)


def _mask_and_noise(model, local, text_mask):
    """The text mask and score noise the selection gets. "random" hides the text (every
    score 0) and ranks by noise from a fixed seed, so top_k then keeps a pseudo-random,
    repeatable choice; otherwise the released training noise (std selection_noise)."""
    if model.config.selection == "random":
        g = torch.Generator(device=local.device).manual_seed(0)
        noise = torch.randn(local.shape[:2], generator=g, device=local.device)
        return torch.zeros_like(text_mask), noise
    std = model.config.selection_noise
    if model.training and std and model.config.selection != "none":
        return text_mask, std * torch.randn(local.shape[:2], device=local.device)
    return text_mask, None


def _select_fused(model, local, text, text_mask, counts):
    text_mask, noise = _mask_and_noise(model, local, text_mask)
    sel = token_select(local, text, text_mask, counts, temperature=model.config.temperature,
                       prenorm_temperature=model.config.prenorm_temperature, noise=noise,
                       **_selection_args(model))
    return sel.indices, sel.counts


def _select_reference(model, local, text, text_mask, counts):
    text_mask, noise = _mask_and_noise(model, local, text_mask)
    indices, kept, _ = ref.token_select_ref(
        local.detach(), text.detach(), text_mask, counts, temperature=model.config.temperature,
        prenorm_temperature=model.config.prenorm_temperature, noise=noise,
        compute_dtype=torch.float32, **_selection_args(model))
    return indices, kept


def _pack_reference(tokens, indices, counts, prefix=None):
    return ref.pack_image_tokens_ref(tokens, indices, counts, prefix)
