"""Data and training, tried the way a careless or hostile user would (issue 17, items 7-12b):
lone surrogates, empty files, special tokens in pretraining text, an --out that would destroy a
model, a full disk during a checkpoint, a corrupt optimizer.pt, and metrics that continue
exactly after a resume; then the battery of malformed data, tokenizer, model and checkpoint
files (more than 100), each through the real entry points, with its counts asserted."""

import errno
import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from helpers import write_jsonl
from minimind.cli import main
from minimind.data.demo import build_demo_corpus
from minimind.data.formats import BadRecords, read_records
from minimind.errors import MiniMindError
from minimind.train.config import TrainConfig
from minimind.train.state import list_checkpoints
from minimind.train.trainer import Trainer, train

pytestmark = pytest.mark.usefixtures("one_thread")

# A lone UTF-16 surrogate as JSON spells it (json.dumps writes one so, with ensure_ascii).
SURROGATE_PRETRAIN = '{"text": "a lone \\ud800 surrogate"}\n{"text": "fine text"}\n'
SURROGATE_SFT = (
    '{"conversations": [{"role": "user", "content": "hi"}, '
    '{"role": "assistant", "content": "x\\udc00"}]}\n'
    '{"conversations": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'
)


def run_cli(capsys, *argv):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def pretrain_argv(corpus, tok_dir, out, steps: int, *extra) -> list:
    """`minimind pretrain` of a fresh nano model on the test corpus, for `steps` steps."""
    return [
        "pretrain",
        "--data",
        corpus["pretrain"],
        "--preset",
        "nano",
        "--tokenizer",
        tok_dir,
        "--out",
        out,
        "--max-steps",
        str(steps),
        "--batch-size",
        "4",
        "--seq-len",
        "64",
        "--cache-dir",
        corpus["cache"],
        "--no-progress",
        *extra,
    ]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    files = build_demo_corpus(root / "data", pretrain_docs=300)
    return {"pretrain": str(files["pretrain"]), "sft": str(files["sft"]), "cache": str(root / "cache")}


def config(corpus, tok_dir, out, **kw):
    base = dict(
        stage="pretrain",
        data=[corpus["pretrain"]],
        out=str(out),
        preset="nano",
        tokenizer=str(tok_dir),
        max_steps=12,
        batch_size=4,
        grad_accum=1,
        seq_len=64,
        lr=3e-3,
        log_every=4,
        save_every=3,
        eval_every=6,
        eval_batches=2,
        val_fraction=0.05,
        cache_dir=corpus["cache"],
        progress=False,
        seed=3,
    )
    return TrainConfig(**{**base, **kw})


def metrics(out) -> list[dict]:
    """metrics.jsonl without the timings (which differ between any two runs)."""
    rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("tokens_per_s", "mfu")} for r in rows]


# ------------------------------------------------------------------ 7: lone surrogates


def test_lone_surrogates_are_file_line_errors_in_data_check(capsys, tmp_path, tok_dir):
    pre = tmp_path / "pre.jsonl"
    pre.write_text(SURROGATE_PRETRAIN)
    sft = tmp_path / "sft.jsonl"
    sft.write_text(SURROGATE_SFT)
    for path, kind, field in ((pre, "pretrain", "'text'"), (sft, "sft", "'conversations[1].content'")):
        for extra in ((), ("--tokenizer", tok_dir)):  # the tokenizer used to raise a TypeError
            code, out, err = run_cli(capsys, "data", "check", path, "--kind", kind, *extra)
            assert code == 1 and "Traceback" not in err
            assert f"{path}:1: {field} contains a lone UTF-16 surrogate" in out
            assert "2 read, 1 valid, 1 with problems" in out


def test_lone_surrogates_are_skippable_bad_records_in_training(tmp_path, corpus, tok_dir):
    path = tmp_path / "pre.jsonl"
    path.write_text(SURROGATE_PRETRAIN + Path(corpus["pretrain"]).read_text())
    bad = BadRecords()
    records = list(read_records(path, "pretrain", "skip", bad))
    assert bad.count == 1 and bad.examples[0].startswith(f"{path}:1: 'text' contains a lone UTF-16 surrogate")
    assert records[0].line == 2
    cfg = config(corpus, tok_dir, tmp_path / "run", data=[str(path)], max_steps=2, eval_every=0)
    with pytest.raises(MiniMindError, match=rf"^{path}:1: 'text' contains a lone UTF-16 surrogate"):
        train(cfg)
    out = train(
        config(corpus, tok_dir, tmp_path / "run2", data=[str(path)], max_steps=2, eval_every=0, on_bad_record="skip")
    )
    assert (out / "model.safetensors").is_file()


