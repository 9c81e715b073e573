"""Checkpoints that make a run impossible to lose.

    OUT/checkpoints/step-00000100/          a complete model directory (chat with it, eval it)
        config.json  model.safetensors  tokenizer.json  tokenizer_config.json
        train_state/state.json              step, epoch, position in the data, the run's settings
        train_state/optimizer.pt            AdamW moments (+ grad scaler), tensors only
        train_state/rng-rank0.pt            every RNG state of each rank (dropout, sampling)
        train_state/objective.pt            only for objectives that train more (PPO's critic)

A checkpoint is written into a temporary folder, every file fsynced, then the folder is
renamed into place: a run killed at any moment leaves either the whole checkpoint or none.
Weights are stored in float32 (MiniMind rounds its resume weights to fp16, so its resumed
runs drift); with the optimizer and RNG states that makes resuming exact.
A LoRA run's checkpoint holds the adapter instead of the model (adapter_model.safetensors,
adapter_config.json): the frozen base is already on disk, named by the adapter config.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import random
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from ..checkpoint import read_weights, save_model_dir
from ..errors import MiniMindError
from ..files import WriteFailed, atomic_write, read_json_object, write_error, write_errors
from ..model.lora import has_lora, read_lora_checkpoint, save_adapter

CHECKPOINTS = "checkpoints"
STATE = "train_state"
OBJECTIVE = "objective.pt"  # what an objective trains beyond the model (PPO's critic), if anything


# Whole (unsharded) state dicts keyed by parameter name, the same for one process, DDP and
# FSDP, so a checkpoint of any of them resumes in any of them.
FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def gather_state(model, optimizer) -> tuple[dict, dict]:
    """Full model and optimizer state dicts. Under FSDP this gathers the shards (a collective:
    every rank must call it) and only rank 0 receives them."""
    return get_model_state_dict(model, options=FULL), get_optimizer_state_dict(model, optimizer, options=FULL)


# What a run publishes into OUT (checkpoint.py's model directory, or a LoRA adapter): the files
# --overwrite deletes with the checkpoints and metrics.jsonl (nothing else the user put there).
OUT_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "adapter_config.json",
    "adapter_model.safetensors",
    "metrics.jsonl",
)


def _inputs(cfg) -> list[tuple[str, str]]:
    """The model directories a run reads: (flag, path)."""
    return [
        (flag, value)
        for flag, value in (
            ("--init", cfg.init),
            ("--teacher", getattr(cfg, "teacher", None)),
            ("--ref", getattr(cfg, "ref", None)),
        )
        if value
    ]


def check_out_dir(cfg) -> None:
    """Refuse an --out that would destroy a model: the --init (or --teacher, --ref) model
    itself or a folder inside it, a model directory that no run of this stage made, or
    another stage's run. A run of this stage there needs --resume, or --overwrite to start
    afresh. Checked before anything is loaded; deletes nothing (see clear_out_dir)."""
    out = Path(cfg.out).absolute().resolve()
    for flag, src in _inputs(cfg):
        s = Path(src).absolute().resolve()
        if out == s:
            raise MiniMindError(
                f"--out {cfg.out} is the {flag} model: training would overwrite it; choose another --out"
            )
        if s in out.parents:
            raise MiniMindError(
                f"--out {cfg.out} is inside the {flag} model directory {src}: choose an --out outside it"
            )
        if out in s.parents and cfg.overwrite:
            raise MiniMindError(
                f"the {flag} model {src} is inside --out {cfg.out}, which --overwrite would clear: choose another --out"
            )
    if not out.exists():
        return
    if not out.is_dir():
        raise MiniMindError(f"--out {cfg.out} is a file, not a directory")
    stage = f"minimind {cfg.stage}"
    again = "choose another --out, or pass --overwrite to delete it and start afresh"
    existing = list_checkpoints(out)
    if existing:
        run = read_state(existing[-1]).get("run", {})
        if run.get("stage", cfg.stage) != cfg.stage and not cfg.overwrite:
            raise MiniMindError(f"--out {cfg.out} holds a run of minimind {run['stage']}, not of {stage}: {again}")
        if not (cfg.resume or cfg.overwrite):
            raise MiniMindError(
                f"{cfg.out} already holds checkpoints of a run: pass --resume to continue it, or {again}"
            )
    elif any((out / name).exists() for name in OUT_FILES if name != "metrics.jsonl") and not cfg.overwrite:
        raise MiniMindError(
            f"--out {cfg.out} holds a model directory that no {stage} run made there "
            f"(it has no checkpoints): training would overwrite it; {again}"
        )


def clear_out_dir(out_dir: str | Path) -> None:
    """--overwrite: delete what an earlier run (or model) left in OUT, before this one starts:
    its checkpoints (else resuming would pick the old run's newest), metrics and model files."""
    out = Path(out_dir)
    if (out / CHECKPOINTS).is_dir():
        shutil.rmtree(out / CHECKPOINTS)
    for name in OUT_FILES:
        if (out / name).is_file():
            (out / name).unlink()


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


@contextlib.contextmanager
def writing_checkpoint(out_dir: str | Path, step: int):
    """Around every write of a checkpoint: if one fails (a full disk), the staging folder is
    removed, so nothing half-written remains (list_checkpoints never picks a staging folder
    anyway), and the error is one line naming the checkpoint and the free space."""
    stage = staging_dir(out_dir, step)
    try:
        yield
    except write_errors() as e:
        shutil.rmtree(stage, ignore_errors=True)
        # Name the file as it would have been in the checkpoint (not in its staging folder).
        failed = getattr(e, "path", None) or (Path(e.filename) if isinstance(e, OSError) and e.filename else None)
        final = Path(out_dir) / CHECKPOINTS / checkpoint_name(step)
        if failed is not None and stage in Path(failed).parents:
            final = final / Path(failed).relative_to(stage)
        error = WriteFailed(final, e.reason) if isinstance(e, WriteFailed) else write_error(final, e)
        raise MiniMindError(
            f"{error}; the earlier checkpoints are intact: free some space, then continue with --resume"
        ) from None


def save_rng(stage: Path, rank: int, log_window: dict | None = None) -> None:
    """Every rank writes its own RNG states into the staging folder, with its share of the
    logging window still open at this step (so that a resumed run logs the same numbers)."""
    with writing_checkpoint(stage.parent.parent, _step_of(stage)):
        (stage / STATE).mkdir(parents=True, exist_ok=True)
        torch.save({**rng_state(), "log_window": log_window}, stage / STATE / f"rng-rank{rank}.pt")


def _step_of(stage: Path) -> int:
    return int(stage.name.strip(".").split("-")[1].split(".")[0])


def save_checkpoint(
    out_dir: str | Path,
    step: int,
    model,
    model_state: dict,
    optimizer_state: dict,
    tokenizer,
    scaler,
    state: dict,
    keep_last: int,
    objective_state: dict | None = None,
) -> Path:
    """Rank 0: write weights, optimizer and run state (from gather_state) into the staging
    folder (where every rank already wrote its RNG state), make it durable, rename it into
    place, and delete the oldest checkpoints beyond `keep_last`. `objective_state`: what the
    objective trains beyond the model (Objective.state_dict: PPO's critic), if anything."""
    stage = staging_dir(out_dir, step)
    final = Path(out_dir) / CHECKPOINTS / checkpoint_name(step)
    with writing_checkpoint(out_dir, step):
        if has_lora(model):
            save_adapter(model, stage, state_dict=model_state)
        else:
            save_model_dir(model, stage, tokenizer, state_dict=model_state)
        extra = {"scaler": scaler.state_dict()} if scaler is not None and scaler.is_enabled() else {}
        torch.save({"optimizer": optimizer_state, **extra}, stage / STATE / "optimizer.pt")
        if objective_state:
            torch.save(objective_state, stage / STATE / OBJECTIVE)
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


def read_state(path: Path) -> dict:
    """A checkpoint's train_state/state.json, checked: a broken one is one line naming it."""
    file = path / STATE / "state.json"
    state = read_json_object(file)
    for key in ("step", "epoch", "batch_in_epoch", "tokens_seen"):
        value = state.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise MiniMindError(f"{file}: '{key}' must be a whole number >= 0, got {value!r}")
    if not isinstance(state.get("run", {}), dict):
        raise MiniMindError(f"{file}: 'run' must be an object of settings")
    return state


def _load_tensors(file: Path, what: str):
    """torch.load of a tensors-only file (weights_only: a pickle that would run code is refused);
    any failure is one line naming the file."""
    if not file.is_file():
        raise MiniMindError(f"{file}: {what} not found")
    try:
        with warnings.catch_warnings():  # (torch warns about pickle protocols before refusing)
            warnings.simplefilter("ignore")
            return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # torch's message is a page long: keep the reason
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        reason = next(
            (line for line in lines if "unsupported" in line.lower() and "weights_only" not in line),
            "an unsupported pickle",
        )
        raise MiniMindError(
            f"{file}: cannot read {what}: not a tensors-only torch file, refused ({reason[:200]})"
        ) from None
    except Exception as e:  # RuntimeError (not a zip: truncated, garbage), EOFError, OSError, ...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise MiniMindError(f"{file}: cannot read {what} ({first})") from None


def load_checkpoint(path: Path, model, optimizer, scaler, rank: int) -> tuple[dict, dict | None]:
    """Restore weights, optimizer, scaler and this rank's RNG states. Returns state.json and
    this rank's open logging window at the checkpoint (None in checkpoints made before it
    was saved). Every broken or foreign file is a one-line MiniMindError naming it."""
    state_dir = path / STATE
    state = read_state(path)
    opt_file = state_dir / "optimizer.pt"
    opt = _load_tensors(opt_file, "the optimizer state")
    if not isinstance(opt, dict) or not isinstance(opt.get("optimizer"), dict):
        raise MiniMindError(f"{opt_file}: not an optimizer state (expected {{'optimizer': ...}})")
    whole = StateDictOptions(full_state_dict=True)  # every rank reads the file, FSDP keeps its shard
    if has_lora(model):  # only the adapter's tensors; the frozen base was loaded from --init
        partial = StateDictOptions(full_state_dict=True, strict=False)
        set_model_state_dict(model, read_lora_checkpoint(path, model), options=partial)
    else:
        set_model_state_dict(model, read_weights(path / "model.safetensors", model), options=whole)
    try:
        _check_optimizer_state(opt["optimizer"], model)
        set_optimizer_state_dict(model, optimizer, opt["optimizer"], options=whole)
        if scaler is not None and "scaler" in opt:
            scaler.load_state_dict(opt["scaler"])
    except MiniMindError as e:
        raise MiniMindError(f"{opt_file}: {e}") from None
    except (KeyError, ValueError, TypeError, RuntimeError, IndexError, AttributeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise MiniMindError(f"{opt_file}: does not fit this model's optimizer ({type(e).__name__}: {first})") from None
    rng_file = state_dir / f"rng-rank{rank}.pt"
    window = None
    if rng_file.is_file():
        saved = _load_tensors(rng_file, "the RNG state")
        try:
            set_rng_state(saved)
        except (KeyError, ValueError, TypeError, RuntimeError, IndexError, AttributeError) as e:
            raise MiniMindError(f"{rng_file}: not an RNG state ({type(e).__name__}: {e})") from None
        window = saved.get("log_window")
        if window is not None and not _valid_window(window):
            raise MiniMindError(f"{rng_file}: 'log_window' is not a logging window")
    return state, window


def load_objective_state(path: Path, objective) -> None:
    """Give the objective what it kept in the checkpoint (Objective.load_state_dict), if the
    checkpoint holds anything for it; a file that does not fit is one line naming it."""
    file = path / STATE / OBJECTIVE
    state = _load_tensors(file, "the objective's state") if file.is_file() else {}
    if not isinstance(state, dict):
        raise MiniMindError(f"{file}: not an objective's state (expected a dict)")
    try:
        objective.load_state_dict(state)
    except MiniMindError as e:
        raise MiniMindError(f"{file}: {e}") from None
    except (KeyError, ValueError, TypeError, RuntimeError, IndexError, AttributeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise MiniMindError(f"{file}: does not fit this run ({type(e).__name__}: {first})") from None


def _check_optimizer_state(saved: dict, model) -> None:
    """The saved AdamW state holds, for parameters of this model, moments of their shapes
    (set_optimizer_state_dict would otherwise fail deep inside, or not at all and the first
    step would)."""
    state, groups = saved.get("state"), saved.get("param_groups")
    if not isinstance(state, dict) or not isinstance(groups, list):
        raise MiniMindError("not an optimizer state (no 'state' and 'param_groups')")
    params = dict(model.named_parameters())
    for name, entry in state.items():
        if not isinstance(entry, dict) or not all(isinstance(v, (torch.Tensor, int, float)) for v in entry.values()):
            raise MiniMindError(f"the state of {name!r} is not a set of tensors")
        if name not in params:
            raise MiniMindError(f"holds the state of {name!r}, which this model does not have")
        for k, v in entry.items():
            if isinstance(v, torch.Tensor) and v.dim() > 0 and tuple(v.shape) != tuple(params[name].shape):
                raise MiniMindError(
                    f"{name}.{k} has shape {tuple(v.shape)}, the model's parameter {tuple(params[name].shape)}"
                )


def _valid_window(w) -> bool:
    return (
        isinstance(w, dict)
        and isinstance(w.get("loss"), torch.Tensor)
        and w["loss"].numel() == 1
        and all(
            isinstance(w.get(k), (int, float)) and not isinstance(w.get(k), bool) for k in ("count", "tokens", "time")
        )
        and isinstance(w.get("metrics"), dict)
        and all(isinstance(v, (int, float)) for v in w["metrics"].values())
    )
