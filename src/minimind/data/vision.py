"""Image + text chat data for the vision-language model (`minimind vlm pretrain / sft`).

Two formats, one record per conversation:

  Parquet (MiniMind-V's own files): a `conversations` column (a JSON string, or a list, of
      {role, content} messages) and `image_bytes` (the encoded image, or a list of them).
      Records are numbered by row, from 1: errors read FILE:ROW.
  JSONL: {"conversations": [...], "images": ["a.png", ...]} (or "image": "a.png"), each path
      relative to the data file's folder.

Each `<image>` in a user (or assistant/tool) turn is one image, in order; expand_images() turns
it into image_tokens x `<|image_pad|>`, as MiniMind-V does (nothing else is added). A record is
bad (FILE:LINE, raised or counted per --on-bad-record, as the text formats) when: its
conversation is malformed, an image file is missing or unreadable, the number of `<image>`
differs from the number of images, or it is longer than seq_len with an image's run past the
cut (truncation never cuts an image in half: such a record is dropped or refused). A longer
record whose images all fit is truncated like a text chat. MiniMind-V's text-only rows carry a
dummy image and no `<image>`: in Parquet such a row is read as text only (counted).

Loss only on assistant turns: the chats are rendered and masked by data/sft.py's ChatRenderer
and AssistantMasker (the image pads sit in user turns, never trained). Documents are packed
into rows as the text formats are (best-fit decreasing); a row's images travel with it in
row-major order, as MiniMindVLM.forward expects. Images are decoded when a batch is built,
unless the dataset was given a frozen encoder's cached features (use_features; built by
data/vision_cache.py): then a batch carries them (`image_features`) and decodes nothing.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import MiniMindError
from ..model.vision import IMAGE_PAD, VisionConfig, preprocess_images
from .datasets import split_documents
from .formats import BadRecord, BadRecords, check_messages, check_on_bad_record, iter_lines
from .packing import best_fit_decreasing
from .sft import AssistantMasker, ChatRenderer

IMAGE = "<image>"  # the placeholder users write, one per image


def expand_images(text_or_messages, image_tokens: int, pad: str = IMAGE_PAD):
    """Each `<image>` -> image_tokens copies of `<|image_pad|>`: in a string, or in the content
    of every non-system message of a conversation (a new list; the input is not changed)."""
    if isinstance(text_or_messages, str):
        return text_or_messages.replace(IMAGE, pad * image_tokens)
    out = []
    for m in text_or_messages:
        if m.get("role") != "system" and isinstance(m.get("content"), str):
            m = {**m, "content": m["content"].replace(IMAGE, pad * image_tokens)}
        out.append(m)
    return out


def count_images(messages) -> int:
    """How many `<image>` placeholders the non-system turns hold."""
    return sum(
        m["content"].count(IMAGE)
        for m in messages
        if isinstance(m, dict) and m.get("role") != "system" and isinstance(m.get("content"), str)
    )


def open_image(data: bytes | str | Path, where: str = "image"):
    """A decoded PIL image from bytes or a file, or BadRecord saying why not."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
        image.load()
        return image
    except FileNotFoundError:
        raise BadRecord(f"{where}: file not found") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise BadRecord(f"{where}: unreadable image ({type(e).__name__}: {str(e)[:120]})") from None


@dataclass
class ImageChat:
    """One valid record: where it came from, its messages, and its images (file paths or bytes)."""

    path: str
    line: int
    messages: list
    images: list


def _parse_record(value, where_images: Path | None) -> tuple[list, list]:
    """(messages, image sources) of one record, or BadRecord."""
    if not isinstance(value, dict):
        raise BadRecord(f"expected an object, got {type(value).__name__}")
    messages = value.get("conversations")
    if isinstance(messages, str):
        try:
            messages = json.loads(messages)
        except json.JSONDecodeError as e:
            raise BadRecord(f"'conversations' is not valid JSON ({e.msg})") from None
    if messages is None:
        raise BadRecord("missing 'conversations'")
    check_messages(messages)
    if where_images is None:  # Parquet: bytes
        images = value.get("image_bytes")
        images = [] if images is None else images if isinstance(images, list) else [images]
        if not all(isinstance(b, bytes) for b in images):
            raise BadRecord("'image_bytes' must be bytes or a list of bytes")
    else:  # JSONL: files next to the data
        images = value.get("images", value.get("image", []))
        images = [images] if isinstance(images, str) else images
        if not isinstance(images, list) or not all(isinstance(p, str) and p for p in images):
            raise BadRecord("'images' must be a list of image file names (relative to the data file)")
        images = [where_images / p for p in images]
    wanted = count_images(messages)
    if wanted == 0 and len(images) == 1 and where_images is None:
        images = []  # MiniMind-V's text-only rows: a dummy black image and no <image>
    if wanted != len(images):
        raise BadRecord(f"{wanted} <image> placeholder(s) but {len(images)} image(s)")
    for k, img in enumerate(images):
        open_image(img, f"image {k + 1}" + (f" ({img.name})" if isinstance(img, Path) else ""))
    return messages, images


