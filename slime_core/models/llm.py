"""One compact decoder-only LLM for the four HF families SliME and its smaller cousins use:
Llama (TinyLlama, Vicuna, Llama-3 and 3.1 with its rope scaling), Qwen2, Phi-2 and StableLM-2.

    cfg = DecoderConfig.from_hf_config(read_config(folder))
    model = Decoder.from_pretrained(folder, dtype=torch.bfloat16)   # memory-mapped
    logits = model(input_ids, attention_mask=mask)                  # (B, L, V)
    logits = model(inputs_embeds=x, attention_mask=mask)            # SliME's path
    new = model.generate(input_ids, mask, max_new_tokens=64, stop_token_ids=[2])

The families differ only in configuration, so there is one class, not four:

    family     norm       residual     biases                  rotary    attention out / MLP
    llama      RMSNorm    sequential   none (or all: option)   full      o_proj / gate,up,down
    qwen2      RMSNorm    sequential   q, k, v                 full      o_proj / gate,up,down
    phi        LayerNorm  parallel     all, and lm_head        partial   dense  / fc1,fc2
    stablelm   LayerNorm  either       q, k, v (option)        partial   o_proj / gate,up,down

Parameters carry HF's names (model.layers.N.self_attn.q_proj.weight, lm_head.weight, ...;
the few that differ by family come from one table, _NAMES), so HF checkpoints load unchanged
and save_pretrained writes folders HF loads.

Conventions where HF leaves a choice:
- forward derives position ids from attention_mask when one is given (a left-padded row
  starts at position 0, as in HF's generate); HF's forward uses 0..L-1 whatever the mask.
- A padded query position attends to itself only, so its (unused) output stays finite
  instead of NaN; real positions never see padding.
- No dropout: HF's dropout probabilities (0 in most released configs, resid_pdrop 0.1 in
  Phi-2's) are not read; they change nothing at inference, and training adds its own.
"""
import json
import math
import os
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from slime_core.checkpoint import (CheckpointError, MappedSafetensors, check_state_dict,
                                   load_into, read_config, save_safetensors_folder, write_config)

FAMILIES = ("llama", "qwen2", "phi", "stablelm")

# HF parameter names that differ by family; everything else is shared.
_NAMES = {
    "phi": {"o_proj": "dense", "final_norm": "final_layernorm"},
}
_DEFAULT_NAMES = {"o_proj": "o_proj", "final_norm": "norm"}

_ACTS = {
    "silu": F.silu,
    "gelu": F.gelu,
    # HF's "gelu_new" is the tanh approximation written out; same function.
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}
_ROPE_TYPES = ("default", "linear", "llama3")
_HF_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Keys that old checkpoints stored but that are recomputed from the config.
_RECOMPUTED_SUFFIX = "rotary_emb.inv_freq"

# GQA inside SDPA (no copies of K and V per query head) exists from torch 2.5 on; the
# fallback repeats K and V per group explicitly.
_SDPA_GQA = torch.torch_version.TorchVersion(torch.__version__) >= (2, 5)


