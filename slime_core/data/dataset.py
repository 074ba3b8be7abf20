"""LLaVA-format training data: a lazy dataset, the collator, and a loader that can resume.

    ds = LlavaDataset("train.json", "images/", tokenizer, "vicuna_v1", ImageProcessor())
    loader = make_loader(ds, batch_size=8, shuffle=True, seed=0, num_workers=2)
    for batch in loader:              # batch: input_ids, attention_mask, labels, pixel_values,
        ...                           #        crops_per_image, grids_wh, index
        state = loader.state_dict()   # {"epoch": e, "batch": b, ...}: save it with the model
    loader.load_state_dict(state)     # the next batch is the one after the saved position

A record is LLaVA's: {"image": "relative/path.png", "conversations": [{"from": "human",
"value": "<image>\\nQuestion"}, {"from": "gpt", "value": "Answer"}, ...], ...}; other fields
(id, question_type) are kept and reachable through `dataset.record(index)`.

Bad records are never dropped silently. The constructor checks every record cheaply: the
conversation is well formed and ends with an answer (it is tokenized once, which also gives
the lengths), it holds exactly one <image>, the file exists and its header names an image
format. What fails is reported with the record's index:
- on_error="raise": a DataError listing every bad record (index and reason);
- on_error="skip": the bad records are left out, listed in `dataset.skipped` as
  (index, reason) pairs and logged as one warning.
A file that passes the header check but cannot be decoded (e.g. truncated) is only found when
the sample is loaded, possibly in a DataLoader worker. Then "raise" raises a DataError naming
the record, and "skip" logs a warning naming the record and returns the next usable record in
the dataset's order in its place, so batches keep their size and a resumed run sees the same
substitute (the batch's `index` list shows which record was used). The record also goes into
`skipped` of the process that loaded it: in a DataLoader worker that list is the worker's
own, and the logged warning is the report. Evaluate with "raise" if a
substituted record must not count twice.

Records are text plus one image; text-only records are reported as errors.
"""
import copy
import functools
import json
import logging
import operator
import os
import random

import torch
from PIL import Image, UnidentifiedImageError

from slime_core.preprocess.adapters import ImageInputError
from slime_core.preprocess.processor import ImageProcessor
from slime_core.text import (IGNORE_INDEX, IMAGE_TOKEN_INDEX, Template, Tokenizer,
                             _check_template_tokens, build_prompt, get_template,
                             tokenize_conversation, tokenize_prompt)

logger = logging.getLogger(__name__)

ON_ERROR = ("skip", "raise")
COLLATE_KEYS = ("input_ids", "attention_mask", "labels", "pixel_values", "crops_per_image",
                "grids_wh", "index")
_LISTED = 10  # bad records a message spells out; the rest are counted


class DataError(ValueError):
    """A record cannot be used; the message names the record's index (and the file)."""


def _listing(problems):
    lines = [f"  record {i}: {reason}" for i, reason in problems[:_LISTED]]
    if len(problems) > _LISTED:
        lines.append(f"  ... and {len(problems) - _LISTED} more")
    return "\n".join(lines)