def test_lone_surrogates_in_keys_and_nested_values_are_found(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text(
        '{"text": "ok", "\\udfff": 1}\n{"text": "ok", "meta": {"tags": ["a", "\\ud83d"]}}\n'
        '{"text": "a valid pair \\ud83d\\ude00 is one character"}\n'
    )
    bad = BadRecords()
    records = list(read_records(path, "pretrain", "skip", bad))
    assert [r.line for r in records] == [3] and records[0].data["text"].count("\U0001f600") == 1
    assert bad.examples == [
        f"{path}:1: a key contains a lone UTF-16 surrogate (an escape such as \\ud800 that is not a character)",
        f"{path}:2: 'meta.tags[1]' contains a lone UTF-16 surrogate (an escape such as "
        "\\ud800 that is not a character)",
    ]


# ------------------------------------------------------------------ 8: no records


@pytest.mark.parametrize("content", ["", "\n\n   \n\t\n"], ids=["empty", "blank-lines"])
def test_data_check_reports_a_file_without_records(capsys, tmp_path, content):
    path = tmp_path / "data.jsonl"
    path.write_text(content)
    for kind in ("pretrain", "sft", "dpo", "rl"):
        code, out, _ = run_cli(capsys, "data", "check", path, "--kind", kind)
        assert code == 1, kind
        assert f"{path}: no records (the file is empty or has only blank lines)" in out


# ------------------------------------------------------------------ 9: special tokens in pretraining text


def test_special_tokens_in_pretraining_text_are_encoded_as_plain_text(capsys, tmp_path, tok, tok_dir):
    """The policy (README, "Data"): a special token written in pretraining text is trained as
    the text it spells, never as its special id; only the pipeline places bos/eos."""
    from minimind.data.cache import tokenize_file

    text = "Before <|im_end|>\n<|im_start|>assistant\nfake turn<|endoftext|> after"
    path = write_jsonl(tmp_path / "pre.jsonl", [{"text": text}, {"text": "plain words"}])
    tf = tokenize_file(path, tok, "pretrain", cache_dir=tmp_path / "cache")
    ids = tf.ids[tf.offsets[0] : tf.offsets[1]].tolist()
    special = set(tok.special_ids)
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert not special & set(ids[1:-1])  # no control id inside the document
    assert tok.decode(ids[1:-1]) == text  # the markers are there, as text
    assert ids[1:-1] == tok.encode_batch([text], plain_text=True)[0]
    assert tok.encode(text) != ids[1:-1]  # (the chat path still maps them to their ids)
    code, out, _ = run_cli(capsys, "data", "check", path, "--kind", "pretrain", "--tokenizer", tok_dir)
    assert code == 0
    assert f"tokens     {int(tf.offsets[-1])}\n" in out  # data check counts what training trains
    assert "note       1 records contain special tokens written as text" in out


def test_chat_markers_in_sft_content_stay_rejected(tmp_path):
    path = write_jsonl(
        tmp_path / "sft.jsonl",
        [{"conversations": [{"role": "user", "content": "hi<|im_end|>"}, {"role": "assistant", "content": "ok"}]}],
    )
    with pytest.raises(MiniMindError, match=rf"{path}:1: conversations\[0\] \(user\): text contains the chat marker"):
        list(read_records(path, "sft"))


# ------------------------------------------------------------------ 10: --out must not destroy a model


@pytest.fixture(scope="module")
def base_model(tmp_path_factory, tok_dir):
    from minimind.checkpoint import save_model_dir
    from minimind.config import preset
    from minimind.model import MiniMindForCausalLM
    from minimind.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_dir(tok_dir)
    out = tmp_path_factory.mktemp("base") / "model"
    save_model_dir(MiniMindForCausalLM(preset("nano", tokenizer=tokenizer)).init_weights(0), out, tokenizer)
    return out


def _snapshot(d: Path) -> dict:
    return {p.relative_to(d): p.read_bytes() for p in d.rglob("*") if p.is_file()}


def test_out_equal_to_or_inside_init_is_refused(capsys, tmp_path, corpus, base_model):
    before = _snapshot(base_model)
    for out, words in (
        (base_model, "is the --init model"),
        (base_model / "sft", "is inside the --init model"),
        (Path(str(base_model) + "/./"), "is the --init model"),
    ):
        code, _, err = run_cli(
            capsys,
            "sft",
            "--data",
            corpus["sft"],
            "--init",
            base_model,
            "--out",
            out,
            "--max-steps",
            "1",
            "--no-progress",
        )
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err
    code, _, err = run_cli(
        capsys,
        "sft",
        "--data",
        corpus["sft"],
        "--init",
        base_model,
        "--out",
        base_model,
        "--overwrite",
        "--max-steps",
        "1",
        "--no-progress",
    )
    assert code == 2 and "is the --init model" in err  # no flag makes that one right
    assert _snapshot(base_model) == before and not (base_model / "sft").exists()


def test_out_holding_a_model_that_no_run_made_needs_overwrite(capsys, tmp_path, corpus, tok_dir, base_model):
    import shutil

    out = tmp_path / "mine"
    shutil.copytree(base_model, out)
    before = _snapshot(out)
    argv = pretrain_argv(corpus, tok_dir, out, 2)
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and "holds a model directory that no minimind pretrain run made there" in err
    assert "--overwrite" in err and _snapshot(out) == before
    code, _, err = run_cli(capsys, *argv, "--resume", "--overwrite")
    assert code == 2 and "choose one" in err
    code, stdout, err = run_cli(capsys, *argv, "--overwrite")
    assert code == 0, err
    assert _snapshot(out) != before and [p.name for p in list_checkpoints(out)] == ["step-00000002"]


def test_overwrite_replaces_a_run_and_another_stage_run_is_refused(tmp_path, corpus, tok_dir):
    out = tmp_path / "run"
    train(config(corpus, tok_dir, out, max_steps=6, eval_every=0))
    assert [p.name for p in list_checkpoints(out)] == ["step-00000003", "step-00000006"]
    # Another stage's run: refused even with --resume (it would not continue it).
    with pytest.raises(MiniMindError, match="holds a run of minimind pretrain, not of minimind sft"):
        train(config(corpus, tok_dir, out, stage="sft", data=[corpus["sft"]], init=None, resume=True))
    with pytest.raises(MiniMindError, match="pass --resume"):
        train(config(corpus, tok_dir, out, max_steps=6))
    # --overwrite: the old run's checkpoints go (else a later resume would pick its step 6).
    train(config(corpus, tok_dir, out, max_steps=2, eval_every=0, overwrite=True, seed=4))
    assert [p.name for p in list_checkpoints(out)] == ["step-00000002"]
    assert [r["step"] for r in metrics(out) if "loss" in r] == [2]  # log_every 4: the last step only


# ------------------------------------------------------------------ 11: a full disk during a checkpoint


@pytest.fixture(scope="module")
def reference(tmp_path_factory, corpus, tok_dir):
    """An uninterrupted run: 12 steps, a log line every 4, a checkpoint every 3, eval every 6."""
    return train(config(corpus, tok_dir, tmp_path_factory.mktemp("reference") / "run"))


def _weights(out):
    from safetensors.torch import load_file

    return load_file(str(Path(out) / "model.safetensors"))


@pytest.mark.parametrize("failure", ["oserror", "torch-runtimeerror"])
def test_full_disk_during_a_checkpoint_is_one_line_and_leaves_no_partial_checkpoint(
    monkeypatch, tmp_path, corpus, tok_dir, reference, failure
):
    real_save = torch.save

    def full_disk(obj, f, *a, **kw):
        if str(f).endswith("optimizer.pt") and ".step-00000006" in str(f):
            real_save(obj, f, *a, **kw)  # half the file is on disk when the space runs out
            Path(f).write_bytes(Path(f).read_bytes()[:100])
            if failure == "oserror":
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))
            raise RuntimeError(
                "[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing "
                "file data/3: file write failed"
            )
        return real_save(obj, f, *a, **kw)

    out = tmp_path / "run"
    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(MiniMindError) as e:
        train(config(corpus, tok_dir, out))
    message = str(e.value)
    assert "\n" not in message and str(out / "checkpoints" / "step-00000006") in message
    assert " free on that disk" in message and "continue with --resume" in message
    assert ("No space left on device" if failure == "oserror" else "file write failed") in message
    assert [p.name for p in list_checkpoints(out)] == ["step-00000003"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000003"]  # no staging folder left
    monkeypatch.setattr(torch, "save", real_save)
    train(config(corpus, tok_dir, out, resume=True))
    assert metrics(out) == metrics(reference)
    ref = _weights(reference)
    assert all(torch.equal(v, ref[k]) for k, v in _weights(out).items())


def test_full_disk_message_through_the_command(capsys, monkeypatch, tmp_path, corpus, tok_dir):
    import safetensors.torch

    def full_disk(*a, **kw):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    monkeypatch.setattr("minimind.checkpoint.save_file", full_disk)
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, *pretrain_argv(corpus, tok_dir, out, 1))
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert f"error: {out}/checkpoints/step-00000001/model.safetensors: cannot write (No space left on device;" in err
    assert "free on that disk); the earlier checkpoints are intact" in err
    assert list_checkpoints(out) == [] and not list((out / "checkpoints").iterdir())


