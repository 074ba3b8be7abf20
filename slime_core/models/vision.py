"""Vision towers: CLIP ViT and SigLIP as one small ViT, told apart by its config.

    tower = VisionTower.from_pretrained("clip-vit-large-patch14-336")   # frozen, float32
    feats = tower(pixel_values)   # (B, 3, 336, 336) -> (B, 576, 1024): penultimate layer,
                                  # class token dropped, as LLaVA and SliME feed their LLMs

What the two families share: a patch convolution, learned absolute position embeddings, then
pre-LayerNorm transformer layers (x + attn(LN(x)), x + mlp(LN(x))). Where they differ, the
config says so:

                       CLIP                          SigLIP
    class token        yes (first token)             no
    patch conv bias    no                            yes
    LayerNorm before   yes (HF spells it             no
    layer 0            `pre_layrnorm`)
    MLP activation     quick_gelu x*sigmoid(1.702x)  gelu_pytorch_tanh
    LayerNorm eps      1e-5                          1e-6

Which features: LLaVA-style models take `hidden_states[select_layer]` of HF's output, where
hidden_states[0] is the embeddings (after CLIP's pre-LayerNorm) and hidden_states[i] the output
of layer i; the default -2 is the penultimate layer. Unlike LLaVA, which builds and runs the
whole tower and discards the rest, we build only the layers up to the selected one: the last
layer of CLIP ViT-L (about 1/24 of its weights and time) never influences SliME's features.
The loader therefore reads past exactly those layers' keys, plus the keys of parts we never
run (the text tower and projections of a full CLIPModel / SiglipModel, SigLIP's pooling head,
the final LayerNorm unless asked for, the old `position_ids` buffer); every key the model needs
must be present with its shape, or loading fails naming it.

Parameter names are HF's (embeddings.*, pre_layrnorm.*, encoder.layers.N.*, post_layernorm.*),
so checkpoints load without a rename table and errors name the keys users see in their files.
Only torch and safetensors are needed.
"""
import dataclasses
import os
from functools import partial

import torch
from torch import nn
from torch.nn import functional as F

from slime_core.checkpoint import load_into, load_safetensors, read_config
from slime_core.models.registry import register

ACTIVATIONS = {
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),  # CLIP's original approximation
    "gelu": F.gelu,  # some CLIP variants (e.g. OpenCLIP ViT-H) use the exact one
    "gelu_pytorch_tanh": partial(F.gelu, approximate="tanh"),
}
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
SELECT_FEATURES = ("patch", "cls_patch")

# HF model_type -> family, and HF's defaults for fields a config.json may leave out
# (transformers 4.x wrote only the fields that differ from these).
_FAMILIES = {"clip": "clip", "clip_vision_model": "clip",
             "siglip": "siglip", "siglip_vision_model": "siglip"}
