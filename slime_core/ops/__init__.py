"""The fused ops: validated public functions over torch.ops.slime.*, each with a fake
kernel (torch.compile) and autograd registered from Python. Plain-PyTorch references of the
same ops are in slime_core.ops.reference."""
