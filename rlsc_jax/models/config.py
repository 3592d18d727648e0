"""Decoder configuration, parsed from a Hugging Face `config.json` (Qwen2 and Llama families)."""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any

SUPPORTED_MODEL_TYPES = ("qwen2", "llama")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shapes and numerics of a Qwen2/Llama decoder; one module serves both (Llama = no QKV bias)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    attention_bias: bool = True
    max_position_embeddings: int = 32768
    model_type: str = "qwen2"

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_attention_heads={self.num_heads} is not a multiple of num_key_value_heads={self.num_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for rotary embeddings")

    @property
    def matmul_params(self) -> dict[str, int]:
        """Weights that multiply every token: "layers", the decoder layers' projections (q, k, v, o, gate, up,
        down), and "lm_head", V x E (the tied embedding counts here: it is the output projection). The input
        embedding is a gather and biases and norms are no matmul, so none of them counts."""
        e, h, kv, d, m = self.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim, self.intermediate_size
        layer = e * (h + 2 * kv) * d + h * d * e + 3 * e * m
        return {"layers": self.num_layers * layer, "lm_head": e * self.vocab_size}

    @property
    def num_params(self) -> int:
        """Parameter count (embedding counted once when tied): the matmul weights, the input embedding unless
        tied, the q/k/v biases and the norms."""
        e, kv_h = self.hidden_size, self.num_heads + 2 * self.num_kv_heads
        per_layer = int(self.attention_bias) * kv_h * self.head_dim + 2 * e  # biases, two norms
        embed = 0 if self.tie_word_embeddings else self.vocab_size * e
        return sum(self.matmul_params.values()) + embed + self.num_layers * per_layer + e  # + the final norm

    def matmul_flops(self, rows: int, width: int, *, train: bool = False, causal: bool = False) -> int:
        """FLOPs of the matmuls of one pass over [rows, width] tokens that makes every position's logits:
        2 x matmul parameters x tokens, plus 4 x layers x rows x heads x width^2 x head_dim for QK^T and PV over
        the full square (halved when `causal` counts only the lower triangle); `train` (forward and backward)
        is 3x that. Norms, RoPE, softmax and SiLU are left out; so is remat's recomputation."""
        tokens = rows * width
        attention = 4 * self.num_layers * rows * self.num_heads * width * width * self.head_dim // (2 if causal else 1)
        forward = 2 * sum(self.matmul_params.values()) * tokens + attention
        return 3 * forward if train else forward

    @classmethod
    def from_hf(cls, hf: dict[str, Any], source: str = "config.json") -> "ModelConfig":
        """Builds the config from an HF config dict; unsupported architectures, rope scaling and ill-typed
        fields are one-line ValueErrors naming `source` and the field."""
        if not isinstance(hf, dict):
            raise ValueError(f"{source}: expected a JSON object, got {type(hf).__name__}")
        model_type = hf.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"{source}: unsupported model_type {model_type!r} (supported: {', '.join(SUPPORTED_MODEL_TYPES)})")
        rope, scaling = _mapping(hf, "rope_parameters", source), _mapping(hf, "rope_scaling", source)
        for rope_type in (rope.get("rope_type"), scaling.get("rope_type", scaling.get("type"))):
            if rope_type not in (None, "default"):
                raise ValueError(f"{source}: unsupported rope scaling {rope_type!r} (only default RoPE is implemented)")
        if hf.get("use_sliding_window"):
            raise ValueError(f"{source}: use_sliding_window=true is not supported")
        if hf.get("hidden_act", "silu") != "silu":
            raise ValueError(f"{source}: unsupported hidden_act {hf.get('hidden_act')!r} (only silu)")
        if model_type == "llama" and hf.get("attention_bias"):
            raise ValueError(f"{source}: attention_bias=true is not supported for llama (it biases o_proj too)")
        if hf.get("mlp_bias"):
            raise ValueError(f"{source}: mlp_bias=true is not supported")
        field = functools.partial(_field, hf, source)
        heads, hidden = field("num_attention_heads", int), field("hidden_size", int)
        rope_theta = rope["rope_theta"] if "rope_theta" in rope else hf.get("rope_theta", 10000.0)
        return cls(
            vocab_size=field("vocab_size", int),
            hidden_size=hidden,
            intermediate_size=field("intermediate_size", int),
            num_layers=field("num_hidden_layers", int),
            num_heads=heads,
            num_kv_heads=field("num_key_value_heads", int, heads),
            head_dim=field("head_dim", int, hidden // heads),
            rope_theta=_typed(rope_theta, float, "rope_theta", source),
            rms_norm_eps=field("rms_norm_eps", float, 1e-6),
            tie_word_embeddings=field("tie_word_embeddings", bool, False),
            attention_bias=model_type == "qwen2",
            max_position_embeddings=field("max_position_embeddings", int, 32768),
            model_type=model_type,
        )

    @classmethod
    def from_file(cls, path: str | Path) -> "ModelConfig":
        """Reads `config.json` (or the directory holding it)."""
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: config.json not found")
        try:
            hf = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: invalid JSON ({e})") from None
        return cls.from_hf(hf, source=str(path))

    def to_hf(self) -> dict[str, Any]:
        """The HF `config.json` fields this config determines (a Qwen2/Llama config transformers loads)."""
        hf = {
            "architectures": ["Qwen2ForCausalLM" if self.model_type == "qwen2" else "LlamaForCausalLM"],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta},
            "tie_word_embeddings": self.tie_word_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
        }
        if self.model_type == "llama":
            hf.update(attention_bias=False, mlp_bias=False)
        return hf


def _typed(value: Any, kind: type, key: str, source: str):
    """`value` as `kind` (ints must be whole and positive); a one-line ValueError naming the field otherwise."""
    ok = isinstance(value, bool) if kind is bool else (
        isinstance(value, (int, float)) and not isinstance(value, bool)
        and (kind is float or (float(value).is_integer() and value > 0)))
    if not ok:
        raise ValueError(f"{source}: field {key!r} must be {'a positive integer' if kind is int else 'a ' + kind.__name__}"
                         f", got {value!r}")
    return kind(value)


def _field(hf: dict[str, Any], source: str, key: str, kind: type, default: Any = dataclasses.MISSING):
    """hf[key] checked as `kind`; missing required keys and null optional ones are handled like HF does."""
    value = hf.get(key)
    if value is None:
        if default is dataclasses.MISSING:
            raise ValueError(f"{source}: missing key {key!r}")
        return default
    return _typed(value, kind, key, source)


def _mapping(hf: dict[str, Any], key: str, source: str) -> dict[str, Any]:
    """An optional nested object (rope settings) as a dict; anything but an object or null is an error."""
    value = hf.get(key) or {}
    if not isinstance(value, dict):
        raise ValueError(f"{source}: field {key!r} must be an object or null, got {value!r}")
    return value
