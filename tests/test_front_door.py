"""The front door, tried as a new user would (issue 17, items 14-19): stopping and continuing
the quickstart and a training run, the signal handlers the trainer leaves behind, the messages
users meet first (a wrong flag, a broken JSON line, two tokenizers that differ, an adapter on
another tokenizer, an untrained model's reply), and the set-up the README promises."""

import json
import os
import re
import shlex
import shutil
import signal
import threading
from pathlib import Path

import pytest

from minimind.checkpoint import load
from minimind.cli import build_parser, main
from minimind.data.demo import build_demo_corpus
from minimind.data.formats import iter_lines
from minimind.errors import MiniMindError
from minimind.tokenizer import Tokenizer, tokenizer_difference, train_tokenizer
from minimind.train import objectives, trainer
from minimind.train.trainer import TrainConfig, TrainingStopped, shown, train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A small generated corpus, a tokenizer trained on it and a nano model directory."""
    root = tmp_path_factory.mktemp("front-door")
    files = build_demo_corpus(root / "data", pretrain_docs=300)
    train_tokenizer([str(files["pretrain"]), str(files["sft"])], vocab_size=400, out_dir=str(root / "tok"))
    assert main(["init", "--preset", "nano", "--tokenizer", str(root / "tok"), "--out", str(root / "base")]) == 0
    return {
        "root": root,
        "pretrain": str(files["pretrain"]),
        "sft": str(files["sft"]),
        "tok": root / "tok",
        "base": root / "base",
    }


def config(demo, out, **kw):
    base = dict(
        stage="pretrain",
        data=[demo["pretrain"]],
        out=str(out),
        preset="nano",
        tokenizer=str(demo["tok"]),
        max_steps=4,
        batch_size=4,
        seq_len=64,
        log_every=1,
        save_every=100,
        eval_every=0,
        progress=False,
    )
    return TrainConfig(**{**base, **kw})


@pytest.fixture
def signal_at(monkeypatch):
    """signal_at(n, sig): the n-th forward pass of a language-model objective (pretrain, sft,
    lora) sends `sig` to this process, as a user's Ctrl-C (SIGINT) or a scheduler's SIGTERM."""
    original = objectives.LMObjective.loss_sum

    def arm(n, sig=signal.SIGINT):
        calls = [0]

        def loss_sum(self, model, batch):
            calls[0] += 1
            if calls[0] == n:
                os.kill(os.getpid(), sig)
            return original(self, model, batch)

        monkeypatch.setattr(objectives.LMObjective, "loss_sum", loss_sum)

    return arm


# ------------------------------------------------------------------ 17: the signal handlers


def test_train_restores_the_signal_handlers_however_it_ends(demo, tmp_path, signal_at):
    mine = lambda signum, frame: None  # noqa: E731  (a handler of the caller's own)
    previous, term = signal.signal(signal.SIGINT, mine), signal.getsignal(signal.SIGTERM)
    try:
        train(config(demo, tmp_path / "ok"))
        assert signal.getsignal(signal.SIGINT) is mine

        class Broken(objectives.LMObjective):
            def loss_sum(self, model, batch):
                raise RuntimeError("the objective broke")

        with pytest.raises(RuntimeError, match="the objective broke"):
            train(config(demo, tmp_path / "broken"), Broken())
        assert signal.getsignal(signal.SIGINT) is mine

        signal_at(2)
        with pytest.raises(TrainingStopped):
            train(config(demo, tmp_path / "stopped"))
        assert signal.getsignal(signal.SIGINT) is mine
        assert signal.getsignal(signal.SIGTERM) is term
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_ctrl_c_during_training_reaches_the_caller_after_the_checkpoint(demo, tmp_path, signal_at):
    """Not swallowed: the run checkpoints its step, then the caller (pytest here, the quickstart,
    a notebook) gets the KeyboardInterrupt and stops too."""
    signal_at(2)
    with pytest.raises(KeyboardInterrupt) as stop:
        train(config(demo, tmp_path / "run"))
    assert isinstance(stop.value, TrainingStopped)
    assert (stop.value.step, stop.value.total_steps, stop.value.signum) == (2, 4, signal.SIGINT)
    assert (tmp_path / "run" / "checkpoints" / "step-00000002").is_dir()
    assert not (tmp_path / "run" / "model.safetensors").exists()  # not the final model
    assert train(config(demo, tmp_path / "run", resume=True)) == tmp_path / "run"
    assert (tmp_path / "run" / "model.safetensors").exists()


def test_training_in_another_thread_leaves_the_handlers_alone(demo, tmp_path):
    """signal.signal only works in the main thread: a run in a worker thread must not fail."""
    errors = []
    worker = threading.Thread(target=lambda: _collect(errors, lambda: train(config(demo, tmp_path / "t"))))
    worker.start()
    worker.join()
    assert errors == [] and (tmp_path / "t" / "model.safetensors").exists()


def _collect(errors, fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001
        errors.append(e)


# ------------------------------------------------------------------ 16: an interrupted pretrain


def pretrain_argv(demo, out, *extra):
    return [
        "pretrain",
        "--data",
        demo["pretrain"],
        "--preset",
        "nano",
        "--tokenizer",
        str(demo["tok"]),
        "--out",
        str(out),
        "--max-steps",
        "4",
        "--batch-size",
        "4",
        "--grad-accum",
        "1",
        "--seq-len",
        "64",
        "--eval-every",
        "0",
        "--no-progress",
        *extra,
    ]


@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_pretrain_says_what_is_in_out_and_the_command_that_continues(
    demo, tmp_path, signal_at, capsys, sig, status
):
    out = tmp_path / "pt"
    signal_at(3, sig)
    assert main(pretrain_argv(demo, out)) == status
    printed = capsys.readouterr().out
    assert "done:" not in printed
    assert f"stopped at step 3 of 4: {out} holds checkpoints up to step 3" in printed
    assert "not yet the final model" in printed
    command = re.search(r"^continue with: (.*)$", printed, re.M).group(1)
    assert command == shlex.join(["minimind", *pretrain_argv(demo, out), "--resume"])
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    signal_at(10**9)  # (never)
    assert main(shlex.split(command)[1:]) == 0  # the printed command, exactly as printed
    assert f"done: {out}" in capsys.readouterr().out
    assert (out / "model.safetensors").exists()


# ------------------------------------------------------------------ 15 + 19: the quickstart


def test_quickstart_stops_cleanly_and_the_same_command_continues_it(tmp_path, signal_at, capsys, monkeypatch):
    monkeypatch.setattr(trainer, "ESTIMATE_AFTER_S", 0.0)  # the time left after 3 steps, however fast they are
    out = tmp_path / "qs"
    argv = [
        "quickstart",
        "--out",
        str(out),
        "--preset",
        "nano",
        "--pretrain-steps",
        "8",
        "--sft-steps",
        "5",
        "--no-progress",
    ]
    signal_at(3)  # Ctrl-C in the third pretraining step
    assert main(argv) == 130
    printed = capsys.readouterr().out
    assert "stopped during 3/5 pretrain (step 3 of 8" in printed
    assert "4/5" not in printed  # no stage ran on the half-trained model
    again = printed.strip().splitlines()[-1].strip()
    assert again == shlex.join(["minimind", *argv[:-1]])  # the same command (progress bars aside)
    assert "--resume" not in printed  # (the quickstart has no such flag: the same command continues)

    signal_at(10**9)
    assert main(shlex.split(again)[1:] + ["--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "already generated:" in printed and "already trained:" in printed
    assert "resuming from step-00000003" in printed
    assert re.search(r"pretrain: ~\d+ (s|min|h) to go at this speed \([\d.]+ s a step, 1 step left\)", printed)
    assert "sft: ~" in printed and "done in" in printed
    assert not re.search(r"\n\s*\n\s*\n\s*\n", printed)  # an untrained reply is no screenful of blank lines
    assert (out / "sft" / "model.safetensors").exists()

    assert main(argv) == 0  # everything done: each stage is skipped, the results shown again
    printed = capsys.readouterr().out
    assert printed.count("already done:") == 2 and "exact match on" in printed

    with pytest.raises(MiniMindError, match="other settings .*seed was 0, now 1"):
        from minimind.quickstart import quickstart

        quickstart(out=str(out), preset="nano", seed=1, pretrain_steps=8, sft_steps=5, progress=False)


def test_untrained_replies_are_shown_on_one_line():
    assert shown("") == "''"
    assert shown("\n" * 30) == "(only whitespace)" and shown(" \n\t", quote=False) == "(only whitespace)"
    assert shown("Paris\n") == "'Paris\\n'" and shown("Paris\n", quote=False) == "Paris"


# ------------------------------------------------------------------ 18: the parser


def test_a_wrong_flag_prints_the_usage_of_its_own_command(capsys):
    cases = [
        (["pretrain", "--no-such-flag"], "usage: minimind pretrain"),
        (["data", "check", "--kind", "pretrain", "x.jsonl", "--no-such-flag"], "usage: minimind data check"),
        (["lora", "merge", "--model", "a", "--lora", "b", "--out", "c", "--x"], "usage: minimind lora merge"),
    ]
    for argv, usage in cases:
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith(usage), (argv, err)
        assert "unrecognized arguments: " in err


def test_abbreviated_flags_are_refused(capsys):
    with pytest.raises(SystemExit):
        main(["info", "--preset", "tiny", "--batch", "4"])  # argparse's default reads --batch-size
    assert "unrecognized arguments: --batch 4" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["pretrain", "--data", "x.jsonl", "--max-step", "3"])
    assert "usage: minimind pretrain" in capsys.readouterr().err

    def parsers(p):
        yield p
        for action in p._subparsers._group_actions if p._subparsers else []:
            for child in dict.fromkeys(action.choices.values()):
                yield from parsers(child)

    assert all(not p.allow_abbrev for p in parsers(build_parser()))


# ------------------------------------------------------------------ 18: messages


def test_a_line_cut_short_is_reported_at_its_end_not_at_column_1(tmp_path):
    path = tmp_path / "cut.jsonl"
    path.write_text('{"text": "fine"}\n{"text": "cut sh\n{"text": "x", \n{"text": "x"} junk\n', encoding="utf-8")
    bad = {number: str(value) for number, value in iter_lines(path) if isinstance(value, Exception)}
    assert bad[2] == "invalid JSON: Unterminated string starting at (column 10)"
    assert bad[3] == "invalid JSON: Expecting property name enclosed in double quotes (column 15, the end of the line)"
    assert bad[4] == "invalid JSON: Extra data (column 15)"
    (tmp_path / "cut2.jsonl").write_text('{"text": "fine"}\n{"text": "x", \n', encoding="utf-8")
    with pytest.raises(MiniMindError, match=r"cut2.jsonl:2: invalid JSON \(Expecting property name .* at column 15\)"):
        train_tokenizer([str(tmp_path / "cut2.jsonl")], vocab_size=300, out_dir=str(tmp_path / "tok"))


def _swapped_ids(tok_dir: Path, out: Path) -> Path:
    """The same tokenizer with two ordinary tokens' ids swapped: same size, same merges."""
    shutil.copytree(tok_dir, out)
    spec = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = spec["model"]["vocab"]
    a, b = (t for t, i in vocab.items() if i in (300, 301))
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (out / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    return out


def test_tokenizer_differences_are_said_in_words(demo, tmp_path):
    mine = Tokenizer.from_dir(demo["tok"])
    other_text = tmp_path / "other.txt"
    other_text.write_text("\n".join(f"line {i} of another corpus, zebra quartz {i * 7}" for i in range(300)))
    train_tokenizer([str(other_text)], vocab_size=400, out_dir=str(tmp_path / "other"))
    other = Tokenizer.from_dir(tmp_path / "other")
    assert mine.vocab_size == other.vocab_size == 400  # the old message: "(400 vs 400 tokens)", nothing more
    said = tokenizer_difference(other, mine, ("the teacher's", "the student's"))
    assert re.search(
        r"^vocabularies differ: 400 vs 400 tokens; \d+ only in the teacher's \(e\.g\. '.+'\); "
        r"\d+ only in the student's \(e\.g\. '.+'\)",
        said,
    ), said
    swapped = Tokenizer.from_dir(_swapped_ids(demo["tok"], tmp_path / "swapped"))
    said = tokenizer_difference(swapped, mine)
    assert "2 shared tokens under other ids (e.g. " in said and "is 300 in the first, 301 in the second" in said
    assert tokenizer_difference(mine, Tokenizer.from_dir(demo["tok"])) is None


def test_distillation_names_what_differs_in_the_teachers_tokenizer(demo, tmp_path):
    from minimind.train.distill import check_teacher

    teacher = tmp_path / "teacher"
    shutil.copytree(demo["base"], teacher)
    _swapped_ids(demo["tok"], tmp_path / "swapped")
    shutil.copy(tmp_path / "swapped" / "tokenizer.json", teacher / "tokenizer.json")
    with pytest.raises(
        MiniMindError,
        match="its tokenizer is not the student's .*: vocabularies differ: 400 vs 400 "
        "tokens; 2 shared tokens under other ids",
    ):
        check_teacher(teacher, Tokenizer.from_dir(demo["tok"]))


def test_a_lora_adapter_refuses_a_base_with_another_tokenizer(demo, tmp_path):
    assert (
        main(
            [
                "lora",
                "--init",
                str(demo["base"]),
                "--data",
                demo["sft"],
                "--out",
                str(tmp_path / "adapter"),
                "--max-steps",
                "1",
                "--batch-size",
                "2",
                "--seq-len",
                "64",
                "--no-progress",
            ]
        )
        == 0
    )
    load(demo["base"], lora=tmp_path / "adapter")  # its own base: fine
    twin = tmp_path / "twin"  # the very same weights (their sha256 matches), another tokenizer
    shutil.copytree(demo["base"], twin)
    _swapped_ids(demo["tok"], tmp_path / "swapped")
    shutil.copy(tmp_path / "swapped" / "tokenizer.json", twin / "tokenizer.json")
    with pytest.raises(
        MiniMindError,
        match=r"adapter_config.json: this adapter was trained with another tokenizer "
        r"\(trained on .*\): .*twin's tokenizer has another vocabulary; ",
    ):
        load(twin, lora=tmp_path / "adapter")
    assert (
        main(
            [
                "lora",
                "merge",
                "--model",
                str(twin),
                "--lora",
                str(tmp_path / "adapter"),
                "--out",
                str(tmp_path / "merged"),
            ]
        )
        == 2
    )


# ------------------------------------------------------------------ 14: the set-up


def test_the_first_install_line_compiles_nothing_and_the_peers_are_named():
    tomllib = pytest.importorskip("tomllib")  # (Python 3.11+)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project["optional-dependencies"]
    compiled = ("llama-cpp-python", "llama_cpp_python")
    first = (ROOT / "README.md").read_text(encoding="utf-8").split("```bash\n", 1)[1].split("\n", 1)[0]
    assert first == 'python -m pip install torch==2.13.0 && python -m pip install -e ".[serve]"'
    for name in ("serve", "dev"):  # the user's set-up and the test set-up
        assert not any(dep.startswith(compiled) for dep in project["dependencies"] + extras[name])
    assert {"fastapi", "uvicorn"} <= {re.split(r"[<>=\[ ]", d)[0] for d in extras["serve"]}
    assert any(dep.startswith("llama-cpp-python") for dep in extras["peers"])
    script = ROOT / "scripts" / "install-test-peers.sh"
    assert script.is_file() and os.access(script, os.X_OK)
    assert "scripts/install-test-peers.sh" in (ROOT / ".ci" / "run").read_text()
    torch_req = next(d for d in project["dependencies"] if d.startswith("torch"))
    assert torch_req == "torch>=2.4"  # a range that the README's torch==2.13.0 satisfies
