"""The fused ops: validated public functions over torch.ops.slime.*, each with a fake
kernel (torch.compile) and autograd registered from Python. Plain-PyTorch references of the
same ops are in slime_core.ops.reference.

    from slime_core.ops import query_attention, tile_resize, token_select, token_pack

(Each function lives in the module of the same name, slime_core/ops/<op>.py; importing the
function here shadows the module attribute, while `from slime_core.ops.<op> import ...`
keeps working.)"""
from slime_core.ops.query_attention import query_attention  # noqa: F401
from slime_core.ops.tile_resize import tile_resize  # noqa: F401
from slime_core.ops.token_select import TokenSelection, token_pack, token_select  # noqa: F401