def read_image_chats(path, on_bad_record: str = "error", bad: BadRecords | None = None) -> list[ImageChat]:
    """Every valid record of a Parquet or JSONL file; a bad one raises FILE:LINE or is counted."""
    path = Path(path)
    check_on_bad_record(on_bad_record)
    if not path.is_file():
        raise MiniMindError(f"{path}: file not found")
    out = []
    for number, value in _rows(path):
        try:
            if isinstance(value, BadRecord):
                raise value
            messages, images = _parse_record(value, None if path.suffix == ".parquet" else path.parent)
        except BadRecord as e:
            if on_bad_record == "error":
                raise MiniMindError(f"{path}:{number}: {e}") from None
            if bad is not None:
                bad.add(f"{path}:{number}: {e}")
            continue
        out.append(ImageChat(str(path), number, messages, images))
    return out


def _rows(path: Path):
    """(record number from 1, value) of a JSONL or Parquet file."""
    if path.suffix != ".parquet":
        yield from iter_lines(path)
        return
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path, memory_map=True)
    except Exception as e:  # pyarrow raises its own ArrowInvalid & co.
        raise MiniMindError(f"{path}: not a readable Parquet file ({type(e).__name__}: {str(e)[:160]})") from None
    if "conversations" not in table.column_names:
        raise MiniMindError(f"{path}: no 'conversations' column (found {', '.join(table.column_names)})")
    columns = [c for c in ("conversations", "image_bytes") if c in table.column_names]
    number = 0
    for batch in table.select(columns).to_batches(max_chunksize=1024):  # (a batch at a time: memory)
        for row in batch.to_pylist():
            number += 1
            yield number, row


class VisionDataset:
    """Packed rows of image chats: get_batch(rows) gives the text fields of data/packing.py's
    PackedDataset (input_ids, labels, position_ids, segment_ids) plus `pixel_values`
    [N, 3, S, S], every image of the batch in row-major order (absent when there is none), or,
    after use_features(), `image_features` [N, image_tokens, enc_hidden] in its place."""

    def __init__(self, chats, ids, masks, pieces, row_ptr, seq_len, pad_token_id, vision: VisionConfig, stats):
        self.chats, self.ids, self.masks = chats, ids, masks
        self.pieces, self.row_ptr = pieces, row_ptr
        self.seq_len, self.pad_token_id, self.vision, self.stats = seq_len, pad_token_id, vision, stats
        self.features = None

    def use_features(self, features) -> None:
        """Serve the images as a frozen encoder's features (vision_cache.ImageFeatures, built
        over this dataset's `chats`) instead of pixels."""
        if features.chats is not self.chats:
            raise MiniMindError("these image features were built over another list of chats")
        self.features = features

    def __len__(self) -> int:
        return len(self.row_ptr) - 1

    def get_batch(self, rows) -> dict:
        B, L = len(rows), self.seq_len
        ids = np.full((B, L), self.pad_token_id, dtype=np.int64)
        labels = np.full((B, L), -100, dtype=np.int64)
        pos = np.zeros((B, L), dtype=np.int64)
        seg = np.full((B, L), -1, dtype=np.int64)
        images, docs = [], []
        for b, r in enumerate(rows):
            at = 0
            for s, d in enumerate(self.pieces[self.row_ptr[r] : self.row_ptr[r + 1]].tolist()):
                tokens, mask, n = self.ids[d], self.masks[d], len(self.ids[d])
                ids[b, at : at + n] = tokens
                labels[b, at : at + n] = np.where(mask > 0, tokens, -100)
                labels[b, at] = -100
                pos[b, at : at + n] = np.arange(n)
                seg[b, at : at + n] = s
                at += n
                chat = self.chats[d]
                if self.features is not None:
                    docs.append(d)
                    continue
                for k, src in enumerate(chat.images):
                    try:
                        images.append(open_image(src, f"image {k + 1}"))
                    except BadRecord as e:  # changed on disk since it was checked
                        raise MiniMindError(f"{chat.path}:{chat.line}: {e}") from None
        batch = {
            "input_ids": torch.from_numpy(ids),
            "labels": torch.from_numpy(labels),
            "position_ids": torch.from_numpy(pos),
            "segment_ids": torch.from_numpy(seg),
        }
        if images:
            v = self.vision
            batch["pixel_values"] = preprocess_images(images, v.image_size, v.mean, v.std)
        features = self.features.gather(docs) if docs else None
        if features is not None:
            batch["image_features"] = features
        return batch


