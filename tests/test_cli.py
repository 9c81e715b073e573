"""The `minimind` command, run as a user runs it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from minimind.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_info_json_reports_original_sizes(capsys):
    code, out, _ = run(capsys, "info", "--preset", "minimind3-moe", "--json")
    info = json.loads(out)
    assert code == 0
    assert round(info["params_total"] / 1e6, 2) == 198.42
    assert round(info["params_active"] / 1e6, 2) == 63.94
    assert info["memory"]["bf16"]["kv_cache_bytes"] == 8 * 512 * 12 * 1024  # 12 KiB per token


def test_info_table(capsys):
    code, out, _ = run(capsys, "info", "--preset", "minimind2-small", "--batch-size", "4", "--seq-len", "256")
    assert code == 0
    assert "25.83M parameters" in out and "batch 4 x 256" in out and "training" in out


def test_unknown_preset_is_one_line_error(capsys):
    code, out, err = run(capsys, "info", "--preset", "gpt5")
    assert code == 2 and err.startswith("error: unknown preset 'gpt5'") and err.count("\n") == 1


def test_init_writes_a_loadable_model_directory(capsys, tmp_path, tok_dir):
    out_dir = tmp_path / "tiny"
    code, out, _ = run(
        capsys, "init", "--preset", "nano", "--tokenizer", str(tok_dir), "--out", str(out_dir), "--seed", "7"
    )
    assert code == 0 and "nano" in out
    assert {p.name for p in out_dir.iterdir()} == {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    }
    import minimind

    model, tokenizer = minimind.load(out_dir)
    assert model.config.vocab_size == tokenizer.vocab_size == 6400
    code, out, _ = run(capsys, "info", "--model", str(out_dir))
    assert code == 0 and "1.21M parameters" in out
    # same seed, same weights; a non-empty --out is refused without --force
    code, _, err = run(capsys, "init", "--preset", "nano", "--tokenizer", str(tok_dir), "--out", str(out_dir))
    assert code == 2 and "not empty" in err


def test_init_with_missing_tokenizer_names_the_file(capsys, tmp_path):
    code, _, err = run(
        capsys, "init", "--preset", "nano", "--tokenizer", str(tmp_path / "none"), "--out", str(tmp_path / "m")
    )
    assert code == 2 and str(tmp_path / "none") in err


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "minimind"  # installed by pip beside python
    assert script.exists(), "the `minimind` console script is not installed"
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "info" in done.stdout and "chat" in done.stdout


# ---------------------------------------------------------------- chat


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, tok_dir):
    out = tmp_path_factory.mktemp("chat") / "nano"
    assert main(["init", "--preset", "nano", "--tokenizer", str(tok_dir), "--out", str(out)]) == 0
    return out


def chat_cli(model_dir, *extra, stdin=None):
    script = Path(sys.executable).parent / "minimind"
    return subprocess.run(
        [str(script), "chat", "--model", str(model_dir), "--max-new-tokens", "12", *extra],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_chat_prompt_answers_once_and_is_seeded(tiny_model_dir):
    first = chat_cli(tiny_model_dir, "--prompt", "你好", "--seed", "3")
    again = chat_cli(tiny_model_dir, "--prompt", "你好", "--seed", "3")
    assert first.returncode == 0, first.stderr
    assert first.stdout == again.stdout and first.stdout.strip()
    assert "tokens/s" in first.stderr and "12 tokens" in first.stderr


def test_chat_repl_commands(tiny_model_dir):
    done = chat_cli(
        tiny_model_dir, "--temperature", "0", stdin="hello\n/think\nwhy?\n/reset\n/bogus\n/help\n/exit\nnot read\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("tokens/s") == 2  # two replies, then /exit stops reading
    assert "(thinking on)" in done.stderr and "(conversation cleared)" in done.stderr
    assert "unknown command /bogus" in done.stderr and "/reset" in done.stderr
    assert "<think>" in done.stdout  # the thinking reply shows its opened block


def test_chat_session_keeps_history_and_thinking(tiny_model_dir):
    import io

    import minimind
    from minimind.infer import SamplingParams, chat
    from minimind.infer.repl import ChatSession

    assert callable(chat)  # the REPL module must not shadow the chat() function

    model, tokenizer = minimind.load(tiny_model_dir)
    out, status = io.StringIO(), io.StringIO()
    session = ChatSession(
        model, tokenizer, SamplingParams(max_new_tokens=5, temperature=0), system="be brief", out=out, status=status
    )
    first = session.reply("hi")
    assert [m["role"] for m in session.history] == ["user", "assistant"]
    assert session.history[1]["content"] == first
    ids = session.prompt_ids("again")
    text = tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhi<|im_end|>")
    assert text.endswith("<|im_start|>user\nagain<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")
    session.think = True
    assert tokenizer.decode(session.prompt_ids("x")).endswith("<|im_start|>assistant\n<think>\n")
    session.raw = True
    assert session.prompt_ids("once upon") == [tokenizer.bos_token_id] + tokenizer.encode("once upon")


def test_chat_with_missing_model_is_one_line_error(tmp_path):
    done = chat_cli(tmp_path / "none", "--prompt", "hi")
    assert done.returncode == 2 and done.stderr.startswith("error:") and done.stderr.count("\n") == 1


def test_help_does_not_import_torch():
    # Every verb imports what it needs when it runs: `minimind --help` (and the parsers of all
    # verbs) must stay instant, not pay seconds for torch.
    code = (
        "import sys; from minimind.cli import build_parser; build_parser(); "
        "heavy = [m for m in ('torch', 'numpy', 'fastapi', 'lm_eval', 'matplotlib') if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
