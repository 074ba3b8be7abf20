"""The fused ops: validated public functions over torch.ops.slime.*, each with a fake
kernel (torch.compile) and autograd registered from Python. Plain-PyTorch references of the
same ops are in slime_core.ops.reference.

    from slime_core.ops import query_attention, tile_resize, token_select, token_pack
    from slime_core.ops import pack_image_tokens, splice_image_tokens   # batched LLM input

Masks, everywhere in the library: True / 1 = this token takes part (SDPA's boolean mask,
HF's attention_mask). The only exception is an argument whose name says so:
`key_padding_mask` (True = ignore, nn.MultiheadAttention's convention).

(Each function lives in the module of the same name, slime_core/ops/<op>.py; importing the
function here shadows the module attribute, while `from slime_core.ops.<op> import ...`
keeps working.)"""
from slime_core.ops.query_attention import query_attention  # noqa: F401
from slime_core.ops.tile_resize import tile_resize  # noqa: F401
from slime_core.ops.token_select import TokenSelection, token_pack, token_select  # noqa: F401
from slime_core.ops.pack import (IGNORE_INDEX, SplicedInputs, crop_rows,  # noqa: F401
                                 find_image_positions,
                                 gather_rows, pack_image_tokens, splice_image_tokens,
                                 tile_raster_index)
