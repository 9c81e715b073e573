"""A frozen vision encoder's image features, computed once and kept on disk, memory-mapped.

When the encoder does not train (a transformers tower, or our patch encoder without `encoder`
or `all` in --train), its output for a picture never changes: `minimind vlm pretrain / sft`
encode every picture of the data once, before the first step, and the batches then carry those
features (`image_features`, before the projector, which trains) instead of pixels. Later
epochs, and later runs with the same encoder and data, decode and encode nothing.

One directory per data file, next to the token caches (--cache-dir, else $MINIMIND_CACHE, else
~/.cache/minimind/tokenized), named `STEM-features-KEY`: features.npy [images, image_tokens,
enc_hidden] in the dtype the encoder gave them, and meta.json. The key hashes the pictures'
bytes in the file's order (a Parquet file's image_bytes, a JSONL file's image files), the
encoder's weights (every tensor of its state dict), its VisionConfig settings (image_size, mean,
std, drop_cls, ...), where and in what precision it ran (device type and autocast dtype: the
features are exactly those the run would compute) and FORMAT_VERSION. A cache is built under
a temporary name and renamed into place, so a killed build never looks valid; one that does not
load back whole (meta.json, key, shape, size, CRC-32 of the features) is rebuilt, never used.
The check reads the whole file at every start (CRC-32 runs at several GB/s). Size: images x
image_tokens x enc_hidden x 4 bytes in fp32 (MiniMind-V's SigLIP: 192 KiB a picture).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import time
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from ..errors import MiniMindError
from ..model.vision import VisionConfig, preprocess_images
from .cache import default_cache_dir, fsync_dir, locked, remove_stale, source_id
from .formats import BadRecord
from .vision import open_image

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
ENCODE_BATCH = 64  # pictures per encoder call while building
CRC_CHUNK = 64 << 20  # bytes per CRC-32 update
# How a features dtype is stored (numpy has no bfloat16: its bits are kept as uint16).
STORED = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16, "float64": np.float64}


def encoder_fingerprint(encoder: torch.nn.Module) -> str:
    """sha256 of an encoder's class and every tensor of its state dict (name, dtype, shape, bytes)."""
    h = hashlib.sha256(type(encoder).__qualname__.encode())
    for name, t in encoder.state_dict().items():
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _image_bytes(chat, k: int, src) -> bytes:
    if isinstance(src, bytes):
        return src
    try:
        return Path(src).read_bytes()
    except OSError as e:  # changed on disk since it was checked
        raise MiniMindError(f"{chat.path}:{chat.line}: image {k + 1}: {e.strerror or e}") from None


def images_fingerprint(chats) -> str:
    """sha256 of the chats' pictures, in order (each one's bytes, length-prefixed)."""
    h = hashlib.sha256()
    for chat in chats:
        for k, src in enumerate(chat.images):
            data = _image_bytes(chat, k, src)
            h.update(len(data).to_bytes(8, "little"))
            h.update(data)
    return h.hexdigest()


