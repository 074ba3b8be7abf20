"""SliME's compression and text-guided selection inside an HF transformers LLaVA-NeXT model.

HF's LlavaNextForConditionalGeneration turns every 336 x 336 tile into 576 tokens and lays
them out with its own `pack_image_features` (which assumes 24 x 24 tokens per tile). SliME
keeps the global view's 576 tokens, compresses each local tile to 144 with a Resampler and
keeps only the local tokens closest to the prompt. This module builds that input and hands
it to the HF model as `inputs_embeds`, bypassing HF's image path entirely:

    proc = ImageProcessor(planner="pinpoints", ...)           # or ImageProcessor.from_hf(...)
    images = proc(pil_images)
    slime = SlimeLlavaNext(model, separator_token_id=tok.convert_tokens_to_ids(","))
    batch = slime.prepare_inputs(input_ids, attention_mask, images.pixel_values,
                                 images.crops_per_image, images.grids_wh, labels=labels)
    out = model(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask,
                position_ids=batch.position_ids, labels=batch.labels)

The HF model is used through its public parts only (vision_tower, multi_modal_projector,
get_input_embeddings, config); transformers is never imported here. SlimeLlavaNext owns
the new trainable part (the Resampler); the HF model keeps its own weights.
"""
import torch
from torch import nn

from slime_core.models.resampler import Resampler
from slime_core.ops._checks import check_backend
from slime_core.ops.pack import (crop_rows, find_image_positions, gather_rows, pack_image_tokens,
                                 splice_image_tokens, tile_raster_index)
from slime_core.ops.token_select import token_select


def _hf_parts(model):
    """(vision_tower, projector, config) of an HF LlavaNext model, whichever wrapper it is."""
    inner = getattr(model, "model", model)
    try:
        return inner.vision_tower, inner.multi_modal_projector, model.config
    except AttributeError as e:
        raise TypeError(f"expected an HF LlavaNextForConditionalGeneration or LlavaNextModel, "
                        f"got {type(model).__name__} ({e})") from e