class LlavaDataset(torch.utils.data.Dataset):
    """LLaVA-format records; __getitem__ loads and preprocesses one record's image.

    json_path:     a JSON list of records
    image_folder:  a record's "image" is relative to it
    tokenizer:     slime_core.text.Tokenizer
    template:      a template name or slime_core.text.Template
    processor:     slime_core.preprocess.ImageProcessor with layout "flat"
    on_error:      "skip" or "raise" (see the module's docstring)
    max_length:    records with more tokens (the image placeholder counting one) are errors,
                   not truncated: a cut answer or a cut image teaches the wrong thing
    cache_images:  keep each image's crops after its first load, as uint8 (4x smaller than
                   float32; normalised on the way out, bit-identical to the processor's own
                   output). Decoding and resizing a 1500-px PNG costs ~25 ms of CPU, a cache
                   hit ~0.5 ms: with a tiny model, several epochs or several runs over one
                   dataset, the cache pays. It lives in the process that loads: use
                   num_workers=0 with it, or each worker process fills its own. 7 crops of
                   112 px: 263 KB per image. A dict instead of True is the cache itself,
                   to share between datasets of the same images (captions and questions)
                   whose processors cut alike (an error otherwise).
    prompt:        False: training samples (labels on the answers). True: for generation
                   and evaluation, input_ids are the inference prompt of the conversation
                   without its last answer (build_prompt: it ends with the assistant's role)
                   and labels are all IGNORE_INDEX; the expected text is answer(index)

    A sample is a dict: input_ids and labels (int64 (T,)), pixel_values (crops, 3, S, S),
    crops_per_image (int), grids_wh ((tiles across, tiles down)), index (the record's index
    in the JSON list). len() counts the usable records; `lengths` their token counts.
    """

    def __init__(self, json_path, image_folder, tokenizer, template, processor, on_error="skip",
                 max_length=None, cache_images=False, prompt=False):
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        if not isinstance(tokenizer, Tokenizer):
            raise TypeError(f"tokenizer must be a slime_core.text.Tokenizer, got "
                            f"{type(tokenizer).__name__}")
        if isinstance(template, str):
            template = get_template(template)
        if not isinstance(template, Template):
            raise TypeError(f"template must be a template name or a Template, got "
                            f"{type(template).__name__}")
        # Once here, not once per record: a mismatch would fail every record alike.
        _check_template_tokens(tokenizer, template)
        if not callable(processor):
            raise TypeError(f"processor must be an ImageProcessor, got {type(processor).__name__}")
        if getattr(processor, "layout", "flat") != "flat":
            raise ValueError(f"processor must use layout 'flat' (every image's crops one after "
                             f"the other), got {processor.layout!r}")
        if max_length is not None and (isinstance(max_length, bool)
                                       or not isinstance(max_length, int) or max_length < 1):
            raise ValueError(f"max_length must be a positive int or None, got {max_length!r}")
        self._cache = None
        if isinstance(cache_images, dict) or cache_images:  # an empty dict is a cache too
            if not isinstance(processor, ImageProcessor):
                raise TypeError("cache_images=True needs a slime_core ImageProcessor (its "
                                f"mean, std and dtype), got {type(processor).__name__}")
            # a dict given here is shared: datasets of the same images decode each once.
            # It holds what one resize and cut made, so every sharer must cut alike.
            self._cache = cache_images if isinstance(cache_images, dict) else {}
            cut = tuple(repr(getattr(processor, k)) for k in (
                "tile_size", "planner", "filter", "global_view", "grid_wh", "pinpoints_wh",
                "pinpoints_hw", "alpha", "max_side", "pillow"))
            if self._cache.setdefault(("processor",), cut) != cut:  # no path is a tuple
                raise ValueError("cache_images: this dict was filled by a processor that cuts "
                                 "images differently; give each processor its own cache")
            self._raw = copy.copy(processor)
            self._raw.dtype = torch.uint8  # resized and padded, not normalised
        if not os.path.isdir(image_folder):
            raise ValueError(f"image_folder {image_folder!r} is not a folder")
        try:
            with open(json_path, encoding="utf-8") as f:
                records = json.load(f)
        except json.JSONDecodeError as e:
            raise DataError(f"{json_path} is not valid JSON: {e}") from None
        if not isinstance(records, list):
            raise DataError(f"{json_path} must hold a JSON list of records, got "
                            f"{type(records).__name__}")
        self.json_path, self.image_folder = os.fspath(json_path), os.fspath(image_folder)
        self.tokenizer, self.template, self.processor = tokenizer, template, processor
        self.on_error, self.max_length, self.prompt = on_error, max_length, bool(prompt)
        self._records = records
        problems, self._kept, self.lengths = [], [], []
        for i, record in enumerate(records):
            try:
                self.lengths.append(self._check(record))
                self._kept.append(i)
            except DataError as e:
                problems.append((i, str(e)))
        if problems and on_error == "raise":
            raise DataError(f"{json_path}: {len(problems)} of {len(records)} records are "
                            f"unusable:\n{_listing(problems)}")
        self.skipped = problems
        if problems:
            logger.warning("%s: skipping %d of %d records:\n%s", json_path, len(problems),
                           len(records), _listing(problems))
        if not self._kept:
            raise DataError(f"{json_path}: no usable record (of {len(records)})")

    def _path(self, record):
        return os.path.join(self.image_folder, record["image"])

    def _tokenize(self, record):
        conversation = record["conversations"]
        try:
            # Validates the whole conversation (an answer at the end) in both modes.
            ids, labels = tokenize_conversation(self.tokenizer, self.template, conversation)
            if self.prompt:
                ids = tokenize_prompt(self.tokenizer,
                                      build_prompt(self.template, conversation[:-1]))
                labels = [IGNORE_INDEX] * len(ids)
            return ids, labels
        except ValueError as e:
            raise DataError(str(e)) from None

    def _check(self, record):
        """The record's token count, or a DataError saying what is wrong."""
        if not isinstance(record, dict):
            raise DataError(f"a record must be a JSON object, got {type(record).__name__}")
        if "conversations" not in record:
            raise DataError("no 'conversations'")
        if not isinstance(record.get("image"), str) or not record["image"]:
            raise DataError("'image' must name one file (text-only and multi-image records "
                            "are not supported)")
        input_ids, _ = self._tokenize(record)
        images = input_ids.count(IMAGE_TOKEN_INDEX)
        if images != 1:
            raise DataError(f"the conversation holds {images} <image> placeholders; a record "
                            "has one image and one placeholder")
        if self.max_length is not None and len(input_ids) > self.max_length:
            raise DataError(f"{len(input_ids)} tokens, more than max_length={self.max_length}")
        path = self._path(record)
        if not os.path.isfile(path):
            raise DataError(f"image {path!r} does not exist")
        try:
            with Image.open(path):  # reads the header only
                pass
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise DataError(f"image {path!r} is not a readable image ({type(e).__name__}: "
                            f"{e})") from None
        return len(input_ids)

    def __len__(self):
        return len(self._kept)

    def record(self, index):
        """The raw JSON record at `index` in the file (a sample's or a batch's `index`)."""
        return self._records[index]

    def answer(self, index):
        """The last answer of the record at `index`: what a prompt sample should generate."""
        return self._records[index]["conversations"][-1]["value"]

    def _load(self, k):
        index = self._kept[k]
        record = self._records[index]
        input_ids, labels = self._tokenize(record)
        try:
            pixel_values, crops, grid = self._image(self._path(record))
        except ImageInputError as e:
            raise DataError(f"record {index}: {e}") from None
        return {"input_ids": torch.tensor(input_ids, dtype=torch.int64),
                "labels": torch.tensor(labels, dtype=torch.int64),
                "pixel_values": pixel_values, "crops_per_image": crops, "grids_wh": grid,
                "index": index}

    def _image(self, path):
        """(pixel_values (crops, 3, S, S), crops, (tiles across, tiles down)) of one image."""
        if self._cache is None:
            out = self.processor([path])
            return (out.pixel_values, int(out.crops_per_image[0]),
                    tuple(int(v) for v in out.grids_wh[0]))
        if path not in self._cache:
            out = self._raw([path])
            self._cache[path] = (out.pixel_values.cpu(), int(out.crops_per_image[0]),
                                 tuple(int(v) for v in out.grids_wh[0]))
        raw, crops, grid = self._cache[path]
        p = self.processor
        if p.dtype == torch.uint8:
            return raw.to(p.device), crops, grid
        # tile_resize's own arithmetic: (x / 255 - mean) / std in float32, then rounded.
        mean = torch.tensor(p.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(p.std, dtype=torch.float32).view(1, 3, 1, 1)
        pixels = raw.float().div_(255).sub_(mean).div_(std).to(p.dtype)
        return pixels.to(p.device), crops, grid

    def __getitem__(self, k):
        if isinstance(k, bool):
            raise TypeError("index must be an int, got bool")
        try:
            k = operator.index(k)  # numpy and torch integers too
        except TypeError:
            raise TypeError(f"index must be an int, got {type(k).__name__}") from None
        if not 0 <= k < len(self):
            raise IndexError(f"index {k} out of range for {len(self)} usable records")
        for attempt in range(len(self)):
            j = (k + attempt) % len(self)
            try:
                return self._load(j)
            except DataError as e:
                if self.on_error == "raise":
                    raise
                self.skipped.append((self._kept[j], str(e)))
                logger.warning("%s (on_error='skip': record %d is used in its place)", e,
                               self._kept[(j + 1) % len(self)])
        raise DataError(f"{self.json_path}: no record could be loaded")


def collate(samples, pad_id):
    """Stack samples (LlavaDataset's dicts) into a batch, right-padding the text.

    Returns input_ids (B, T) int64 padded with pad_id (IMAGE_TOKEN_INDEX stays where the
    image goes), attention_mask (B, T) int64 (1 on every real position, the image's
    included), labels (B, T) int64 (IGNORE_INDEX on padding), pixel_values (N_crops, 3, S, S)
    (every image's crops, in batch order), crops_per_image (list of B ints), grids_wh (list of
    B (tiles across, tiles down)), index (list of B record indices)."""
    if isinstance(pad_id, bool) or not isinstance(pad_id, int) or pad_id < 0:
        raise ValueError(f"pad_id must be a non-negative int (the tokenizer's pad token id), "
                         f"got {pad_id!r}")
    if not isinstance(samples, (list, tuple)) or not samples:
        raise ValueError("samples must be a non-empty list of samples")
    for b, s in enumerate(samples):
        if s["pixel_values"].shape[0] != s["crops_per_image"]:
            raise ValueError(f"sample {b}: {s['pixel_values'].shape[0]} crops but "
                             f"crops_per_image={s['crops_per_image']}")
        if s["input_ids"].shape != s["labels"].shape:
            raise ValueError(f"sample {b}: input_ids {tuple(s['input_ids'].shape)} and labels "
                             f"{tuple(s['labels'].shape)} differ")
    crop_shapes = {tuple(s["pixel_values"].shape[1:]) for s in samples}
    if len(crop_shapes) != 1:
        raise ValueError(f"samples have crops of different shapes {sorted(crop_shapes)}")
    B, T = len(samples), max(len(s["input_ids"]) for s in samples)
    input_ids = torch.full((B, T), pad_id, dtype=torch.int64)
    attention_mask = torch.zeros((B, T), dtype=torch.int64)
    labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.int64)
    for b, s in enumerate(samples):
        n = len(s["input_ids"])
        input_ids[b, :n] = s["input_ids"]
        attention_mask[b, :n] = 1
        labels[b, :n] = s["labels"]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
            "pixel_values": torch.cat([s["pixel_values"] for s in samples]),
            "crops_per_image": [int(s["crops_per_image"]) for s in samples],
            "grids_wh": [tuple(s["grids_wh"]) for s in samples],
            "index": [int(s["index"]) for s in samples]}


