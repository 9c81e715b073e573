"""Evaluation result files: the contract between `minimind eval` and `minimind report`.

One JSON object per task, written atomically to MODEL_DIR/eval/<task>.json (or ADAPTER/eval/<task>.json
when a LoRA adapter was evaluated, so results of different adapters on one base never overwrite each
other). Schema (see also README "Evaluate"):

    {"task": "ceval", "kind": "choice" | "perplexity" | "exact_match" | "lm_eval",
     "model": "out/sft", "lora": null, "data": "...", "split": "val" | null, "shots": 0 | null,
     "limit": null | int, "thinking": null | bool,
     "metrics": {"accuracy": 0.27, "chance": 0.25, "n": 1346},   # floats/ints only
     "primary": "accuracy",                                        # the metric a summary shows
     "details": {...},                                             # optional, task-specific
     "created": "2026-11-22T10:00:00Z", "seconds": 12.3, "minimind_version": "0.1.0"}

Perplexity: metrics {"perplexity", "bits_per_byte", "tokens", "bytes"}, primary "bits_per_byte".
Exact match: metrics {"accuracy", "n", "format_ok"}, primary "accuracy".
Tool calling: metrics {"accuracy", "answer_score", "validity", "invalid_share", "calls_per_prompt", "n"},
primary "accuracy".
Image questions (vqa): metrics {"accuracy", "exact", "chance", "n"}, primary "accuracy"; details
{"types": {type: {"accuracy", "exact", "chance", "n"}}, ...}.

`write_result` fills "created" and "minimind_version" when absent; `read_results` returns every
result of a model directory (or adapter directory), sorted by task name.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path

from .. import __version__
from ..errors import MiniMindError
from ..files import atomic_write_text, read_json_object

REQUIRED = ("task", "kind", "metrics", "primary")
KINDS = ("choice", "perplexity", "exact_match", "lm_eval", "toolcall", "vqa")


def result_path(task: str, model_dir, lora=None) -> Path:
    """Where the result of `task` lives: next to the adapter when one was used, else next to the model."""
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", task or ""):
        raise MiniMindError(f"task name {task!r}: use letters, digits, '_', '-', '.' only (it becomes a file name)")
    return Path(lora if lora else model_dir) / "eval" / f"{task}.json"


def write_result(result: dict, model_dir, lora=None) -> Path:
    """Validate `result` against the schema above, stamp it, write it atomically; return the path."""
    missing = [k for k in REQUIRED if k not in result]
    if missing:
        raise MiniMindError(f"evaluation result lacks {', '.join(missing)}")
    if result["kind"] not in KINDS:
        raise MiniMindError(f"evaluation result kind {result['kind']!r}: expected one of {', '.join(KINDS)}")
    if result["primary"] not in result["metrics"]:
        raise MiniMindError(f"evaluation result primary metric {result['primary']!r} is not in its metrics")
    out = dict(result)
    out.setdefault("created", datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    out.setdefault("minimind_version", __version__)
    path = result_path(out["task"], model_dir, lora)
    atomic_write_text(path, json.dumps(out, ensure_ascii=False, indent=1) + "\n")
    return path


def read_results(model_dir) -> list[dict]:
    """All results under DIR/eval/*.json (DIR being a model or an adapter directory), sorted by task.
    A file that is not a result (bad JSON, missing keys) is a MiniMindError naming it."""
    results = []
    for path in sorted((Path(model_dir) / "eval").glob("*.json")):
        data = read_json_object(path)
        missing = [k for k in REQUIRED if k not in data]
        if missing:
            raise MiniMindError(f"{path}: not an evaluation result (lacks {', '.join(missing)})")
        results.append(data)
    return sorted(results, key=lambda r: str(r["task"]))
