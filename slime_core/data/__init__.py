"""Training data: LLaVA-format records loaded lazily (LlavaDataset), the batch collator, a
resumable seeded loader, and the built-in high-resolution detail dataset (build_builtin)."""
from slime_core.data.builtin import DEMO_TEMPLATE, BuiltinPaths, build_builtin, ensure_builtin
from slime_core.data.dataset import (COLLATE_KEYS, DataError, LlavaDataset, ResumableLoader,
                                     collate, length_grouped_sampler, make_loader)

__all__ = ["COLLATE_KEYS", "DEMO_TEMPLATE", "BuiltinPaths", "DataError", "LlavaDataset",
           "ResumableLoader", "build_builtin", "collate", "ensure_builtin",
           "length_grouped_sampler", "make_loader"]


def recipe_datasets(captions=None, instruct=None, images=None, tokenizer=None, tile_size=336,
                    template="vicuna_v1", builtin=None, on_error="skip", max_length=None,
                    cache_images=False):
    """The datasets a training recipe reads, for `python -m slime_core.train --data
    slime_core.data:recipe_datasets --data-arg ...`: ({"captions": ..., "instruct": ...},
    collate).

    Either LLaVA files (captions: a caption JSON for the alignment stages, template
    `plain`; instruct: an instruction JSON, `template`; images: their image folder;
    tokenizer: a tokenizer folder), or builtin=FOLDER: the built-in detail dataset, built
    there on first use (its own tokenizer and files). tile_size: the vision tower's image
    size (the processor's tiles)."""
    import functools

    from slime_core.preprocess import ImageProcessor
    from slime_core.text import Tokenizer
    if builtin is not None:
        paths = ensure_builtin(builtin)
        captions = captions or paths.captions_json
        instruct = instruct or paths.train_json
        images = images or paths.image_folder
        tokenizer = tokenizer or paths.tokenizer_folder
        template = DEMO_TEMPLATE
    if tokenizer is None or images is None or not (captions or instruct):
        raise ValueError("give builtin=FOLDER, or tokenizer=, images= and captions= and/or "
                         "instruct=")
    tok = Tokenizer.from_folder(tokenizer)
    proc = ImageProcessor(tile_size=int(tile_size))
    common = dict(on_error=on_error, max_length=max_length, cache_images=cache_images)
    datasets = {}
    if captions:
        datasets["captions"] = LlavaDataset(captions, images, tok, "plain", proc, **common)
    if instruct:
        datasets["instruct"] = LlavaDataset(instruct, images, tok, template, proc, **common)
    pad = tok.pad_id if tok.pad_id is not None else (tok.unk_id or 0)
    return datasets, functools.partial(collate, pad_id=pad)
