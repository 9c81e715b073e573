"""The vision-language stages, `minimind vlm pretrain` and `minimind vlm sft`, on the one trainer,
and `minimind vlm init` (a vision-language model directory from a language model directory).

Both stages are next-token cross entropy on the assistant turns of image chats (captions for
pretrain, conversations for SFT): LMObjective's loss, with the batch's images passed along.
What differs is which parameters train (--train), with MiniMind-V's defaults:

  vlm pretrain   projector only                               (freeze_llm=2), lr 4e-4
  vlm sft        projector + the first and last LLM layers    (freeze_llm=1), lr 5e-6

The rest is frozen before the optimizer is built (the optimizer holds only what trains), so a
checkpoint's optimizer state resumes exactly, and DDP sees only trained parameters. A batch
with no image still touches the projector (and our encoder, if it trains) with a zero-weight
term, so that every trained parameter gets a gradient on every rank, as DDP requires.

When the encoder does not train (a transformers tower; our patch encoder unless --train names
`encoder` or `all`), every picture of the data is encoded once before the first step and kept
on disk (data/vision_cache.py), in the run's precision and on its device: batches then carry
the encoder's features, the projector and the LLM run as before, and the loss is the one the
pictures would give. --no-feature-cache turns this off (pictures are decoded and encoded in
every batch).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoint import load_model, save_model_dir
from ..config import ModelConfig
from ..data.vision import build_vision_datasets
from ..data.vision_cache import cache_image_features, encoder_fingerprint
from ..errors import MiniMindError
from ..model.losses import next_token_loss_sum
from ..model.vision import IMAGE_PAD, VisionConfig
from ..model.vlm import MiniMindVLM, set_trainable
from ..tokenizer import Tokenizer
from .objectives import LMObjective, packed_attention_mask


def vision_config_of(model_dir) -> VisionConfig:
    """The `vision` section of a model directory's config.json, or a clear error."""
    path = Path(model_dir) / "config.json"
    config = ModelConfig.load(path)
    if "vision" not in config.extra:
        raise MiniMindError(
            f"{path}: not a vision-language model (no 'vision' section); make one with "
            f"`minimind vlm init --lm {model_dir} --encoder patch --out DIR`"
        )
    return VisionConfig.from_dict(config.extra["vision"], str(path))


def parts_of(cfg) -> list[str]:
    """--train as a list (commas allowed: `--train projector,first_last`)."""
    return [p for item in cfg.train for p in item.split(",") if p]


class VLMObjective(LMObjective):
    name = "vlm"
    compiles_well = False  # image features and their positions change from batch to batch

    def build_data(self, cfg, tokenizer):
        return build_vision_datasets(
            cfg.data,
            tokenizer,
            vision_config_of(cfg.init),
            seq_len=cfg.seq_len,
            val_fraction=cfg.val_fraction,
            seed=cfg.seed,
            on_bad_record=cfg.on_bad_record,
            random_system_prompt=cfg.random_system_prompt,
            strip_empty_think=cfg.strip_empty_think,
        )

    def setup(self, ctx) -> None:
        if not isinstance(ctx.model, MiniMindVLM):
            raise MiniMindError(f"{ctx.cfg.init}: not a vision-language model")
        counts = set_trainable(ctx.model, parts_of(ctx.cfg))
        self.touch = [p for m in (ctx.model.projector, ctx.model.vision) for p in m.parameters() if p.requires_grad]
        if ctx.dist.is_main:
            total = sum(p.numel() for p in ctx.model.parameters() if p.requires_grad)
            shown = ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in counts.items())
            print(f"training {total / 1e6:.2f}M parameters ({shown}); the rest is frozen", flush=True)
        frozen = not any(p.requires_grad for p in ctx.model.vision.parameters())
        if frozen and ctx.cfg.feature_cache:
            self.cache_features(ctx)

    def cache_features(self, ctx) -> None:
        """The frozen encoder's features of every picture of the data, from the disk cache (built
        here if missing), served by the datasets in place of pixels. They are computed as the
        loss would compute them: on the run's device, under its autocast, in the encoder's mode."""
        model = ctx.model

        def encode(pixel_values):
            with torch.no_grad(), ctx.autocast():
                return model.vision_features(pixel_values.to(ctx.device))

        chats = ctx.train_ds.chats
        features, report = cache_image_features(
            chats,
            encode,
            model.vision_config,
            encoder_fingerprint(model.vision),
            {"device": ctx.device.type, "dtype": str(ctx.dtype).removeprefix("torch.")},
            cache_dir=ctx.cfg.cache_dir,
        )
        for ds in (ctx.train_ds, ctx.val_ds):
            if ds is not None:
                ds.use_features(features)
        if ctx.dist.is_main and report["images"]:
            print("image features: " + describe_feature_cache(report), flush=True)

    def loss_sum(self, model, batch: dict):
        out = model(
            batch["input_ids"],
            attention_mask=packed_attention_mask(batch),
            position_ids=batch["position_ids"],
            pixel_values=batch.get("pixel_values"),
            image_features=batch.get("image_features"),
        )
        ce = next_token_loss_sum(out.logits, batch["labels"])
        aux = out.aux_loss
        images = "pixel_values" in batch or "image_features" in batch
        if not images and self.touch:  # see the module docstring (DDP)
            aux = aux + 0.0 * sum(p.sum() for p in self.touch)
        return ce, aux, {}

    def describe_data(self, cfg, train_ds, val_ds) -> str:
        s = train_ds.stats
        return (
            f"{len(train_ds)} rows of {cfg.seq_len} tokens from {s['docs']} image chats ({s['images']} images in all "
            f"files), {s['padding_fraction'] * 100:.1f}% padding"
            + (f", {s['truncated']} truncated" if s["truncated"] else "")
            + (f", {s['skipped']} bad records skipped" if s["skipped"] else "")
            + (f", {len(val_ds)} validation rows" if val_ds is not None else "")
        )