@dataclass
class DecoderConfig:
    model_type: str = "llama"          # HF family: llama, qwen2, phi, stablelm (picks names)
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008     # MLP width
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 32             # fewer than num_heads: grouped-query attention
    head_dim: int = 0                  # 0: hidden_size // num_heads
    norm: str = "rms"                  # "rms" (Llama, Qwen2) or "layer" (Phi, StableLM)
    norm_eps: float = 1e-6
    mlp: str = "gated"                 # "gated": down(act(gate(x)) * up(x)); "fc": fc2(act(fc1(x)))
    hidden_act: str = "silu"
    parallel_residual: bool = False    # x + attn(ln(x)) + mlp(ln(x)) (Phi) instead of two steps
    qkv_bias: bool = False             # Qwen2, Phi, StableLM-2 1.6B
    o_bias: bool = False               # Phi (and Llama with attention_bias)
    mlp_bias: bool = False             # Phi (and Llama with mlp_bias)
    lm_head_bias: bool = False         # Phi
    qk_norm: str = ""                  # "": none; "shared": one LayerNorm over head_dim (Phi);
                                       # "per_head": a bias-free LayerNorm per head (StableLM)
    rope_theta: float = 10000.0
    partial_rotary_factor: float = 1.0 # fraction of head_dim rotated (Phi-2 0.4, StableLM-2 0.25)
    rope_scaling: dict = field(default_factory=dict)  # {} or {"rope_type": "linear"|"llama3", ...}
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False  # lm_head shares embed_tokens' weight
    bos_token_id: int = None
    eos_token_id: object = None        # int or list of ints (Llama-3 has two)
    pad_token_id: int = None

    def __post_init__(self):
        if self.model_type not in FAMILIES:
            raise ValueError(f"model_type {self.model_type!r} is not supported; "
                             f"supported: {FAMILIES}")
        if self.head_dim == 0:
            if self.hidden_size % self.num_heads:
                raise ValueError(f"hidden_size {self.hidden_size} is not divisible by "
                                 f"num_heads {self.num_heads}")
            self.head_dim = self.hidden_size // self.num_heads
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not a multiple of "
                             f"num_kv_heads {self.num_kv_heads}")
        for name, value, allowed in (("norm", self.norm, ("rms", "layer")),
                                     ("mlp", self.mlp, ("gated", "fc")),
                                     ("hidden_act", self.hidden_act, tuple(_ACTS)),
                                     ("qk_norm", self.qk_norm, ("", "shared", "per_head"))):
            if value not in allowed:
                raise ValueError(f"{name} {value!r} is not supported; supported: {allowed}")
        rope_type = (self.rope_scaling or {}).get("rope_type", "default")
        if rope_type not in _ROPE_TYPES:
            raise ValueError(f"rope scaling type {rope_type!r} is not supported; "
                             f"supported: {_ROPE_TYPES}")
        if not 0 < self.partial_rotary_factor <= 1:
            raise ValueError(f"partial_rotary_factor must be in (0, 1], "
                             f"got {self.partial_rotary_factor}")

    @property
    def rotary_dim(self):
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def names(self):
        return _NAMES.get(self.model_type, _DEFAULT_NAMES)

    @classmethod
    def from_hf_config(cls, hf):
        """From an HF config.json dict of a llama, qwen2, phi or stablelm model. Reads both
        the transformers 4 layout (rope_theta, rope_scaling, partial_rotary_factor at the top)
        and the transformers 5 one (rope_parameters)."""
        if not isinstance(hf, dict):
            raise TypeError(f"hf must be a config dict, got {type(hf).__name__}")
        family = hf.get("model_type")
        if family not in FAMILIES:
            raise ValueError(f"model_type {family!r} is not supported; supported: {FAMILIES}")
        heads = hf["num_attention_heads"]
        rope = dict(hf.get("rope_scaling") or {})
        rope.update(hf.get("rope_parameters") or {})
        if "type" in rope:  # the older name of rope_type
            rope.setdefault("rope_type", rope.pop("type"))
        theta = rope.pop("rope_theta", hf.get("rope_theta", 10000.0))
        partial = rope.pop("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
        if rope.get("rope_type", "default") == "default":
            rope = {}
        elif rope["rope_type"] == "llama3":
            rope.setdefault("original_max_position_embeddings", hf["max_position_embeddings"])
        common = dict(
            model_type=family, vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"], num_layers=hf["num_hidden_layers"],
            num_heads=heads, num_kv_heads=hf.get("num_key_value_heads") or heads,
            hidden_act=hf.get("hidden_act", "silu"), rope_theta=float(theta),
            partial_rotary_factor=float(partial), rope_scaling=rope,
            max_position_embeddings=hf.get("max_position_embeddings", 4096),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            bos_token_id=hf.get("bos_token_id"), eos_token_id=hf.get("eos_token_id"),
            pad_token_id=hf.get("pad_token_id"))
        if family in ("llama", "qwen2"):
            common.update(norm="rms", norm_eps=hf.get("rms_norm_eps", 1e-6),
                          head_dim=hf.get("head_dim") or 0)
        else:
            common.update(norm="layer", norm_eps=hf.get("layer_norm_eps", 1e-5))
        if family == "llama":
            bias = bool(hf.get("attention_bias", False))
            return cls(**common, qkv_bias=bias, o_bias=bias, mlp_bias=bool(hf.get("mlp_bias")))
        if family == "qwen2":
            if hf.get("use_sliding_window") or "sliding_attention" in (hf.get("layer_types") or []):
                raise ValueError("qwen2 with sliding-window attention (use_sliding_window) is "
                                 "not supported")
            return cls(**common, qkv_bias=True)
        if family == "phi":
            return cls(**common, mlp="fc", parallel_residual=True, qkv_bias=True, o_bias=True,
                       mlp_bias=True, lm_head_bias=True,
                       qk_norm="shared" if hf.get("qk_layernorm") else "")
        return cls(**common, parallel_residual=bool(hf.get("use_parallel_residual", False)),
                   qkv_bias=bool(hf.get("use_qkv_bias", False)),
                   qk_norm="per_head" if hf.get("qk_layernorm") else "")

    def to_hf_config(self, dtype=None):
        """The HF config.json dict for this model (transformers 4 layout, which transformers
        5 reads too)."""
        hf = dict(model_type=self.model_type, vocab_size=self.vocab_size,
                  hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
                  num_hidden_layers=self.num_layers, num_attention_heads=self.num_heads,
                  num_key_value_heads=self.num_kv_heads, hidden_act=self.hidden_act,
                  rope_theta=self.rope_theta, rope_scaling=dict(self.rope_scaling) or None,
                  max_position_embeddings=self.max_position_embeddings,
                  tie_word_embeddings=self.tie_word_embeddings, bos_token_id=self.bos_token_id,
                  eos_token_id=self.eos_token_id, pad_token_id=self.pad_token_id,
                  architectures=[{"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                                  "phi": "PhiForCausalLM",
                                  "stablelm": "StableLmForCausalLM"}[self.model_type]])
        if dtype is not None:
            hf["torch_dtype"] = str(dtype).replace("torch.", "")
        family = self.model_type
        expected = {"llama": dict(mlp="gated", norm="rms", parallel_residual=False,
                                  qk_norm="", lm_head_bias=False, o_bias=self.qkv_bias),
                    "qwen2": dict(mlp="gated", norm="rms", parallel_residual=False,
                                  qk_norm="", lm_head_bias=False, qkv_bias=True, o_bias=False,
                                  mlp_bias=False),
                    "phi": dict(mlp="fc", norm="layer", parallel_residual=True, qkv_bias=True,
                                o_bias=True, mlp_bias=True, lm_head_bias=True),
                    "stablelm": dict(mlp="gated", norm="layer", o_bias=False, mlp_bias=False,
                                     lm_head_bias=False)}[family]
        odd = {k: getattr(self, k) for k, v in expected.items() if getattr(self, k) != v}
        if odd:
            raise ValueError(f"this configuration has no HF {family} equivalent: {odd}")
        if family in ("llama", "qwen2"):
            hf.update(rms_norm_eps=self.norm_eps, head_dim=self.head_dim)
            if self.partial_rotary_factor != 1.0:
                raise ValueError(f"HF {family} has no partial rotary")
        else:
            hf.update(layer_norm_eps=self.norm_eps,
                      partial_rotary_factor=self.partial_rotary_factor)
            if self.head_dim != self.hidden_size // self.num_heads:
                raise ValueError(f"HF {family} derives head_dim from hidden_size")
        if family == "llama":
            hf.update(attention_bias=self.qkv_bias, mlp_bias=self.mlp_bias)
        elif family == "qwen2":
            hf.update(use_sliding_window=False)
        elif family == "phi":
            hf.update(qk_layernorm=self.qk_norm == "shared")
        else:
            hf.update(use_qkv_bias=self.qkv_bias, qk_layernorm=self.qk_norm == "per_head",
                      use_parallel_residual=self.parallel_residual)
        return hf


# ----------------------------------------------------------------------------- building blocks

class RMSNorm(nn.Module):
    """Llama's RMSNorm: normalised in float32, scaled in the input dtype (as HF does)."""

    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):  # (..., dim)
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def make_norm(cfg, dim):
    return RMSNorm(dim, cfg.norm_eps) if cfg.norm == "rms" else nn.LayerNorm(dim, eps=cfg.norm_eps)


