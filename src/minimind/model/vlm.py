"""The vision-language model: our language model, taught to see (MiniMind-V's design).

    image --vision encoder--> [tokens, enc_hidden] --projector--> [tokens, hidden]
    text: "<image>\\nWhat colour is it?" -> image_tokens x <|image_pad|> + the question's tokens
    the pad tokens' embeddings are replaced by the projected features, row for row;
    then the plain language model runs on the sequence.

State-dict names: `lm.` + the language model's own (HF-compatible) names, `vision.` for the
encoder, `projector.` for the projector. A frozen transformers tower (`vision.tower.*`) is never
saved: `unsaved_prefixes` tells checkpoint.py to leave it out and to take it from the tower's
own directory when loading.

Images enter at prefill only (`pixel_values`, or `image_features`: the encoder's output
computed beforehand, as the trainer's feature cache of a frozen encoder gives it; the projector
runs on them all the same); decode steps are the plain LM. Every maximal run
of <|image_pad|> holds whole images of exactly image_tokens tokens each (two adjacent
images make one run of 2 x image_tokens), and the images fill them in row-major order:
row 0's images left to right, then row 1's, ... One vectorised masked_scatter does it (no
Python loop per token, unlike MiniMind-V, whose loop breaks on adjacent images).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..errors import MiniMindError
from .minimind import CausalLMOutput, MiniMindForCausalLM
from .vision import VisionConfig, build_encoder, preprocess_images


class Projector(nn.Module):
    """LayerNorm -> Linear -> GELU -> Linear, per token (MiniMind-V's vision_proj)."""

    def __init__(self, in_dim: int, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.fc1 = nn.Linear(in_dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


class MiniMindVLM(nn.Module):
    """A MiniMindForCausalLM (`.lm`), a vision encoder (`.vision`) and a projector (`.projector`).

    `.config` is the language model's ModelConfig; its `extra["vision"]` holds the vision
    settings (`.vision_config`), so config.json gains a `vision` section and nothing else.
    """

    lm_prefix = "lm."  # where the LM's names start in this state dict (checkpoint.py)

    def __init__(self, config: ModelConfig, vision_config: VisionConfig | None = None, base_dir=None):
        super().__init__()
        if vision_config is None:
            vision_config = VisionConfig.from_dict(config.extra.get("vision"))
        if vision_config.encoder == "hf" and base_dir is not None and not Path(vision_config.path).is_absolute():
            # A relative tower path is relative to the model directory; kept absolute from here
            # on, so a checkpoint written elsewhere still finds the tower.
            vision_config = replace(vision_config, path=str((Path(base_dir) / vision_config.path).resolve()))
        config.extra["vision"] = vision_config.to_dict()
        self.config, self.vision_config = config, vision_config
        self.lm = MiniMindForCausalLM(config)
        self.vision = build_encoder(vision_config)
        self.projector = Projector(vision_config.hidden_size, config.hidden_size)
        # The frozen tower comes from its own directory, never from our weights file.
        self.unsaved_prefixes = ("vision.tower.",) if vision_config.encoder == "hf" else ()

    # The trainer and FSDP reach the decoder as model.model (layers, gradient checkpointing).
    @property
    def model(self):
        return self.lm.model

    @property
    def device(self) -> torch.device:
        return self.lm.device

    def init_weights(self, seed: int | None = None) -> MiniMindVLM:
        """The LM's initialisation; the encoder (if ours) and projector keep PyTorch's defaults
        except the patch encoder's position table (already N(0, 0.02))."""
        self.lm.init_weights(seed)
        return self

    def new_cache(self, batch_size: int, capacity: int):
        return self.lm.new_cache(batch_size, capacity)

    def preprocess(self, images) -> torch.Tensor:
        """PIL images -> [N, 3, S, S] as this model's encoder expects them."""
        v = self.vision_config
        return preprocess_images(images, v.image_size, v.mean, v.std)

    def vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[N, 3, S, S] -> the encoder's features [N, image_tokens, enc_hidden] (before the
        projector): what the trainer caches for a frozen encoder."""
        v = self.vision_config
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != (3, v.image_size, v.image_size):
            raise MiniMindError(
                f"pixel_values must be [N, 3, {v.image_size}, {v.image_size}], got {tuple(pixel_values.shape)}"
            )
        weight = next(self.vision.parameters())
        features = self.vision(pixel_values.to(device=weight.device, dtype=weight.dtype))
        if features.shape[1] != v.image_tokens:
            raise MiniMindError(
                f"the vision encoder gives {features.shape[1]} tokens per image, config.json says "
                f"image_tokens {v.image_tokens}"
            )
        return features

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[N, 3, S, S] -> projected features [N, image_tokens, hidden]."""
        return self.projector(self.vision_features(pixel_values))

    def project_features(self, image_features: torch.Tensor) -> torch.Tensor:
        """The encoder's features [N, image_tokens, enc_hidden], computed beforehand -> projected
        features [N, image_tokens, hidden]. Their dtype is kept (the projector gets what the
        encoder gave), so the result is the one encode_images gives for the same pictures."""
        v = self.vision_config
        if image_features.dim() != 3 or tuple(image_features.shape[1:]) != (v.image_tokens, v.hidden_size):
            raise MiniMindError(
                f"image_features must be [N, {v.image_tokens}, {v.hidden_size}], got {tuple(image_features.shape)}"
            )
        return self.projector(image_features.to(self.projector.fc1.weight.device))

    def embed(
        self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None, image_features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Token embeddings with every <|image_pad|> run filled by its image's features (from
        `pixel_values`, or from the encoder's `image_features` computed beforehand)."""
        h = self.lm.model.embed_tokens(input_ids)
        if pixel_values is not None and image_features is not None:
            raise MiniMindError("give the images as pixel_values or as image_features, not both")
        images = pixel_values if pixel_values is not None else image_features
        if images is None:
            return h
        v = self.vision_config
        is_image = input_ids == v.image_token_id
        n_images, T = images.shape[0], v.image_tokens
        found = int(is_image.sum())
        if found != n_images * T:
            raise MiniMindError(
                f"the input has {found} <|image_pad|> tokens (id {v.image_token_id}) but {n_images} image(s) "
                f"need {n_images} x {T} = {n_images * T}"
            )
        if n_images == 0:
            return h
        # Image k owns the k-th group of T pad tokens in row-major order: check each group is
        # one unbroken stretch of one row (else a run was cut, e.g. by truncation).
        where = is_image.flatten().nonzero().squeeze(1).view(n_images, T)
        L = input_ids.shape[1]
        broken = (where[:, -1] - where[:, 0] != T - 1) | (where[:, 0] // L != where[:, -1] // L)
        if bool(broken.any()):
            k = int(broken.nonzero()[0])
            raise MiniMindError(
                f"image {k}'s {T} <|image_pad|> tokens are not one unbroken run: a run of pad tokens "
                f"must hold whole images of {T} tokens each"
            )
        if pixel_values is not None:
            features = self.encode_images(pixel_values)
        else:
            features = self.project_features(image_features)
        return h.masked_scatter(is_image[..., None], features.to(h.dtype))

    def forward(
        self,
        input_ids,
        attention_mask=None,
        position_ids=None,
        cache=None,
        labels=None,
        logits_to_keep: int = 0,
        pixel_values=None,
        image_features=None,
    ) -> CausalLMOutput:
        """As MiniMindForCausalLM.forward, plus `pixel_values` [N_images, 3, S, S]: every image
        of the batch in row-major order (None on decode steps and for text-only input), or
        instead `image_features` [N_images, image_tokens, enc_hidden], the encoder's output for
        them computed beforehand (the trainer's feature cache)."""
        has_images = pixel_values is not None or image_features is not None
        embeds = self.embed(input_ids, pixel_values, image_features) if has_images else None
        return self.lm(
            input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            labels=labels,
            logits_to_keep=logits_to_keep,
            inputs_embeds=embeds,
        )


# ---------------------------------------------------------------------------- which parameters train

# --train parts: projector; first_last (LLM layers 0 and -1, MiniMind-V's freeze_llm=1); llm (the
# whole language model); encoder (our patch encoder; a transformers tower is always frozen);
# all (everything that can train: projector, llm and our encoder).
TRAIN_PARTS = ("projector", "first_last", "llm", "encoder", "all")


def set_trainable(model: MiniMindVLM, parts) -> dict[str, int]:
    """Freeze everything, then unfreeze the named parts. Returns {part: trainable parameters}."""
    parts = set(parts)
    unknown = parts - set(TRAIN_PARTS)
    if unknown:
        raise MiniMindError(f"unknown --train part(s) {sorted(unknown)}; choose from: {', '.join(TRAIN_PARTS)}")
    own_encoder = model.vision_config.encoder == "patch"
    if "encoder" in parts and not own_encoder:
        raise MiniMindError("--train encoder: a transformers vision tower stays frozen; only our patch encoder trains")
    if "all" in parts:
        parts |= {"projector", "llm"} | ({"encoder"} if own_encoder else set())
    model.requires_grad_(False)
    chosen = {"projector": [model.projector]}
    chosen["llm"] = [model.lm]
    layers = model.lm.model.layers
    chosen["first_last"] = [layers[0], layers[-1]]
    chosen["encoder"] = [model.vision]
    counts = {}
    for part in ("projector", "first_last", "llm", "encoder"):
        if part in parts:
            for module in chosen[part]:
                module.requires_grad_(True)
            counts[part] = sum(p.numel() for m in chosen[part] for p in m.parameters())
    return counts
