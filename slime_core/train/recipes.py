"""Training recipes as data: a recipe is a list of stage dicts, run in order by
slime_core.train.trainer.run_recipe. Nothing here is a code path; a scaled-down demo is the
same list with other numbers (scaled()).

A stage dict:

    name          the stage's folder under the run's output
    trainable     {component: lr} or {component: {"lr": lr, "from_layer": k}}; every other
                  parameter is frozen (components: COMPONENTS below)
    overrides     SlimeConfig fields for this stage (image_mode, connector_expert, selection,
                  top_p, ...); structural fields (connector, grids) cannot change
    data          which dataset the stage reads: "captions" or "instruct" (keys of the
                  datasets handed to run_recipe)
    epochs        passes over the data (steps = epochs * len(data) // global_batch), or
    steps         a fixed number of optimizer steps (wins over epochs)
    global_batch  samples per optimizer step over all processes
    micro_batch   samples per forward per process (accumulation = global / (world * micro))
    warmup_ratio, weight_decay, max_grad_norm, betas, eps: AdamW and its cosine schedule
    bf16          autocast to bfloat16 where the device supports it
    max_length    spliced sequences are truncated to this many tokens
    grad_checkpointing  recompute the LLM's layers in backward (when the LLM trains)

Numbers are SLIME_SPEC section 6 (SliME, 7B/13B column) and section 8 (TinyLLaVA).
"""
import dataclasses
import math
import re
from typing import Optional

# Component -> the parameter names (of SlimeModel.named_parameters) it owns. "connector"
# is the whole mm_projector; the gated connector's parts can be chosen one by one.
COMPONENTS = {
    "vision": r"vision_tower\.",
    "connector": r"mm_projector\.",
    "connector.mlp": r"mm_projector\.projection\.",
    "connector.resampler": r"mm_projector\.attn\.",
    "connector.router": r"mm_projector\.w_gate$",
    "local": r"sampler\.",
    "llm": r"llm\.",
    # the LLM but its input embedding table (which a tied lm_head shares): the word vectors
    # the text-guided selection scores against stay where pretraining left them
    "llm.body": r"llm\.(?!model\.embed_tokens\.)",
}
# Parameters that are fixed by design, never trained whatever the component: the
# resamplers' sin-cos position tables and the gated block's unused w_noise.
FIXED = re.compile(r"(^|\.)(pos_embed|w_noise)$")
# SlimeConfig fields that decide which modules exist; a stage cannot change them.
STRUCTURAL = ("connector", "connector_grid", "num_heads", "local_grid")


