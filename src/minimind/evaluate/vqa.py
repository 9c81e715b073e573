"""Visual question answering: a vision-language model answers questions about images, scored by
normalised exact match and by "the answer is in the reply".

Data, either
  JSONL   {"image": "imgs/1.png", "question": "What colour is the circle?", "answer": "red", "type": "colour"}
          ("images": [...] for several, paths relative to the data file; "answers": [...] when any
          of several is right; "type" is optional and groups the scores). Instead of "question", a
          "conversations" list with one user turn (the question) may be given, the answer then
          being "answer(s)" or its last assistant turn: the held-out file of `minimind quickstart
          --vision` (data/test.jsonl) is read as it is.
  Parquet MiniMind-V's layout: an `image_bytes` column (bytes, or a list of bytes), and either
          `question` + `answer` columns or a `conversations` JSON string (the user turn is the
          question, the last assistant turn the answer); `type` optional.
The question may place its images with `<image>`; without one, each image goes on a line of its
own before the question (MiniMind-V's "<image>\\nquestion"). Every record is checked (and every
image's header read) before the model loads: a missing or unreadable image, a count of `<image>`
that differs from the number of images, is an error naming FILE:LINE (Parquet: FILE:row N).

Scoring, after normalising both sides (NFKC, lower case, no punctuation or English articles,
English number words as digits):
  exact     the reply is the answer;
  accuracy  the answer is in the reply (whole words for English, a substring for Chinese):
            what a chatty model gets credit for (the primary metric).
`chance` is what always answering the commonest answer of each question type would score.
"""

from __future__ import annotations

import io
import json
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..data.formats import BadRecord, iter_lines
from ..data.vision import IMAGE
from ..errors import MiniMindError
from ..infer import SamplingParams, chat_prompt, generate

ARTICLES = {"a", "an", "the"}
NUMBER_WORDS = dict(zip("zero one two three four five six seven eight nine ten".split(), map(str, range(11))))


@dataclass
class Question:
    question: str  # with one IMAGE per image
    answers: list[str]  # any of them is right
    images: list  # Path (JSONL) or bytes (Parquet) per image
    type: str | None
    where: str  # FILE:LINE


# ---------------------------------------------------------------------------- reading


def read_vqa(path: str | Path, limit: int | None = None) -> list[Question]:
    """Every question of a .jsonl or .parquet file (the first `limit`); FILE:LINE errors."""
    path = Path(path)
    if not path.is_file():
        raise MiniMindError(f"{path}: file not found")
    questions = _read_parquet(path, limit) if path.suffix.lower() == ".parquet" else _read_jsonl(path, limit)
    if not questions:
        raise MiniMindError(f"{path}: no questions")
    return questions


def _read_jsonl(path: Path, limit: int | None) -> list[Question]:
    out = []
    for number, value in iter_lines(path):
        if limit is not None and len(out) >= limit:
            break
        where = f"{path}:{number}"
        try:
            if isinstance(value, BadRecord):
                raise value
            if not isinstance(value, dict):
                raise BadRecord("expected a JSON object")
            images = _field_list(value, "image", "images")
            for i, name in enumerate(images):
                if not isinstance(name, str) or not name:
                    raise BadRecord(f"image {i + 1}: expected a file path (a string), got {name!r}")
            paths = [path.parent / name for name in images]
            out.append(_question(*_question_and_answers(value), paths, value.get("type")))
        except BadRecord as e:
            raise MiniMindError(f"{where}: {e}") from None
        out[-1].where = where
    return out


def _read_parquet(path: Path, limit: int | None) -> list[Question]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow's errors have many types; all mean "not a readable Parquet file"
        raise MiniMindError(f"{path}: not a readable Parquet file ({e})") from None
    columns = set(table.column_names)
    if "image_bytes" not in columns or not ({"question", "answer"} <= columns or "conversations" in columns):
        raise MiniMindError(
            f"{path}: expected the columns image_bytes and question + answer (or conversations), "
            f"found {', '.join(table.column_names)}"
        )
    rows = table.slice(0, limit).to_pylist() if limit is not None else table.to_pylist()
    out = []
    for i, row in enumerate(rows):
        where = f"{path}:row {i + 1}"
        try:
            images = row["image_bytes"]
            images = images if isinstance(images, list) else [images]
            if not images or not all(isinstance(b, bytes) and b for b in images):
                raise BadRecord("image_bytes must hold the bytes of an image (or a list of them)")
            out.append(_question(*_question_and_answers(row), images, row.get("type")))
        except BadRecord as e:
            raise MiniMindError(f"{where}: {e}") from None
        out[-1].where = where
    return out


