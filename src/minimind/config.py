"""ModelConfig: every number that defines a model's shape, saved as `config.json`.

Field names follow transformers' Qwen3Config (hidden_size, num_key_value_heads, ...) so a
model directory reads naturally to anyone who knows Hugging Face, and export to Qwen3 is a
rename-free copy. Our own fields (qk_norm, use_moe, ...) cover the MiniMind generations.

The presets reproduce the original MiniMind sizes exactly (parameter counts are checked by
tests/test_model.py), plus two small presets for CPU experiments and tests.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import NamedTuple

from .errors import MiniMindError
from .files import read_json_object


@dataclass
class ModelConfig:
    # --- shape (Qwen3Config names) ---
    vocab_size: int = 6400
    hidden_size: int = 768
    intermediate_size: int = 2432  # SwiGLU width
    num_hidden_layers: int = 8
    num_attention_heads: int = 8
    num_key_value_heads: int = 4  # grouped-query attention: heads share K/V in groups
    head_dim: int = 96
    max_position_embeddings: int = 32768
    rope_theta: float = 1e6
    # None, or {"type": "yarn", "factor": 16, "original_max_position_embeddings": 2048,
    #           "beta_fast": 32, "beta_slow": 1, "attention_factor": 1.0}
    rope_scaling: dict | None = None
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = True
    hidden_act: str = "silu"
    attention_bias: bool = False
    # --- ours ---
    qk_norm: bool = True  # per-head RMSNorm on q and k before RoPE (minimind-3 / Qwen3)
    dropout: float = 0.0
    use_moe: bool = False
    num_experts: int = 4  # routed experts per MoE layer
    num_experts_per_tok: int = 1  # top-k
    n_shared_experts: int = 0  # always-on experts (MiniMind2 MoE uses 1)
    moe_intermediate_size: int = 2432
    norm_topk_prob: bool = True  # renormalise the k selected router probabilities
    router_aux_loss_coef: float = 5e-4
    # --- special tokens (MiniMind tokenizer) ---
    bos_token_id: int = 1
    eos_token_id: int = 2
    pad_token_id: int = 0
    model_type: str = "minimind"
    extra: dict = field(default_factory=dict)  # unknown keys found in config.json, kept verbatim

    def __post_init__(self):
        problems = []
        if self.num_attention_heads % self.num_key_value_heads:
            problems.append(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.head_dim % 2:
            problems.append(f"head_dim ({self.head_dim}) must be even for rotary embeddings")
        if self.use_moe and not 1 <= self.num_experts_per_tok <= self.num_experts:
            problems.append(
                f"num_experts_per_tok ({self.num_experts_per_tok}) must be between 1 and "
                f"num_experts ({self.num_experts})"
            )
        if self.hidden_act != "silu":
            problems.append(f"hidden_act {self.hidden_act!r} is not supported (only 'silu')")
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
        ):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        if self.rope_scaling is not None:
            kind = self.rope_scaling.get("type", self.rope_scaling.get("rope_type"))
            if kind != "yarn":
                problems.append(f"rope_scaling type {kind!r} is not supported (only 'yarn')")
        if problems:
            raise MiniMindError("invalid model config: " + "; ".join(problems))

    # ---------------------------------------------------------------- save / load
    def to_dict(self) -> dict:
        d = asdict(self)
        extra = d.pop("extra")
        return {**extra, **d}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> ModelConfig:
        known = {f.name for f in fields(cls)} - {"extra"}
        kwargs = {k: v for k, v in d.items() if k in known}
        extra = {k: v for k, v in d.items() if k not in known}
        try:
            return cls(**kwargs, extra=extra)
        except TypeError as e:
            raise MiniMindError(f"{source}: {e}") from None

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        path = Path(path)
        d = read_json_object(path)
        type_errors = [
            f"{k} should be a number, got {d[k]!r}"
            for k in (
                "vocab_size",
                "hidden_size",
                "intermediate_size",
                "num_hidden_layers",
                "num_attention_heads",
                "num_key_value_heads",
                "head_dim",
            )
            if k in d and (not isinstance(d[k], int) or isinstance(d[k], bool))
        ]
        if type_errors:
            raise MiniMindError(f"{path}: " + "; ".join(type_errors))
        try:
            return cls.from_dict(d, source=str(path))
        except MiniMindError as e:
            msg = str(e)
            raise MiniMindError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None

    # ---------------------------------------------------------------- sizes
    def yarn(self, factor: float = 16.0, original_max_position_embeddings: int = 2048) -> ModelConfig:
        """A copy with MiniMind's YaRN settings, to run on contexts longer than training."""
        d = self.to_dict()
        d["rope_scaling"] = {
            "type": "yarn",
            "factor": factor,
            "original_max_position_embeddings": original_max_position_embeddings,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "attention_factor": 1.0,
        }
        return ModelConfig.from_dict(d)


