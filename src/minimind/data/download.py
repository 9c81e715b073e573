"""`minimind data download`: fetch the official MiniMind data sets, resumably.

Source "hf" (default): the Hugging Face dataset repo jingyaogong/minimind_dataset, through its
public URL layout {HF_ENDPOINT}/datasets/{repo}/resolve/main/{file} (HF_ENDPOINT, default
https://huggingface.co, points at a mirror such as hf-mirror.com; HF_TOKEN is sent if set).
We download with the standard library instead of huggingface_hub on purpose: since
huggingface_hub 1.x a failed download's partial file is deleted, so a 10 GB file interrupted at
90% starts again from zero. Here the bytes received so far stay in FILE.part; the next run
(or the automatic retry after a dropped connection) asks for the rest with an HTTP Range
request. The file appears under its real name only when complete, and is checked against the
hub's sha256 (X-Linked-Etag) when the hub provides it.

Source "modelscope": gongjy/minimind_dataset through the `modelscope` package (optional,
`pip install modelscope`), which has its own progress bar and resume.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
import urllib.error
import urllib.request
from http.client import HTTPException
from pathlib import Path
from urllib.parse import quote

from tqdm import tqdm

from ..errors import MiniMindError

HF_REPO = "jingyaogong/minimind_dataset"
MODELSCOPE_REPO = "gongjy/minimind_dataset"

# name: (file in the repo, approximate size, what it is for)
DATASETS = {
    "pretrain_t2t_mini": ("pretrain_t2t_mini.jsonl", "1.2 GB", "pretraining, quick (minimind-3 quickstart)"),
    "sft_t2t_mini": ("sft_t2t_mini.jsonl", "1.6 GB", "SFT / distillation, quick (minimind-3 quickstart)"),
    "pretrain_t2t": ("pretrain_t2t.jsonl", "10 GB", "pretraining, full minimind-3"),
    "sft_t2t": ("sft_t2t.jsonl", "14 GB", "SFT, full minimind-3"),
    "dpo": ("dpo.jsonl", "53 MB", "DPO preference pairs"),
    "rlaif": ("rlaif.jsonl", "24 MB", "PPO / GRPO / CISPO prompts"),
    "agent_rl": ("agent_rl.jsonl", "86 MB", "agentic RL with tools"),
    "agent_rl_math": ("agent_rl_math.jsonl", "18 MB", "agentic RL, math with verifiable answers"),
    "lora_identity": ("lora_identity.jsonl", "small", "LoRA: self-identity (HF only)"),
    "lora_medical": ("lora_medical.jsonl", "small", "LoRA: medical Q&A (HF only)"),
    "lora_exam": ("lora_exam.jsonl", "small", "LoRA: multiple-choice exam format (HF only)"),
    "pretrain_hq": ("pretrain_hq.jsonl", "1.6 GB", "MiniMind2-era pretraining"),
    "sft_mini_512": ("sft_mini_512.jsonl", "1.2 GB", "MiniMind2-era SFT, quick"),
    "sft_512": ("sft_512.jsonl", "7.5 GB", "MiniMind2-era SFT"),
    "sft_1024": ("sft_1024.jsonl", "5.6 GB", "MiniMind2-era SFT, longer"),
    "sft_2048": ("sft_2048.jsonl", "9 GB", "MiniMind2-era SFT, Qwen2.5-distilled"),
    "r1_mix_1024": ("r1_mix_1024.jsonl", "340 MB", "MiniMind2-era reasoning (R1-distilled)"),
    "rlaif-mini": ("rlaif-mini.jsonl", "small", "MiniMind2-era RLAIF prompts (10K)"),
}
GROUPS = {
    "quickstart": ["pretrain_t2t_mini", "sft_t2t_mini"],
    "minimind2": ["pretrain_hq", "sft_mini_512"],
}
HF_ONLY = {"lora_identity", "lora_medical", "lora_exam"}
CHUNK = 1 << 20


def resolve_names(name: str) -> list[str]:
    """A group, a known name, or a file path in the repo (ending in .jsonl etc.) -> repo files."""
    if name in GROUPS:
        return [DATASETS[n][0] for n in GROUPS[name]]
    if name in DATASETS:
        return [DATASETS[name][0]]
    base = name[: -len(".jsonl")] if name.endswith(".jsonl") else None
    if base in DATASETS:
        return [name]
    if "." in name.rsplit("/", 1)[-1] and ".." not in name.split("/"):
        return [name]  # any other file of the repo, as is
    raise MiniMindError(
        f"unknown data set {name!r}; known: {', '.join([*GROUPS, *DATASETS])} "
        "(see `minimind data list`), or a file name such as sft_1024.jsonl"
    )


def hf_url(filename: str, endpoint: str | None = None, revision: str = "main") -> str:
    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
    return f"{endpoint}/datasets/{HF_REPO}/resolve/{revision}/{quote(filename)}"


def download(
    name: str, out_dir="dataset", source: str = "hf", force: bool = False, retries: int = 5, progress: bool = True
) -> list[Path]:
    """Download a data set (or group) into out_dir; return the local paths."""
    if source not in ("hf", "modelscope"):
        raise MiniMindError(f"unknown source {source!r}; choose hf or modelscope")
    files = resolve_names(name)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for filename in files:
        dest = out_dir / Path(filename).name
        if dest.exists() and not force:
            _say(progress, f"{dest}: already downloaded (use --force to fetch it again)")
        elif source == "modelscope":
            if Path(filename).stem in HF_ONLY:
                raise MiniMindError(f"{filename} is only on the Hugging Face hub; use --source hf")
            _modelscope_download(filename, out_dir)
        else:
            download_url(hf_url(filename), dest, retries=retries, progress=progress)
        paths.append(dest)
    return paths


def _modelscope_download(filename: str, out_dir: Path) -> None:
    try:  # optional (pip install modelscope): imported only for --source modelscope
        from modelscope.hub.file_download import dataset_file_download
    except ImportError:
        raise MiniMindError(
            "--source modelscope needs the modelscope package: pip install modelscope (or use the default --source hf)"
        ) from None
    dataset_file_download(MODELSCOPE_REPO, filename, local_dir=str(out_dir))


# ------------------------------------------------------------------------- the transfer ---


class _RecordRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects, remembering the hub's headers on the first hop: the hub answers
    /resolve/ with a redirect to a CDN and puts the file's sha256 and size on that redirect."""

    hub_headers: dict | None = None

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if self.hub_headers is None:
            self.hub_headers = {k.lower(): v for k, v in headers.items()}
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _open(url: str, start: int, timeout: float):
    """GET url from byte `start`; returns (response, headers) where the hub's x-* headers from a
    redirect are merged over the final response's."""
    req = urllib.request.Request(url, headers={"User-Agent": "minimind", "Accept-Encoding": "identity"})
    if start:
        req.add_header("Range", f"bytes={start}-")
    token = os.environ.get("HF_TOKEN")
    if token:  # unredirected: the token goes to the hub, never to the CDN it redirects to
        req.add_unredirected_header("Authorization", f"Bearer {token}")
    redirects = _RecordRedirects()
    resp = urllib.request.build_opener(redirects).open(req, timeout=timeout)
    headers = {k.lower(): v for k, v in resp.headers.items()}
    headers.update({k: v for k, v in (redirects.hub_headers or {}).items() if k.startswith("x-")})
    return resp, headers


