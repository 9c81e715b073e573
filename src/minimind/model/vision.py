"""Vision encoders: a picture in, a row of feature vectors ("image tokens") out.

Two kinds, chosen by VisionConfig.encoder:

- "patch": our own small encoder, trained from scratch (nothing to download). A strided
  convolution cuts the image into patch_size x patch_size squares and embeds each one, a
  learned position embedding says where each patch sits, and a few pre-norm transformer
  blocks let the patches see each other. (image_size / patch_size)^2 tokens per image.
- "hf": a SigLIP / SigLIP2 or CLIP vision tower read from a LOCAL transformers directory
  (MiniMind-V uses siglip2-base-p32-256-ve: 8 x 8 = 64 tokens of width 768 per 256 px image).
  Frozen: its weights never train, it always runs in eval mode under no_grad, and it is never
  saved into our weights (config.json names its directory). CLIP's CLS token is dropped, so
  every token is a patch.

preprocess_images() turns PIL images into the tensor an encoder takes, as MiniMind-V does:
RGB, resized straight to image_size x image_size (bilinear; no crop, the aspect ratio is not
kept), scaled to [0, 1], normalised with the encoder's mean and std.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import MiniMindError

IMAGE_PAD = "<|image_pad|>"  # the placeholder token an image's features replace
ENCODERS = ("patch", "hf")


@dataclass
class VisionConfig:
    """The `vision` section of a vision-language model's config.json."""

    encoder: str = "patch"  # "patch" (ours, trained) or "hf" (a frozen transformers tower at `path`)
    path: str | None = None  # hf: the local transformers directory of the tower
    image_size: int = 64  # pixels per side the encoder takes
    patch_size: int = 16
    hidden_size: int = 128  # width of the encoder's tokens (the projector's input)
    image_tokens: int = 16  # tokens per image: (image_size / patch_size)^2
    image_token_id: int = 12  # id of <|image_pad|> in the tokenizer
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    num_layers: int = 2  # patch: transformer blocks
    num_heads: int = 4  # patch: attention heads
    drop_cls: bool = False  # hf: the tower puts a CLS token first (CLIP); it is dropped

    def __post_init__(self):
        problems = []
        if self.encoder not in ENCODERS:
            problems.append(f"encoder must be one of {', '.join(ENCODERS)}, got {self.encoder!r}")
        if self.encoder == "hf" and not self.path:
            problems.append("encoder 'hf' needs `path`, the local directory of the vision tower")
        for name in ("image_size", "patch_size", "hidden_size", "image_tokens", "num_layers", "num_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                problems.append(f"{name} must be a whole number >= 1, got {value!r}")
        if not problems and self.encoder == "patch":
            if self.image_size % self.patch_size:
                problems.append(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
            elif (self.image_size // self.patch_size) ** 2 != self.image_tokens:
                problems.append(
                    f"image_tokens must be (image_size / patch_size)^2 = {(self.image_size // self.patch_size) ** 2}, "
                    f"got {self.image_tokens}"
                )
            if self.hidden_size % self.num_heads:
                problems.append(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        if len(self.mean) != 3 or len(self.std) != 3 or not all(s > 0 for s in self.std):
            problems.append(f"mean and std need 3 values each (std > 0), got {self.mean} and {self.std}")
        if problems:
            raise MiniMindError("invalid vision config: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def for_tower(cls, tower: str | Path, image_token_id: int, info: dict | None = None) -> VisionConfig:
        """The config of a frozen transformers tower at `tower` (its settings read by read_hf_tower
        unless `info` already holds them)."""
        info = info or read_hf_tower(tower)
        keep = ("image_size", "patch_size", "hidden_size", "image_tokens", "mean", "std", "drop_cls")
        return cls(encoder="hf", path=str(tower), image_token_id=image_token_id, **{k: info[k] for k in keep})

    @classmethod
    def from_dict(cls, d: dict, source: str = "config.json") -> VisionConfig:
        if not isinstance(d, dict):
            raise MiniMindError(f"{source}: 'vision' must be an object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise MiniMindError(f"{source}: unknown 'vision' settings {unknown}; known: {', '.join(sorted(known))}")
        try:
            return cls(**d)
        except MiniMindError as e:
            raise MiniMindError(f"{source}: {e}") from None


# ---------------------------------------------------------------------------- our patch encoder


class Block(nn.Module):
    """A pre-norm transformer block: every patch attends to every other (no causal mask)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        B, T, D = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, T, D)
        x = x + self.proj(attn)
        return x + self.mlp(self.norm2(x))


class PatchEncoder(nn.Module):
    """Our own encoder: [N, 3, S, S] -> [N, (S / patch)^2, hidden], trained with the rest."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.patchify = nn.Conv2d(3, cfg.hidden_size, cfg.patch_size, stride=cfg.patch_size)
        # Learned, not fixed: "where is the shape?" must be answerable from the features.
        self.position = nn.Parameter(torch.randn(1, cfg.image_tokens, cfg.hidden_size) * 0.02)
        self.blocks = nn.ModuleList(Block(cfg.hidden_size, cfg.num_heads) for _ in range(cfg.num_layers))
        self.norm = nn.LayerNorm(cfg.hidden_size)

    def forward(self, pixel_values):
        x = self.patchify(pixel_values).flatten(2).transpose(1, 2)  # [N, tokens, hidden], row by row
        x = x + self.position
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


# ---------------------------------------------------------------------------- a frozen transformers tower

# model_type in the tower's config.json -> (transformers class name, has a CLS token first)
HF_TOWERS = {
    "siglip_vision_model": ("SiglipVisionModel", False),
    "siglip": ("SiglipVisionModel", False),
    "clip_vision_model": ("CLIPVisionModel", True),
    "clip": ("CLIPVisionModel", True),
}
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


def read_hf_tower(path: str | Path) -> dict:
    """The settings of a local SigLIP/CLIP vision tower directory (no weights are read):
    {model_type, hidden_size, image_size, patch_size, image_tokens, mean, std, drop_cls}."""
    d = Path(path)
    cfg_file = d / "config.json"
    if not cfg_file.is_file():
        raise MiniMindError(f"{d}: no config.json: not a transformers vision tower directory")
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MiniMindError(f"{cfg_file}: not valid JSON ({e})") from None
    kind = cfg.get("model_type")
    if kind in ("siglip", "clip"):  # a whole SigLIP/CLIP: its vision half
        cfg = cfg.get("vision_config") or {}
    if kind not in HF_TOWERS:
        raise MiniMindError(
            f"{cfg_file}: model_type {kind!r} is not a supported vision tower ({', '.join(HF_TOWERS)}); "
            "SigLIP2 NaFlex towers (siglip2_vision_model) are not supported: use a fixed-resolution one"
        )
    drop_cls = HF_TOWERS[kind][1]
    image_size, patch = cfg.get("image_size", 224), cfg.get("patch_size", 32 if not drop_cls else 16)
    mean, std = ([0.5] * 3, [0.5] * 3) if not drop_cls else (CLIP_MEAN, CLIP_STD)
    pre = d / "preprocessor_config.json"
    if pre.is_file():
        p = json.loads(pre.read_text(encoding="utf-8"))
        mean, std = p.get("image_mean", mean), p.get("image_std", std)
    return {
        "model_type": kind,
        "hidden_size": int(cfg.get("hidden_size", 768)),
        "image_size": int(image_size),
        "patch_size": int(patch),
        "image_tokens": (int(image_size) // int(patch)) ** 2,
        "mean": [float(x) for x in mean],
        "std": [float(x) for x in std],
        "drop_cls": drop_cls,
    }


class HFVisionTower(nn.Module):
    """A frozen SigLIP/CLIP vision tower from a local directory: last_hidden_state (after
    SigLIP's post-LayerNorm; its pooling head is not used), CLS dropped for CLIP."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        try:
            import transformers
        except ImportError:
            raise MiniMindError(
                "a transformers vision tower needs the transformers library: pip install transformers"
            ) from None
        info = read_hf_tower(cfg.path)
        cls = getattr(transformers, HF_TOWERS[info["model_type"]][0])
        self.drop_cls = info["drop_cls"]
        self.tower = cls.from_pretrained(cfg.path)
        self.tower.requires_grad_(False)
        self.tower.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        self.tower.eval()  # frozen: no dropout, whatever the rest of the model does
        return self

    @torch.no_grad()
    def forward(self, pixel_values):
        out = self.tower(pixel_values=pixel_values).last_hidden_state
        return out[:, 1:] if self.drop_cls else out


def build_encoder(cfg: VisionConfig) -> nn.Module:
    return HFVisionTower(cfg) if cfg.encoder == "hf" else PatchEncoder(cfg)


# ---------------------------------------------------------------------------- images to tensors


def preprocess_images(images, image_size: int, mean, std) -> torch.Tensor:
    """PIL images -> float32 [N, 3, image_size, image_size]: RGB (an alpha channel is dropped,
    a grey image repeated), resized straight to the square (bilinear), scaled to [0, 1], then
    (x - mean) / std per channel."""
    from PIL import Image  # (here: only what handles images needs Pillow)

    arrays = []
    for image in images:
        if not isinstance(image, Image.Image):
            raise MiniMindError(f"expected a PIL image, got {type(image).__name__}")
        rgb = image.convert("RGB")
        if rgb.size != (image_size, image_size):
            rgb = rgb.resize((image_size, image_size), Image.Resampling.BILINEAR)
        arrays.append(np.asarray(rgb, dtype=np.float32))
    if not arrays:
        return torch.zeros(0, 3, image_size, image_size)
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 255.0
    m = torch.tensor(mean, dtype=torch.float32)[None, :, None, None]
    s = torch.tensor(std, dtype=torch.float32)[None, :, None, None]
    return ((x - m) / s).contiguous()