# ------------------------------------------------------------------ 12: a corrupt optimizer.pt on --resume


class _Evil:
    def __reduce__(self):
        return os.system, ("touch /tmp/minimind-pwned-by-optimizer",)


def test_corrupt_or_malicious_training_state_is_one_line_naming_the_file(tmp_path, corpus, tok_dir):
    out = tmp_path / "run"
    train(config(corpus, tok_dir, out, max_steps=3, eval_every=0))
    ckpt = list_checkpoints(out)[-1]
    opt, state, rng = (ckpt / "train_state" / n for n in ("optimizer.pt", "state.json", "rng-rank0.pt"))
    good = {p: p.read_bytes() for p in (opt, state, rng)}
    real = torch.load(opt, weights_only=True)
    name = next(iter(real["optimizer"]["state"]))
    wrong_shape = {
        "optimizer": {
            **real["optimizer"],
            "state": {
                **real["optimizer"]["state"],
                name: {**real["optimizer"]["state"][name], "exp_avg": torch.zeros(3, 3)},
            },
        }
    }
    cases = [
        (opt, b"\x00garbage, not a torch file" * 10, "cannot read the optimizer state"),
        (opt, good[opt][: len(good[opt]) // 2], "cannot read the optimizer state"),
        (
            opt,
            pickle.dumps({"optimizer": _Evil()}, protocol=2),
            "not a tensors-only torch file, refused (Trying to load unsupported GLOBAL posix.system",
        ),
        (opt, lambda p: torch.save({"optimizer": "nope"}, p), "not an optimizer state"),
        (opt, lambda p: torch.save([1, 2], p), "not an optimizer state"),
        (
            opt,
            lambda p: torch.save(
                {"optimizer": {"state": {"no.such.param": {"exp_avg": torch.zeros(1)}}, "param_groups": []}}, p
            ),
            "which this model does not have",
        ),
        (opt, lambda p: torch.save(wrong_shape, p), "has shape (3, 3)"),
        (opt, None, "the optimizer state not found"),
        (state, b'{"step": 3, "epoch": ', "invalid JSON"),
        (state, b'{"step": "three"}', "'step' must be a whole number"),
        (state, b"[1, 2]", "expected a JSON object"),
        (rng, b"garbage", "cannot read the RNG state"),
        (rng, pickle.dumps(_Evil()), "cannot read the RNG state: not a tensors-only torch file, refused"),
        (rng, lambda p: torch.save({"torch": "x"}, p), "not an RNG state"),
    ]
    for target, content, words in cases:
        if content is None:
            target.unlink()
        elif callable(content):
            content(target)
        else:
            target.write_bytes(content)
        trainer = Trainer(config(corpus, tok_dir, out, max_steps=6, eval_every=0, resume=True))
        with pytest.raises(MiniMindError) as e:
            trainer.setup()
        message = str(e.value)
        assert message.startswith(str(target)) and words in message and "\n" not in message, (words, message)
        target.write_bytes(good[target])
    assert not Path("/tmp/minimind-pwned-by-optimizer").exists()
    train(config(corpus, tok_dir, out, max_steps=6, eval_every=0, resume=True))  # the intact state still resumes


# ------------------------------------------------------------------ 12b: metrics continue exactly


class Killed(Exception):
    """Stands in for SIGKILL: the run stops dead, without a final save or a clean-up."""


def _run_until_killed(monkeypatch, cfg, step, after_save: bool):
    real_save = Trainer._save

    def save(self):
        if self.step == step and not after_save:
            raise Killed
        real_save(self)
        if self.step == step:
            raise Killed

    monkeypatch.setattr(Trainer, "_save", save)
    with pytest.raises(Killed):
        train(cfg)
    monkeypatch.setattr(Trainer, "_save", real_save)


def test_metrics_continue_line_for_line_after_kills_between_log_steps(
    monkeypatch, tmp_path, corpus, tok_dir, reference
):
    """Logs at 4, 8, 12, checkpoints at 3, 6, 9, 12: every kill leaves a logging window open
    (or lines logged after the newest checkpoint). The resumed run's metrics.jsonl equals the
    uninterrupted run's, line for line: loss, tokens, lr, grad_norm, epoch, val_loss."""
    out = tmp_path / "run"
    cfg = config(corpus, tok_dir, out, resume=True)
    _run_until_killed(monkeypatch, cfg, 6, after_save=True)  # window of steps 5-6 open in checkpoint 6
    assert [r["step"] for r in metrics(out)] == [4, 6]  # (6: the evaluation)
    _run_until_killed(monkeypatch, cfg, 9, after_save=False)  # killed after logging step 8, before saving 9
    assert [r["step"] for r in metrics(out)] == [4, 6, 8]  # step 8 was logged from a checkpoint now lost
    _run_until_killed(monkeypatch, cfg, 9, after_save=True)  # window of step 9 open in checkpoint 9
    train(cfg)
    assert metrics(out) == metrics(reference)
    state = json.loads((list_checkpoints(reference)[0] / "train_state" / "state.json").read_text())
    assert state["step"] == 6 and state["tokens_at_step"] > state["tokens_seen"] > 0  # the count at the step itself
    ref = _weights(reference)
    assert all(torch.equal(v, ref[k]) for k, v in _weights(out).items())


def test_a_torn_last_metrics_line_is_dropped_on_resume(tmp_path, corpus, tok_dir, reference):
    out = tmp_path / "run"
    train(config(corpus, tok_dir, out, max_steps=12, eval_every=6))
    import shutil

    for p in list_checkpoints(out)[1:]:
        shutil.rmtree(p)  # the run "died" after checkpoint 6 ...
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 13, "loss": 1.2')  # ... in the middle of writing a line
    train(config(corpus, tok_dir, out, resume=True))
    assert metrics(out) == metrics(reference)


# ================================================================== the battery
# Malformed data, tokenizer, model and checkpoint files, each through the real entry points
# (`minimind data check` with and without --tokenizer, the tokenizing reader that pretrain and
# sft use, `minimind chat`, `minimind pretrain --resume`). Every outcome is counted:
#   clear      one error that names the file (and FILE:LINE for a record, the field where it applies)
#   unclear    an error that does not say where
#   traceback  any other exception
#   accepted   the file went through as if it were good: garbage accepted
# The target, asserted: 0 tracebacks, 0 unclear, 0 garbage accepted.


def _nested(depth: int) -> str:
    return '{"text": ' + "[" * depth + "]" * depth + "}\n"


OK_PRE = '{"text": "fine"}\n'
U, A = {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}


def _conv(*messages, **extra) -> str:
    return json.dumps({"conversations": list(messages), **extra}) + "\n"


# (name, kind, file content (str or bytes), where the error must point: a line number, or None
# for the whole file, and a word of the reason)
DATA_CASES = [
    # pretrain {"text"}: broken JSON at various columns, wrong types, missing fields
    ("json-not-json", "pretrain", OK_PRE + "not json\n", 2, "invalid JSON"),
    ("json-truncated-object", "pretrain", '{"text": "abc"\n', 1, "invalid JSON"),
    ("json-trailing-comma", "pretrain", OK_PRE * 3 + '{"text": "a",}\n', 4, "invalid JSON"),
    ("json-single-quotes", "pretrain", "{'text': 'a'}\n", 1, "invalid JSON"),
    ("json-two-objects-one-line", "pretrain", '{"text": "a"}{"text": "b"}\n', 1, "invalid JSON"),
    ("json-unterminated-string", "pretrain", '{"text": "never ends}\n', 1, "invalid JSON"),
    ("json-raw-control-char", "pretrain", '{"text": "tab\there"}\n', 1, "invalid JSON"),
    ("json-nested-too-deep", "pretrain", _nested(100_000), 1, "nested too deeply"),
    ("json-huge-unterminated-line", "pretrain", OK_PRE + '{"text": "' + "x" * 3_000_000 + "\n", 2, "invalid JSON"),
    ("text-number", "pretrain", '{"text": 5}\n', 1, "'text' must be a string"),
    ("text-null", "pretrain", '{"text": null}\n', 1, "missing 'text'"),
    ("text-list", "pretrain", '{"text": ["a", "b"]}\n', 1, "'text' must be a string"),
    ("text-object", "pretrain", '{"text": {"a": 1}}\n', 1, "'text' must be a string"),
    ("text-bool", "pretrain", '{"text": true}\n', 1, "'text' must be a string"),
    ("text-nan", "pretrain", '{"text": NaN}\n', 1, "'text' must be a string"),
    ("text-missing", "pretrain", '{"txt": "typo"}\n', 1, "missing 'text'"),
    ("text-empty", "pretrain", '{"text": ""}\n', 1, "empty 'text'"),
    ("text-whitespace", "pretrain", '{"text": " \\n\\t "}\n', 1, "empty 'text'"),
    ("record-list", "pretrain", '["text", "a"]\n', 1, "expected a JSON object"),
    ("record-string", "pretrain", '"just a string"\n', 1, "expected a JSON object"),
    ("record-number", "pretrain", "42\n", 1, "expected a JSON object"),
    ("record-null", "pretrain", "null\n", 1, "expected a JSON object"),
    ("surrogate-high", "pretrain", OK_PRE + '{"text": "a\\ud800b"}\n', 2, "lone UTF-16 surrogate"),
    ("surrogate-low", "pretrain", '{"text": "\\udfff"}\n', 1, "lone UTF-16 surrogate"),
    ("surrogate-reversed-pair", "pretrain", '{"text": "\\ude00\\ud83d"}\n', 1, "lone UTF-16 surrogate"),
    ("surrogate-in-key", "pretrain", '{"text": "ok", "\\ud800": 1}\n', 1, "lone UTF-16 surrogate"),
    ("surrogate-in-extra-field", "pretrain", '{"text": "ok", "meta": ["\\udbff"]}\n', 1, "'meta[0]'"),
    ("bom-on-line-2", "pretrain", OK_PRE.encode() + b"\xef\xbb\xbf" + OK_PRE.encode(), 2, "invalid JSON"),
    ("utf16-file", "pretrain", '{"text": "utf-16 text"}\n'.encode("utf-16"), 1, "invalid UTF-8"),
    ("latin1-bytes", "pretrain", OK_PRE.encode() + '{"text": "caf\xe9"}\n'.encode("latin-1"), 2, "invalid UTF-8"),
    ("invalid-utf8-ff", "pretrain", b'{"text": "\xff\xfe"}\n', 1, "invalid UTF-8"),
    ("nul-bytes", "pretrain", OK_PRE + "\x00\x00\x00\n", 2, "invalid JSON"),
    ("binary-garbage", "pretrain", bytes(range(256)) * 4, 1, "invalid"),
    ("empty-file", "pretrain", "", None, "no records"),
    ("blank-lines-only", "pretrain", "\n \n\t\n\n", None, "no records"),
    ("bom-only", "pretrain", b"\xef\xbb\xbf\n", None, "no records"),
    ("sft-data-as-pretrain", "pretrain", _conv(U, A), 1, "missing 'text'"),
    # sft {"conversations"}
    ("sft-conversations-string", "sft", '{"conversations": "hi"}\n', 1, "must be a list of messages"),
    ("sft-conversations-empty", "sft", '{"conversations": []}\n', 1, "is empty"),
    ("sft-conversations-missing", "sft", '{"text": "pretrain data"}\n', 1, "missing 'conversations'"),
    ("sft-message-string", "sft", '{"conversations": ["hi", "hello"]}\n', 1, "conversations[0] must be an object"),
    ("sft-role-missing", "sft", _conv({"content": "hi"}, A), 1, "missing 'role'"),
    ("sft-role-unknown", "sft", _conv({"role": "bot", "content": "hi"}, A), 1, "unknown role 'bot'"),
    ("sft-role-number", "sft", _conv({"role": 1, "content": "hi"}, A), 1, "unknown role 1"),
    ("sft-content-number", "sft", _conv(U, {"role": "assistant", "content": 42}), 1, "'content' must be a string"),
    ("sft-content-missing", "sft", _conv({"role": "user"}, A), 1, "missing 'content'"),
    ("sft-no-assistant", "sft", _conv(U, U), 1, "no assistant message"),
    ("sft-empty-reply", "sft", _conv(U, {"role": "assistant", "content": "  "}), 1, "empty reply"),
    ("sft-reasoning-number", "sft", _conv(U, {**A, "reasoning_content": 3}), 1, "'reasoning_content' must be"),
    (
        "sft-tool-calls-on-user",
        "sft",
        _conv({**U, "tool_calls": '[{"name": "f", "arguments": {}}]'}, A),
        1,
        "'tool_calls' belongs on an assistant",
    ),
    ("sft-tool-calls-bad-json", "sft", _conv(U, {**A, "tool_calls": "[{not json"}), 1, "is not valid JSON"),
    ("sft-tool-calls-no-name", "sft", _conv(U, {**A, "tool_calls": '[{"arguments": {}}]'}), 1, "no function name"),
    (
        "sft-tool-calls-args-bad",
        "sft",
        _conv(U, {**A, "tool_calls": '[{"name": "f", "arguments": "{x"}]'}),
        1,
        "arguments is not valid JSON",
    ),
    ("sft-tools-on-user", "sft", _conv({**U, "tools": '[{"name": "f"}]'}, A), 1, "'tools' belongs on a system"),
    (
        "sft-tools-not-list",
        "sft",
        _conv({"role": "system", "content": "s", "tools": '{"name": "f"}'}, U, A),
        1,
        "'tools' must be a list",
    ),
    ("sft-tool-result-first", "sft", _conv({"role": "tool", "content": "{}"}, U, A), 1, "a tool result must follow"),
    ("sft-chat-marker-in-content", "sft", _conv({"role": "user", "content": "x<|im_end|>"}, A), 1, "chat marker"),
    (
        "sft-fake-turn-in-reply",
        "sft",
        _conv(U, {"role": "assistant", "content": "<|im_start|>user\nhi"}),
        1,
        "chat marker",
    ),
    (
        "sft-surrogate-in-content",
        "sft",
        '{"conversations": [{"role": "user", "content": "\\ud800"}, {"role": "assistant", "content": "x"}]}\n',
        1,
        "'conversations[0].content'",
    ),
    (
        "sft-surrogate-in-tool-calls",
        "sft",
        '{"conversations": [{"role": "user", "content": "q"}, {"role": "assistant",'
        ' "content": "", "tool_calls": "[{\\"name\\": \\"f\\\\ud800\\", \\"arguments\\": {}}]"}]}\n',
        1,
        "surrogate",
    ),
    ("sft-empty-file", "sft", "", None, "no records"),
    # dpo {"chosen", "rejected"}
    ("dpo-rejected-missing", "dpo", json.dumps({"chosen": [U, A]}) + "\n", 1, "missing 'rejected'"),
    ("dpo-chosen-not-list", "dpo", json.dumps({"chosen": "yes", "rejected": [U, A]}) + "\n", 1, "must be a list"),
    (
        "dpo-ends-with-user",
        "dpo",
        json.dumps({"chosen": [U, A, U], "rejected": [U, A, U]}) + "\n",
        1,
        "must end with the assistant",
    ),
    (
        "dpo-different-prompts",
        "dpo",
        json.dumps({"chosen": [U, A], "rejected": [{**U, "content": "other"}, A]}) + "\n",
        1,
        "different prompts",
    ),
    (
        "dpo-surrogate",
        "dpo",
        '{"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], '
        '"rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "\\udc01"}]}\n',
        1,
        "'rejected[1].content'",
    ),
    ("dpo-blank-file", "dpo", "\n\n", None, "no records"),
    # rl {"conversations", "gt"}
    ("rl-no-user", "rl", _conv({"role": "system", "content": "s"}, A), 1, "no user message"),
    ("rl-gt-not-list", "rl", _conv(U, A, gt="42"), 1, "'gt' must be a list"),
    ("rl-gt-object", "rl", _conv(U, A, gt=[{"a": 1}]), 1, "gt[0] must be a string or a number"),
    ("rl-gt-bool", "rl", _conv(U, A, gt=[True]), 1, "gt[0] must be a string or a number"),
    ("rl-conversations-missing", "rl", json.dumps({"gt": ["1"]}) + "\n", 1, "missing 'conversations'"),
]


class Tally:
    def __init__(self):
        self.counts = {"clear": 0, "unclear": 0, "traceback": 0, "accepted": 0}
        self.bad: list[str] = []

    def add(self, name: str, outcome: str, detail: str = "") -> None:
        self.counts[outcome] += 1
        if outcome != "clear":
            self.bad.append(f"{name}: {outcome}: {detail[:500]}")


def _attempt(fn) -> tuple[str, str]:
    """Run an entry point: ("ok", ""), ("error", message) or ("traceback", the traceback).
    An int is an exit status (the CLI's main returns 2 after printing a MiniMindError)."""
    import traceback

    try:
        result = fn()
    except MiniMindError as e:
        return "error", str(e)
    except SystemExit as e:
        return ("ok", "") if e.code in (0, None) else ("error", "")
    except Exception:
        return "traceback", traceback.format_exc()
    return ("error", "") if isinstance(result, int) and result != 0 else ("ok", "")


def _cli(capsys, *argv) -> tuple[str, str]:
    """`minimind ARGV` in this process: (status, stdout + stderr)."""
    status, detail = _attempt(lambda: main([str(a) for a in argv]))
    out, err = capsys.readouterr()
    if "Traceback" in err:
        status = "traceback"
    return status, detail + out + err


def _judge(status: str, text: str, must: list[str]) -> str:
    if status == "traceback":
        return "traceback"
    if status == "ok":
        return "accepted"
    return "clear" if all(m in text for m in must) else "unclear"


def test_battery_of_malformed_data_files(capsys, tmp_path, tok, tok_dir):
    from minimind.data.datasets import build_datasets
    from minimind.data.pairs import build_pair_datasets

    tally = Tally()
    assert len(DATA_CASES) >= 60
    for name, kind, content, line, reason in DATA_CASES:
        path = tmp_path / f"{name}.jsonl"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        where = f"{path}:{line}: " if line else f"{path}: "
        outcomes = []
        # `minimind data check`, with and without a tokenizer (it exits 1 on problems)
        for extra in ((), ("--tokenizer", tok_dir)):
            status, text = _cli(capsys, "data", "check", path, "--kind", kind, *extra)  # (exit 1 on problems)
            outcomes.append(_judge(status, text, [where, reason]))
        # what the training stages read the file with (the first bad record stops them)
        reader = {
            "pretrain": lambda p=path: build_datasets(p, tok, "pretrain", 64, cache_dir=tmp_path / "cache"),
            "sft": lambda p=path: build_datasets(p, tok, "sft", 64, cache_dir=tmp_path / "cache"),
            "dpo": lambda p=path: build_pair_datasets(p, tok, 64),
        }.get(kind)  # (rl: no trainer yet)
        if reader is not None:
            status, text = _attempt(reader)
            outcomes.append(_judge(status, text, [where, reason]))
        worst = next((o for o in ("traceback", "accepted", "unclear") if o in outcomes), "clear")
        tally.add(name, worst, f"{outcomes} {text}")
    print(f"\nbattery (data files, {len(DATA_CASES)}): {tally.counts}")
    assert tally.counts["clear"] == len(DATA_CASES), "\n".join(tally.bad)


def _tokenizer_cases(tok_dir: Path) -> list:
    """(name, how to break a copy of the tokenizer directory, the file the error must name)."""
    tj, tc = "tokenizer.json", "tokenizer_config.json"
    good_json = (tok_dir / tj).read_text()
    config = json.loads((tok_dir / tc).read_text())
    return [
        ("tok-dir-missing", lambda d: __import__("shutil").rmtree(d), ""),
        ("tok-json-missing", lambda d: (d / tj).unlink(), tj),
        ("tok-json-invalid", lambda d: (d / tj).write_text('{"model": '), tj),
        ("tok-json-empty", lambda d: (d / tj).write_text(""), tj),
        ("tok-json-truncated", lambda d: (d / tj).write_text(good_json[: len(good_json) // 2]), tj),
        ("tok-json-not-a-tokenizer", lambda d: (d / tj).write_text("{}"), tj),
        ("tok-json-binary", lambda d: (d / tj).write_bytes(bytes(range(256))), tj),
        ("tok-json-a-list", lambda d: (d / tj).write_text("[1, 2, 3]"), tj),
        ("tok-config-missing", lambda d: (d / tc).unlink(), tc),
        ("tok-config-a-list", lambda d: (d / tc).write_text("[]"), tc),
        ("tok-config-invalid", lambda d: (d / tc).write_text("{'a': 1}"), tc),
        ("tok-config-bos-unknown", lambda d: (d / tc).write_text(json.dumps({**config, "bos_token": "<nope>"})), tc),
        ("tok-config-template-number", lambda d: (d / tc).write_text(json.dumps({**config, "chat_template": 5})), tc),
        (
            "tok-config-template-broken",
            lambda d: (d / tc).write_text(
                json.dumps({**config, "chat_template": "{% for m in messages %}{{ m.content "})
            ),
            tc,
        ),
    ]


def _model_cases(base: Path) -> list:
    """(name, how to break a copy of a model directory, the file the error must name)."""
    from safetensors.torch import load_file, save_file

    from minimind.config import preset
    from minimind.model import MiniMindForCausalLM

    cj, st = "config.json", "model.safetensors"
    config = json.loads((base / cj).read_text())
    weights = (base / st).read_bytes()

    def edit_weights(fn):
        def apply(d):
            sd = load_file(str(d / st))
            fn(sd)
            save_file(sd, str(d / st))

        return apply

    def other_shape(d):
        other = MiniMindForCausalLM(preset("nano", vocab_size=config["vocab_size"], hidden_size=64))
        save_file({k: v.contiguous() for k, v in other.state_dict().items() if k != "lm_head.weight"}, str(d / st))

    def huge_header(d):  # a header length far beyond the file: must not allocate or crash
        (d / st).write_bytes((2**40).to_bytes(8, "little") + b"{}")

    return [
        ("model-dir-missing", lambda d: __import__("shutil").rmtree(d), ""),
        ("config-missing", lambda d: (d / cj).unlink(), cj),
        ("config-empty", lambda d: (d / cj).write_text(""), cj),
        ("config-invalid-json", lambda d: (d / cj).write_text('{"hidden_size": 128,'), cj),
        ("config-a-list", lambda d: (d / cj).write_text("[128]"), cj),
        ("config-hidden-size-string", lambda d: (d / cj).write_text(json.dumps({**config, "hidden_size": "128"})), cj),
        ("config-layers-negative", lambda d: (d / cj).write_text(json.dumps({**config, "num_hidden_layers": -2})), cj),
        (
            "config-heads-not-dividing",
            lambda d: (d / cj).write_text(json.dumps({**config, "num_attention_heads": 3})),
            cj,
        ),
        ("config-vocab-too-small", lambda d: (d / cj).write_text(json.dumps({**config, "vocab_size": 100})), ""),
        ("weights-missing", lambda d: (d / st).unlink(), st),
        ("weights-empty", lambda d: (d / st).write_bytes(b""), st),
        ("weights-truncated", lambda d: (d / st).write_bytes(weights[: len(weights) // 2]), st),
        ("weights-header-only", lambda d: (d / st).write_bytes(weights[:200]), st),
        ("weights-garbage", lambda d: (d / st).write_bytes(os.urandom(4096)), st),
        ("weights-huge-header-length", huge_header, st),
        ("weights-a-pickle", lambda d: (d / st).write_bytes(pickle.dumps({"a": 1})), st),
        ("weights-wrong-shape", other_shape, st),
        ("weights-tensor-missing", edit_weights(lambda sd: sd.pop("model.norm.weight")), st),
        ("weights-tensor-extra", edit_weights(lambda sd: sd.update(extra=torch.zeros(2))), st),
        (
            "weights-tied-head-differs",
            edit_weights(lambda sd: sd.update({"lm_head.weight": sd["model.embed_tokens.weight"] + 1})),
            st,
        ),
    ]


def _checkpoint_cases() -> list:
    """(name, how to break the newest checkpoint of a run, the file the error must name)."""
    from safetensors.torch import load_file, save_file

    ts = "train_state"

    def write(name, content):
        return lambda c: (c / name).write_bytes(content)

    return [
        ("ckpt-optimizer-garbage", write(f"{ts}/optimizer.pt", b"\x80\x02garbage" * 30), f"{ts}/optimizer.pt"),
        ("ckpt-optimizer-empty", write(f"{ts}/optimizer.pt", b""), f"{ts}/optimizer.pt"),
        (
            "ckpt-optimizer-truncated",
            lambda c: (c / ts / "optimizer.pt").write_bytes((c / ts / "optimizer.pt").read_bytes()[:300]),
            f"{ts}/optimizer.pt",
        ),
        (
            "ckpt-optimizer-malicious",
            write(f"{ts}/optimizer.pt", pickle.dumps({"optimizer": _Evil()}, protocol=2)),
            f"{ts}/optimizer.pt",
        ),
        (
            "ckpt-optimizer-not-a-dict",
            lambda c: torch.save(torch.zeros(3), c / ts / "optimizer.pt"),
            f"{ts}/optimizer.pt",
        ),
        ("ckpt-optimizer-missing", lambda c: (c / ts / "optimizer.pt").unlink(), f"{ts}/optimizer.pt"),
        ("ckpt-state-invalid-json", write(f"{ts}/state.json", b'{"step": '), f"{ts}/state.json"),
        ("ckpt-state-step-negative", write(f"{ts}/state.json", b'{"step": -5, "epoch": 0}'), f"{ts}/state.json"),
        ("ckpt-state-not-utf8", write(f"{ts}/state.json", b"\xff\xfe{}"), f"{ts}/state.json"),
        ("ckpt-state-run-a-string", write(f"{ts}/state.json", b'{"step": 3, "run": "pretrain"}'), f"{ts}/state.json"),
        ("ckpt-rng-garbage", write(f"{ts}/rng-rank0.pt", b"not a torch file"), f"{ts}/rng-rank0.pt"),
        (
            "ckpt-rng-wrong-content",
            lambda c: torch.save({"torch": torch.zeros(3)}, c / ts / "rng-rank0.pt"),
            f"{ts}/rng-rank0.pt",
        ),
        (
            "ckpt-weights-truncated",
            lambda c: (c / "model.safetensors").write_bytes((c / "model.safetensors").read_bytes()[:1000]),
            "model.safetensors",
        ),
        (
            "ckpt-weights-tensor-missing",
            lambda c: save_file(
                {k: v for k, v in load_file(str(c / "model.safetensors")).items() if k != "model.norm.weight"},
                str(c / "model.safetensors"),
            ),
            "model.safetensors",
        ),
        (
            "ckpt-settings-differ",
            lambda c: (c / ts / "state.json").write_text(
                json.dumps(
                    {**(s := json.loads((c / ts / "state.json").read_text())), "run": {**s["run"], "seq_len": 96}}
                )
            ),
            "",
        ),
    ]


def test_battery_of_broken_tokenizer_model_and_checkpoint_files(capsys, tmp_path, corpus, tok_dir, base_model):
    """Tokenizer directories through `minimind data check --tokenizer`, model directories through
    `minimind chat` (the loader of chat, serve, eval and export), checkpoints through
    `minimind pretrain --resume`."""
    import shutil

    tally, n = Tally(), 0
    data = write_jsonl(tmp_path / "chats.jsonl", [{"conversations": [U, A]}])
    for name, breaks, file in _tokenizer_cases(tok_dir):
        d = tmp_path / name
        shutil.copytree(tok_dir, d)
        breaks(d)
        status, text = _cli(capsys, "data", "check", data, "--kind", "sft", "--tokenizer", d)
        tally.add(name, _judge(status, text, [str(d / file) if file else str(d)]), text)
        n += 1
    for name, breaks, file in _model_cases(base_model):
        d = tmp_path / name
        shutil.copytree(base_model, d)
        breaks(d)
        status, text = _cli(
            capsys, "chat", "--model", d, "--prompt", "hi", "--max-new-tokens", "2", "--temperature", "0"
        )
        tally.add(name, _judge(status, text, [str(d / file) if file else str(d)]), text)
        n += 1
    run = tmp_path / "run"
    argv = pretrain_argv(corpus, tok_dir, run, 3, "--save-every", "3", "--val-fraction", "0", "--seed", "3")
    assert _cli(capsys, *argv)[0] == "ok"
    ckpt = list_checkpoints(run)[-1]
    pristine = tmp_path / "pristine"
    shutil.copytree(ckpt, pristine)
    argv[argv.index("--max-steps") + 1] = "4"
    for name, breaks, file in _checkpoint_cases():
        shutil.rmtree(ckpt)
        shutil.copytree(pristine, ckpt)
        breaks(ckpt)
        status, text = _cli(capsys, *argv, "--resume")
        tally.add(name, _judge(status, text, [str(ckpt / file)]), text)
        n += 1
    assert not Path("/tmp/minimind-pwned-by-optimizer").exists()
    print(f"\nbattery (tokenizer, model and checkpoint files, {n}): {tally.counts}")
    assert tally.counts["clear"] == n, "\n".join(tally.bad)


def test_battery_subset_through_the_installed_command(tmp_path, corpus, tok_dir, base_model):
    """A representative few, through the real `minimind` executable: one `error:` line (or the
    data report), exit status 1 or 2, never a traceback."""
    import shutil
    import subprocess
    import sys

    exe = str(Path(sys.executable).parent / "minimind")
    sur = tmp_path / "sur.jsonl"
    sur.write_text(SURROGATE_SFT)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    truncated = tmp_path / "truncated"
    shutil.copytree(base_model, truncated)
    (truncated / "model.safetensors").write_bytes((truncated / "model.safetensors").read_bytes()[:500])
    cases = [
        (
            [exe, "data", "check", sur, "--kind", "sft", "--tokenizer", tok_dir],
            1,
            f"{sur}:1: 'conversations[1].content'",
        ),
        ([exe, "data", "check", empty, "--kind", "pretrain"], 1, f"{empty}: no records"),
        ([exe, "chat", "--model", truncated, "--prompt", "hi"], 2, f"error: {truncated / 'model.safetensors'}: "),
        (
            [exe, "sft", "--data", corpus["sft"], "--init", base_model, "--out", base_model / "x"],
            2,
            "is inside the --init model directory",
        ),
        (
            [
                exe,
                "pretrain",
                "--data",
                sur,
                "--preset",
                "nano",
                "--tokenizer",
                tok_dir,
                "--out",
                tmp_path / "o",
                "--cache-dir",
                corpus["cache"],
            ],
            2,
            f"error: {sur}:1: 'conversations[1].content' contains a lone UTF-16",
        ),
    ]
    for argv, code, words in cases:
        done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=240)
        assert done.returncode == code and words in done.stdout + done.stderr, (argv, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) <= 1, done.stderr
