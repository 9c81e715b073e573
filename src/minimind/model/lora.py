"""LoRA: fine-tune a frozen model through small low-rank updates beside chosen linear layers.

A linear layer computes y = W x. LoRA keeps W frozen and learns two small matrices,
A [r, in] and B [out, r] with r << in, out:

    y = W x + (alpha / r) * B A dropout(x)

B starts at zero, so the adapted model starts exactly as the base. Only A and B train (for
minimind-3 at r=8 on every projection: ~0.9% of the parameters), the base file is never
written, and the adapter saves alone:

    ADAPTER/adapter_model.safetensors   `<layer>.lora.A.weight`, `<layer>.lora.B.weight`
    ADAPTER/adapter_config.json         rank, alpha, dropout, targets, the adapted layers and
                                        the base it was trained on (path + fingerprints)

The tensor names are MiniMind's own (`model.layers.0.self_attn.q_proj.lora.A.weight`), so
its `.pth` adapters import by name (export/minimind_lora.py). MiniMind's LoRA is this with
alpha = r (no scaling), no dropout, and only the square layers (q_proj, o_proj) adapted.

`merge` folds the update into W (W' = W + (alpha/r) B A): a plain model again, same outputs,
no extra cost at inference.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from fnmatch import fnmatch
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from ..errors import MiniMindError
from ..files import atomic_write, atomic_write_text, read_json_object, read_safetensors

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
FORMAT = "minimind-lora"
# Every attention and MLP projection (experts' too); the router and lm_head are left alone.
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class LoRAConfig:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    modules: list[str] = field(default_factory=list)  # the adapted layers (filled by add_lora)
    base: dict = field(default_factory=dict)  # base_model, base_shapes_sha256, base_weights_sha256, base_tokenizer

    def __post_init__(self):
        if not (isinstance(self.rank, int) and self.rank >= 1):
            raise MiniMindError(f"LoRA rank must be a whole number >= 1, got {self.rank!r}")
        if not self.alpha > 0:
            raise MiniMindError(f"LoRA alpha must be > 0, got {self.alpha!r}")
        if not 0 <= self.dropout < 1:
            raise MiniMindError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")
        if not self.targets:
            raise MiniMindError("LoRA needs at least one target pattern")


class LoRA(nn.Module):
    """The low-rank update of one linear layer: x -> (alpha / r) * B(A(dropout(x)))."""

    def __init__(
        self, in_features: int, out_features: int, rank: int, alpha: float, dropout: float, device=None, dtype=None
    ):
        super().__init__()
        self.A = nn.Linear(in_features, rank, bias=False, device=device, dtype=dtype)
        self.B = nn.Linear(rank, out_features, bias=False, device=device, dtype=dtype)
        self.scale = alpha / rank
        self.dropout = dropout

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        # A as nn.Linear's own default (Kaiming-uniform), B zero: the update starts at exactly 0
        # while A's random directions give B a gradient from the first step.
        with torch.no_grad():
            bound = 1 / math.sqrt(self.A.in_features)
            self.A.weight.copy_(torch.rand(self.A.weight.shape, generator=generator) * 2 * bound - bound)
            self.B.weight.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dropout and self.training:
            x = F.dropout(x, self.dropout, training=True)
        return self.B(self.A(x)) * self.scale

    def delta_weight(self) -> torch.Tensor:
        """The update as one [out, in] matrix, computed in float32."""
        return (self.B.weight.float() @ self.A.weight.float()) * self.scale


class LoRALinear(nn.Linear):
    """An nn.Linear with a `lora` child. add_lora switches a layer's class to this one (as
    torch.nn.utils.parametrize does), so the layer keeps its weight and its state-dict names
    (`...q_proj.weight` stays, `...q_proj.lora.A.weight` is added); merge switches it back."""

    lora: LoRA

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + self.lora(x)


# ---------------------------------------------------------------------------- attach / detach


def find_targets(model: nn.Module, patterns: list[str]) -> list[str]:
    """Names of the linear layers of the decoder matched by any pattern. A pattern matches a
    layer's last name part (`q_proj`) or its full name as a glob (`model.layers.1.*_proj`).
    A pattern that matches no linear layer is an error: it is almost always a typo."""
    linears = [
        name for name, m in model.named_modules() if isinstance(m, nn.Linear) and name.startswith("model.")
    ]  # not lm_head: it is the (tied) embedding
    chosen = []
    for pattern in patterns:
        hits = [n for n in linears if n.rsplit(".", 1)[-1] == pattern or fnmatch(n, pattern)]
        if not hits:
            leaves = sorted({n.rsplit(".", 1)[-1] for n in linears})
            raise MiniMindError(
                f"LoRA target {pattern!r} matches no linear layer of the model; "
                f"layer names end in {', '.join(leaves)} (e.g. {linears[0]})"
            )
        chosen += [n for n in hits if n not in chosen]
    return [n for n in linears if n in chosen]  # model order, so the init is deterministic


def add_lora(
    model: nn.Module,
    config: LoRAConfig,
    seed: int = 0,
    base_dir: str | Path | None = None,
    modules: list[str] | None = None,
) -> nn.Module:
    """Freeze `model` and attach a fresh (zero-update) LoRA to each targeted layer, in place.
    `modules` gives the exact layers (when loading a saved adapter) instead of `targets`.
    `base_dir` (the model directory the model came from) is recorded so the adapter can
    later refuse a different base. The init depends on `seed` only (the same on every rank)."""
    if has_lora(model):
        raise MiniMindError("the model already has a LoRA adapter (merge it first to stack another)")
    names = modules if modules is not None else find_targets(model, config.targets)
    generator = torch.Generator().manual_seed(seed)
    model.requires_grad_(False)
    for name in names:
        layer = model.get_submodule(name)
        w = layer.weight
        lora = LoRA(layer.in_features, layer.out_features, config.rank, config.alpha, config.dropout)
        lora.reset_parameters(generator)
        layer.lora = lora.to(device=w.device, dtype=w.dtype).train(layer.training)  # no dropout in eval mode
        layer.__class__ = LoRALinear
    config.modules = list(names)
    config.base = base_fingerprint(model, base_dir)
    model.lora_config = config
    return model


def has_lora(model: nn.Module) -> bool:
    return getattr(model, "lora_config", None) is not None


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def trainable_summary(model: nn.Module) -> str:
    """One line for the training log: how small the adapter is."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    cfg = model.lora_config
    return (
        f"LoRA r={cfg.rank} alpha={cfg.alpha:g} on {len(cfg.modules)} layers: {trainable:,} trainable parameters "
        f"({100 * trainable / max(total - trainable, 1):.2f}% of the frozen base)"
    )


