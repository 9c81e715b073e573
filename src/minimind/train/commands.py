"""The training verbs (`minimind pretrain`, `sft`, `reason`, `distill`, `lora`, `dpo`): flags, an
optional YAML config, and `minimind lora merge`.

Every flag is derived from a TrainConfig field (train/config.py holds its help, stages and
defaults). Precedence: the stage's defaults, then `--config FILE.yaml` (same keys as the flags,
with dashes or underscores), then the flags given on the command line.
"""

from __future__ import annotations

import argparse
import typing
from pathlib import Path

from ..config import SHAPE_FLAGS, add_shape_args
from ..errors import MiniMindError
from .config import TrainConfig, default_for, setting_types, stage_defaults, stage_fields

STAGE_HELP = {
    "pretrain": "pretrain a model on raw text",
    "sft": "supervised fine-tuning on conversations",
    "reason": "reasoning SFT: think first with open_thinking, answer directly without",
    "distill": "white-box distillation: match a teacher's token distributions (KL) on conversations",
    "lora": "LoRA fine-tuning on conversations: train a small adapter, the base stays frozen",
    "dpo": 'DPO on preference pairs ({"chosen", "rejected"}) against a frozen reference',
    "grpo": "RL with verifiable rewards (GRPO / CISPO / Dr. GRPO) on prompts with gt answers",
    "vlm_pretrain": "vision-language pretraining: image captions (default: the projector trains)",
    "vlm_sft": "vision-language SFT: image chats (default: projector + first and last LLM layers)",
    "agent": "agentic RL: multi-turn tool-using trajectories, rewarded on gt answers and valid tool calls",
    "ppo": "PPO on prompts with gt answers: a critic, GAE, clipped policy and value losses",
}
# Kept for scripts that read a stage's defaults (benchmarks/dpo.py): derived from the fields.
STAGE_DEFAULTS = {stage: stage_defaults(stage) for stage in STAGE_HELP}


def add_train_parser(verbs, stage: str, name: str | None = None):
    """The stage's verb (named `name`, default the stage), with one flag per TrainConfig field
    the stage takes. Flags are suppressed when not given, so the stage defaults and --config can
    fill in beneath them."""
    help_text = STAGE_HELP[stage]
    shown = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in stage_defaults(stage).items())
    p = verbs.add_parser(
        name or stage, help=help_text, argument_default=argparse.SUPPRESS, description=f"{help_text}. Defaults: {shown}"
    )
    p.add_argument("--config", help="YAML file with any of these settings (flags override it)")
    types = setting_types()
    for f in stage_fields(stage):
        flag, kind = "--" + f.name.replace("_", "-"), types[f.name]
        help_text = f.metadata["help"]
        default = default_for(stage, f.name)
        if default not in (None, [], {}) and kind is not bool and "default" not in help_text and "0:" not in help_text:
            help_text += f" (default {default:g})" if isinstance(default, float) else f" (default {default})"
        help_text = help_text.replace("%", "%%")  # argparse formats help with %
        if f.name == "shape":
            add_shape_args(p, suppress=True)  # --hidden-size ... (shared with init and info)
        elif kind is bool and f.default is True:
            p.add_argument("--no-" + f.name.replace("_", "-"), dest=f.name, action="store_false", help=help_text)
        elif kind is bool:
            p.add_argument(flag, action="store_true", help=help_text)
        elif typing.get_origin(kind) is list:
            p.add_argument(flag, nargs="+", help=help_text)
        else:
            p.add_argument(flag, type=kind, help=help_text)
    p.set_defaults(func=lambda args: run_stage(stage, args))
    return p


