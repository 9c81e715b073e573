"""Multiple-choice exams (C-Eval, CMMLU, MMLU) scored by the log-probabilities of the option letters.

The method MiniMind's README describes (and lm-evaluation-harness uses for these tasks): show the
question with its options A-D, then compare the model's next-token log-probabilities of the four
letters; the most likely letter is the answer. One forward pass per question scores all four.

Data layouts (the published ones; a data path is the data set's root directory or one CSV file):
  ceval   DATA/{dev,val,test}/<subject>_<split>.csv, header id,question,A,B,C,D,answer[,explanation]
  cmmlu   DATA/{dev,test}/<subject>.csv,             header ,Question,A,B,C,D,Answer
  mmlu    DATA/{dev,val,test}/<subject>_<split>.csv, no header: question,A,B,C,D,answer
Any file is read by its header (or its lack of one), so the three layouts work under any task name;
the task name picks the prompt language (Chinese for ceval/cmmlu, English for mmlu) and the split.

Prompts (`template`):
  raw   the C-Eval/MMLU paper format: an instruction line, k solved dev questions, then the question
        ending in "答案：" ("Answer:" for MMLU); the letter is scored right after it.
  chat  for chat (SFT) models: each shot is a user turn (question + options) answered by an assistant
        turn holding the letter, the question is the last user turn, and the letter is scored right
        after the assistant prefix the chat template writes (for minimind-3: "<think>\\n\\n</think>\\n\\n").
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import MiniMindError

LETTERS = ("A", "B", "C", "D")
DEFAULT_SPLIT = {"ceval": "val", "cmmlu": "test", "mmlu": "test"}  # ceval's test split has no answers
INSTRUCTION = {
    "zh": "以下是单项选择题，请直接给出正确答案的选项。",
    "en": "The following are multiple choice questions (with answers){about}.",
}
ANSWER_CUE = {"zh": "答案：", "en": "Answer:"}


@dataclass
class Question:
    subject: str
    question: str
    options: tuple[str, str, str, str]
    answer: str  # "A".."D"
    where: str  # "FILE:ROW" for error messages


# ------------------------------------------------------------------------------ reading ---


def _subject(path: Path) -> str:
    return re.sub(r"_(dev|val|test)$", "", path.stem)


def read_csv(path: str | Path) -> list[Question]:
    """Read one exam CSV in any of the three layouts; MiniMindError names FILE:ROW on bad rows."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except FileNotFoundError:
        raise MiniMindError(f"{path}: file not found") from None
    except UnicodeDecodeError as e:
        raise MiniMindError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except csv.Error as e:
        raise MiniMindError(f"{path}: not a valid CSV file ({e})") from None
    if not rows:
        raise MiniMindError(f"{path}: empty file (no questions)")
    header = [h.strip().lower() for h in rows[0]]
    if "question" in header:  # C-Eval / CMMLU: columns by name
        missing = [c for c in ("question", "a", "b", "c", "d", "answer") if c not in header]
        if missing:
            raise MiniMindError(
                f"{path}:1: header lacks column{'s' if len(missing) > 1 else ''} "
                f"{', '.join(missing)} (expected question,A,B,C,D,answer)"
            )
        cols = [header.index(c) for c in ("question", "a", "b", "c", "d", "answer")]
        body, first = rows[1:], 2
    else:  # MMLU: no header, question,A,B,C,D,answer
        cols, body, first = list(range(6)), rows, 1
    subject, questions = _subject(path), []
    for number, row in enumerate(body, start=first):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(cols):
            raise MiniMindError(
                f"{path}:{number}: {len(row)} columns, expected at least {max(cols) + 1} (question, A, B, C, D, answer)"
            )
        q, a, b, c, d, answer = (row[i].strip() for i in cols)
        if not answer:
            raise MiniMindError(
                f"{path}:{number}: empty answer (a test split without labels? use the val or dev split)"
            )
        if answer.upper() not in LETTERS:
            raise MiniMindError(f"{path}:{number}: answer {answer[:20]!r} is not one of A, B, C, D")
        questions.append(Question(subject, q, (a, b, c, d), answer.upper(), f"{path}:{number}"))
    if not questions:
        raise MiniMindError(f"{path}: no questions (empty subject)")
    return questions


