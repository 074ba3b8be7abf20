"""From selected visual tokens to a batched LLM input, without hand-written index arithmetic.

    # local tokens of each image, laid on one grid in raster order (B, M_max, H)
    index, m = tile_raster_index(grids_wh, side=12)             # from the processor's grids
    local = gather_rows(tile_tokens.flatten(0, 1), index)       # tile_tokens (N_tiles, 144, H)
    sel = token_select(local, text, text_mask, m, top_p=0.95)
    image, n = pack_image_tokens(local, sel, prefix=torch.cat([global_tokens, sep], 1))
    pos = find_image_positions(input_ids, image_token_id, attention_mask)
    batch = splice_image_tokens(embeds, attention_mask, pos, image, n)
    logits = llm(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask,
                 position_ids=batch.position_ids)

Every output shape depends only on input shapes (the counts stay data), so torch.compile
sees no data-dependent shape; everything is differentiable in the token tensors.

Masks follow the library's one convention: True / 1 = a real token (HF's attention_mask).
"""
from typing import NamedTuple, Optional

import torch

from slime_core.ops._checks import check_same_device, check_tensor
from slime_core.ops.token_select import TokenSelection, as_counts, token_pack

IGNORE_INDEX = -100  # label of positions that take no loss (HF and LLaVA convention)


class SplicedInputs(NamedTuple):
    """A batched LLM input with the image tokens in place of each image placeholder."""
    inputs_embeds: torch.Tensor   # (B, L, H): text, image tokens, padding (zeros)
    attention_mask: torch.Tensor  # (B, L) int64: 1 = real token, 0 = padding
    position_ids: torch.Tensor    # (B, L) int64: 0.. over each sequence's real tokens
    labels: Optional[torch.Tensor]  # (B, L) int64 when labels were given: IGNORE_INDEX on
    #                                 image tokens and padding