def _has(record: dict, key: str) -> bool:
    return record.get(key) is not None  # (a Parquet column can be there and empty)


def _field_list(record: dict, one: str, many: str) -> list:
    if _has(record, one) == _has(record, many):
        raise BadRecord(f"expected '{one}' or '{many}' (one of them)")
    value = record[one] if _has(record, one) else record[many]
    if _has(record, many) and (not isinstance(value, list) or not value):
        raise BadRecord(f"'{many}' must be a non-empty list")
    return value if _has(record, many) else [value]


def _question_and_answers(record: dict) -> tuple[str, list[str]]:
    """The question and its answers: `question` and `answer(s)`, or a `conversations` list whose
    user turn is the question, with `answer(s)` or else its last assistant turn as the answer
    (the held-out file of `minimind quickstart --vision` and MiniMind-V's Parquet both fit)."""
    reply = None
    if _has(record, "question"):
        question = record["question"]
    elif _has(record, "conversations"):
        question, reply = _from_conversations(record["conversations"])
    else:
        raise BadRecord("expected 'question' (or 'conversations')")
    if reply is not None and not _has(record, "answer") and not _has(record, "answers"):
        return question, [reply]
    answers = _field_list(record, "answer", "answers")
    if not all(isinstance(a, (str, int, float)) and not isinstance(a, bool) and str(a).strip() for a in answers):
        raise BadRecord(f"answers must be non-empty strings or numbers, got {answers!r}")
    return question, [str(a) for a in answers]


def _from_conversations(raw) -> tuple[str, str | None]:
    """(question, last assistant reply or None) of a conversation (a list, or its JSON string)."""
    try:
        turns = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError as e:
        raise BadRecord(f"conversations is not valid JSON ({e.msg})") from None
    if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
        raise BadRecord("conversations must be a list of {role, content} messages")
    users = [t.get("content") for t in turns if t.get("role") == "user"]
    replies = [t.get("content") for t in turns if t.get("role") == "assistant" and t.get("content")]
    if len(users) != 1 or not isinstance(users[0], str):
        raise BadRecord("conversations must hold one user turn: the question")
    return users[0], replies[-1] if replies and isinstance(replies[-1], str) else None


def _question(question, answers: list[str], images: list, kind) -> Question:
    if not isinstance(question, str) or not question.strip():
        raise BadRecord(f"'question' must be a non-empty string, got {question!r}")
    if kind is not None and not isinstance(kind, str):
        raise BadRecord(f"'type' must be a string, got {kind!r}")
    placed = question.count(IMAGE)
    if placed == 0:
        question = (IMAGE + "\n") * len(images) + question
    elif placed != len(images):
        raise BadRecord(f"the question has {placed} {IMAGE} but the record has {len(images)} image(s)")
    for i, image in enumerate(images):
        try:
            check_image(image)
        except ValueError as e:
            raise BadRecord(f"image {i + 1}: {e}") from None
    return Question(question, answers, images, kind, "")


def check_image(source) -> tuple[int, int]:
    """Read an image's header (a path or bytes): its (width, height), or ValueError saying why not."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(source, Path) and not source.is_file():
        raise ValueError(f"{source}: file not found")
    try:
        with Image.open(source if isinstance(source, Path) else io.BytesIO(source)) as image:
            return image.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        name = f"{source}" if isinstance(source, Path) else "image_bytes"
        raise ValueError(f"{name}: not a readable image ({e})") from None


def load_image(source):
    """A path or bytes -> an RGB PIL image."""
    from PIL import Image

    with Image.open(source if isinstance(source, Path) else io.BytesIO(source)) as image:
        return image.convert("RGB")


# ---------------------------------------------------------------------------- scoring


def normalise(text: str) -> str:
    """NFKC (full-width to half-width), lower case, punctuation to spaces, no English articles,
    English number words (zero to ten) as digits, single spaces."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = re.sub(r"[^\w\s]|_", " ", text)  # \w keeps letters of every script, CJK included
    words = [NUMBER_WORDS.get(w, w) for w in text.split() if w not in ARTICLES]
    return " ".join(words)


