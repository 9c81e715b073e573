"""The report's PNG plots (matplotlib, drawn off-screen): every run on the same axes, one colour
per run, legend = run name.

    PREFIX-loss.png       training loss (line) and validation loss (dots) against steps and tokens
    PREFIX-training.png   learning rate and throughput (tokens/s) against steps
"""

from __future__ import annotations

from pathlib import Path

from ..errors import MiniMindError

# matplotlib is optional (pip install "minimind[report]") and slow to import: every function
# imports it when it draws, and the CLI's parsers import this module through report.py.


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise MiniMindError("minimind report draws its plots with matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")  # files only: no display needed (servers, CI)
    import matplotlib.pyplot as plt

    return plt


def _token_axis(ax) -> None:
    """Token counts as 1.2M / 3.4B rather than 1.2e6."""
    from matplotlib.ticker import EngFormatter

    ax.xaxis.set_major_formatter(EngFormatter(sep=""))


def _loss_scale(ax, runs) -> None:
    """Log scale when the loss falls by more than 3x (the early drop would flatten the rest)."""
    losses = [r["loss"] for run in runs for r in run.train] + [r["val_loss"] for run in runs for r in run.val]
    losses = [x for x in losses if x > 0]
    if losses and max(losses) / min(losses) > 3:
        from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))  # 0.1 0.2 0.5 1 2 5
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(NullFormatter())


def plot_runs(runs, folder: Path, prefix: str = "report") -> list[tuple[str, Path]]:
    """Draw the plots of `runs` (report.Run) into `folder`; return [(title, path)]."""
    plt = _pyplot()
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    done = []

    fig, (by_step, by_tokens) = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for i, run in enumerate(runs):
        c = colors[i % len(colors)]
        steps = [r["step"] for r in run.train]
        by_step.plot(steps, [r["loss"] for r in run.train], color=c, lw=1.5, label=f"{run.name} train")
        if run.val:
            by_step.plot(
                [r["step"] for r in run.val],
                [r["val_loss"] for r in run.val],
                "o--",
                color=c,
                ms=5,
                lw=1,
                label=f"{run.name} val",
            )
        tokens = [run.tokens_at(r) for r in run.train]
        if None not in tokens:
            by_tokens.plot(tokens, [r["loss"] for r in run.train], color=c, lw=1.5, label=f"{run.name} train")
            val_tokens = [run.tokens_at(r) for r in run.val]
            if run.val and None not in val_tokens:
                by_tokens.plot(
                    val_tokens, [r["val_loss"] for r in run.val], "o--", color=c, ms=5, lw=1, label=f"{run.name} val"
                )
    by_step.set(title="Loss by optimizer step", xlabel="step", ylabel="loss (nats per token)")
    estimated = any(run.tokens_estimated for run in runs)
    by_tokens.set(
        title="Loss by tokens trained", xlabel="tokens" + (" (≈ estimated for some runs)" if estimated else "")
    )
    _token_axis(by_tokens)
    _loss_scale(by_step, runs)
    for ax in (by_step, by_tokens):
        ax.grid(alpha=0.3, which="both")
    by_step.legend(fontsize=8)
    done.append(("Training and validation loss", _save(fig, folder / f"{prefix}-loss.png")))

    fig, (lr, speed) = plt.subplots(1, 2, figsize=(11, 3.6))
    for i, run in enumerate(runs):
        c = colors[i % len(colors)]
        lr.plot(
            [r["step"] for r in run.train if "lr" in r],
            [r["lr"] for r in run.train if "lr" in r],
            color=c,
            lw=1.5,
            label=run.name,
        )
        speed.plot(
            [r["step"] for r in run.train if "tokens_per_s" in r],
            [r["tokens_per_s"] for r in run.train if "tokens_per_s" in r],
            color=c,
            lw=1.5,
            label=run.name,
        )
    lr.set(title="Learning rate", xlabel="step", ylabel="learning rate")
    lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    speed.set(title="Throughput", xlabel="step", ylabel="tokens / s")
    speed.set_ylim(bottom=0)
    for ax in (lr, speed):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    done.append(("Learning rate and throughput", _save(fig, folder / f"{prefix}-training.png")))
    return done


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