class SlimeLlavaNext(nn.Module):
    """SliME's local branch for an HF LLaVA-NeXT model.

    Args:
        model: an HF LlavaNextForConditionalGeneration (or LlavaNextModel).
        grid_size: side of the Resampler's query grid (12: 144 tokens per tile, SliME).
        num_heads: Resampler heads (SliME: 8); must divide the vision width.
        top_p / top_k: selection rule, at most one (default top_p 0.95, SliME's
            fine-tuning value; 1.0 keeps everything, its pre-training).
        prenorm_temperature: None (the current released rule) or 0.5 (SliME's first
            release, for its published checkpoints); see slime_core.ops.token_select.
        separator_token_id: the LLM token put between the global and the local tokens
            (SliME: the id of ","); None for no separator.
    """

    def __init__(self, model, *, grid_size=12, num_heads=8, top_p=None, top_k=None,
                 prenorm_temperature=None, separator_token_id=None):
        super().__init__()
        _, _, cfg = _hf_parts(model)
        for p in model.parameters():  # fail now, not at the first batch
            check_backend(p.device, "SlimeLlavaNext")
            break
        vcfg = cfg.vision_config
        if getattr(cfg, "vision_feature_select_strategy", "default") not in ("default", "full"):
            raise ValueError(f"unknown vision_feature_select_strategy "
                             f"{cfg.vision_feature_select_strategy!r}")
        if not isinstance(getattr(cfg, "vision_feature_layer", -2), int):
            raise ValueError("a list of vision_feature_layer values is not supported")
        side = vcfg.image_size // vcfg.patch_size
        self.key_grid = side                     # tokens per tile side out of the tower
        self.grid_size = grid_size
        self.resampler = Resampler(grid_size, vcfg.hidden_size, num_heads)
        if top_p is not None and top_k is not None:
            raise ValueError("give top_p or top_k, not both")
        self.top_p = 0.95 if top_p is None and top_k is None else top_p
        self.top_k = top_k
        self.prenorm_temperature = prenorm_temperature
        self.separator_token_id = separator_token_id
        self.image_token_id = cfg.image_token_id
        self.feature_layer = getattr(cfg, "vision_feature_layer", -2)
        self.drop_cls = getattr(cfg, "vision_feature_select_strategy", "default") == "default"
        self._model = [model]  # not a submodule: its parameters stay the HF model's

    def vision_features(self, pixel_values):
        """(N, side*side, D_v) features of the configured layer for (N, 3, S, S) crops."""
        tower, _, _ = _hf_parts(self._model[0])
        out = tower(pixel_values, output_hidden_states=True, return_dict=True)
        feats = out.hidden_states[self.feature_layer]
        return feats[:, 1:] if self.drop_cls else feats

    def prepare_inputs(self, input_ids, attention_mask, pixel_values, crops_per_image,
                       grids_wh, *, labels=None, noise_std=0.0, padding_side="right",
                       out_len=None):
        """The LLM input of a batch: [text, 576 global, separator, kept local, text].

        Args:
            input_ids: (B, T) with one image placeholder (config.image_token_id) per
                sequence; attention_mask: (B, T), 1 = real token.
            pixel_values: (N_crops, 3, S, S) from slime_core's processor (its flat layout:
                per image the global view, then the tiles row-major).
            crops_per_image: list of 1 + tiles per image; grids_wh: (tiles across, down).
            labels: optional (B, T) labels; returned aligned, image tokens ignored.
            noise_std: std of the Gaussian noise added to the selection scores (SliME
                trains with 0.1; 0 at inference).
        Returns:
            slime_core.ops.SplicedInputs(inputs_embeds, attention_mask, position_ids, labels)
            to pass to the HF model as keyword arguments.
        """
        model = self._model[0]
        _, projector, _ = _hf_parts(model)
        crops = list(crops_per_image)
        if len(crops) != input_ids.shape[0] or len(grids_wh) != len(crops):
            raise ValueError(f"{input_ids.shape[0]} sequences but {len(crops)} crop counts and "
                             f"{len(grids_wh)} grids: one image per sequence")
        bad = [i for i, (c, (w, h)) in enumerate(zip(crops, grids_wh)) if c != 1 + w * h]
        if bad:
            raise ValueError(f"image(s) {bad}: crops_per_image must be 1 + tiles (a global "
                             "view first, as the processor's global_view=True gives)")
        dev = pixel_values.device
        global_rows, tile_rows = crop_rows(crops, dev)

        feats = self.vision_features(pixel_values)                    # (N, Lk, D_v)
        glob = projector(feats.index_select(0, global_rows))          # (B, Lk, H)
        tiles = projector(self.resampler(feats.index_select(0, tile_rows)))  # (N_t, Lq, H)
        index, m = tile_raster_index(grids_wh, self.grid_size, device=dev)
        local = gather_rows(tiles.flatten(0, 1), index)               # (B, M_max, H)

        embed = model.get_input_embeddings()
        text = embed(input_ids.masked_fill(input_ids < 0, 0))         # (B, T, H)
        text_mask = attention_mask.bool() & (input_ids != self.image_token_id)
        noise = None
        if noise_std:
            noise = noise_std * torch.randn(local.shape[:2], device=dev)
        sel = token_select(local, text.to(local.dtype), text_mask, m, top_p=self.top_p,
                           top_k=self.top_k, prenorm_temperature=self.prenorm_temperature,
                           noise=noise)
        prefix = glob
        if self.separator_token_id is not None:
            sep = embed.weight[self.separator_token_id].to(glob.dtype)
            prefix = torch.cat([glob, sep.expand(glob.shape[0], 1, -1)], dim=1)
        image, n = pack_image_tokens(local, sel, prefix=prefix)
        pos = find_image_positions(input_ids, self.image_token_id, attention_mask)
        return splice_image_tokens(text, attention_mask, pos, image.to(text.dtype), n,
                                   labels=labels, padding_side=padding_side, out_len=out_len)