def find_files(data: str | Path, split: str) -> tuple[list[Path], Path]:
    """The CSV files to score and the data set root (where dev/ lives): DATA/<split>/*.csv under a data
    set root, or the CSVs of a split folder itself (DATA = .../val), or one CSV file."""
    data = Path(data)
    if data.is_file():
        return [data], data.parent.parent
    if not data.is_dir():
        raise MiniMindError(f"{data}: not found (give a data set directory or one CSV file)")
    if (data / split).is_dir():
        files, root = sorted((data / split).glob("*.csv")), data
    else:
        files, root = sorted(data.glob("*.csv")), data.parent
    if not files:
        found = sorted(p.name for p in data.iterdir() if p.is_dir())
        raise MiniMindError(
            f"{data}: no {split}/*.csv files (expected the published layout "
            f"DATA/{split}/<subject>_{split}.csv; subfolders here: {', '.join(found) or 'none'})"
        )
    return files, root


def find_dev(root: Path, subject: str) -> Path | None:
    """The dev-split file of `subject` (its k-shot examples) under a data set root."""
    for name in (f"{subject}_dev.csv", f"{subject}.csv"):
        if (root / "dev" / name).is_file():
            return root / "dev" / name
    return None


# ------------------------------------------------------------------------------ prompts ---


def _block(q: Question, lang: str, cue: bool) -> str:
    text = q.question + "".join(f"\n{letter}. {option}" for letter, option in zip(LETTERS, q.options))
    return text + ("\n" + ANSWER_CUE[lang] if cue else "")


def instruction(subject: str, lang: str) -> str:
    return INSTRUCTION[lang].format(about=f" about {subject.replace('_', ' ')}" if subject else "")


def build_prompt(tokenizer, q: Question, shots: list[Question], lang: str, template: str) -> list[int]:
    """Token ids of the prompt for `q` with the given solved examples, ending where the letter goes."""
    head = instruction(q.subject, lang) + "\n\n"
    if template == "raw":
        sep = " " if lang == "en" else ""
        text = head + "".join(_block(s, lang, True) + sep + s.answer + "\n\n" for s in shots)
        text += _block(q, lang, True)
        return tokenizer.encode(text + letter_prefix(tokenizer, lang))
    messages = []
    for i, s in enumerate(shots + [q]):
        messages.append({"role": "user", "content": (head if i == 0 else "") + _block(s, lang, False)})
        if i < len(shots):
            messages.append({"role": "assistant", "content": s.answer})
    return tokenizer.encode_chat(messages, add_generation_prompt=True)


def letter_prefix(tokenizer, lang: str) -> str:
    """What goes between the answer cue and the letter in raw prompts: English puts a space before the
    letter (" A" is one token in MiniMind's tokenizer, as in the MMLU format); when " A" is not a single
    token (small custom tokenizers), the space goes into the prompt and the bare letter is scored."""
    if lang == "en" and any(len(tokenizer.encode(" " + letter)) != 1 for letter in LETTERS):
        return " "
    return ""


def letter_ids(tokenizer, lang: str, template: str) -> list[int]:
    """The four token ids whose next-token log-probabilities are compared."""
    spaced = template == "raw" and lang == "en" and not letter_prefix(tokenizer, lang)
    ids = [tokenizer.encode((" " if spaced else "") + letter) for letter in LETTERS]
    if any(len(i) != 1 for i in ids):
        raise MiniMindError(
            f"tokenizer {tokenizer.source}: the letters A-D are not single tokens, "
            "so they cannot be scored by next-token log-probability"
        )
    return [i[0] for i in ids]


def fit_prompt(
    tokenizer, q: Question, shots: list[Question], lang: str, template: str, context: int
) -> tuple[list[int], int]:
    """The prompt with as many of the shots as fit the model's context; returns (ids, shots used).
    A question that does not fit even zero-shot is an error naming its file and row."""
    for k in range(len(shots), -1, -1):
        ids = build_prompt(tokenizer, q, shots[:k], lang, template)
        if len(ids) <= context:
            return ids, k
    raise MiniMindError(
        f"{q.where}: the question takes {len(ids)} tokens zero-shot, more than the model's "
        f"context of {context} (max_position_embeddings)"
    )


# ------------------------------------------------------------------------------ scoring ---


