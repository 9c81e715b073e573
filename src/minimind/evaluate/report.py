"""`minimind report RUN_DIR... --out report.md`: one Markdown page about one or several training
runs: what each run was (stage, size, steps, tokens, final losses, throughput), every evaluation
result found next to the models, the last greedy samples, and plots of the training curves with
the runs overlaid (plots.py).

A run directory is the --out of a training stage: it holds metrics.jsonl (written by the trainer,
see train/tracking.py), checkpoints/step-*/train_state/state.json (the stage and the run's
settings) and, once evaluated, eval/*.json (results.py).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ..config import ModelConfig
from ..errors import MiniMindError
from ..files import atomic_write_text
from .plots import plot_runs
from .results import read_results


@dataclass
class Run:
    """What the report knows about one run directory."""

    path: Path
    name: str = ""
    stage: str = "—"  # unknown until the run has written a checkpoint
    params: int | None = None
    train: list[dict] = field(default_factory=list)  # {"step", "loss", "lr", "tokens_per_s", ...}
    val: list[dict] = field(default_factory=list)  # {"step", "val_loss"}
    samples: list[dict] = field(default_factory=list)  # {"step", "sample": {"prompt", "completion"}}
    tokens_per_step: int | None = None  # rows x seq_len, for runs logged without a "tokens" field
    evals: list[dict] = field(default_factory=list)

    def tokens_at(self, record: dict) -> float | None:
        """Tokens trained up to this record's step: logged by the trainer on training records
        (validation records are placed between them by step), else estimated from the run's
        settings (padding included, so slightly high)."""
        if "tokens" in record:
            return record["tokens"]
        logged = [(r["step"], r["tokens"]) for r in self.train if "tokens" in r]
        if logged:
            import numpy as np  # here, not at the top: the CLI's parsers import this module

            steps, tokens = zip((0, 0), *logged)
            return float(np.interp(record["step"], steps, tokens))
        return record["step"] * self.tokens_per_step if self.tokens_per_step else None

    @property
    def tokens_estimated(self) -> bool:
        return bool(self.train) and "tokens" not in self.train[-1]


def read_metrics(path: Path) -> list[dict]:
    """The records of a metrics.jsonl; a line that is not a JSON object is FILE:LINE: problem."""
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line.rstrip("\r\n"))  # (a cut line's error is then on its own line)
            except json.JSONDecodeError as e:
                raise MiniMindError(f"{path}:{number}: invalid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                raise MiniMindError(f'{path}:{number}: expected a JSON object with an integer "step"')
            records.append(record)
    return records


def load_run(path: str | Path) -> Run:
    """Read a run directory (MiniMindError if it is not one) and its evaluation results."""
    # Imported here, not at the top: both import torch, and the CLI's parsers import this module.
    from ..model import count_parameters
    from ..train.state import STATE, list_checkpoints

    run = Run(Path(path))
    metrics = run.path / "metrics.jsonl"
    if not run.path.is_dir():
        raise MiniMindError(f"{run.path}: directory not found")
    if not metrics.is_file():
        raise MiniMindError(
            f"{run.path}: no metrics.jsonl here; give the --out directory of a training run "
            "(minimind pretrain, sft, ...)"
        )
    for record in read_metrics(metrics):
        if "loss" in record:
            run.train.append(record)
        elif "val_loss" in record:
            run.val.append(record)
        elif "sample" in record:
            run.samples.append(record)
    if not run.train:
        raise MiniMindError(f'{metrics}: no training steps logged yet (the file is empty or holds no "loss" records)')

    checkpoints = list_checkpoints(run.path)
    if checkpoints:
        settings = json.loads((checkpoints[-1] / STATE / "state.json").read_text()).get("run", {})
        run.stage = settings.get("stage", "—")
        if all(isinstance(settings.get(k), int) for k in ("batch_size", "grad_accum", "world_size", "seq_len")):
            run.tokens_per_step = (
                settings["batch_size"] * settings["grad_accum"] * settings["world_size"] * settings["seq_len"]
            )
    config = next((d / "config.json" for d in [run.path, *checkpoints[::-1]] if (d / "config.json").is_file()), None)
    if config is not None:
        run.params = count_parameters(ModelConfig.load(config))[0]
    run.evals = read_results(run.path)
    return run


def _names(paths: list[Path]) -> list[str]:
    """Short unique labels: the directory name, with as many parent folders as needed to
    tell runs apart (quickstart/sft vs other/sft)."""
    parts = [p.resolve().parts for p in paths]
    for depth in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return [str(p) for p in paths]


# ---------------------------------------------------------------------------- formatting


def _count(n: float | None) -> str:
    if n is None:
        return "—"
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"


def _number(x) -> str:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return "—"
    if isinstance(x, int):
        return f"{x:,}"
    if not math.isfinite(x):
        return str(x)
    return f"{x:.4f}" if abs(x) < 100 else f"{x:,.1f}"


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def runs_table(runs: list[Run]) -> list[str]:
    lines = [
        "| run | stage | parameters | steps | epochs | tokens seen | final train loss | final val loss | tokens/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        last = run.train[-1]
        tokens = run.tokens_at(last)
        speeds = [r["tokens_per_s"] for r in run.train[1:] or run.train if "tokens_per_s" in r]  # 1st: warm-up
        speed = sorted(speeds)[len(speeds) // 2] if speeds else None  # the median resists stalls
        lines.append(
            "| "
            + " | ".join(
                [
                    f"`{_cell(run.name)}`",
                    _cell(run.stage),
                    _count(run.params),
                    f"{last['step']:,}",
                    f"{last['epoch']:.2f}" if isinstance(last.get("epoch"), (int, float)) else "—",
                    ("≈" if run.tokens_estimated and tokens is not None else "") + _count(tokens),
                    _number(last["loss"]),
                    _number(run.val[-1]["val_loss"]) if run.val else "—",
                    f"{speed:,.0f}" if speed is not None else "—",
                ]
            )
            + " |"
        )
    if any(r.tokens_estimated for r in runs):
        lines += [
            "",
            "≈: the run logged no token counts; estimated as steps x rows x sequence length (padding included).",
        ]
    return lines


def evals_table(runs: list[Run]) -> list[str]:
    """One row per task, one column per run (stage by stage), the task's primary metric."""
    tasks: dict[str, dict] = {}
    for run in runs:
        for result in run.evals:
            tasks.setdefault(result["task"], result)
    if not tasks:
        return [
            (
                "No evaluation results in these directories yet: `minimind eval` (or `minimind lm-eval`) "
                "writes them to MODEL_DIR/eval/."
            )
        ]
    lines = [
        "| task | kind | metric | " + " | ".join(f"{_cell(r.name)} ({_cell(r.stage)})" for r in runs) + " |",
        "|---|---|---|" + "---:|" * len(runs),
    ]
    for task, first in sorted(tasks.items()):
        metric = first["primary"]
        cells = []
        for run in runs:
            result = next((r for r in run.evals if r["task"] == task), None)
            value = result["metrics"].get(result["primary"]) if result else None
            n = result["metrics"].get("n") if result else None
            cells.append(_number(value) + (f" (n={n:,})" if isinstance(n, int) else "") if result else "—")
        lines.append(f"| {_cell(task)} | {_cell(first['kind'])} | {_cell(metric)} | " + " | ".join(cells) + " |")
    return lines