_HF_DEFAULTS = {
    "clip": dict(image_size=224, patch_size=32, num_channels=3, hidden_size=768,
                 intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 layer_norm_eps=1e-5, hidden_act="quick_gelu"),
    "siglip": dict(image_size=224, patch_size=16, num_channels=3, hidden_size=768,
                   intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                   layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh"),
}


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


@dataclasses.dataclass
class VisionConfig:
    # Defaults: SliME's tower, CLIP ViT-L/14 at 336 pixels.
    """A CLIP or SigLIP ViT's shape and switches (from_hf_config reads HF's config.json)."""
    image_size: int = 336            # inputs are exactly image_size x image_size (no interpolation)
    patch_size: int = 14             # conv kernel = stride; image_size // patch_size patches a side
    num_channels: int = 3
    hidden_size: int = 1024
    intermediate_size: int = 4096    # MLP width
    num_hidden_layers: int = 24      # layers in the checkpoint; we build those up to select_layer
    num_attention_heads: int = 16
    layer_norm_eps: float = 1e-5     # CLIP 1e-5, SigLIP 1e-6
    hidden_act: str = "quick_gelu"   # a key of ACTIVATIONS
    class_token: bool = True         # CLIP: a learned class token first; SigLIP: none
    pre_layernorm: bool = True       # CLIP: LayerNorm on the embeddings; SigLIP: none
    patch_bias: bool = False         # SigLIP's patch conv has a bias, CLIP's has not
    select_layer: int = -2           # hidden_states[select_layer]: 0 embeddings, -1 last layer
    select_feature: str = "patch"    # "patch": class token dropped; "cls_patch": kept first
    post_layernorm: bool = False     # final LayerNorm on the output (last layer only): SigLIP's
                                     # last_hidden_state; CLIP applies it to its pooled token

    def __post_init__(self):
        for name in ("image_size", "patch_size", "num_channels", "hidden_size",
                     "intermediate_size", "num_hidden_layers", "num_attention_heads"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.patch_size > self.image_size:
            raise ValueError(f"patch_size {self.patch_size} exceeds image_size {self.image_size}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by "
                             f"num_attention_heads {self.num_attention_heads}")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act must be one of {sorted(ACTIVATIONS)}, got "
                             f"{self.hidden_act!r}")
        if self.select_feature not in SELECT_FEATURES:
            raise ValueError(f"select_feature must be one of {SELECT_FEATURES}, got "
                             f"{self.select_feature!r}")
        if self.select_feature == "cls_patch" and not self.class_token:
            raise ValueError("select_feature 'cls_patch' needs a tower with a class token")
        n = self.num_hidden_layers
        if not _is_int(self.select_layer) or not -(n + 1) <= self.select_layer <= n:
            raise ValueError(f"select_layer must be an int in [{-(n + 1)}, {n}] (hidden_states "
                             f"of a {n}-layer tower), got {self.select_layer!r}")
        if self.post_layernorm and self.num_layers_built != n:
            raise ValueError("post_layernorm applies to the last layer's output only; "
                             f"select_layer {self.select_layer} is not the last of {n} layers")

    @property
    def num_layers_built(self):
        """hidden_states[select_layer] is the output of this many layers."""
        return self.select_layer % (self.num_hidden_layers + 1)

    @property
    def num_patches(self):
        """Patch tokens per image: (image_size // patch_size) ** 2."""
        return (self.image_size // self.patch_size) ** 2

    @classmethod
    def from_hf_config(cls, hf, **options):
        """From the dict of an HF config.json: CLIPVisionConfig / SiglipVisionConfig, or a full
        CLIPModel / SiglipModel config (its nested vision_config). `options` set the fields HF
        does not have (select_layer, select_feature, post_layernorm)."""
        if not isinstance(hf, dict):
            raise TypeError(f"hf must be a dict (a parsed config.json), got {type(hf).__name__}")
        model_type = hf.get("model_type")
        if isinstance(hf.get("vision_config"), dict):
            hf = hf["vision_config"]
            model_type = hf.get("model_type", model_type)
        family = _FAMILIES.get(model_type)
        if family is None:
            raise ValueError(f"not a CLIP or SigLIP config: model_type {model_type!r}; known: "
                             f"{sorted(_FAMILIES)}")
        if hf.get("attention_dropout", 0.0):
            raise ValueError(f"attention_dropout {hf['attention_dropout']} is not supported: "
                             "this tower has no dropout (released CLIP/SigLIP use 0.0)")
        fields = {k: hf.get(k, default) for k, default in _HF_DEFAULTS[family].items()}
        clip = family == "clip"
        return cls(**fields, class_token=clip, pre_layernorm=clip, patch_bias=not clip,
                   **options)


class Embeddings(nn.Module):
    """Patches (and CLIP's class token) plus learned absolute position embeddings."""

    def __init__(self, config):
        super().__init__()
        d = config.hidden_size
        self.class_embedding = nn.Parameter(torch.randn(d)) if config.class_token else None
        self.patch_embedding = nn.Conv2d(config.num_channels, d, config.patch_size,
                                         stride=config.patch_size, bias=config.patch_bias)
        self.position_embedding = nn.Embedding(config.num_patches + config.class_token, d)

    def forward(self, x):  # x: (B, C, S, S) -> (B, T, D), T = patches (+1 class token first)
        """See the class docstring; shapes in the comment."""
        x = self.patch_embedding(x).flatten(2).transpose(1, 2)  # row-major patches
        if self.class_embedding is not None:
            x = torch.cat([self.class_embedding.expand(x.shape[0], 1, -1), x], dim=1)
        return x + self.position_embedding.weight


class Attention(nn.Module):
    """Multi-head self-attention through scaled_dot_product_attention."""
    def __init__(self, config):
        super().__init__()
        d = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.out_proj = nn.Linear(d, d)

    def forward(self, x):  # x: (B, T, D)
        """See the class docstring; shapes in the comment."""
        B, T, D = x.shape
        shape = (B, T, self.num_heads, D // self.num_heads)
        q, k, v = (proj(x).view(shape).transpose(1, 2)  # (B, heads, T, d)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))
        y = F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(d), no mask: all tokens
        return self.out_proj(y.transpose(1, 2).reshape(B, T, D))


class MLP(nn.Module):
    """fc1 -> activation -> fc2."""
    def __init__(self, config):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.act = ACTIVATIONS[config.hidden_act]

    def forward(self, x):
        """See the class docstring; shapes in the comment."""
        return self.fc2(self.act(self.fc1(x)))


class Layer(nn.Module):
    """Pre-LayerNorm transformer layer."""

    def __init__(self, config):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = Attention(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x):
        """See the class docstring; shapes in the comment."""
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class Encoder(nn.Module):
    """The transformer layers up to the selected one."""
    def __init__(self, config):
        super().__init__()
        self.layers = nn.ModuleList(Layer(config) for _ in range(config.num_layers_built))

    def forward(self, x):
        """See the class docstring; shapes in the comment."""
        for layer in self.layers:
            x = layer(x)
        return x


@register("vision_tower", "clip")
@register("vision_tower", "siglip")
class VisionTower(nn.Module):
    """CLIP or SigLIP ViT up to its selected layer. Frozen when built (see unfreeze)."""

    def __init__(self, config):
        super().__init__()
        if not isinstance(config, VisionConfig):
            raise TypeError(f"config must be a VisionConfig, got {type(config).__name__}")
        self.config = config
        ln = partial(nn.LayerNorm, config.hidden_size, eps=config.layer_norm_eps)
        self.embeddings = Embeddings(config)
        self.pre_layrnorm = ln() if config.pre_layernorm else None  # HF's spelling, for the keys
        self.encoder = Encoder(config)
        self.post_layernorm = ln() if config.post_layernorm else None
        self.requires_grad_(False)

    @property
    def dtype(self):
        """The tower's parameter dtype (inputs are cast to it)."""
        return self.embeddings.patch_embedding.weight.dtype

    @property
    def device(self):
        """The tower's device."""
        return self.embeddings.patch_embedding.weight.device

    def forward(self, pixel_values):
        """pixel_values (B, C, S, S) float, S = config.image_size, normalised as the tower was
        trained -> features (B, N, D) in the tower's dtype, N = (S // patch_size)**2 patch
        tokens in raster order, preceded by the class token with select_feature "cls_patch"."""
        self._check_input(pixel_values)
        x = self.embeddings(pixel_values.to(self.dtype))
        if self.pre_layrnorm is not None:
            x = self.pre_layrnorm(x)
        x = self.encoder(x)
        if self.post_layernorm is not None:
            x = self.post_layernorm(x)
        if self.config.class_token and self.config.select_feature == "patch":
            x = x[:, 1:]
        return x

    def _check_input(self, pixel_values):
        if not isinstance(pixel_values, torch.Tensor):
            raise TypeError(f"pixel_values must be a torch.Tensor, got "
                            f"{type(pixel_values).__name__}")
        if not pixel_values.is_floating_point():
            raise TypeError(f"pixel_values must be a floating point tensor (normalised pixels), "
                            f"got {pixel_values.dtype}")
        c, s = self.config.num_channels, self.config.image_size
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != (c, s, s):
            raise ValueError(f"pixel_values must be (B, {c}, {s}, {s}): this tower takes "
                             f"{s}x{s} images (position embeddings are not interpolated), got "
                             f"{tuple(pixel_values.shape)}")
        if pixel_values.device != self.device:
            raise ValueError(f"pixel_values are on {pixel_values.device}, the tower on "
                             f"{self.device}")

    def freeze(self):
        """Makes every parameter non-trainable (the default); returns self."""
        self.requires_grad_(False)
        return self

    def unfreeze(self, from_layer=None):
        """Makes the whole tower trainable (from_layer None: TinyLLaVA's "full"), or only the
        layers from_layer.. of the encoder, the rest staying frozen (TinyLLaVA's
        "partially-tune", used by its share recipe). Returns self."""
        if from_layer is None:
            self.requires_grad_(True)
            return self
        n = len(self.encoder.layers)
        if not _is_int(from_layer) or not 0 <= from_layer < n:
            raise ValueError(f"from_layer must be an int in [0, {n}) (the {n} layers built), got "
                             f"{from_layer!r}")
        self.requires_grad_(False)
        for layer in self.encoder.layers[from_layer:]:
            layer.requires_grad_(True)
        return self

    def _unused_key(self, name):
        """Whether a checkpoint key (prefix stripped) belongs to a part we do not run."""
        if name == "embeddings.position_ids" or name.startswith("head."):
            return True  # a buffer older transformers saved; SigLIP's pooling head
        if name.startswith("post_layernorm.") and self.post_layernorm is None:
            return True
        parts = name.split(".")
        return (name.startswith("encoder.layers.") and parts[2].isdigit()
                and len(self.encoder.layers) <= int(parts[2]) < self.config.num_hidden_layers)

    def save_pretrained(self, folder):
        """Writes an HF vision-tower folder (config.json of a CLIPVisionModel or
        SiglipVisionModel, model.safetensors with `vision_model.` keys), atomically, that
        from_pretrained and transformers load. Only the layers built are saved, so the config
        says that many layers: save a tower built whole (select_layer -1, or the last) when
        another program will read every layer; this tower's select_layer is not part of an
        HF config (a LLaVA config's mm_vision_select_layer carries it)."""
        from slime_core.checkpoint import save_safetensors, write_config
        c = self.config
        clip = c.class_token
        if (c.pre_layernorm, c.patch_bias) != (clip, not clip):
            raise ValueError("this tower mixes CLIP's and SigLIP's switches; HF has no config "
                             "for it")
        built = len(self.encoder.layers)
        hf = {"model_type": "clip_vision_model" if clip else "siglip_vision_model",
              "architectures": ["CLIPVisionModel" if clip else "SiglipVisionModel"],
              "image_size": c.image_size, "patch_size": c.patch_size,
              "num_channels": c.num_channels, "hidden_size": c.hidden_size,
              "intermediate_size": c.intermediate_size, "num_hidden_layers": built,
              "num_attention_heads": c.num_attention_heads, "layer_norm_eps": c.layer_norm_eps,
              "hidden_act": c.hidden_act, "attention_dropout": 0.0,
              "torch_dtype": str(self.dtype).replace("torch.", "")}
        state = {"vision_model." + k: v for k, v in self.state_dict().items()}
        if self.post_layernorm is None:
            # HF's model has a final LayerNorm; an identity one (never run by LLaVA-style
            # models, which read hidden_states) completes the folder.
            d = c.hidden_size
            state["vision_model.post_layernorm.weight"] = torch.ones(d, dtype=self.dtype)
            state["vision_model.post_layernorm.bias"] = torch.zeros(d, dtype=self.dtype)
        os.makedirs(folder, exist_ok=True)
        save_safetensors(state, os.path.join(folder, "model.safetensors"))
        write_config(hf, folder)

    @classmethod
    def from_pretrained(cls, folder, select_layer=-2, select_feature="patch",
                        post_layernorm=False, dtype=torch.float32, device="cpu"):
        """Loads an HF folder (config.json + safetensors, sharded or not) of a CLIPVisionModel,
        CLIPModel, SiglipVisionModel or SiglipModel, frozen, in dtype on device."""
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        config = VisionConfig.from_hf_config(read_config(folder), select_layer=select_layer,
                                             select_feature=select_feature,
                                             post_layernorm=post_layernorm)
        # Full models and transformers 4.x vision models keep the tower under vision_model.;
        # transformers 5 saves a CLIPVisionModel / SiglipVisionModel without a prefix.
        prefix = "vision_model."
        state = load_safetensors(folder, prefix=prefix)
        if not state:
            prefix, state = "", load_safetensors(folder)
        with torch.device("meta"):  # no random init to pay for: every tensor is loaded below
            model = cls(config)
        model = model.to(dtype=dtype).to_empty(device=device)
        state = {k: v for k, v in state.items() if not model._unused_key(k)}
        return load_into(model, state, what=f"{cls.__name__} from {folder!r} (checkpoint keys "
                                            f"{prefix + '*' if prefix else 'unprefixed'})")