class PerHeadLayerNorm(nn.Module):
    """StableLM's q/k norm: a bias-free LayerNorm per head (HF names: norms.{h}.weight)."""

    def __init__(self, num_heads, head_dim, eps):
        super().__init__()
        self.norms = nn.ModuleList(nn.LayerNorm(head_dim, eps=eps, bias=False)
                                   for _ in range(num_heads))
        self.eps = eps

    def forward(self, x):  # (B, heads, L, head_dim)
        w = torch.stack([n.weight for n in self.norms])[:, None, :]  # (heads, 1, head_dim)
        return F.layer_norm(x, x.shape[-1:], eps=self.eps) * w


def rope_inv_freq(cfg):
    """(rotary_dim // 2,) float32 inverse frequencies, with linear or Llama-3.1 scaling.
    Built on the CPU explicitly, so it is real even when the model is built on 'meta'."""
    dim = cfg.rotary_dim
    inv = 1.0 / cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64, device="cpu")
                                   .float() / dim)
    s = cfg.rope_scaling
    kind = s.get("rope_type", "default") if s else "default"
    if kind == "linear":
        return inv / s["factor"]
    if kind == "llama3":
        # Long wavelengths are slowed by `factor`, short ones kept, the band between blended.
        factor, lo, hi = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
        old = s["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > old / lo, inv / factor, inv)
        smooth = (old / wavelen - lo) / (hi - lo)
        blended = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old / hi) & (wavelen <= old / lo)
        return torch.where(medium, blended, scaled)
    return inv


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x, cos, sin, rotary_dim):
    """x (B, heads, L, head_dim); cos, sin (B, 1, L, rotary_dim). Rotates the first
    rotary_dim channels, passes the rest through (partial rotary)."""
    if rotary_dim == x.shape[-1]:
        return x * cos + rotate_half(x) * sin
    rot, rest = x[..., :rotary_dim], x[..., rotary_dim:]
    return torch.cat((rot * cos + rotate_half(rot) * sin, rest), dim=-1)