def _short(text: str, width: int) -> str:
    """At most `width` characters, no backticks (they would end the code span)."""
    text = text.replace("`", "'")
    return text[:width] + "…" if len(text) > width else text


def samples_section(runs: list[Run], width: int = 100) -> list[str]:
    lines = []
    for run in runs:
        if not run.samples:
            continue
        step = run.samples[-1]["step"]
        lines += [f"`{run.name}` at step {step:,}:", ""]
        for record in (r for r in run.samples if r["step"] == step):
            sample = record["sample"] if isinstance(record["sample"], dict) else {}
            prompt, completion = (repr(str(sample.get(k, ""))) for k in ("prompt", "completion"))
            lines.append(f"- `{_short(prompt, width // 2)}` → `{_short(completion, width)}`")
        lines.append("")
    return lines


def write_report(run_dirs: list[str], out: str | Path = "report.md") -> tuple[Path, list[Path]]:
    """Read every run (all problems are reported before anything is drawn), write the
    Markdown report and its PNG plots next to it; return (report, plots)."""
    if not run_dirs:
        raise MiniMindError("give at least one run directory")
    runs = [load_run(d) for d in run_dirs]
    for run, name in zip(runs, _names([r.path for r in runs])):
        run.name = name
    out = Path(out)
    if out.suffix != ".md":
        raise MiniMindError(f"--out {out}: the report is Markdown, name it *.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    plots = plot_runs(runs, out.parent, prefix=out.stem)

    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Training report",
        "",
        f"{len(runs)} run{'s' * (len(runs) > 1)}: "
        + ", ".join(f"`{r.name}` ({r.path})" for r in runs)
        + f". Written {now} by `minimind report`.",
        "",
        "## Runs",
        "",
        *runs_table(runs),
        "",
        "## Evaluations",
        "",
        *evals_table(runs),
        "",
    ]
    samples = samples_section(runs)
    if samples:
        lines += ["## Samples (greedy, last logged step)", "", *samples]
    lines += ["## Plots", ""]
    lines += [f"![{title}]({path.name})\n" for title, path in plots]
    atomic_write_text(out, "\n".join(lines).rstrip() + "\n")
    return out, [path for _, path in plots]


# ---------------------------------------------------------------------------- command line


def cmd_report(args) -> None:
    out, plots = write_report(args.runs, args.out)
    print(f"wrote {out} and {len(plots)} plots: " + ", ".join(str(p) for p in plots))


def register(verbs) -> None:
    p = verbs.add_parser("report", help="a Markdown report with plots of training runs and their evaluations")
    p.add_argument(
        "runs", nargs="+", metavar="RUN_DIR", help="training output directories (--out of pretrain, sft, ...)"
    )
    p.add_argument(
        "--out", default="report.md", help="the Markdown file; the PNG plots go next to it (default report.md)"
    )
    p.set_defaults(func=cmd_report)
