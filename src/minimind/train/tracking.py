"""Where training numbers go: OUT/metrics.jsonl always, wandb / SwanLab / TensorBoard on request.

metrics.jsonl has one JSON object per line: a training step
`{"step", "loss", "lr", "grad_norm", "tokens_per_s", "mfu", ...}`, an evaluation
`{"step", "val_loss"}` or a sample `{"step", "sample": {...}}`. On resume, lines logged after
the checkpoint (by the run that was killed) are dropped, so the file reads as one clean run.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from ..errors import MiniMindError
from ..files import atomic_write_text, write_error

TRACKERS = ("wandb", "swanlab", "tensorboard")


def _step(line: str) -> int | None:
    """The step of a metrics line, or None for a line that is not one (half a line written
    when the run was killed)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    step = record.get("step") if isinstance(record, dict) else None
    return step if isinstance(step, int) else None


class MetricsLog:
    def __init__(self, path: str | Path, resume_step: int | None = None):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if resume_step is None:
                self.path.write_text("")
            elif self.path.exists():
                lines = self.path.read_text(encoding="utf-8", errors="replace").splitlines()
                kept = [line for line in lines if (step := _step(line)) is not None and step <= resume_step]
                atomic_write_text(self.path, "".join(line + "\n" for line in kept))
            self._file = open(self.path, "a", encoding="utf-8")
        except OSError as e:
            raise write_error(self.path, e) from None

    def write(self, record: dict) -> None:
        try:
            self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
            self._file.flush()
        except OSError as e:
            raise write_error(self.path, e) from None

    def close(self) -> None:
        self._file.close()


def _require(module: str, tracker: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MiniMindError(
            f"--tracker {tracker} needs the {module.split('.')[0]} package: pip install {tracker}"
        ) from None


class Trackers:
    """The experiment trackers asked for with --tracker, each imported only then."""

    def __init__(
        self,
        names: list[str],
        project: str,
        run_name: str,
        config: dict,
        out_dir: Path,
        run_ids: dict | None = None,
        resume_step: int | None = None,
    ):
        """resume_step: the checkpoint's step when resuming. TensorBoard then hides what the
        killed run logged after it (as metrics.jsonl drops those lines), and wandb continues
        the same run (it keeps the first value of a step logged twice; an exact resume
        logs the same numbers again)."""
        self.run_ids = dict(run_ids or {})
        self._loggers, self._finish = [], []
        for name in names:
            if name not in TRACKERS:
                raise MiniMindError(f"unknown tracker {name!r}; choose from {', '.join(TRACKERS)}")
            if name == "wandb":
                wandb = _require("wandb", "wandb")
                run = wandb.init(
                    project=project,
                    name=run_name,
                    config=config,
                    dir=str(out_dir),
                    id=self.run_ids.get("wandb"),
                    resume="allow",
                )
                self.run_ids["wandb"] = run.id
                self._loggers.append(lambda m, s, run=run: run.log(m, step=s))
                self._finish.append(run.finish)
            elif name == "swanlab":
                swanlab = _require("swanlab", "swanlab")
                run = swanlab.init(
                    project=project, experiment_name=run_name, config=config, logdir=str(out_dir / "swanlog")
                )
                self._loggers.append(lambda m, s, swanlab=swanlab: swanlab.log(m, step=s))
                self._finish.append(swanlab.finish)
            else:
                tb = _require("torch.utils.tensorboard", "tensorboard")
                writer = tb.SummaryWriter(
                    log_dir=str(out_dir / "tensorboard"), purge_step=None if resume_step is None else resume_step + 1
                )

                def log_tb(m, s, writer=writer):
                    for k, v in m.items():
                        writer.add_scalar(k, v, s)
                    writer.flush()

                self._loggers.append(log_tb)
                self._finish.append(writer.close)

    def log(self, metrics: dict, step: int) -> None:
        numeric = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and k != "step"}
        for log in self._loggers:
            log(numeric, step)

    def finish(self) -> None:
        for fn in self._finish:
            fn()