class KVCache:
    """Keys and values of every layer, preallocated for max_len positions so a decoding step
    writes in place instead of concatenating. `length` positions are filled."""

    def __init__(self, cfg, batch, max_len, dtype=torch.float32, device="cpu"):
        shape = (batch, cfg.num_kv_heads, max_len, cfg.head_dim)
        self.k = [torch.empty(shape, dtype=dtype, device=device) for _ in range(cfg.num_layers)]
        self.v = [torch.empty(shape, dtype=dtype, device=device) for _ in range(cfg.num_layers)]
        self.batch, self.max_len, self.length = batch, max_len, 0

    def append(self, layer, k, v):  # k, v (B, kv_heads, L, head_dim)
        """Stores a layer's new keys and values after the filled ones; returns all of them."""
        end = self.length + k.shape[2]
        self.k[layer][:, :, self.length:end] = k
        self.v[layer][:, :, self.length:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


class Attention(nn.Module):
    def __init__(self, cfg, layer):
        super().__init__()
        self.cfg, self.layer = cfg, layer
        h, hd = cfg.hidden_size, cfg.head_dim
        self.q_proj = nn.Linear(h, cfg.num_heads * hd, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(h, cfg.num_kv_heads * hd, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(h, cfg.num_kv_heads * hd, bias=cfg.qkv_bias)
        self.o_name = cfg.names["o_proj"]
        self.add_module(self.o_name, nn.Linear(cfg.num_heads * hd, h, bias=cfg.o_bias))
        if cfg.qk_norm == "shared":
            self.q_layernorm = nn.LayerNorm(hd, eps=cfg.norm_eps)
            self.k_layernorm = nn.LayerNorm(hd, eps=cfg.norm_eps)
        elif cfg.qk_norm == "per_head":
            self.q_layernorm = PerHeadLayerNorm(cfg.num_heads, hd, cfg.norm_eps)
            self.k_layernorm = PerHeadLayerNorm(cfg.num_kv_heads, hd, cfg.norm_eps)

    def forward(self, x, cos, sin, mask, cache):
        # x (B, L, hidden); cos, sin (B, 1, L, rotary_dim); mask: None, "causal" or
        # bool (B, 1, L, S), True = attend
        cfg = self.cfg
        B, L, _ = x.shape
        q = self.q_proj(x).view(B, L, cfg.num_heads, cfg.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, L, cfg.num_kv_heads, cfg.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, L, cfg.num_kv_heads, cfg.head_dim).transpose(1, 2)
        if cfg.qk_norm:
            q, k = self.q_layernorm(q), self.k_layernorm(k)
        q, k = apply_rope(q, cos, sin, cfg.rotary_dim), apply_rope(k, cos, sin, cfg.rotary_dim)
        if cache is not None:
            k, v = cache.append(self.layer, k, v)
        groups = cfg.num_heads // cfg.num_kv_heads
        extra = {}
        if groups > 1 and _SDPA_GQA:
            extra["enable_gqa"] = True
        elif groups > 1:
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        causal = isinstance(mask, str)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=None if causal else mask,
                                           is_causal=causal, **extra)  # (B, heads, L, head_dim)
        return getattr(self, self.o_name)(y.transpose(1, 2).reshape(B, L, -1))


class GatedMLP(nn.Module):
    """down(act(gate(x)) * up(x)): Llama, Qwen2, StableLM."""

    def __init__(self, cfg):
        super().__init__()
        h, m = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = nn.Linear(h, m, bias=cfg.mlp_bias)
        self.up_proj = nn.Linear(h, m, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(m, h, bias=cfg.mlp_bias)
        self.act = _ACTS[cfg.hidden_act]

    def forward(self, x):
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class FcMLP(nn.Module):
    """fc2(act(fc1(x))): Phi."""

    def __init__(self, cfg):
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)
        self.act = _ACTS[cfg.hidden_act]

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Layer(nn.Module):
    def __init__(self, cfg, layer):
        super().__init__()
        self.parallel = cfg.parallel_residual
        self.input_layernorm = make_norm(cfg, cfg.hidden_size)
        self.self_attn = Attention(cfg, layer)
        self.mlp = GatedMLP(cfg) if cfg.mlp == "gated" else FcMLP(cfg)
        if not self.parallel:
            self.post_attention_layernorm = make_norm(cfg, cfg.hidden_size)

    def forward(self, x, cos, sin, mask, cache):  # x (B, L, hidden)
        h = self.input_layernorm(x)
        a = self.self_attn(h, cos, sin, mask, cache)
        if self.parallel:
            return x + a + self.mlp(h)
        x = x + a
        return x + self.mlp(self.post_attention_layernorm(x))


class Body(nn.Module):
    """HF's `model.` prefix: embeddings, layers, final norm."""

    def __init__(self, cfg):
        super().__init__()
        # padding_idx as in HF: the pad token's embedding gets no gradient in training.
        pad = cfg.pad_token_id
        pad = pad if pad is not None and 0 <= pad < cfg.vocab_size else None
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=pad)
        self.layers = nn.ModuleList(Layer(cfg, i) for i in range(cfg.num_layers))
        self.final_norm_name = cfg.names["final_norm"]
        self.add_module(self.final_norm_name, make_norm(cfg, cfg.hidden_size))


# ----------------------------------------------------------------------------- the decoder

def attention_mask_4d(attention_mask, L, past, device):
    """The mask SDPA gets for L new queries after `past` cached positions.

    attention_mask: None or (B, past + L), 1 for real tokens, 0 for padding.
    Returns None (attend to everything: one query, no padding), "causal" (SDPA's own causal
    mask), or bool (B, 1, L, past + L).
    """
    if attention_mask is None:
        if L == 1:
            return None
        if past == 0:
            return "causal"
    S = past + L
    q_pos = torch.arange(past, S, device=device)[:, None]        # (L, 1)
    k_pos = torch.arange(S, device=device)[None, :]              # (1, S)
    allowed = k_pos <= q_pos                                     # (L, S)
    if attention_mask is None:
        return allowed[None, None]
    allowed = allowed[None, None] & attention_mask.bool()[:, None, None, :]
    # A padded query would otherwise see no key at all, and SDPA returns NaN for it; NaN in
    # a padded row would then reach real rows through 0 * NaN in later layers.
    return allowed | (k_pos == q_pos)[None, None]


class Decoder(nn.Module):
    """A decoder-only LLM (see the module docstring for the families it covers)."""

    def __init__(self, cfg):
        super().__init__()
        if not isinstance(cfg, DecoderConfig):
            raise TypeError(f"cfg must be a DecoderConfig, got {type(cfg).__name__}")
        self.config = cfg
        self.model = Body(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=cfg.lm_head_bias)
        self.tie_weights()
        # float32 and outside the state dict: model.to(bfloat16) must not round it.
        self._inv_freq = rope_inv_freq(cfg)

    def tie_weights(self):
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @property
    def embed_tokens(self):
        return self.model.embed_tokens

    def rope(self, position_ids, dtype):
        """cos, sin (B, 1, L, rotary_dim) in dtype, computed in float32 as HF does."""
        if self._inv_freq.device != position_ids.device:
            self._inv_freq = self._inv_freq.to(position_ids.device)
        freqs = position_ids[..., None].float() * self._inv_freq   # (B, L, rotary_dim / 2)
        emb = torch.cat((freqs, freqs), dim=-1)[:, None]
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def hidden_states(self, input_ids=None, inputs_embeds=None, attention_mask=None,
                      position_ids=None, cache=None):
        """The final-norm hidden states (B, L, hidden); forward applies lm_head to them."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if input_ids is not None:
            if input_ids.dim() != 2 or input_ids.dtype not in (torch.int64, torch.int32):
                raise ValueError(f"input_ids must be an integer (B, L) tensor, got "
                                 f"{input_ids.dtype} of shape {tuple(input_ids.shape)}")
            inputs_embeds = self.model.embed_tokens(input_ids)
        elif inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != self.config.hidden_size:
            raise ValueError(f"inputs_embeds must be (B, L, {self.config.hidden_size}), got "
                             f"{tuple(inputs_embeds.shape)}")
        elif inputs_embeds.dtype != self.lm_head.weight.dtype:
            raise TypeError(f"inputs_embeds must have the model's dtype "
                            f"{self.lm_head.weight.dtype}, got {inputs_embeds.dtype}")
        B, L, _ = inputs_embeds.shape
        past = cache.length if cache is not None else 0
        if cache is not None and (cache.batch != B or past + L > cache.max_len):
            raise ValueError(f"the cache holds {cache.batch} rows of {cache.max_len} positions "
                             f"with {past} filled; got {B} rows of {L} new positions")
        if attention_mask is not None and tuple(attention_mask.shape) != (B, past + L):
            raise ValueError(f"attention_mask must be (B, past + L) = {(B, past + L)}, got "
                             f"{tuple(attention_mask.shape)}")
        if position_ids is None:
            if attention_mask is not None:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past:]
            else:
                position_ids = torch.arange(past, past + L, device=inputs_embeds.device)[None]
        elif position_ids.shape[-1] != L:
            raise ValueError(f"position_ids must have L = {L} columns, got "
                             f"{tuple(position_ids.shape)}")
        position_ids = position_ids.expand(B, L)
        cos, sin = self.rope(position_ids, inputs_embeds.dtype)
        mask = attention_mask_4d(attention_mask, L, past, inputs_embeds.device)
        x = inputs_embeds
        for layer in self.model.layers:
            x = layer(x, cos, sin, mask, cache)
        if cache is not None:
            cache.length += L
        return getattr(self.model, self.model.final_norm_name)(x)

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None,
                position_ids=None, cache=None):
        """Logits (B, L, vocab) for input_ids (B, L) or inputs_embeds (B, L, hidden).

        attention_mask (B, past + L): 1 for tokens, 0 for padding; covers the cached
        positions too. position_ids (B, L) or (1, L): by default from the mask (cumulative
        count of real tokens), else past..past+L-1. cache: a KVCache, extended in place.
        """
        return self.lm_head(self.hidden_states(input_ids, inputs_embeds, attention_mask,
                                               position_ids, cache))

    def new_cache(self, batch, max_len):
        p = self.lm_head.weight
        return KVCache(self.config, batch, max_len, dtype=p.dtype, device=p.device)

    @torch.no_grad()
    def generate(self, input_ids=None, attention_mask=None, inputs_embeds=None,
                 max_new_tokens=32, do_sample=False, temperature=1.0, top_p=1.0,
                 stop_token_ids=None, pad_token_id=None, generator=None):
        """New tokens (B, n), n <= max_new_tokens, for a left-padded batch of prompts.

        Greedy by default; do_sample draws from softmax(logits / temperature) restricted to
        the top_p nucleus, with `generator` for reproducibility. A row ends at its first stop
        token (kept), then gets pad_token_id; generation ends when every row has ended.
        stop_token_ids default to the config's eos_token_id; pad_token_id to the config's,
        else the first stop token, else 0.
        """
        first = input_ids if input_ids is not None else inputs_embeds
        if first is None or first.dim() < 2 or first.shape[1] == 0:
            raise ValueError("generate needs a prompt of at least one token (input_ids (B, L) "
                             "or inputs_embeds (B, L, hidden) with L >= 1)")
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        if do_sample and not temperature > 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {temperature}")
        if not 0 <= top_p <= 1:
            raise ValueError(f"top_p must be in [0, 1], got {top_p}")
        B, L, device = first.shape[0], first.shape[1], first.device
        if attention_mask is None:
            attention_mask = torch.ones(B, L, dtype=torch.long, device=device)
        elif B and not bool(attention_mask[:, -1].all()):
            raise ValueError("generate needs left padding: every row's last prompt position "
                             "must be a real token (attention_mask[:, -1] == 1)")
        stops = stop_token_ids if stop_token_ids is not None else self.config.eos_token_id
        stops = [stops] if isinstance(stops, int) else list(stops or [])
        if pad_token_id is None:
            pad_token_id = self.config.pad_token_id
        if pad_token_id is None:
            pad_token_id = stops[0] if stops else 0
        if not 0 <= pad_token_id < self.config.vocab_size:  # ended rows still feed it back
            raise ValueError(f"pad_token_id {pad_token_id} is not a token id "
                             f"(vocab_size {self.config.vocab_size})")
        stops = torch.tensor(stops, dtype=torch.long, device=device)
        out = torch.full((B, 0), pad_token_id, dtype=torch.long, device=device)
        if max_new_tokens == 0 or B == 0:
            return out

        cache = self.new_cache(B, L + max_new_tokens)
        # Without padding no mask is needed at all, which lets SDPA pick its fused kernels.
        mask = None if bool(attention_mask.all()) else attention_mask.long()
        h = self.hidden_states(input_ids, inputs_embeds, mask, cache=cache)[:, -1]
        done = torch.zeros(B, dtype=torch.bool, device=device)
        tokens = []
        for step in range(max_new_tokens):
            logits = self.lm_head(h).float()                             # (B, vocab)
            if do_sample:
                probs = top_p_filter(logits / temperature, top_p).softmax(-1)
                tok = torch.multinomial(probs, 1, generator=generator)[:, 0]
            else:
                tok = logits.argmax(-1)
            tok = torch.where(done, torch.full_like(tok, pad_token_id), tok)
            tokens.append(tok)
            done |= torch.isin(tok, stops)
            if step + 1 == max_new_tokens or bool(done.all()):
                break
            if mask is not None:
                mask = torch.cat((mask, mask.new_ones(B, 1)), dim=1)
            h = self.hidden_states(tok[:, None], attention_mask=mask, cache=cache)[:, -1]
        return torch.stack(tokens, dim=1)

    # ------------------------------------------------------------------------- checkpoints

    @classmethod
    def from_pretrained(cls, folder, dtype=None, device="cpu", strict=True):
        """Loads an HF model folder (config.json + model.safetensors, or shards with an
        index). dtype: torch.float32, bfloat16 or float16; None takes the config's
        torch_dtype, else float32.

        The model is built on the meta device and each parameter is taken from the
        memory-mapped file (zero-copy when the dtype matches on the CPU), so peak memory
        stays near the checkpoint's size. A missing, unexpected or misshapen key is an
        error naming it (and both shapes); nothing is left at random initialisation."""
        hf = read_config(folder)
        cfg = DecoderConfig.from_hf_config(hf)
        # Chat models list their end-of-turn tokens in generation_config.json (Llama-3
        # Instruct: 128001 and 128009), which is what generate should stop on.
        gen_path = os.path.join(folder, "generation_config.json")
        if os.path.isfile(gen_path):
            with open(gen_path, encoding="utf-8") as f:
                gen = json.load(f)
            for key in ("eos_token_id", "pad_token_id"):
                if gen.get(key) is not None:
                    setattr(cfg, key, gen[key])
        if dtype is None:
            dtype = _HF_DTYPES.get(hf.get("torch_dtype") or hf.get("dtype"), torch.float32)
        if dtype not in _HF_DTYPES.values():
            raise TypeError(f"dtype must be one of {list(_HF_DTYPES.values())}, got {dtype}")
        with torch.device("meta"):
            model = cls(cfg)
        ckpt = MappedSafetensors(folder)
        views = {k: ckpt.get(k) for k in ckpt.keys() if not k.endswith(_RECOMPUTED_SUFFIX)}
        if cfg.tie_word_embeddings and "lm_head.weight" in views:
            # Some tied checkpoints store the copy too; it must be the same matrix.
            emb = views.get("model.embed_tokens.weight")
            if emb is None or not torch.equal(views["lm_head.weight"], emb):
                raise CheckpointError(f"{folder!r}: tie_word_embeddings is set but "
                                      f"lm_head.weight differs from model.embed_tokens.weight")
            del views["lm_head.weight"]
        if cfg.tie_word_embeddings and "model.embed_tokens.weight" in views:
            views["lm_head.weight"] = views["model.embed_tokens.weight"]
        check_state_dict(model, views, strict=strict, what=f"{cfg.model_type} decoder")
        tensors = {}
        for k in model.state_dict():
            if k == "lm_head.weight" and cfg.tie_word_embeddings:
                continue
            tensors[k] = ckpt.take(k, dtype, device)
        if cfg.tie_word_embeddings:
            tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"]
        load_into(model, tensors, what=f"{cfg.model_type} decoder", assign=True)
        model.tie_weights()
        return model.eval()

    def save_pretrained(self, folder, max_shard_bytes=5 * 2**30):
        """Writes config.json and the weights as HF does (tied lm_head omitted; sharded with
        an index above max_shard_bytes), each file atomically."""
        sd = self.state_dict()
        if self.config.tie_word_embeddings:
            del sd["lm_head.weight"]
        dtype = self.lm_head.weight.dtype
        save_safetensors_folder(sd, folder, max_shard_bytes=max_shard_bytes)
        write_config(self.config.to_hf_config(dtype=dtype), folder)


def top_p_filter(logits, top_p):  # (B, vocab) float
    """Logits outside the smallest set of most likely tokens whose probability reaches
    top_p become -inf; the most likely token always stays."""
    if top_p >= 1:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(-1)
    outside = probs.cumsum(-1) - probs >= top_p  # the mass before this token already suffices
    outside[:, 0] = False
    sorted_logits = sorted_logits.masked_fill(outside, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)