def tokenize_chats(chats: list[ImageChat], tokenizer, vision: VisionConfig, renderer: ChatRenderer):
    """(ids, loss masks) per chat, and BadRecord reasons (None where fine) per chat."""
    masker = AssistantMasker(tokenizer)
    texts = [renderer(expand_images(c.messages, vision.image_tokens)) for c in chats]
    encoded = [np.asarray(e, dtype=np.int64) for e in tokenizer.encode_batch(texts)] if texts else []
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    flat = np.concatenate(encoded) if encoded else np.zeros(0, dtype=np.int64)
    mask, per_doc, unclosed = masker.mask(flat, offsets)
    masks, problems = [], []
    for d, chat in enumerate(chats):
        masks.append(mask[offsets[d] : offsets[d + 1]])
        expected = sum(m.get("role") == "assistant" for m in chat.messages)
        pads = int((encoded[d] == vision.image_token_id).sum())
        if per_doc[d] != expected or unclosed[d]:
            problems.append("the chat template did not give every assistant turn its header and <|im_end|>")
        elif pads != len(chat.images) * vision.image_tokens:
            problems.append(
                f"{pads} <|image_pad|> tokens for {len(chat.images)} image(s) of {vision.image_tokens} tokens "
                "(is <|image_pad|> written in the text?)"
            )
        else:
            problems.append(None)
    return encoded, masks, problems


def build_vision_datasets(
    files,
    tokenizer,
    vision: VisionConfig,
    seq_len: int,
    val_fraction: float = 0.0,
    seed: int = 42,
    on_bad_record: str = "error",
    random_system_prompt: bool = False,
    strip_empty_think: bool = False,
):
    """Read, check, tokenize and pack image chats: (train VisionDataset, validation or None)."""
    files = [files] if isinstance(files, (str, Path)) else list(files)
    if not files:
        raise MiniMindError("no data files given")
    pad_id = tokenizer.token_to_id(IMAGE_PAD)
    if pad_id != vision.image_token_id:
        raise MiniMindError(
            f"tokenizer {tokenizer.source}: {IMAGE_PAD} is id {pad_id}, the model's image_token_id is "
            f"{vision.image_token_id}"
        )
    bad = BadRecords()
    chats = [c for f in files for c in read_image_chats(f, on_bad_record, bad)]
    renderer = ChatRenderer(tokenizer, random_system_prompt, strip_empty_think, seed)
    encoded, masks, problems = tokenize_chats(chats, tokenizer, vision, renderer)
    keep, truncated = [], 0
    for d, chat in enumerate(chats):
        problem = problems[d]
        n = len(encoded[d])
        if problem is None and n > seq_len:
            last_pad = np.flatnonzero(encoded[d] == vision.image_token_id)
            if len(last_pad) and last_pad[-1] >= seq_len:
                problem = f"{n} tokens, longer than --seq-len {seq_len}, and cutting it would cut an image's tokens"
            elif not masks[d][:seq_len].any():
                problem = f"{n} tokens, longer than --seq-len {seq_len}, with no assistant token before the cut"
            else:
                encoded[d], masks[d], truncated = encoded[d][:seq_len], masks[d][:seq_len], truncated + 1
        if problem is not None:
            if on_bad_record == "error":
                raise MiniMindError(f"{chat.path}:{chat.line}: {problem}")
            bad.add(f"{chat.path}:{chat.line}: {problem}")
            continue
        keep.append(d)
    if not keep:
        raise MiniMindError(f"no valid records in {', '.join(map(str, files))}" + (f"\n{bad.summary()}"))
    chats = [chats[d] for d in keep]
    encoded, masks = [encoded[d] for d in keep], [masks[d] for d in keep]
    stats = {
        "files": len(files),
        "records": len(chats),
        "skipped": bad.count,
        "bad_examples": bad.examples,
        "truncated": truncated,
        "images": sum(len(c.images) for c in chats),
    }
    [train_docs], [val_docs] = split_documents([len(chats)], val_fraction, seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def pack(docs):
        lengths = np.array([len(encoded[d]) for d in docs], dtype=np.int64)
        order, row_ptr = best_fit_decreasing(lengths, seq_len, seed)
        rows = len(row_ptr) - 1
        s = {
            **stats,
            "docs": len(docs),
            "rows": rows,
            "seq_len": seq_len,
            "tokens": int(lengths.sum()),
            "loss_tokens": int(sum(int(masks[d].sum()) for d in docs)),
            "padding_fraction": 1 - lengths.sum() / (rows * seq_len) if rows else 0.0,
        }
        return VisionDataset(chats, encoded, masks, np.asarray(docs)[order], row_ptr, seq_len, pad, vision, s)

    return pack(train_docs), (pack(val_docs) if val_fraction > 0 else None)
