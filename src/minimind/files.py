"""Reading and writing files safely: one clear error line on read, never half a file on write."""

from __future__ import annotations

import json
import os
import shutil
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


def _size(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:,} bytes" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def free_space(path: str | Path) -> str:
    """The free space on the disk that holds `path` (or its nearest existing parent), as
    '1.2 GB free', for error messages."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return f"{_size(shutil.disk_usage(p).free)} free"
    except OSError:
        return "free space unknown"


class WriteFailed(MiniMindError):
    """A failed write, as one line; `path` and `reason` for callers that say more (a checkpoint)."""

    def __init__(self, path, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path}: cannot write ({reason}; {free_space(path)} on that disk)")


def write_error(path: str | Path, e: BaseException) -> WriteFailed:
    """A failed write (a full disk, no permission, ...) as one line: the path, the reason and
    the free space there. Raise it `from None`: the user needs no traceback."""
    if isinstance(e, WriteFailed):
        return e
    if isinstance(e, OSError) and e.strerror:
        reason = e.strerror
    else:  # torch.save's RuntimeError, safetensors' error: their first line
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    return WriteFailed(path, reason)


# What a failed write raises: OSError, or torch.save's RuntimeError and safetensors' error
# wrapping one (full disk: "file write failed", "IoError(Os { code: 28 ... })").
def write_errors() -> tuple:
    from safetensors import SafetensorError  # (here: keeps `minimind --help` fast)

    return OSError, RuntimeError, SafetensorError, WriteFailed


def atomic_write(path: str | Path, write) -> None:
    """Call `write(tmp_path)`, fsync, then rename over `path`: readers never see half a file.
    A failed write (a full disk) leaves the old file, removes the temporary one and raises a
    one-line MiniMindError naming `path` and the free space."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise write_error(path, e) from None
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except OSError as e:
        raise write_error(path, e) from None
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
