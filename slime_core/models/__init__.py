"""Model building blocks. Modules are imported explicitly (no directory scanning)."""
from slime_core.models.resampler import Resampler

__all__ = ["Resampler"]
