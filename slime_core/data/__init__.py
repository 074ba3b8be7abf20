"""Training data: LLaVA-format records loaded lazily (LlavaDataset), the batch collator, a
resumable seeded loader, and the built-in high-resolution detail dataset (build_builtin)."""
from slime_core.data.builtin import DEMO_TEMPLATE, BuiltinPaths, build_builtin, ensure_builtin
from slime_core.data.dataset import (COLLATE_KEYS, DataError, LlavaDataset, ResumableLoader,
                                     collate, length_grouped_sampler, make_loader)

__all__ = ["COLLATE_KEYS", "DEMO_TEMPLATE", "BuiltinPaths", "DataError", "LlavaDataset",
           "ResumableLoader", "build_builtin", "collate", "ensure_builtin",
           "length_grouped_sampler", "make_loader"]
