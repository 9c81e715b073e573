"""Checkpoints that make a run impossible to lose.

    OUT/checkpoints/step-00000100/          a complete model directory (chat with it, eval it)
        config.json  model.safetensors  tokenizer.json  tokenizer_config.json
        train_state/state.json              step, epoch, position in the data, the run's settings
        train_state/optimizer.pt            AdamW moments (+ grad scaler), tensors only
        train_state/rng-rank0.pt            every RNG state of each rank (dropout, sampling)

A checkpoint is written into a temporary folder, every file fsynced, then the folder is
renamed into place: a run killed at any moment leaves either the whole checkpoint or none.
Weights are stored in float32 (MiniMind rounds its resume weights to fp16, so its resumed
runs drift); with the optimizer and RNG states that makes resuming exact.
A LoRA run's checkpoint holds the adapter instead of the model (adapter_model.safetensors,
adapter_config.json): the frozen base is already on disk, named by the adapter config.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)

from ..checkpoint import read_weights, save_model_dir
from ..errors import MiniMindError
from ..files import atomic_write
from ..model.lora import has_lora, read_lora_checkpoint, save_adapter

CHECKPOINTS = "checkpoints"
STATE = "train_state"


# Whole (unsharded) state dicts keyed by parameter name, the same for one process, DDP and
# FSDP, so a checkpoint of any of them resumes in any of them.
FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def gather_state(model, optimizer) -> tuple[dict, dict]:
    """Full model and optimizer state dicts. Under FSDP this gathers the shards (a collective:
    every rank must call it) and only rank 0 receives them."""
    return get_model_state_dict(model, options=FULL), get_optimizer_state_dict(model, optimizer, options=FULL)


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary folders are ignored)."""
    root = Path(out_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.name.startswith("step-") and (p / STATE / "state.json").is_file()]
    return sorted(done, key=lambda p: p.name)


def _fsync_tree(path: Path) -> None:
    for p in sorted(path.rglob("*")) + [path]:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def rng_state() -> dict:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": json.dumps(random.getstate()),
        "numpy": json.dumps([v.tolist() if isinstance(v, np.ndarray) else v for v in np.random.get_state()]),
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    py = json.loads(state["python"])
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = json.loads(state["numpy"])
    np.random.set_state((np_state[0], np.array(np_state[1], dtype=np.uint32), *np_state[2:]))


def staging_dir(out_dir: str | Path, step: int) -> Path:
    """Where a checkpoint is assembled before it is renamed into place."""
    return Path(out_dir) / CHECKPOINTS / f".{checkpoint_name(step)}.tmp"


def save_rng(stage: Path, rank: int) -> None:
    """Every rank writes its own RNG states into the staging folder."""
    (stage / STATE).mkdir(parents=True, exist_ok=True)
    torch.save(rng_state(), stage / STATE / f"rng-rank{rank}.pt")


def save_checkpoint(out_dir: str | Path, step: int, model, model_state: dict, optimizer_state: dict,
                    tokenizer, scaler, state: dict, keep_last: int) -> Path:
    """Rank 0: write weights, optimizer and run state (from gather_state) into the staging
    folder (where every rank already wrote its RNG state), make it durable, rename it into
    place, and delete the oldest checkpoints beyond `keep_last`."""
    stage = staging_dir(out_dir, step)
    final = Path(out_dir) / CHECKPOINTS / checkpoint_name(step)
    if has_lora(model):
        save_adapter(model, stage, state_dict=model_state)
    else:
        save_model_dir(model, stage, tokenizer, state_dict=model_state)
    extra = {"scaler": scaler.state_dict()} if scaler is not None and scaler.is_enabled() else {}
    torch.save({"optimizer": optimizer_state, **extra}, stage / STATE / "optimizer.pt")
    (stage / STATE / "state.json").write_text(json.dumps({**state, "step": step}, indent=2) + "\n")
    _fsync_tree(stage)
    if final.exists():  # e.g. the final save coincides with a periodic one
        shutil.rmtree(final)
    os.replace(stage, final)
    _fsync_tree(final.parent)
    for old in list_checkpoints(out_dir)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def publish(checkpoint: Path, out_dir: str | Path) -> None:
    """Copy a checkpoint's model files to OUT itself (each atomically): the run's result."""
    for f in checkpoint.iterdir():
        if f.is_file():
            atomic_write(Path(out_dir) / f.name, lambda tmp, f=f: shutil.copyfile(f, tmp))


def load_checkpoint(path: Path, model, optimizer, scaler, rank: int) -> dict:
    """Restore weights, optimizer, scaler and this rank's RNG states; return state.json."""
    state_dir = path / STATE
    try:
        state = json.loads((state_dir / "state.json").read_text())
        opt = torch.load(state_dir / "optimizer.pt", map_location="cpu", weights_only=True)
    except (OSError, ValueError, RuntimeError) as e:
        raise MiniMindError(f"{state_dir}: cannot read the training state ({e})") from None
    whole = StateDictOptions(full_state_dict=True)  # every rank reads the file, FSDP keeps its shard
    if has_lora(model):  # only the adapter's tensors; the frozen base was loaded from --init
        partial = StateDictOptions(full_state_dict=True, strict=False)
        set_model_state_dict(model, read_lora_checkpoint(path, model), options=partial)
    else:
        set_model_state_dict(model, read_weights(path / "model.safetensors", model), options=whole)
    set_optimizer_state_dict(model, optimizer, opt["optimizer"], options=whole)
    if scaler is not None and "scaler" in opt:
        scaler.load_state_dict(opt["scaler"])
    rng_file = state_dir / f"rng-rank{rank}.pt"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=True))
    return state