def feature_cache_key(chats, encoder_id: str, vision: VisionConfig, compute: dict) -> str:
    """The hash that names a data file's feature cache (see the module docstring)."""
    settings = {k: v for k, v in vision.to_dict().items() if k not in ("path", "image_token_id")}
    key = {
        "version": FORMAT_VERSION,
        "images": images_fingerprint(chats),
        "encoder": encoder_id,
        "vision": settings,
        "compute": compute,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


class ImageFeatures:
    """The cached features of every picture of a list of chats (a VisionDataset's `chats`):
    gather(chat indices) -> [their pictures, image_tokens, enc_hidden], in order."""

    def __init__(self, chats, arrays: list[np.ndarray], dtypes: list[str], places: dict):
        self.chats, self.arrays, self.dtypes = chats, arrays, dtypes
        self.chat_file = np.zeros(len(chats), dtype=np.int64)
        self.chat_start = np.zeros(len(chats), dtype=np.int64)
        self.chat_count = np.array([len(c.images) for c in chats], dtype=np.int64)
        for d, c in enumerate(chats):
            self.chat_file[d], self.chat_start[d] = places[(c.path, c.line)]

    def gather(self, chat_ids) -> torch.Tensor | None:
        parts = []
        for d in chat_ids:
            k = int(self.chat_count[d])
            if k:
                f, s = int(self.chat_file[d]), int(self.chat_start[d])
                x = torch.from_numpy(np.array(self.arrays[f][s : s + k]))  # (a copy out of the memory map)
                parts.append(x.view(torch.bfloat16) if self.dtypes[f] == "bfloat16" else x)
        return torch.cat(parts) if parts else None


def cache_image_features(
    chats,
    encode,
    vision: VisionConfig,
    encoder_id: str,
    compute: dict,
    cache_dir=None,
    batch_size: int = ENCODE_BATCH,
) -> tuple[ImageFeatures, dict]:
    """The features of every picture of `chats`, from each data file's cache, building the
    missing ones with `encode` (float32 pixels [n, 3, S, S] on the CPU -> features [n,
    image_tokens, enc_hidden]). Returns them and a report: {"images", "encoded", "waited" (built
    meanwhile by another process), "reused", "bytes", "seconds", "root"}."""
    t0 = time.time()
    root = default_cache_dir(cache_dir)
    files: dict[str, dict] = {}  # path -> {line: chat}, in order (a file given twice is encoded once)
    for c in chats:
        files.setdefault(c.path, {}).setdefault(c.line, c)
    arrays, dtypes, places = [], [], {}
    report = {"images": 0, "encoded": 0, "waited": 0, "reused": 0, "bytes": 0, "root": str(root)}
    for path, by_line in files.items():
        file_chats = list(by_line.values())
        start = 0
        for c in file_chats:
            places[(c.path, c.line)] = (len(arrays), start)
            start += len(c.images)
        if start == 0:  # no picture in this file
            arrays.append(np.zeros((0, vision.image_tokens, vision.hidden_size), dtype=np.float32))
            dtypes.append("float32")
            continue
        key = feature_cache_key(file_chats, encoder_id, vision, compute)
        array, meta, how = _file_features(Path(path), file_chats, start, key, encode, vision, root, batch_size)
        arrays.append(array)
        dtypes.append(meta["dtype"])
        report["images"] += start
        report[how] += start
        report["bytes"] += array.nbytes
    report["seconds"] = time.time() - t0
    return ImageFeatures(chats, arrays, dtypes, places), report


def _file_features(path: Path, chats, n: int, key: str, encode, vision, root: Path, batch_size: int):
    """(memory-mapped features, meta, "reused" | "waited" | "encoded") of one data file."""
    cache_path = root / f"{path.stem[:48]}-features-{key}"
    shape = (n, vision.image_tokens, vision.hidden_size)
    loaded = _load(cache_path, key, shape) if cache_path.is_dir() else None
    if loaded is not None:
        return (*loaded, "reused")
    root.mkdir(parents=True, exist_ok=True)
    # One builder at a time per cache (e.g. DDP ranks, which start together): the others wait
    # on the lock (no collective, so no timeout however long the build), then load its cache.
    with locked(root / f".lock-{cache_path.name}"):
        loaded = _load(cache_path, key, shape) if cache_path.is_dir() else None
        if loaded is not None:
            return (*loaded, "waited")
        _build_atomically(path, chats, n, key, encode, vision, root, cache_path, batch_size)
        loaded = _load(cache_path, key, shape)
        if loaded is None:
            raise MiniMindError(f"{cache_path}: the feature cache just built cannot be read back")
        return (*loaded, "encoded")


def _load(cache_path: Path, key: str, shape: tuple) -> tuple[np.ndarray, dict] | None:
    """A finished cache's features (memory-mapped) and meta, or None if anything is off."""
    try:
        meta = json.loads((cache_path / "meta.json").read_text())
        if meta["key"] != key or meta["version"] != FORMAT_VERSION or tuple(meta["shape"]) != shape:
            return None
        file = cache_path / "features.npy"
        array = np.load(file, mmap_mode="r")
        if array.shape != shape or array.dtype != np.dtype(STORED[meta["dtype"]]):
            return None
        if array.offset + array.nbytes != file.stat().st_size or _crc32(array) != meta["crc32"]:
            return None
    except (OSError, ValueError, KeyError, TypeError, EOFError):
        return None
    return array, meta


def _crc32(array: np.ndarray) -> int:
    """CRC-32 of an array's bytes (C order), a chunk at a time."""
    flat = array.reshape(-1).view(np.uint8)
    crc = 0
    for i in range(0, len(flat), CRC_CHUNK):
        crc = zlib.crc32(flat[i : i + CRC_CHUNK], crc)
    return crc


def _build_atomically(path, chats, n, key, encode, vision, root, cache_path, batch_size) -> None:
    """Encode into a temporary directory, then rename it to cache_path in one step."""
    remove_stale(root, path, "features")  # caches of this file made before it changed
    tmp = root / f".tmp-{uuid.uuid4().hex[:12]}-{cache_path.name}"
    tmp.mkdir()
    (tmp / "owner.json").write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
    try:
        meta = _encode_into(tmp / "features.npy", chats, n, encode, vision, batch_size)
        shape = [n, vision.image_tokens, vision.hidden_size]
        meta.update(version=FORMAT_VERSION, key=key, source=source_id(path), shape=shape)
        with open(tmp / "meta.json", "w") as f:
            json.dump(meta, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(tmp)
        if cache_path.is_dir():  # a damaged cache (it did not load): set it aside first
            log.warning("%s: damaged feature cache, rebuilt", cache_path)
            trash = root / f".tmp-{uuid.uuid4().hex[:12]}-damaged"
            os.rename(cache_path, trash)
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.rename(tmp, cache_path)  # atomic: the cache appears complete or not at all
        except OSError:  # another machine sharing the directory finished first: use theirs
            if not cache_path.is_dir():
                raise
        fsync_dir(root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _encode_into(file: Path, chats, n: int, encode, vision: VisionConfig, batch_size: int) -> dict:
    """Decode, preprocess (as VisionDataset.get_batch does) and encode every picture of `chats`
    in order into `file` (.npy); the next batch is decoded on a thread while one is encoded."""
    t0 = time.time()
    sources = [(c, k, src) for c in chats for k, src in enumerate(c.images)]

    def pixels(part):
        images = []
        for chat, k, src in part:
            try:
                images.append(open_image(src, f"image {k + 1}"))
            except BadRecord as e:  # changed on disk since it was checked
                raise MiniMindError(f"{chat.path}:{chat.line}: {e}") from None
        return preprocess_images(images, vision.image_size, vision.mean, vision.std)

    parts = [sources[i : i + batch_size] for i in range(0, n, batch_size)]
    out, at, crc, dtype = None, 0, 0, None
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(pixels, parts[0])
        for i in range(len(parts)):
            batch = pending.result()
            if i + 1 < len(parts):
                pending = pool.submit(pixels, parts[i + 1])
            features = encode(batch).detach().to("cpu").contiguous()
            if out is None:
                dtype = str(features.dtype).removeprefix("torch.")
                if dtype not in STORED:
                    raise MiniMindError(f"the vision encoder gives {dtype} features, which cannot be cached")
                out = np.lib.format.open_memmap(
                    file, mode="w+", dtype=STORED[dtype], shape=(n, vision.image_tokens, vision.hidden_size)
                )
            if dtype == "bfloat16":
                features = features.view(torch.uint16) if hasattr(torch, "uint16") else features.view(torch.int16)
            rows = features.numpy().view(out.dtype)
            out[at : at + len(rows)] = rows
            crc = zlib.crc32(rows.reshape(-1).view(np.uint8), crc)
            at += len(rows)
    out.flush()
    del out
    with open(file, "rb+") as f:
        os.fsync(f.fileno())
    return {"dtype": dtype, "crc32": crc, "images": n, "seconds": round(time.time() - t0, 3)}