def minimind3_ffn(hidden: int) -> int:
    """minimind-3's SwiGLU width: ceil(hidden * pi / 64) * 64 (2432 for 768)."""
    return math.ceil(hidden * math.pi / 64) * 64


def minimind2_ffn(hidden: int) -> int:
    """MiniMind2's SwiGLU width: 64 * ceil(int(8 * hidden / 3) / 64) (1408 for 512)."""
    return 64 * math.ceil(int(8 * hidden / 3) / 64)


def _minimind3(hidden=768, layers=8, heads=8, kv_heads=4, ffn_ratio=None, **kw) -> ModelConfig:
    """The minimind-3 layout. The SwiGLU width follows the hidden size: minimind3_ffn, or
    ffn_ratio * hidden for the small CPU presets."""
    ffn = round(hidden * ffn_ratio) if ffn_ratio else minimind3_ffn(hidden)
    return _layout(hidden, layers, heads, kv_heads, ffn, **kw)


def _minimind2(hidden=512, layers=8, heads=8, kv_heads=2, **kw) -> ModelConfig:
    return _layout(hidden, layers, heads, kv_heads, minimind2_ffn(hidden), rms_norm_eps=1e-5, qk_norm=False, **kw)


def _layout(hidden, layers, heads, kv_heads, ffn, **kw) -> ModelConfig:
    """What both layouts share: head_dim = hidden / heads, and one SwiGLU width for the dense
    FFN and for each expert."""
    return ModelConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=hidden // heads,
        intermediate_size=ffn,
        moe_intermediate_size=ffn,
        **kw,
    )


class Preset(NamedTuple):
    """A named size: its layout's builder and the dials it is called with. Keeping the dials
    (rather than a finished config) lets a shape override re-derive what follows from them:
    a new hidden size gets the layout's own FFN width and head_dim = hidden / heads."""

    build: Callable[..., ModelConfig]
    dials: dict
    description: str


PRESETS = {
    "minimind3": Preset(_minimind3, {}, "minimind-3, 63.91M dense (the current MiniMind)"),
    "minimind3-moe": Preset(
        _minimind3,
        dict(use_moe=True, num_experts=4, num_experts_per_tok=1),
        "minimind-3-moe, 198.42M total / 63.94M active, 4 experts top-1",
    ),
    "minimind2-small": Preset(_minimind2, dict(hidden=512, layers=8), "MiniMind2-Small, 25.83M dense"),
    "minimind2": Preset(_minimind2, dict(hidden=768, layers=16), "MiniMind2, 104.03M dense"),
    "minimind2-moe": Preset(
        _minimind2,
        dict(
            hidden=640,
            layers=8,
            use_moe=True,
            num_experts=4,
            num_experts_per_tok=2,
            n_shared_experts=1,
            router_aux_loss_coef=0.01,
        ),
        "MiniMind2-MoE, 145.03M total, 4 routed + 1 shared expert, top-2",
    ),
    # Small presets for CPUs, the quickstart and tests (minimind-3 layout, smaller dials).
    "tiny": Preset(
        _minimind3,
        dict(hidden=256, layers=4, heads=8, kv_heads=4, ffn_ratio=3),
        "about 5M parameters, for CPU experiments",
    ),
    "nano": Preset(
        _minimind3, dict(hidden=128, layers=2, heads=4, kv_heads=2, ffn_ratio=3), "about 1M parameters, for tests"
    ),
    "tiny-moe": Preset(
        _minimind3,
        dict(
            hidden=256, layers=4, heads=8, kv_heads=4, ffn_ratio=3, use_moe=True, num_experts=4, num_experts_per_tok=1
        ),
        "a tiny 4-expert top-1 MoE, for CPU experiments",
    ),
}

# The shape overrides `minimind init`, `pretrain` and `info` accept on top of a preset:
# ModelConfig field -> (flags, help). The first flag is the one error messages name; the
# others are Hugging Face's (and MiniMind's) spellings of the same setting.
SHAPE_FLAGS = {
    "hidden_size": (
        ("--hidden-size",),
        "model width (head_dim = hidden size / heads; the FFN width follows the preset's rule)",
    ),
    "num_hidden_layers": (("--num-layers", "--num-hidden-layers"), "transformer blocks"),
    "num_attention_heads": (("--num-heads", "--num-attention-heads"), "attention heads (must divide the hidden size)"),
    "num_key_value_heads": (
        ("--num-kv-heads", "--num-key-value-heads"),
        "K/V heads for grouped-query attention (must divide the heads)",
    ),
    "use_moe": (("--use-moe",), "mixture-of-experts FFN (--no-moe: dense)"),
    "num_experts": (("--num-experts",), "routed experts per MoE layer"),
    "num_experts_per_tok": (("--experts-per-tok", "--num-experts-per-tok"), "experts each token is routed to (top-k)"),
    "max_position_embeddings": (
        ("--max-position-embeddings", "--context-length"),
        "longest sequence the model takes (prompt + reply)",
    ),
}
# Which builder dial a shape field sets (the others are ModelConfig fields, passed through).
_DIALS = {
    "hidden_size": "hidden",
    "num_hidden_layers": "layers",
    "num_attention_heads": "heads",
    "num_key_value_heads": "kv_heads",
}


