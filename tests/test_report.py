"""`minimind report`: a Markdown page with tables and PNG plots from real (short) training runs."""

import json

import pytest

from minimind.cli import main
from minimind.data.demo import build_demo_corpus
from minimind.evaluate.results import write_result

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tok_dir):
    """`minimind pretrain` then `minimind sft` on the generated demo corpus, nano, a few steps each,
    and one evaluation result per stage."""
    root = tmp_path_factory.mktemp("runs")
    data = build_demo_corpus(root / "data", pretrain_docs=200)
    common = [
        "--batch-size",
        "4",
        "--grad-accum",
        "1",
        "--seq-len",
        "64",
        "--log-every",
        "2",
        "--val-fraction",
        "0.05",
        "--no-progress",
    ]
    assert (
        main(
            [
                "pretrain",
                "--data",
                str(data["pretrain"]),
                "--preset",
                "nano",
                "--out",
                str(root / "pretrain"),
                "--tokenizer",
                str(tok_dir),
                "--max-steps",
                "8",
                "--eval-every",
                "4",
                "--lr",
                "3e-3",
                *common,
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "sft",
                "--data",
                str(data["sft"]),
                "--init",
                str(root / "pretrain"),
                "--out",
                str(root / "sft"),
                "--max-steps",
                "4",
                "--eval-every",
                "2",
                "--sample-every",
                "4",
                "--lr",
                "1e-3",
                *common,
            ]
        )
        == 0
    )
    for stage, accuracy in (("pretrain", 0.25), ("sft", 0.5)):
        write_result(
            {
                "task": "exam",
                "kind": "exact_match",
                "model": str(root / stage),
                "metrics": {"accuracy": accuracy, "n": 30, "format_ok": 1.0},
                "primary": "accuracy",
            },
            root / stage,
        )
    return root


def test_report_of_pretrain_and_sft(runs, tmp_path, capsys):
    out = tmp_path / "docs" / "report.md"
    assert main(["report", str(runs / "pretrain"), str(runs / "sft"), "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    text = out.read_text()

    # one row per run: its stage, size, steps, tokens, final losses, throughput
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
        for line in text.splitlines()
        if line.startswith("| `")
    }
    assert rows["`pretrain`"][:3] == ["pretrain", "1.21M", "8"] and rows["`sft`"][:3] == ["sft", "1.21M", "4"]
    metrics = [json.loads(line) for line in (runs / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    last_train = [m for m in metrics if "loss" in m][-1]
    assert rows["`pretrain`"][4] == f"{last_train['tokens'] / 1e3:.2f}K"  # tokens logged by the trainer
    assert rows["`pretrain`"][5] == f"{last_train['loss']:.4f}"
    assert rows["`pretrain`"][6] == f"{[m for m in metrics if 'val_loss' in m][-1]['val_loss']:.4f}"

    # the evaluation table, stage by stage
    assert "| task | kind | metric | pretrain (pretrain) | sft (sft) |" in text
    assert "| exam | exact_match | accuracy | 0.2500 (n=30) | 0.5000 (n=30) |" in text
    assert "## Samples" in text  # the SFT run logged greedy samples

    # the plots: linked relatively, next to the report, valid PNGs
    links = [line[line.index("(") + 1 : -1] for line in text.splitlines() if line.startswith("![")]
    assert links == ["report-loss.png", "report-training.png"]
    for name in links:
        assert (out.parent / name).read_bytes()[:8] == PNG


def test_clear_errors_before_any_work(runs, tmp_path, capsys):
    def error(*argv):
        assert main(["report", *map(str, argv), "--out", str(tmp_path / "r.md")]) == 2
        return capsys.readouterr().err

    assert "no metrics.jsonl" in error(runs / "data")
    assert "directory not found" in error(tmp_path / "missing")
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("")
    assert "no training steps logged" in error(run)
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": \n')
    assert f"{run / 'metrics.jsonl'}:2: invalid JSON" in error(runs / "pretrain", run)
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n[1, 2]\n')
    assert f"{run / 'metrics.jsonl'}:2: expected a JSON object" in error(run)
    assert not (tmp_path / "r.md").exists()