def load_yaml_config(path: str, stage: str) -> dict:
    import yaml  # (here, not at the top: keeps `minimind --help` fast)

    p = Path(path)
    if not p.is_file():
        raise MiniMindError(f"{p}: config file not found")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise MiniMindError(f"{p}:{mark.line + 1 if mark else '?'}: invalid YAML") from None
    if not isinstance(data, dict):
        raise MiniMindError(f"{p}: expected a mapping of settings")
    names = {f.name for f in stage_fields(stage)}
    types = setting_types()
    out, shape = {}, {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if "shape" in names and name in SHAPE_FLAGS:  # hidden_size: 512 at the top level, as on the command line
            shape[name] = value
        elif name not in names:
            raise MiniMindError(f"{p}: unknown setting {key!r} for minimind {stage}")
        else:
            out[name] = [value] if typing.get_origin(types[name]) is list and isinstance(value, str) else value
    if shape:
        out["shape"] = {**out.get("shape", {}), **shape}
    return out


def stage_config(stage: str, args: argparse.Namespace) -> TrainConfig:
    """The run's TrainConfig from the parsed flags, checked before anything is loaded."""
    settings = load_yaml_config(args.config, stage) if getattr(args, "config", None) else {}
    given = {k: v for k, v in vars(args).items() if k not in ("func", "verb", "config") and not k.startswith("_")}
    shape = {k: given.pop(k) for k in list(given) if k in SHAPE_FLAGS}
    settings.update(given)
    if shape:
        settings["shape"] = {**settings.get("shape", {}), **shape}
    return TrainConfig.for_stage(stage, **settings)


def run_stage(stage: str, args: argparse.Namespace) -> None:
    # Imported here, not at the top: the loop and the objectives import torch, and building the
    # parsers must not (keeps `minimind --help` fast).
    from .objectives import make_objective
    from .trainer import train

    cfg = stage_config(stage, args)
    try:
        out = train(cfg, make_objective(stage))
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: say what OUT holds and how to go on
        print(stopped_note(stage, Path(cfg.out), getattr(args, "_argv", None), e), flush=True)
        raise
    print(f"done: {out}")


def stopped_note(stage: str, out: Path, argv: list[str] | None, stop: KeyboardInterrupt) -> str:
    """What an interrupted run left in OUT, and the exact command that continues it."""
    import shlex

    from .state import list_checkpoints

    checkpoints = list_checkpoints(out) if out.is_dir() else []
    step, total = getattr(stop, "step", None), getattr(stop, "total_steps", None)
    if step is not None and step == total:
        return f"stopped after the last step: done: {out}"
    head = f"stopped at step {step} of {total}" if step is not None else "stopped"
    if not checkpoints:
        return f"{head}: {out} holds no checkpoint yet; run the same command again to start over"
    latest = checkpoints[-1]
    argv = list(argv) if argv is not None else [stage, "...", "--out", str(out)]
    argv = [a for a in argv if a != "--overwrite"]  # (it would start afresh; --resume refuses it)
    command = shlex.join(["minimind", *argv, *([] if "--resume" in argv else ["--resume"])])
    return (
        f"{head}: {out} holds checkpoints up to step {int(latest.name.split('-')[-1])} ({latest}), "
        f"not yet the final model\ncontinue with: {command}"
    )


# ---------------------------------------------------------------------------- minimind lora merge


def cmd_merge(args) -> None:
    from .lora import merge_to_dir  # (here: it imports torch; keeps `minimind --help` fast)

    out = merge_to_dir(args.model, args.lora, args.out, force=args.force)
    print(f"wrote {out}: {args.model} with {args.lora} folded in (a plain model directory)")


def register_lora(verbs) -> None:
    """`minimind lora` (training, the stage's flags) with the `merge` action beside it."""
    p = add_train_parser(verbs, "lora")
    p.allow_abbrev = False  # else `merge --lora` reads as an abbreviation of --lora-rank & co.
    actions = p.add_subparsers(metavar="merge", title="other actions")
    m = actions.add_parser(
        "merge", help="fold an adapter into its base: a plain model directory", argument_default=argparse.SUPPRESS
    )
    m.add_argument("--model", required=True, help="the base model directory the adapter was trained on")
    m.add_argument("--lora", required=True, help="the adapter directory")
    m.add_argument("--out", required=True, help="the model directory to create")
    m.add_argument("--force", action="store_true", default=False, help="overwrite a non-empty --out")
    m.set_defaults(func=cmd_merge)


# ---------------------------------------------------------------------------- minimind vlm


def _cmd_vlm_init(args) -> None:
    from .vlm import cmd_init  # (here: it imports torch; keeps `minimind --help` fast)

    cmd_init(args)


def register_vlm(verbs) -> None:
    """`minimind vlm pretrain | sft` (stages vlm_pretrain, vlm_sft) and `minimind vlm init`."""
    p = verbs.add_parser("vlm", help="vision-language model: init, pretrain (captions), sft (image chats)")
    actions = p.add_subparsers(metavar="ACTION", required=True)
    add_train_parser(actions, "vlm_pretrain", name="pretrain")
    add_train_parser(actions, "vlm_sft", name="sft")
    i = actions.add_parser("init", help="a vision-language model directory from a language model directory")
    i.add_argument("--lm", required=True, help="the language model directory (weights and tokenizer)")
    i.add_argument(
        "--encoder",
        required=True,
        help="patch (our own small encoder, trained from scratch) or the local directory of a SigLIP/CLIP "
        "vision tower (frozen; e.g. siglip2-base-p32-256-ve)",
    )
    i.add_argument("--out", required=True, help="the model directory to create")
    g = i.add_argument_group("patch encoder")
    g.add_argument("--image-size", type=int, default=64, help="pixels per side (default 64)")
    g.add_argument("--patch-size", type=int, default=16, help="pixels per patch side (default 16: 16 tokens)")
    g.add_argument("--hidden-size", type=int, default=128, help="encoder width (default 128)")
    g.add_argument("--num-layers", type=int, default=2, help="transformer blocks (default 2)")
    g.add_argument("--num-heads", type=int, default=4, help="attention heads (default 4)")
    i.add_argument("--seed", type=int, default=42, help="initialisation seed (default 42)")
    i.add_argument("--force", action="store_true", help="overwrite a non-empty --out")
    i.set_defaults(func=_cmd_vlm_init)