def download_url(url: str, dest, retries: int = 5, progress: bool = True, timeout: float = 30.0) -> Path:
    """Download url to dest via dest.part, resuming from what an earlier run left there.

    A dropped connection is retried, asking only for the missing bytes, until `retries`
    attempts in a row bring nothing new; then the .part file stays for the next run.
    """
    dest = Path(dest)
    part, info_path = dest.with_name(dest.name + ".part"), dest.with_name(dest.name + ".part.json")
    info = _read_json(info_path)
    if info.get("url") != url and part.exists():
        part.unlink()  # a leftover from another source: start over
    failures, shown = 0, _Progress(dest.name, progress)

    def retry_or_fail(reason: str) -> None:
        nonlocal failures
        if failures >= retries:
            shown.done()
            have = part.stat().st_size if part.exists() else 0
            raise MiniMindError(f"{url}: {reason}; run again to resume" + (f" from {have:,} bytes" if have else ""))
        failures += 1
        time.sleep(min(0.2 * 2**failures, 10))

    while True:
        have = part.stat().st_size if part.exists() else 0
        try:
            resp, headers = _open(url, have, timeout)
        except urllib.error.HTTPError as e:
            if e.code == 416 and have and have == info.get("size"):
                break  # the .part file is already complete
            if e.code in (401, 403):
                raise MiniMindError(
                    f"{url}: access denied ({e.code}); set HF_TOKEN if the repo needs a login"
                ) from None
            if e.code == 404:
                raise MiniMindError(f"{url}: not found (404); see `minimind data list`") from None
            if e.code < 500:
                raise MiniMindError(f"{url}: HTTP {e.code} {e.reason}") from None
            retry_or_fail(f"HTTP {e.code} {e.reason}")
            continue
        except (OSError, HTTPException) as e:  # URLError, timeouts, refused connections
            retry_or_fail(str(getattr(e, "reason", e)))
            continue
        with resp:
            etag = headers.get("x-linked-etag") or headers.get("etag") or ""
            etag = etag.removeprefix("W/").strip('"')
            if resp.status == 206:
                m = re.match(r"bytes (\d+)-\d+/(\d+|\*)", headers.get("content-range", ""))
                if not m or int(m.group(1)) != have or (info.get("etag") and etag and etag != info["etag"]):
                    part.unlink(missing_ok=True)  # changed on the server, or a bad answer: start over
                    retry_or_fail("the file changed on the server")
                    continue
                total = int(m.group(2)) if m.group(2) != "*" else None
            else:  # 200: the server sent the whole file
                have = 0
                total = int(headers["content-length"]) if "content-length" in headers else None
            total = int(headers.get("x-linked-size") or 0) or total
            info = {"url": url, "etag": etag, "size": total, "commit": headers.get("x-repo-commit")}
            _write_json(info_path, info)
            received, error = 0, None
            with open(part, "ab" if have else "wb") as f:
                shown.start(have, total)
                try:
                    while chunk := resp.read(CHUNK):
                        f.write(chunk)
                        received += len(chunk)
                        shown.update(have + received)
                except (OSError, HTTPException) as e:  # the connection dropped mid-file
                    error = e
        if total is not None and have + received < total:
            if received:
                failures = 0  # progress was made: keep trying
            retry_or_fail(f"interrupted at {have + received:,} of {total:,} bytes ({error or 'connection closed'})")
            continue
        break
    shown.done()
    size = part.stat().st_size
    if info.get("size") and size != info["size"]:
        part.unlink()
        raise MiniMindError(f"{url}: received {size:,} bytes, expected {info['size']:,}; run again")
    if re.fullmatch(r"[0-9a-f]{64}", info.get("etag") or ""):
        digest = _sha256(part)
        if digest != info["etag"]:
            part.unlink()
            raise MiniMindError(
                f"{url}: sha256 mismatch (got {digest[:12]}..., expected {info['etag'][:12]}...); "
                "the partial download was removed, run again"
            )
    os.replace(part, dest)
    info_path.unlink(missing_ok=True)
    return dest


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(8 << 20):
            h.update(block)
    return h.hexdigest()


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _say(enabled: bool, text: str) -> None:
    if enabled:
        print(text, file=sys.stderr)


class _Progress:
    """A tqdm progress bar in bytes, opened when the transfer starts (and reopened on a retry)."""

    def __init__(self, name: str, enabled: bool):
        self.name, self.enabled, self.bar = name, enabled, None

    def start(self, have: int, total: int | None) -> None:
        self.done()
        if self.enabled:
            self.bar = tqdm(
                total=total,
                initial=have,
                desc=self.name,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                file=sys.stderr,
                mininterval=0.5,
            )
        self.at = have

    def update(self, have: int) -> None:
        if self.bar is not None:
            self.bar.update(have - self.at)
        self.at = have

    def done(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