@torch.no_grad()
def merge(model: nn.Module) -> nn.Module:
    """Fold every adapter into its layer (W += (alpha/r) B A, summed in float32) and remove
    it: the result is a plain model with the adapted model's outputs."""
    if not has_lora(model):
        raise MiniMindError("the model has no LoRA adapter to merge")
    for layer in lora_layers(model).values():
        w = layer.weight
        w.copy_((w.float() + layer.lora.delta_weight().to(w.device)).to(w.dtype))
        del layer.lora
        layer.__class__ = nn.Linear
    del model.lora_config
    return model


# ---------------------------------------------------------------------------- fingerprints


def base_fingerprint(model: nn.Module, base_dir: str | Path | None = None) -> dict:
    """What identifies the base: every base tensor's name and shape (an adapter cannot apply
    to other shapes), and the sha256 of its weights file (an adapter trained on other weights
    of the same shapes would load but mean nothing)."""
    shapes = {k: list(v.shape) for k, v in model.state_dict().items() if ".lora." not in k}
    info = {"base_shapes_sha256": hashlib.sha256(json.dumps(shapes, sort_keys=True).encode()).hexdigest()}
    if base_dir is not None:
        info["base_model"] = str(Path(base_dir).resolve())
        info["base_weights_sha256"] = file_sha256(Path(base_dir) / "model.safetensors")
    return info


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def check_base(saved: dict, model: nn.Module, base_dir: str | Path | None, source: Path) -> None:
    """Refuse an adapter whose recorded base differs from `model` (and `base_dir`'s file)."""
    now = base_fingerprint(model, None)
    trained_on = f" (trained on {saved['base_model']})" if saved.get("base_model") else ""
    if saved.get("base_shapes_sha256") not in (None, now["base_shapes_sha256"]):
        raise MiniMindError(
            f"{source}: this adapter is for a model of another architecture{trained_on}: "
            "its base's tensor shapes differ from this model's"
        )
    if base_dir is not None and saved.get("base_weights_sha256"):
        sha = file_sha256(Path(base_dir) / "model.safetensors")
        if sha != saved["base_weights_sha256"]:
            raise MiniMindError(
                f"{source}: this adapter was trained on another base{trained_on}: "
                f"{Path(base_dir) / 'model.safetensors'} has sha256 {sha[:12]}..., "
                f"the adapter's base had {saved['base_weights_sha256'][:12]}..."
            )


def check_tokenizer(saved: dict, fingerprint: dict, base_dir: str | Path, source: Path) -> None:
    """Refuse an adapter trained with another tokenizer than `base_dir`'s (`fingerprint` is
    tokenizer_fingerprint of it): the same weights read through other token ids mean other
    text, so the adapter would load and quietly produce nonsense. Adapters that recorded no
    tokenizer (older ones, imported MiniMind ones) are not checked."""
    recorded = saved.get("base_tokenizer")
    if not recorded:
        return
    differ = [part for part, sha in recorded.items() if fingerprint.get(part) != sha]
    if differ:
        trained_on = f" (trained on {saved['base_model']})" if saved.get("base_model") else ""
        raise MiniMindError(
            f"{source}: this adapter was trained with another tokenizer{trained_on}: "
            f"{base_dir}'s tokenizer has another {' and '.join(differ)}; an adapter applies "
            "only to the base and tokenizer it was trained on"
        )


