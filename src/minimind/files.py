"""Reading and writing files safely: one clear error line on read, never half a file on write."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from .errors import MiniMindError

# The process's umask, read once at import: reading it means setting it, which must not race
# with other threads creating files.
_UMASK = os.umask(0)
os.umask(_UMASK)


def read_json(path: str | Path):
    """Parse a JSON file; a missing file, invalid JSON or non-UTF-8 text is a MiniMindError
    naming the file (and the line, MiniMind's FILE:LINE style)."""
    path = Path(path)
    if not path.is_file():
        raise MiniMindError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise MiniMindError(f"{path}:{e.lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
    except UnicodeDecodeError as e:
        raise MiniMindError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def read_json_object(path: str | Path) -> dict:
    """read_json for files that must hold one JSON object (configs)."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise MiniMindError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def atomic_write(path: str | Path, write) -> None:
    """Call `write(tmp_path)`, fsync, then rename over `path`: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def read_safetensors(path: str | Path, what: str) -> dict:
    """All tensors of a safetensors file; a missing or broken file is one MiniMindError line
    (`what` names the file for the user: "weights file", "adapter weights")."""
    # Imported here, not at the top: safetensors.torch imports torch, and this module is
    # imported while the CLI builds its parsers (`minimind --help` must not pay for torch).
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise MiniMindError(f"{path}: {what} not found")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise MiniMindError(f"{path}: not a valid safetensors file ({e})") from None