@torch.inference_mode()
def letter_logprobs(model, prompts: list[list[int]], ids: list[int], pad_id: int = 0) -> torch.Tensor:
    """[len(prompts), len(ids)] log-probabilities (log-softmax over the whole vocabulary) of each of
    `ids` as the token following each prompt. The prompts run as one left-padded batch with a padding
    mask, so every row's last token sits in the last column and only that column's logits are kept."""
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    x = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        x[i, width - len(p) :] = torch.as_tensor(p)
        mask[i, width - len(p) :] = 1
    padded = not bool(mask.all())
    out = model(x.to(device), attention_mask=mask.to(device) if padded else None, logits_to_keep=1)
    logp = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
    return logp[:, torch.as_tensor(ids, device=device)].cpu()


@dataclass
class Exam:
    """The questions of one run, read and checked before the model is loaded."""

    task: str
    lang: str
    split: str | None
    subjects: list[list[Question]]  # one list per subject file
    dev: dict[str, list[Question]]  # subject -> its first k dev questions (the shots)
    shots: int


def load_exam(data, task: str, split: str | None = None, shots: int = 0, limit: int | None = None) -> Exam:
    """Read the split's files (and the dev files when shots > 0); `limit` keeps N questions per subject."""
    split = split or DEFAULT_SPLIT.get(task, "val")
    files, root = find_files(data, split)
    subjects = [read_csv(f)[:limit] for f in files]
    dev = {}
    if shots:
        for qs in subjects:
            subject = qs[0].subject
            path = find_dev(root, subject)
            if path is None:
                raise MiniMindError(
                    f"--shots {shots}: no dev file for subject {subject} "
                    f"(expected {root / 'dev' / (subject + '_dev.csv')})"
                )
            dev[subject] = read_csv(path)[:shots]
    split = split if files[0].parent.name == split else None  # a lone file or folder: its split is unknown
    return Exam(task, "en" if task == "mmlu" else "zh", split, subjects, dev, shots)


def evaluate_choice(
    model, tokenizer, exam: Exam, template: str = "chat", batch_size: int = 16, log=print, progress=None
) -> dict:
    """Score every question of `exam`; returns the metrics/details part of a result (see results.py).
    `progress(done, total)` is called after each batch (the CLI shows it on a terminal)."""
    lang, shots, dev = exam.lang, exam.shots, exam.dev
    ids = letter_ids(tokenizer, lang, template)
    context = model.config.max_position_embeddings
    pad_id = tokenizer.pad_token_id or 0

    items, dropped = [], 0  # (question, prompt ids)
    for qs in exam.subjects:
        for q in qs:
            prompt, k = fit_prompt(tokenizer, q, dev.get(q.subject, []), lang, template, context)
            dropped += k < len(dev.get(q.subject, []))
            items.append((q, prompt))
    if dropped:
        log(f"note: dropped some of the {shots} shots on {dropped} question(s) so they fit the {context}-token context")
    order = sorted(range(len(items)), key=lambda i: len(items[i][1]))  # similar lengths: less padding
    logps = [None] * len(items)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        scores = letter_logprobs(model, [items[i][1] for i in batch], ids, pad_id)
        for i, row in zip(batch, scores):
            logps[i] = row
        if progress:
            progress(min(start + batch_size, len(order)), len(order))

    subjects: dict[str, dict] = {}
    mass = 0.0
    for (q, _), lp in zip(items, logps):
        s = subjects.setdefault(q.subject, {"correct": 0, "n": 0})
        s["correct"] += LETTERS[int(lp.argmax())] == q.answer
        s["n"] += 1
        mass += float(lp.exp().sum())
    n = sum(s["n"] for s in subjects.values())
    correct = sum(s["correct"] for s in subjects.values())
    per_subject = {name: {"accuracy": s["correct"] / s["n"], "n": s["n"]} for name, s in sorted(subjects.items())}
    return {
        "metrics": {
            "accuracy": correct / n,
            "accuracy_macro": sum(s["accuracy"] for s in per_subject.values()) / len(per_subject),
            "chance": 1 / len(LETTERS),
            "n": n,
            "letter_mass": mass / n,
        },
        "primary": "accuracy",
        "details": {"subjects": per_subject, "template": template, "shots_dropped": dropped},
    }
