"""Import a LoRA adapter `.pth` saved by the original MiniMind (`train_lora.py`) onto a base.

    minimind import minimind-lora out/lora_identity_768.pth --base models/sft --out models/identity

MiniMind's file (model/model_lora.py `save_lora`) is a plain state dict of the adapters of
every square linear layer (q_proj and o_proj in minimind-3), usually in fp16:

    model.layers.0.self_attn.q_proj.lora.A.weight   [r, in]    x -> A x
    model.layers.0.self_attn.q_proj.lora.B.weight   [out, r]   -> B A x, added unscaled

Our adapter uses the same names and shapes; MiniMind adds B A x without a scale, which is
alpha = r in our (alpha / r) B A x. The result is an ordinary adapter directory bound to
--base (`minimind chat --model BASE --lora OUT`, `minimind lora merge`, serve, eval).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import load_model
from ..errors import MiniMindError
from ..model.lora import LoRAConfig, add_lora, lora_layers, save_adapter
from .common import prepare_out_dir
from .minimind_pth import load_pth

_KEY = re.compile(r"^(?P<module>.+)\.lora\.(?P<part>[AB])\.weight$")


def group_adapter_tensors(sd: dict[str, torch.Tensor], source: str) -> dict[str, dict[str, torch.Tensor]]:
    """{module name: {"A": tensor, "B": tensor}}; anything that is not an A/B pair is an error."""
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    others = []
    for key, value in sd.items():
        m = _KEY.match(key)
        if m:
            pairs.setdefault(m["module"], {})[m["part"]] = value
        else:
            others.append(key)
    if not pairs:
        hint = " (it looks like a whole model: use `minimind import minimind-pth`)" if others else ""
        raise MiniMindError(f"{source}: holds no LoRA tensors (`<layer>.lora.A.weight` / `.lora.B.weight`){hint}")
    if others:
        raise MiniMindError(f"{source}: unexpected non-LoRA tensors {', '.join(others[:3])}")
    for module, parts in pairs.items():
        if set(parts) != {"A", "B"}:
            missing = "B" if "A" in parts else "A"
            raise MiniMindError(f"{source}: {module}.lora.{missing}.weight is missing")
    return pairs


def import_minimind_lora(path: str | Path, base_dir: str | Path, out_dir: str | Path, force: bool = False) -> dict:
    """Check a MiniMind LoRA `.pth` against the base model and write it as an adapter directory."""
    source = str(path)
    pairs = group_adapter_tensors(load_pth(path), source)
    model = load_model(base_dir)
    layers = dict(model.named_modules())
    ranks = set()
    for module, parts in sorted(pairs.items()):
        layer = layers.get(module)
        if type(layer) is not nn.Linear:
            raise MiniMindError(
                f"{source}: {module} is not a linear layer of {base_dir} (an adapter for another model?)"
            )
        a, b = parts["A"], parts["B"]
        rank = a.shape[0]
        if a.dim() != 2 or b.dim() != 2 or a.shape[1] != layer.in_features or b.shape != (layer.out_features, rank):
            raise MiniMindError(
                f"{source}: {module}: A {tuple(a.shape)} and B {tuple(b.shape)} do not fit a "
                f"{layer.in_features} -> {layer.out_features} layer with rank {rank} "
                f"(an adapter for another model size?)"
            )
        ranks.add(rank)
    if len(ranks) > 1:
        raise MiniMindError(f"{source}: layers have different ranks {sorted(ranks)}; one rank per adapter is supported")
    rank = ranks.pop()
    modules = [name for name in layers if name in pairs]  # model order
    config = LoRAConfig(
        rank=rank,
        alpha=float(rank),
        dropout=0.0,  # alpha = r: MiniMind adds B A x unscaled
        targets=sorted({m.rsplit(".", 1)[-1] for m in modules}),
    )
    add_lora(model, config, base_dir=base_dir, modules=modules)
    with torch.no_grad():
        for name, layer in lora_layers(model).items():
            layer.lora.A.weight.copy_(pairs[name]["A"].float())
            layer.lora.B.weight.copy_(pairs[name]["B"].float())
    out = prepare_out_dir(out_dir, force)
    save_adapter(model, out)
    return {
        "out": out,
        "rank": rank,
        "layers": len(modules),
        "targets": config.targets,
        "dtype": str(next(iter(pairs.values()))["A"].dtype).replace("torch.", ""),
    }