@dataclasses.dataclass
class Stage:
    name: str
    trainable: dict
    overrides: dict = dataclasses.field(default_factory=dict)
    data: str = "instruct"
    epochs: float = 1.0
    steps: Optional[int] = None
    global_batch: int = 128
    micro_batch: int = 4
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    bf16: bool = True
    max_length: Optional[int] = 2048
    grad_checkpointing: bool = True

    def __post_init__(self):
        if not isinstance(self.name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
            raise ValueError(f"stage name must be a plain folder name, got {self.name!r}")
        if not isinstance(self.trainable, dict) or not self.trainable:
            raise ValueError(f"stage {self.name!r}: trainable must be a non-empty dict "
                             f"{{component: lr}}, got {self.trainable!r}")
        for comp, spec in self.trainable.items():
            if comp not in COMPONENTS:
                raise ValueError(f"stage {self.name!r}: unknown component {comp!r}; known: "
                                 f"{sorted(COMPONENTS)}")
            spec = spec if isinstance(spec, dict) else {"lr": spec}
            extra = set(spec) - {"lr", "from_layer"}
            if extra or "lr" not in spec:
                raise ValueError(f"stage {self.name!r}: component {comp!r} takes an lr or "
                                 f"{{'lr', 'from_layer'}}, got {spec!r}")
            if "from_layer" in spec and comp != "vision":
                raise ValueError(f"stage {self.name!r}: from_layer applies to 'vision' only")
            if not isinstance(spec["lr"], (int, float)) or not spec["lr"] >= 0:
                raise ValueError(f"stage {self.name!r}: lr of {comp!r} must be >= 0, got "
                                 f"{spec['lr']!r}")
        for name in ("global_batch", "micro_batch"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"stage {self.name!r}: {name} must be a positive int, got {v!r}")
        if self.steps is not None and (not isinstance(self.steps, int) or self.steps < 1):
            raise ValueError(f"stage {self.name!r}: steps must be a positive int, got "
                             f"{self.steps!r}")
        if not self.epochs > 0:
            raise ValueError(f"stage {self.name!r}: epochs must be > 0, got {self.epochs!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"stage {self.name!r}: warmup_ratio must be in [0, 1), got "
                             f"{self.warmup_ratio!r}")
        if self.data not in ("captions", "instruct"):
            raise ValueError(f"stage {self.name!r}: data must be 'captions' or 'instruct', got "
                             f"{self.data!r}")
        bad = [k for k in self.overrides if k in STRUCTURAL]
        if bad:
            raise ValueError(f"stage {self.name!r}: {bad} decide which modules exist; build "
                             "the model with them instead of overriding them per stage")
        self.betas = tuple(self.betas)

    def groups(self):
        """{component: {"lr": lr, ...}} with the shorthand lr expanded."""
        return {c: (dict(s) if isinstance(s, dict) else {"lr": s})
                for c, s in self.trainable.items()}

    def total_steps(self, num_samples):
        """Optimizer steps of this stage over a dataset of num_samples (at least 1)."""
        if self.steps is not None:
            return self.steps
        return max(1, int(self.epochs * num_samples) // self.global_batch)

    def warmup_steps(self, total):
        """HF Trainer's rule (LLaVA's and SliME's trainer): ceil(warmup_ratio * total)."""
        return math.ceil(self.warmup_ratio * total)


def as_stages(recipe):
    """Stage objects of a recipe (a list of stage dicts, or of Stages)."""
    if isinstance(recipe, str):
        recipe = RECIPES[recipe] if recipe in RECIPES else _unknown(recipe)
    stages = [s if isinstance(s, Stage) else Stage(**s) for s in recipe]
    if not stages:
        raise ValueError("a recipe needs at least one stage")
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise ValueError(f"stage names must be unique, got {names}")
    return stages


def _unknown(name):
    raise ValueError(f"unknown recipe {name!r}; known: {sorted(RECIPES)}")


def scaled(recipe, **changes):
    """The same recipe with some numbers changed in every stage (e.g. steps=20,
    global_batch=8, micro_batch=2, max_length=None for a CPU demo); a dict keyed by stage
    name changes one stage only: scaled(r, steps={"III": 40}, global_batch=8)."""
    out = []
    for s in (recipe if not isinstance(recipe, str) else RECIPES[recipe]):
        s = dict(dataclasses.asdict(s)) if isinstance(s, Stage) else dict(s)
        for k, v in changes.items():
            if isinstance(v, dict) and k not in ("trainable", "overrides"):
                if s["name"] in v:
                    s[k] = v[s["name"]]
            else:
                s[k] = v
        out.append(s)
    return out


_SLIME_COMMON = dict(epochs=1, warmup_ratio=0.03, weight_decay=0.0, bf16=True, max_length=2048)

# SliME's alternating training (SLIME_SPEC section 6), 7B/13B learning rates.
SLIME = [
    dict(name="Ia", data="captions", global_batch=256, **_SLIME_COMMON,
         overrides=dict(image_mode="global", connector_expert=0),
         trainable={"connector.mlp": 1e-3}),
    dict(name="Ib", data="captions", global_batch=256, **_SLIME_COMMON,
         overrides=dict(image_mode="global", connector_expert=1),
         trainable={"connector.resampler": 1e-3}),
    dict(name="II", data="captions", global_batch=256, **_SLIME_COMMON,
         overrides=dict(image_mode="local", selection="none"),
         trainable={"local": 1e-3}),
    dict(name="III", data="instruct", global_batch=128, **_SLIME_COMMON,
         overrides=dict(image_mode="both", connector_expert=-1, selection="top_p", top_p=0.95),
         trainable={"llm": 2e-5, "connector": 2e-5, "local": 2e-5}),
]

# TinyLLaVA (SLIME_SPEC section 8), for a global-only model (image_mode "global", an MLP or
# resampler connector).
_TINY_FINETUNE = dict(name="finetune", data="instruct", global_batch=128, epochs=1,
                      warmup_ratio=0.03, weight_decay=0.0, overrides=dict(image_mode="global"),
                      trainable={"connector": 2e-5, "llm": 2e-5})
TINYLLAVA_BASE = [
    dict(name="pretrain", data="captions", global_batch=256, epochs=1, warmup_ratio=0.03,
         weight_decay=0.0, overrides=dict(image_mode="global"), trainable={"connector": 1e-3}),
    _TINY_FINETUNE,
]
TINYLLAVA_SHARE = [
    dict(name="pretrain", data="captions", global_batch=256, epochs=1, warmup_ratio=0.03,
         weight_decay=0.0, overrides=dict(image_mode="global"),
         trainable={"connector": 2e-5, "vision": {"lr": 2e-5, "from_layer": 12}, "llm": 2e-5}),
    _TINY_FINETUNE,
]

RECIPES = {"slime": SLIME, "tinyllava_base": TINYLLAVA_BASE, "tinyllava_share": TINYLLAVA_SHARE}


def configure(model, stage):
    """Applies a stage to an (unwrapped) SlimeModel: its SlimeConfig overrides and its
    trainable flags. Returns {component: [parameter names]} of what trains (each parameter
    in exactly one component). Raises if a component owns no trainable parameter."""
    cfg = dataclasses.replace(model.config, **stage.overrides,
                              **({"max_length": stage.max_length}
                                 if "max_length" not in stage.overrides else {}))
    if cfg.image_mode != "global" and model.sampler is None:
        raise ValueError(f"stage {stage.name!r} runs image_mode {cfg.image_mode!r}, but the "
                         "model was built global-only (no local compressor); build it with "
                         "image_mode 'both'")
    if cfg.connector_expert != -1 and not hasattr(model.mm_projector, "expert"):
        raise ValueError(f"stage {stage.name!r}: connector_expert applies to the gated "
                         f"connector, the model has {cfg.connector!r}")
    model.config = cfg
    if hasattr(model.mm_projector, "expert"):
        model.mm_projector.expert = cfg.connector_expert
    model.set_fused_ops(cfg.use_fused_ops)

    model.requires_grad_(False)
    names = dict(model.named_parameters())
    owner = {}
    for comp, spec in stage.groups().items():
        pattern = COMPONENTS[comp]
        if comp == "vision" and "from_layer" in spec:
            n = len(model.vision_tower.encoder.layers)
            k = spec["from_layer"]
            if not isinstance(k, int) or not 0 <= k < n:
                raise ValueError(f"stage {stage.name!r}: vision from_layer must be in [0, {n}) "
                                 f"(the layers built), got {k!r}")
            pattern = r"vision_tower\.encoder\.layers\.(%s)\." % "|".join(
                str(i) for i in range(k, n))
        hits = [p for p in names if re.match(pattern, p) and not FIXED.search(p)]
        if not hits:
            raise ValueError(f"stage {stage.name!r}: component {comp!r} matches no parameter "
                             f"of this model (connector {model.config.connector!r})")
        for p in hits:
            if p in owner:
                raise ValueError(f"stage {stage.name!r}: parameter {p!r} belongs to both "
                                 f"{owner[p]!r} and {comp!r}")
            owner[p] = comp
            names[p].requires_grad_(True)
    out = {c: [] for c in stage.trainable}
    for p, c in owner.items():
        out[c].append(p)
    return out