def describe_feature_cache(report: dict) -> str:
    """The one line saying where a run's image features came from."""

    def size(n):
        return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.1f} MB"

    parts = []
    if report["encoded"]:
        parts.append(f"{report['encoded']} images encoded once ({report['seconds']:.1f} s)")
    if report["waited"]:
        parts.append(f"{report['waited']} images encoded once by another process")
    if report["reused"]:
        parts.append(f"{report['reused']} images reused from the cache")
    return (
        ", ".join(parts) + f"; {size(report['bytes'])} of frozen-encoder features in {report['root']} "
        "(--no-feature-cache: encode every batch)"
    )


# ---------------------------------------------------------------------------- minimind vlm init


def init_vlm(
    lm_dir,
    encoder: str,
    out,
    image_size: int = 64,
    patch_size: int = 16,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    seed: int = 42,
    force: bool = False,
) -> tuple[Path, MiniMindVLM]:
    """A vision-language model directory: the language model of `lm_dir` (its weights and
    tokenizer), a new projector, and `encoder`: "patch" (our encoder, new) or the local
    directory of a SigLIP/CLIP vision tower (frozen, referenced by its absolute path)."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise MiniMindError(f"{out}: directory exists and is not empty (use --force to overwrite)")
    lm = load_model(lm_dir)
    if isinstance(lm, MiniMindVLM):
        raise MiniMindError(f"{lm_dir}: already a vision-language model; --lm takes a language model directory")
    tokenizer = Tokenizer.from_dir(lm_dir)
    pad = tokenizer.token_to_id(IMAGE_PAD)
    if pad is None:
        raise MiniMindError(f"{lm_dir}: the tokenizer has no {IMAGE_PAD} token, which images need")
    if encoder == "patch":
        tokens = (image_size // patch_size) ** 2
        vision = VisionConfig(
            encoder="patch",
            image_size=image_size,
            patch_size=patch_size,
            hidden_size=hidden_size,
            image_tokens=tokens,
            image_token_id=pad,
            num_layers=num_layers,
            num_heads=num_heads,
        )
    else:
        tower = Path(encoder).resolve()
        vision = VisionConfig.for_tower(tower, pad)
    torch.manual_seed(seed)  # the projector's (and our encoder's) initialisation
    model = MiniMindVLM(lm.config, vision)
    model.lm.load_state_dict(lm.state_dict())
    save_model_dir(model, out, tokenizer)
    return out, model


def cmd_init(args) -> None:
    out, model = init_vlm(
        args.lm,
        args.encoder,
        args.out,
        image_size=args.image_size,
        patch_size=args.patch_size,
        hidden_size=args.hidden_size,
        num_layers=args.num_layers,
        num_heads=args.num_heads,
        seed=args.seed,
        force=args.force,
    )
    v = model.vision_config
    enc = sum(p.numel() for p in model.vision.parameters())
    proj = sum(p.numel() for p in model.projector.parameters())
    print(
        f"wrote {out}: {args.lm} + {'our patch encoder' if v.encoder == 'patch' else 'the frozen tower ' + v.path} "
        f"({enc / 1e6:.2f}M) + projector ({proj / 1e6:.2f}M); {v.image_tokens} tokens per {v.image_size} px image"
    )