def add_shape_args(parser, suppress: bool = False) -> None:
    """The shape flags, in one argument group (`minimind init`, `pretrain` and `info`)."""
    g = parser.add_argument_group("model shape (overrides on top of --preset)")
    default = {"default": argparse.SUPPRESS} if suppress else {"default": None}
    for name, (flags, help_text) in SHAPE_FLAGS.items():
        if name == "use_moe":
            g.add_argument("--use-moe", dest=name, action="store_const", const=True, help=help_text, **default)
            g.add_argument("--no-moe", dest=name, action="store_const", const=False, help="dense FFN", **default)
        else:
            g.add_argument(*flags, dest=name, type=int, metavar="N", help=help_text, **default)


def shape_from_args(args) -> dict:
    """The shape overrides given on the command line, by ModelConfig field name."""
    return {name: getattr(args, name) for name in SHAPE_FLAGS if getattr(args, name, None) is not None}


def describe_shape(shape: dict) -> str:
    """`--hidden-size 512 --num-layers 6`: the overrides as they would be typed."""
    return " ".join(
        SHAPE_FLAGS[k][0][0] if v is True else ("--no-moe" if v is False else f"{SHAPE_FLAGS[k][0][0]} {v}")
        for k, v in shape.items()
    )


def check_shape(shape: dict) -> None:
    """Each override on its own: a known name and a positive whole number (use_moe: a bool)."""
    for name, value in shape.items():
        if name not in SHAPE_FLAGS:
            raise MiniMindError(f"unknown model shape setting {name!r}; choose from: {', '.join(SHAPE_FLAGS)}")
        flag = SHAPE_FLAGS[name][0][0]
        if name == "use_moe":
            if not isinstance(value, bool):
                raise MiniMindError(f"use_moe must be true or false, got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise MiniMindError(f"{flag} must be a positive whole number, got {value!r}")


def _reshape(name: str, p: Preset, shape: dict) -> ModelConfig:
    """The preset built with the overrides, after checking the combination with errors that
    name the flags (a value the user did not give is named as the preset's)."""
    check_shape(shape)
    base = p.build(**p.dials)
    value = {k: shape.get(k, getattr(base, k)) for k in SHAPE_FLAGS}
    flag = {k: SHAPE_FLAGS[k][0][0] + ("" if k in shape else f" (preset {name}: {value[k]})") for k in SHAPE_FLAGS}
    hidden, heads, kv = value["hidden_size"], value["num_attention_heads"], value["num_key_value_heads"]
    problems = []
    if hidden % heads:
        problems.append(
            f"{flag['num_attention_heads']} must divide {flag['hidden_size']}: "
            f"{hidden} / {heads} is not a whole head_dim"
        )
    elif (hidden // heads) % 2:
        problems.append(
            f"head_dim = {hidden} / {heads} = {hidden // heads} must be even (rotary embeddings "
            f"rotate pairs of dimensions): change {flag['hidden_size']} or {flag['num_attention_heads']}"
        )
    if heads % kv:
        problems.append(
            f"{flag['num_key_value_heads']} must divide {flag['num_attention_heads']}: "
            "query heads share K/V heads in equal groups"
        )
    if value["use_moe"]:
        if value["num_experts_per_tok"] > value["num_experts"]:
            problems.append(f"{flag['num_experts_per_tok']} must be at most {flag['num_experts']}")
    else:
        moe_only = [SHAPE_FLAGS[k][0][0] for k in ("num_experts", "num_experts_per_tok") if k in shape]
        if moe_only:
            problems.append(f"{' and '.join(moe_only)} set(s) up experts, but the model is dense: add --use-moe")
    if problems:
        raise MiniMindError("invalid model shape: " + "; ".join(problems))
    dials = dict(p.dials)
    for k, v in shape.items():
        dials[_DIALS.get(k, k)] = v
    return p.build(**dials)


def preset(name: str, *, shape: dict | None = None, tokenizer=None, **overrides) -> ModelConfig:
    """The named preset's config:
    - reshaped by `shape` (the command line's --hidden-size ... overrides, by ModelConfig field
      name), with what follows from them (head_dim, the FFN width) derived by the preset's rules;
    - sized to `tokenizer` when given: its vocabulary and special token ids;
    - with any other field overridden verbatim (e.g. vocab_size=...)."""
    if name not in PRESETS:
        raise MiniMindError(f"unknown preset {name!r}; choose from: {', '.join(PRESETS)}")
    p = PRESETS[name]
    cfg = _reshape(name, p, shape) if shape else p.build(**p.dials)
    if tokenizer is not None:
        overrides = {
            "vocab_size": tokenizer.vocab_size,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            **overrides,
        }
    if overrides:
        cfg = ModelConfig.from_dict({**cfg.to_dict(), **overrides})
    return cfg
