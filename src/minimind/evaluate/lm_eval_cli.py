"""`minimind lm-eval ARGS`: lm-evaluation-harness's command line with our model registered.

lm-evaluation-harness 0.4.13 finds models only in its own registry (no entry-point group for
third-party models; `--include_path` adds tasks, not models), so the plain `lm_eval` command
cannot know "minimind". This verb imports lm_eval_adapter (which registers it), then runs the
harness's own CLI with the arguments unchanged, and saves each task's result next to the model
(MODEL_DIR/eval/lm_eval.<task>.json) for `minimind report`. Nothing here imports lm_eval until
the verb runs.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time

from ..errors import MiniMindError
from .results import write_result


def _metrics(entry: dict) -> dict:
    """The harness's {"acc,none": 0.5, "acc_stderr,none": 0.1, "alias": ...} as
    {"acc": 0.5, "acc_stderr": 0.1}; a filter other than "none" stays in the name
    ("exact_match_strict-match"). Non-numbers ("N/A" stderrs) and NaNs are left out."""
    out = {}
    for key, value in entry.items():
        if key == "sample_len" or isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            continue  # (sample_len is "n", which save_results adds)
        name, _, filt = key.partition(",")
        out[name if filt in ("", "none") else f"{name}_{filt}"] = value
    return out


def save_results(results: dict, model_dir, lora=None, limit=None, seconds: float | None = None) -> list:
    """Write each top-level task (or group) of a harness run as MODEL_DIR/eval/lm_eval.<task>.json
    (the minimind result contract, kind "lm_eval"), so `minimind report` lists it beside
    `minimind eval` results. A group's subtasks go into its "details"."""
    reported = results.get("results", {})
    groups = results.get("group_subtasks", {})
    inside = {sub for subs in groups.values() for sub in subs}
    paths = []
    for name in reported:
        if name in inside:
            continue
        metrics = _metrics(reported[name])
        if not metrics:
            continue
        config = results.get("configs", {}).get(name, {})
        listed = [m.get("metric") for m in config.get("metric_list", []) if isinstance(m, dict)]
        primary = next((m for m in listed if m in metrics), None) or next(
            (m for m in metrics if not m.endswith("_stderr")), next(iter(metrics))
        )
        samples = results.get("n-samples", {})
        subtasks = groups.get(name) or [name]
        if all(s in samples for s in subtasks):
            metrics.setdefault("n", sum(samples[s]["effective"] for s in subtasks))
        result = {
            "task": "lm_eval." + re.sub(r"[^A-Za-z0-9_.\-]", "_", name),
            "kind": "lm_eval",
            "model": str(model_dir),
            "lora": lora,
            "data": config.get("dataset_path"),
            "split": config.get("test_split") or config.get("validation_split"),
            "shots": results.get("n-shot", {}).get(name),
            "limit": limit,
            "thinking": None,
            "metrics": metrics,
            "primary": primary,
            "details": {"subtasks": {s: _metrics(reported[s]) for s in groups.get(name, []) if s in reported}},
            "seconds": seconds,
        }
        paths.append(write_result(result, model_dir, lora))
    return paths


def _given(argv: list[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in argv)


def run_cli(argv: list[str]) -> None:
    """`minimind lm-eval ARGS`: the harness's own command line (lm_eval 0.4.13) with ARGS, our
    model registered (`--model minimind` when no --model is given), `--batch_size 16` and
    `--device auto` unless given (the harness's defaults are 1 and cuda:0). A run on a minimind
    model also saves each task's result next to the model (save_results) and prints where."""
    # Imported here: lm_eval is optional and slow to import, and the adapter imports torch; the
    # CLI's parsers import this module.
    try:
        import lm_eval
        from lm_eval.__main__ import cli_evaluate
        from lm_eval.utils import simple_parse_args_string
    except ImportError:
        raise MiniMindError("minimind lm-eval needs lm-evaluation-harness: pip install 'minimind[lm-eval]'") from None
    from . import lm_eval_adapter  # registers --model minimind

    argv = list(argv)
    if argv and argv[0] not in ("ls", "validate"):
        run = argv[:1] == ["run"]
        args = argv[1:] if run else argv
        if not _given(args, "--model"):
            args = ["--model", "minimind", *args]
        if not _given(args, "--batch_size") and not _given(args, "-b"):
            args += ["--batch_size", str(lm_eval_adapter.DEFAULT_BATCH_SIZE)]
        if not _given(args, "--device"):  # the harness's default is cuda:0, even on a machine without one
            args += ["--device", "auto"]
        argv = ["run", *args]

    # The CLI calls lm_eval.simple_evaluate and prints a table; to keep the numbers as well we
    # wrap that one function for the duration of the call (the CLI looks it up at run time).
    original = lm_eval.simple_evaluate

    def evaluate_and_save(*args, **kwargs):
        started = time.perf_counter()
        results = original(*args, **kwargs)
        model_args = kwargs.get("model_args") or {}
        if isinstance(model_args, str):
            model_args = simple_parse_args_string(model_args)
        if results is not None and kwargs.get("model") == "minimind" and model_args.get("path"):
            for path in save_results(
                results,
                model_args["path"],
                model_args.get("lora"),
                kwargs.get("limit"),
                round(time.perf_counter() - started, 1),
            ):
                print(f"wrote {path}")
        return results

    saved_argv = sys.argv
    lm_eval.simple_evaluate, sys.argv = evaluate_and_save, ["lm-eval", *argv]
    try:
        cli_evaluate()
    finally:
        lm_eval.simple_evaluate, sys.argv = original, saved_argv


def register(verbs) -> None:
    """Add `minimind lm-eval`: every argument after it goes to the harness untouched."""
    p = verbs.add_parser(
        "lm-eval",
        add_help=False,
        prefix_chars="\0",  # no option of ours: all pass through
        help="run lm-evaluation-harness tasks on a model directory (lm_eval's arguments; --model_args path=DIR)",
    )
    p.add_argument("args", nargs=argparse.REMAINDER)
    p.set_defaults(func=lambda args: run_cli(args.args))
