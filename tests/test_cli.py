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


def test_init_writes_a_loadable_model_directory(capsys, tmp_path, shared_data):
    out_dir = tmp_path / "tiny"
    code, out, _ = run(capsys, "init", "--preset", "nano", "--tokenizer", str(shared_data / "tokenizer" / "minimind3"),
                       "--out", str(out_dir), "--seed", "7")
    assert code == 0 and "nano" in out
    assert {p.name for p in out_dir.iterdir()} == {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}
    import minimind

    model, tokenizer = minimind.load(out_dir)
    assert model.config.vocab_size == tokenizer.vocab_size == 6400
    code, out, _ = run(capsys, "info", "--model", str(out_dir))
    assert code == 0 and "1.21M parameters" in out
    # same seed, same weights; a non-empty --out is refused without --force
    code, _, err = run(capsys, "init", "--preset", "nano", "--tokenizer", str(shared_data / "tokenizer" / "minimind3"),
                       "--out", str(out_dir))
    assert code == 2 and "not empty" in err


def test_init_with_missing_tokenizer_names_the_file(capsys, tmp_path):
    code, _, err = run(capsys, "init", "--preset", "nano", "--tokenizer", str(tmp_path / "none"), "--out", str(tmp_path / "m"))
    assert code == 2 and str(tmp_path / "none") in err


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "minimind"  # installed by pip beside python
    assert script.exists(), "the `minimind` console script is not installed"
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "info" in done.stdout and "chat" in done.stdout
