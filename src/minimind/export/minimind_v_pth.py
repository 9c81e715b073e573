"""Import MiniMind-V (minimind-3v) `.pth` weights into a vision-language model directory.

    minimind import minimind-v-pth sft_vlm_768.pth --encoder model/siglip2-base-p32-256-ve \\
        --tokenizer TOKDIR --out models/minimind-3v

A MiniMind-V `.pth` holds the language model (MiniMind's names: model.*, lm_head.weight) and
the projector (vision_proj.mlp.0 LayerNorm, .1 Linear, .3 Linear); the SigLIP2 tower is not in
it (any `vision_encoder.*` tensors are ignored: the tower is read from --encoder, the local
directory of the siglip2-base-p32-256-ve tower the user downloaded, and referenced by
config.json). Strict: every projector tensor must be there with the shapes the tower and the
language model need, and nothing else may be; the language model goes through the text
import's checks (export/minimind_pth.py).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..checkpoint import save_model_dir
from ..errors import MiniMindError
from ..model.vision import IMAGE_PAD, VisionConfig, read_hf_tower
from ..model.vlm import MiniMindVLM
from ..tokenizer import Tokenizer
from .common import build_model, parse_dtype, prepare_out_dir, stored_dtype
from .minimind_pth import infer_config, load_pth

# MiniMind-V's projector names -> ours (model/vlm.py Projector)
PROJECTOR_NAMES = {
    "vision_proj.mlp.0.weight": "norm.weight",
    "vision_proj.mlp.0.bias": "norm.bias",
    "vision_proj.mlp.1.weight": "fc1.weight",
    "vision_proj.mlp.1.bias": "fc1.bias",
    "vision_proj.mlp.3.weight": "fc2.weight",
    "vision_proj.mlp.3.bias": "fc2.bias",
}
MINIMIND_V_IMAGE_ID = 12  # <|image_pad|> in MiniMind's tokenizer


def split_state_dict(sd: dict, source: str) -> tuple[dict, dict]:
    """(language model tensors, projector tensors under our names); the tower's are dropped."""
    sd = {k: v for k, v in sd.items() if not k.startswith("vision_encoder.")}
    proj = {k: sd.pop(k) for k in list(sd) if k.startswith("vision_proj.")}
    missing = sorted(set(PROJECTOR_NAMES) - set(proj))
    unexpected = sorted(set(proj) - set(PROJECTOR_NAMES))
    if missing or unexpected:
        what = "; ".join(
            part
            for part in (
                f"missing {', '.join(missing)}" if missing else "",
                f"unexpected {', '.join(unexpected[:4])}" if unexpected else "",
            )
            if part
        )
        hint = " (is this a MiniMind-V minimind-3v file? older ones used one Linear or a 4:1 merge)"
        raise MiniMindError(f"{source}: projector tensors do not match MiniMind-V's: {what}{hint}")
    return sd, {PROJECTOR_NAMES[k]: v for k, v in proj.items()}


def import_minimind_v_pth(
    path,
    out,
    encoder,
    tokenizer=None,
    preset_name: str | None = None,
    dtype: str | None = None,
    force: bool = False,
    **flags,
) -> tuple[Path, MiniMindVLM]:
    """Convert a MiniMind-V `.pth` into a vision-language model directory that uses the SigLIP
    tower at `encoder`. Returns (directory, model)."""
    source = str(path)
    target = parse_dtype(dtype)
    tok = Tokenizer.from_dir(tokenizer) if tokenizer is not None else None
    tower = Path(encoder).resolve()
    info = read_hf_tower(tower)
    lm_sd, proj_sd = split_state_dict(load_pth(path), source)
    config = infer_config(lm_sd, source, preset_name, **flags)
    image_id = MINIMIND_V_IMAGE_ID
    if tok is not None:
        image_id = tok.token_to_id(IMAGE_PAD)
        if image_id is None:
            raise MiniMindError(f"{tokenizer}: the tokenizer has no {IMAGE_PAD} token, which images need")
        if tok.vocab_size > config.vocab_size:
            raise MiniMindError(f"{tokenizer}: {tok.vocab_size} tokens but {source} has {config.vocab_size} embeddings")
        config = replace(
            config, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
        )
    for name, want in (
        ("norm.weight", (info["hidden_size"],)),
        ("fc1.weight", (config.hidden_size, info["hidden_size"])),
        ("fc2.weight", (config.hidden_size, config.hidden_size)),
    ):
        got = tuple(proj_sd[name].shape)
        if got != want:
            inv = {v: k for k, v in PROJECTOR_NAMES.items()}
            raise MiniMindError(
                f"{source}: {inv[name]} has shape {got}; the tower at {tower} (width {info['hidden_size']}) and the "
                f"language model (hidden {config.hidden_size}) need {want}"
            )
    if config.tie_word_embeddings:
        lm_sd.pop("lm_head.weight", None)
    keep = target or stored_dtype({**lm_sd, **proj_sd})
    lm = build_model(config, lm_sd, source)
    vision = VisionConfig.for_tower(tower, image_id, info)
    model = MiniMindVLM(config, vision)
    model.lm.load_state_dict(lm.state_dict(), strict=True)
    model.projector.load_state_dict({k: v.float() for k, v in proj_sd.items()}, strict=True)
    out_dir = prepare_out_dir(out, force)
    save_model_dir(model.eval(), out_dir, tok, dtype=keep)
    return out_dir, model