# ---------------------------------------------------------------------------- save / load


def adapter_state_dict(model: nn.Module, state_dict: dict | None = None) -> dict[str, torch.Tensor]:
    """Only the adapter's tensors (from `state_dict`, e.g. one gathered under FSDP)."""
    sd = state_dict if state_dict is not None else model.state_dict()
    return {k: v.detach().cpu().contiguous() for k, v in sd.items() if ".lora." in k}


def save_adapter(model: nn.Module, out_dir: str | Path, state_dict: dict | None = None) -> Path:
    """Write the adapter alone: its tensors and adapter_config.json (each file atomically)."""
    if not has_lora(model):
        raise MiniMindError("the model has no LoRA adapter to save")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sd = adapter_state_dict(model, state_dict)
    atomic_write(out / ADAPTER_WEIGHTS, lambda tmp: save_file(sd, tmp, metadata={"format": "pt"}))
    atomic_write_text(
        out / ADAPTER_CONFIG, json.dumps({"format": FORMAT, **asdict(model.lora_config)}, indent=2) + "\n"
    )
    return out


def read_adapter_config(adapter_dir: str | Path) -> LoRAConfig:
    d = Path(adapter_dir)
    if not d.is_dir():
        raise MiniMindError(f"{d}: LoRA adapter directory not found")
    path = d / ADAPTER_CONFIG
    if not path.is_file():
        hint = " (it is a model directory, not an adapter)" if (d / "config.json").is_file() else ""
        raise MiniMindError(f"{path}: not found: {d} is not a LoRA adapter{hint}")
    raw = read_json_object(path)
    if raw.pop("format", None) != FORMAT:
        raise MiniMindError(f"{path}: not a minimind LoRA adapter config (format should be {FORMAT!r})")
    try:
        cfg = LoRAConfig(**raw)
    except TypeError as e:
        raise MiniMindError(f"{path}: {e}") from None
    except MiniMindError as e:
        raise MiniMindError(f"{path}: {e}") from None
    if not cfg.modules:
        raise MiniMindError(f"{path}: 'modules' lists no adapted layers")
    return cfg


def read_adapter_weights(adapter_dir: str | Path, model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's tensors, checked strictly against the LoRA layers now on `model`: every
    tensor present, none extra, every shape right."""
    path = Path(adapter_dir) / ADAPTER_WEIGHTS
    sd = read_safetensors(path, "adapter weights")
    expected = {k: v.shape for k, v in model.state_dict().items() if ".lora." in k}
    missing, unexpected = sorted(set(expected) - set(sd)), sorted(set(sd) - set(expected))
    problems = [f"missing tensors {', '.join(missing[:3])}"] if missing else []
    problems += [f"unexpected tensors {', '.join(unexpected[:3])}"] if unexpected else []
    problems += [
        f"{k} has shape {tuple(sd[k].shape)}, the model needs {tuple(expected[k])}"
        for k in sorted(set(sd) & set(expected))
        if sd[k].shape != expected[k]
    ]
    if problems:
        raise MiniMindError(f"{path}: adapter does not fit the model: " + "; ".join(problems[:4]))
    return sd


def read_lora_checkpoint(adapter_dir: str | Path, model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors of an adapter saved by a LoRA run that `model` (already carrying its fresh
    LoRA) continues: same base weights and same adapted layers, or an error."""
    d = Path(adapter_dir)
    saved, now = read_adapter_config(d), model.lora_config
    if saved.base.get("base_weights_sha256") != now.base.get("base_weights_sha256"):
        raise MiniMindError(
            f"{d / ADAPTER_CONFIG}: cannot resume: the checkpoint's adapter was trained on "
            f"{saved.base.get('base_model')}, whose weights differ from --init {now.base.get('base_model')}"
        )
    if saved.modules != now.modules:
        raise MiniMindError(
            f"{d / ADAPTER_CONFIG}: cannot resume: the checkpoint adapts other layers than --lora-targets now selects"
        )
    return read_adapter_weights(d, model)


def load_adapter(model: nn.Module, lora_dir: str | Path, base_dir: str | Path | None = None) -> nn.Module:
    """Put a saved adapter on `model` (in place; returns it). With `base_dir` (the directory
    `model` was loaded from) an adapter trained on another base is refused."""
    d = Path(lora_dir)
    cfg = read_adapter_config(d)
    check_base(cfg.base, model, base_dir, d / ADAPTER_CONFIG)
    saved_base = cfg.base
    layers = dict(model.named_modules())
    for name in cfg.modules:
        if type(layers.get(name)) is not nn.Linear:
            raise MiniMindError(f"{d / ADAPTER_CONFIG}: adapted layer {name!r} is not a linear layer of this model")
    add_lora(model, cfg, modules=cfg.modules)
    cfg.base = saved_base  # keep the recorded base (the model itself carries no directory)
    sd = read_adapter_weights(d, model)
    with torch.no_grad():
        for k, v in model.state_dict(keep_vars=True).items():
            if k in sd:
                v.copy_(sd[k])
    return model