def tile_raster_index(grids_wh, side, *, device=None, order="raster"):
    """Index that lays each image's tile tokens on one grid, row by row.

    The tiles of all images are assumed stacked back to back, image by image, each image's
    tiles row-major (as the processor returns them after its global views are removed), each
    tile holding side x side tokens row-major. Image b with a (w, h) grid covers a
    (h * side) x (w * side) token grid; its raster position p reads flat row index[b, p].

    Args:
        grids_wh: (w, h) tiles across and down per image (the processor's grids_wh), a list
            of pairs or a (B, 2) integer tensor.
        side: tokens per tile side (12 for SliME's 144-query compressor).
        order: "raster" (one grid, row by row: SliME's "spatial" merge) or "tile" (tile
            after tile, each row-major: LLaVA's "flat" merge, the stacking order itself).
    Returns:
        (index, counts): index (B, M_max) int64, -1 after each image's counts[b] positions;
        counts (B,) int64 = w * h * side**2.
    """
    if isinstance(side, bool) or not isinstance(side, int) or side < 1:
        raise ValueError(f"side must be a positive int, got {side!r}")
    if order not in ("raster", "tile"):
        raise ValueError(f"order must be 'raster' or 'tile', got {order!r}")
    grids = torch.as_tensor(grids_wh, dtype=torch.int64, device=device).reshape(-1, 2)
    if bool((grids < 0).any()):
        raise ValueError(f"grids_wh must be non-negative (w, h) pairs, got {grids.tolist()}")
    gw, gh = grids[:, :1], grids[:, 1:]                           # (B, 1)
    counts = (gw * gh * side * side).flatten()
    first = torch.cumsum(counts, 0) - counts                      # each image's first row
    m_max = int(counts.max()) if counts.numel() else 0
    p = torch.arange(m_max, device=grids.device).unsqueeze(0)     # (1, M_max)
    width = (gw * side).clamp(min=1)
    row, col = p // width, p % width
    tile = (row // side) * gw + col // side
    src = first.unsqueeze(1) + tile * side * side + (row % side) * side + col % side
    if order == "tile":
        src = first.unsqueeze(1) + p
    return torch.where(p < counts.unsqueeze(1), src, -1), counts


def crop_rows(crops_per_image, device=None):
    """(global_rows, tile_rows): int64 indices of the global views and of the tiles in the
    processor's flat crop batch, where image b contributes crops_per_image[b] crops, its
    global view first. Built from the host-side counts: no device sync, and static shapes
    for torch.compile (unlike a boolean mask)."""
    crops = [int(c) for c in crops_per_image]
    if any(c < 1 for c in crops):
        raise ValueError(f"crops_per_image must be >= 1 (a global view first), got {crops}")
    first = [0] * len(crops)
    for i in range(1, len(crops)):
        first[i] = first[i - 1] + crops[i - 1]
    tiles = [f + 1 + t for f, c in zip(first, crops) for t in range(c - 1)]
    return (torch.tensor(first, dtype=torch.int64, device=device),
            torch.tensor(tiles, dtype=torch.int64, device=device))


def gather_rows(rows, index):
    """out[b, j] = rows[index[b, j]], zeros where index is -1. rows: (N, H); index (B, K).
    Differentiable in rows."""
    check_tensor("rows", rows, ndim=2)
    check_tensor("index", index, dtypes=(torch.int64,), ndim=2)
    valid = (index >= 0).unsqueeze(-1)
    return torch.where(valid, rows[index.clamp(min=0)], rows.new_zeros(()))


def pack_image_tokens(tokens, selection, counts=None, *, prefix=None):
    """Each image's token block: [prefix rows, kept tokens in ascending index order].

    Args:
        tokens: (B, M, H) candidate tokens (e.g. the local tokens token_select scored).
        selection: a TokenSelection, or the (B, K) int64 kept indices (ascending, -1 after
            the kept ones) with counts given separately.
        counts: (B,) kept per image (tensor or list of ints), only with bare indices.
        prefix: (B, P, H) or (P, H) tokens placed first in every block (SliME: the 576
            global tokens and the separator), or None.
    Returns:
        (image_tokens, image_counts): (B, P + K, H) with zero rows after each block, and
        (B,) int64 = P + counts.
    """
    indices, counts = _selection(selection, counts, tokens.device)
    check_tensor("tokens", tokens, ndim=3)
    B, _, H = tokens.shape
    K = indices.shape[1]
    P = 0
    if prefix is not None:
        check_tensor("prefix", prefix)
        if prefix.dim() == 2:
            prefix = prefix.unsqueeze(0).expand(B, -1, -1)
        if prefix.dim() != 3 or prefix.shape[0] != B or prefix.shape[2] != H:
            raise ValueError(f"prefix must be (B, P, H) or (P, H) with B = {B}, H = {H}; got "
                             f"{tuple(prefix.shape)}")
        if prefix.dtype != tokens.dtype:
            raise TypeError(f"prefix has dtype {prefix.dtype} but tokens has {tokens.dtype}")
        check_same_device(tokens=tokens, prefix=prefix)
        P = prefix.shape[1]
    width = P + K
    base = tokens.new_zeros(B, width, H)
    if P:
        base = torch.cat([prefix, base[:, P:]], dim=1)
    offsets = torch.arange(B, device=tokens.device, dtype=torch.int64) * width + P
    out = token_pack(tokens, indices, counts, row_offsets=offsets, base=base.reshape(B * width, H))
    return out.view(B, width, H), counts + P


def find_image_positions(input_ids, image_token_id, attention_mask=None):
    """(B,) int64: where each sequence's image placeholder is, -1 where it has none.

    input_ids: (B, T); image_token_id: the placeholder id (HF LLaVA models: the config's
    image_token_index; LLaVA/SliME code: -200). A sequence with more than one placeholder is
    an error (one image per sequence). Placeholders under attention_mask 0 are ignored."""
    check_tensor("input_ids", input_ids, ndim=2)
    hit = input_ids == image_token_id
    if attention_mask is not None:
        hit &= attention_mask.bool()
    n = hit.sum(1)
    if not torch.compiler.is_compiling() and bool((n > 1).any()):
        bad = (n > 1).nonzero().flatten().tolist()
        raise ValueError(f"sequence(s) {bad} hold more than one image placeholder "
                         f"(id {image_token_id}); one image per sequence is supported")
    T = input_ids.shape[1]
    pos = torch.where(hit, torch.arange(T, device=input_ids.device), T).amin(1, keepdim=False) \
        if T else torch.full((input_ids.shape[0],), T, device=input_ids.device)
    return torch.where(n > 0, pos, -1)


def splice_image_tokens(text_embeds, attention_mask, image_positions, image_tokens,
                        image_counts, *, labels=None, out_len=None, padding_side="right"):
    """Replaces each sequence's image placeholder by its image tokens and re-pads the batch.

    Args:
        text_embeds: (B, T, H) input embeddings of the text, padded left or right, with the
            placeholder's row at image_positions[b] (its value is discarded).
        attention_mask: (B, T) 1 / True = real token (HF's convention), or None (all real).
        image_positions: (B,) int64 placeholder index in the text, -1 for a sequence without
            an image (find_image_positions gives it).
        image_tokens: (B, K, H) each image's tokens in its first image_counts[b] rows
            (pack_image_tokens gives them).
        image_counts: (B,) int64 (tensor or list); must be 0 where image_positions is -1.
        labels: optional (B, T) int64 labels of the text; the result's labels put
            IGNORE_INDEX on image tokens and padding.
        out_len: L, the output length (default T - 1 + K, enough for any counts); a static
            number so that torch.compile sees a fixed shape. Too small is an error.
        padding_side: "right" (training, SliME's released layout) or "left" (batched
            generation).
    Returns:
        SplicedInputs(inputs_embeds, attention_mask, position_ids, labels). Position ids run
        0.. over each sequence's real tokens; padding gets 0.. continuing on the right, 1 on
        the left (HF generate's convention).
    """
    check_tensor("text_embeds", text_embeds, ndim=3)
    check_tensor("image_tokens", image_tokens, ndim=3)
    B, T, H = text_embeds.shape
    K = image_tokens.shape[1]
    dev = text_embeds.device
    if image_tokens.shape[0] != B or image_tokens.shape[2] != H:
        raise ValueError(f"image_tokens {tuple(image_tokens.shape)} must be (B, K, H) with B = "
                         f"{B}, H = {H} like text_embeds {tuple(text_embeds.shape)}")
    if image_tokens.dtype != text_embeds.dtype:
        raise TypeError(f"image_tokens has dtype {image_tokens.dtype} but text_embeds has "
                        f"{text_embeds.dtype}")
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    if attention_mask is None:
        attention_mask = torch.ones(B, T, dtype=torch.int64, device=dev)
    check_tensor("attention_mask", attention_mask, ndim=2)
    if tuple(attention_mask.shape) != (B, T):
        raise ValueError(f"attention_mask must have shape {(B, T)}, got "
                         f"{tuple(attention_mask.shape)}")
    if attention_mask.is_floating_point():
        raise TypeError("attention_mask must be bool or integer (1 = real token)")
    counts = as_counts("image_counts", image_counts, B, dev)
    positions = as_counts("image_positions", image_positions, B, dev, allow_negative=True)
    if labels is not None:
        check_tensor("labels", labels, ndim=2)
        if tuple(labels.shape) != (B, T):
            raise ValueError(f"labels must have shape {(B, T)}, got {tuple(labels.shape)}")
    check_same_device(text_embeds=text_embeds, image_tokens=image_tokens,
                      attention_mask=attention_mask, labels=labels)
    L = T - 1 + K if out_len is None else out_len
    if isinstance(L, bool) or not isinstance(L, int) or L < 0:
        raise ValueError(f"out_len must be an int >= 0, got {out_len!r}")

    real = attention_mask.bool()
    n_text = real.sum(1)                                          # (B,)
    start = torch.where(n_text > 0, real.int().argmax(1), 0)      # first real text token
    has_img = positions >= 0
    img_rank = torch.where(has_img, positions - start, n_text)    # placeholder's rank
    n_out = n_text - has_img.long() + counts                      # real tokens after splice
    if not torch.compiler.is_compiling():
        _check_splice(real, positions, has_img, counts, n_out, K, L)

    j = torch.arange(L, device=dev).unsqueeze(0)                  # (1, L)
    out_start = (L - n_out).unsqueeze(1) if padding_side == "left" else 0
    r = j - out_start                                             # rank in the sequence
    n_out, img_rank, c = n_out.unsqueeze(1), img_rank.unsqueeze(1), counts.unsqueeze(1)
    valid = (r >= 0) & (r < n_out)
    is_img = valid & (r >= img_rank) & (r < img_rank + c)
    is_text = valid & ~is_img
    text_src = start.unsqueeze(1) + torch.where(r < img_rank, r, r - c + 1)
    text_src = torch.where(is_text, text_src, 0).clamp(0, max(T - 1, 0))
    img_src = torch.where(is_img, r - img_rank, 0).clamp(0, max(K - 1, 0))
    # One row gather from [text; image; a zero row] (fewer passes over the (B, L, H) output
    # than gathering both sources and selecting).
    rows = torch.cat([text_embeds, image_tokens, text_embeds.new_zeros(B, 1, H)], dim=1)
    src = torch.where(is_img, T + img_src, torch.where(is_text, text_src, T + K))
    embeds = rows.gather(1, src.unsqueeze(-1).expand(-1, -1, H))
    if padding_side == "right":
        pos_ids = j.expand(B, L)
    else:
        pos_ids = torch.where(valid, r, 1)
    out_labels = None
    if labels is not None:
        out_labels = torch.where(is_text, labels.gather(1, text_src) if T else text_src,
                                 IGNORE_INDEX)
    return SplicedInputs(embeds, valid.long(), pos_ids.contiguous(), out_labels)


def _check_splice(real, positions, has_img, counts, n_out, K, L):
    B, T = real.shape
    if bool((positions >= T).any()):
        raise ValueError(f"image_positions {positions.tolist()} must be < T = {T} (or -1)")
    at = positions.clamp(0, max(T - 1, 0))
    if T and bool((has_img & ~real.gather(1, at.unsqueeze(1)).squeeze(1)).any()):
        raise ValueError("an image placeholder sits on a padding position (attention_mask 0)")
    if bool(((~has_img) & (counts > 0)).any()):
        raise ValueError("a sequence without an image placeholder (position -1) has "
                         "image_counts > 0")
    if bool((counts > K).any()):
        raise ValueError(f"image_counts {counts.tolist()} exceed image_tokens' K = {K} rows")
    # Real tokens must form one block (left or right padding), as HF tokenizers pad.
    if T:
        first_pad_run = real.int().diff(dim=1).abs().sum(1) > 2
        edge = real[:, 0] & real[:, -1] & (real.sum(1) < T)
        if bool((first_pad_run | edge).any()):
            raise ValueError("attention_mask must mark one contiguous block of real tokens per "
                             "sequence (left or right padding)")
    if bool((n_out > L).any()):
        raise ValueError(f"out_len {L} is too short: the longest spliced sequence has "
                         f"{int(n_out.max())} tokens")


def _selection(selection, counts, device):
    if isinstance(selection, TokenSelection):
        if counts is not None:
            raise ValueError("counts comes from the TokenSelection; do not pass it too")
        return selection.indices, selection.counts
    if counts is None:
        raise ValueError("pass a TokenSelection, or the kept indices and their counts")
    check_tensor("indices", selection, dtypes=(torch.int64,), ndim=2)
    return selection, as_counts("counts", counts, selection.shape[0], device)