def _check_batch_size(batch_size):
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")


_MEGABATCH = 16  # batches whose samples are sorted by length together


def length_grouped_sampler(lengths, batch_size, seed):
    """A seeded order of range(len(lengths)) whose consecutive batch_size chunks hold samples
    of similar length (less padding), as LLaVA's group_by_length does: shuffle, sort
    each run of _MEGABATCH * batch_size samples by length (longest first), cut into batches,
    shuffle the full batches. A partial batch stays last, so that cutting the order into
    batch_size chunks gives back exactly these batches."""
    _check_batch_size(batch_size)
    rng = random.Random(f"slime-length-grouped/{seed}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    size = _MEGABATCH * batch_size
    batches = []
    for start in range(0, len(order), size):
        mega = sorted(order[start:start + size], key=lambda i: -lengths[i])  # stable
        batches += [mega[j:j + batch_size] for j in range(0, len(mega), batch_size)]
    tail = [batches.pop()] if batches and len(batches[-1]) < batch_size else []
    rng.shuffle(batches)
    return [i for batch in batches + tail for i in batch]


class _EpochBatchSampler(torch.utils.data.Sampler):
    """The batches of one epoch, from a start batch on; the order depends only on (seed,
    epoch), so a run resumed at (epoch, batch) sees the batches it would have seen."""

    def __init__(self, lengths, batch_size, shuffle, seed, group_by_length, drop_last):
        self.lengths, self.batch_size, self.shuffle, self.seed = lengths, batch_size, shuffle, seed
        self.group_by_length, self.drop_last = group_by_length, drop_last
        self.epoch, self.start = 0, 0

    def order(self, epoch):
        n = len(self.lengths)
        if self.group_by_length:
            return length_grouped_sampler(self.lengths, self.batch_size, f"{self.seed}/{epoch}")
        order = list(range(n))
        if self.shuffle:
            random.Random(f"slime-shuffle/{self.seed}/{epoch}").shuffle(order)
        return order

    def __len__(self):
        n = len(self.lengths)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        order = self.order(self.epoch)
        for b in range(self.start, len(self)):
            yield order[b * self.batch_size:(b + 1) * self.batch_size]


class ResumableLoader:
    """A DataLoader over a LlavaDataset that counts what it has handed out.

    Iterating runs through the rest of the current epoch; the epoch counter moves on when an
    iteration reaches the end. state_dict() is (epoch, batches handed out in it) plus the
    settings the order depends on; load_state_dict() continues from there (the settings must
    match). A batch counts as handed out when the loop receives it: save the state after the
    step that used the batch."""

    _SETTINGS = ("seed", "batch_size", "shuffle", "group_by_length", "drop_last", "num_samples")

    def __init__(self, dataset, batch_size, shuffle=True, seed=0, num_workers=0,
                 group_by_length=False, drop_last=False, pad_id=None):
        if not isinstance(dataset, LlavaDataset):
            raise TypeError(f"dataset must be a LlavaDataset, got {type(dataset).__name__}")
        _check_batch_size(batch_size)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be a non-negative int, got {num_workers!r}")
        if group_by_length and not shuffle:
            raise ValueError("group_by_length=True shuffles; it needs shuffle=True")
        if pad_id is None:
            pad_id = dataset.tokenizer.pad_id
            if pad_id is None:
                raise ValueError("the tokenizer names no pad token; pass pad_id= (e.g. the "
                                 "unk or eos id: padded positions are masked out)")
        if drop_last and len(dataset) < batch_size:
            raise ValueError(f"drop_last=True with {len(dataset)} samples and batch_size "
                             f"{batch_size} gives no batch")
        self.dataset, self.seed, self.batch_size, self.shuffle = dataset, seed, batch_size, shuffle
        self.group_by_length, self.drop_last = bool(group_by_length), bool(drop_last)
        self.batch_sampler = _EpochBatchSampler(dataset.lengths, batch_size, shuffle, seed,
                                                self.group_by_length, self.drop_last)
        self.loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=self.batch_sampler,
            collate_fn=functools.partial(collate, pad_id=pad_id), num_workers=num_workers,
            persistent_workers=num_workers > 0)
        self.epoch, self.batch = 0, 0

    def __len__(self):
        """Batches per epoch."""
        return len(self.batch_sampler)

    def __iter__(self):
        self.batch_sampler.epoch, self.batch_sampler.start = self.epoch, self.batch
        for batch in self.loader:
            self.batch += 1
            yield batch
        self.epoch, self.batch = self.epoch + 1, 0

    def _settings(self):
        return {"seed": self.seed, "batch_size": self.batch_size, "shuffle": self.shuffle,
                "group_by_length": self.group_by_length, "drop_last": self.drop_last,
                "num_samples": len(self.dataset)}

    def state_dict(self):
        epoch, batch = self.epoch, self.batch
        if batch >= len(self):  # the epoch's last batch is out: the next one opens the next
            epoch, batch = epoch + 1, 0
        return {"epoch": epoch, "batch": batch, **self._settings()}

    def load_state_dict(self, state):
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict, got {type(state).__name__}")
        missing = [k for k in ("epoch", "batch", *self._SETTINGS) if k not in state]
        if missing:
            raise ValueError(f"loader state lacks {missing}")
        for key, value in self._settings().items():
            if state[key] != value:
                raise ValueError(f"loader state has {key}={state[key]!r} but this loader has "
                                 f"{key}={value!r}: the order would differ")
        epoch, batch = state["epoch"], state["batch"]
        for name, v in (("epoch", epoch), ("batch", batch)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"loader state's {name} must be a non-negative int, got {v!r}")
        if batch >= len(self):
            raise ValueError(f"loader state's batch {batch} is past the epoch's {len(self)} "
                             "batches")
        self.epoch, self.batch = epoch, batch


def make_loader(dataset, batch_size, shuffle=True, seed=0, num_workers=0, group_by_length=False,
                drop_last=False, pad_id=None):
    """A ResumableLoader (see there): seeded order, optional length grouping, worker
    processes through torch's DataLoader, pad_id from the dataset's tokenizer by default."""
    return ResumableLoader(dataset, batch_size, shuffle=shuffle, seed=seed,
                           num_workers=num_workers, group_by_length=group_by_length,
                           drop_last=drop_last, pad_id=pad_id)