def score(reply: str, answers: list[str]) -> tuple[bool, bool]:
    """(exact, contained): the normalised reply equals / holds one of the normalised answers.
    An answer in Latin letters or digits must be whole words of the reply ("3" is not in "13",
    "red" not in "reddish"); other scripts (Chinese) are matched as substrings."""
    got = normalise(reply)
    exact = contained = False
    for answer in answers:
        want = normalise(answer)
        if not want:
            continue
        exact |= got == want
        if want.isascii():
            contained |= re.search(rf"(?<!\w){re.escape(want)}(?!\w)", got) is not None
        else:
            contained |= want in got
    return exact, contained


# ---------------------------------------------------------------------------- evaluation


def evaluate_vqa(
    model,
    tokenizer,
    questions: list[Question],
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    batch_size: int = 16,
    thinking: bool = False,
    blank: bool = False,
    examples: int = 3,
    progress=None,
) -> dict:
    """Answer every question (greedy by default) and score it; the metrics/details part of a result.

    blank: every image replaced by a mid-grey one of the same size, the control that tells how
    much of the score the images earn (a model that truly looks should drop to about chance)."""
    from PIL import Image

    vision = getattr(model, "vision_config", None)
    if vision is None:
        raise MiniMindError("--task vqa needs a vision-language model (minimind vlm init / pretrain / sft)")
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=0)
    context = model.config.max_position_embeddings
    prompts = []
    for q in questions:
        messages = [{"role": "user", "content": q.question}]
        ids = chat_prompt(tokenizer, messages, open_thinking=thinking, image_tokens=vision.image_tokens)
        if len(ids) >= context:
            raise MiniMindError(f"{q.where}: the prompt takes {len(ids)} tokens, the model's context is {context}")
        prompts.append(ids)
    replies = [None] * len(questions)
    for start in range(0, len(questions), batch_size):
        batch = range(start, min(start + batch_size, len(questions)))
        images = []
        for i in batch:
            loaded = [load_image(src) for src in questions[i].images]
            if blank:
                loaded = [Image.new("RGB", im.size, (128, 128, 128)) for im in loaded]
            images.append(model.preprocess(loaded))
        done = generate(model, tokenizer, [prompts[i] for i in batch], params, images=images)
        for i, c in zip(batch, done):
            replies[i] = c.text
        if progress:
            progress(batch.stop, len(questions))
    result = summarise(questions, replies, examples)
    result["details"].update(max_new_tokens=max_new_tokens, temperature=temperature, blank_images=blank)
    return {**result, "primary": "accuracy"}


def summarise(questions: list[Question], replies: list[str], examples: int = 3) -> dict:
    """Metrics (accuracy, exact, chance, n) over all questions, and details per question type."""
    by_type: dict[str, list] = {}
    shown = []
    for q, reply in zip(questions, replies):
        exact, contained = score(reply, q.answers)
        by_type.setdefault(q.type or "all", []).append((exact, contained, normalise(q.answers[0])))
        if len(shown) < examples:
            shown.append({"where": q.where, "question": q.question, "expected": q.answers, "reply": reply[:300]})
    types = {}
    for kind, rows in sorted(by_type.items()):
        commonest = Counter(a for _, _, a in rows).most_common(1)[0][1]
        types[kind] = {
            "accuracy": sum(c for _, c, _ in rows) / len(rows),
            "exact": sum(e for e, _, _ in rows) / len(rows),
            "chance": commonest / len(rows),
            "n": len(rows),
        }
    n = len(questions)
    metrics = {
        "accuracy": sum(t["accuracy"] * t["n"] for t in types.values()) / n,
        "exact": sum(t["exact"] * t["n"] for t in types.values()) / n,
        "chance": sum(t["chance"] * t["n"] for t in types.values()) / n,
        "n": n,
    }
    return {"metrics": metrics, "details": {"types": types, "examples": shown}}


def format_vqa(r: dict) -> str:
    """The table `minimind eval --task vqa` prints."""
    m, types = r["metrics"], r["details"]["types"]
    width = max(len(k) for k in types)
    lines = [f"  {'type':<{width}}  accuracy  exact   commonest answer     n"]
    for kind, t in types.items():
        lines.append(f"  {kind:<{width}}  {t['accuracy']:8.1%}  {t['exact']:6.1%}  {t['chance']:16.1%}  {t['n']:5d}")
    blank = " (blank images)" if r["details"].get("blank_images") else ""
    lines.append(
        f"{r['task']}{blank}: accuracy {m['accuracy']:.2%} (answer in the reply), exact match {m['exact']:.2%}, "
        f"over {m['n']} questions; commonest answer per type {m['chance']:.2%}"
    )
    return "\n".join(lines)
