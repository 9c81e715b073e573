"""Find the final numeric answer in a model's reply, and compare numbers by value.

    extract_answer("... so she earned $1,234.50.\\n#### 1234.5")  -> ("1234.5", True)
    same_number("5.00", "5"), same_number("3/4", "0.75")           -> True, True

Where the answer is looked for, most explicit first (the flag says whether an explicit marker was found,
which the exact-match task reports as "format_ok"):
  1. the last \\boxed{...}
  2. the last "#### N" (GSM8K's own answer line)
  3. the last "answer is N" / "Answer: N" / "答案：N" / "答案/Answer: N" (MiniMind's GSM8K SFT line)
  4. otherwise (not explicit): the last number of the reply, which is the number in its last sentence.
A <think>...</think> block is dropped first when an answer follows it, so numbers from the reasoning
never win over the answer; a reply that is only a (possibly unfinished) think block is searched whole.
"""

from __future__ import annotations

import re
from fractions import Fraction

# A number: optional sign, optional $, digits with thousands commas or plain, decimals, a /fraction,
# an optional %. Commas only count in groups of three, so "1,234" is one number and "3,4" two.
NUMBER = re.compile(
    r"(?<![\w.])([-−]?)\$?\s?((?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?:\s?/\s?(\d+(?:\.\d+)?))?\s?%?"
)
LATEX_FRAC = re.compile(r"\\d?t?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
CUES = re.compile(
    r"(?:answer\s*(?:is|:|=)|答案\s*(?:/\s*answer\s*)?(?:是|为|:|：)|最终答案|final answer)", re.IGNORECASE
)


def _boxed(text: str) -> str | None:
    """Content of the last \\boxed{...}, braces balanced (\\boxed{\\frac{3}{4}} works)."""
    start = text.rfind("\\boxed")
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1 : j]
    return text[i + 1 :]


def _first_number(text: str) -> str | None:
    text = LATEX_FRAC.sub(r"\1/\2", text)
    m = NUMBER.search(text)
    return _normalize(m) if m else None


def _normalize(m: re.Match) -> str:
    sign, whole, denominator = m.group(1), m.group(2).replace(",", ""), m.group(3)
    value = f"{'-' if sign else ''}{whole}"
    return f"{value}/{denominator}" if denominator else value


def strip_thinking(text: str) -> str:
    """The reply after its <think> block, when something follows the block; else the whole reply."""
    end = text.rfind("</think>")
    if end >= 0 and re.search(r"\d", text[end + len("</think>") :]):
        return text[end + len("</think>") :]
    return text


def extract_answer(text: str) -> tuple[str | None, bool]:
    """(the final number as a plain string, or None; whether an explicit answer marker held it)."""
    text = strip_thinking(text)
    boxed = _boxed(text)
    if boxed is not None and (n := _first_number(boxed)) is not None:
        return n, True
    hashes = text.rfind("####")
    if hashes >= 0 and (n := _first_number(text[hashes + 4 :])) is not None:
        return n, True
    cues = list(CUES.finditer(text))
    if cues and (n := _first_number(text[cues[-1].end() :])) is not None:
        return n, True
    numbers = list(NUMBER.finditer(LATEX_FRAC.sub(r"\1/\2", text)))
    return (_normalize(numbers[-1]), False) if numbers else (None, False)


def to_fraction(value) -> Fraction | None:
    """A number string ("1,234", "$5", "-3/4", "0.75", "50%") as an exact Fraction; None if it is not one."""
    text = str(value).strip()
    m = NUMBER.fullmatch(text) or NUMBER.fullmatch(LATEX_FRAC.sub(r"\1/\2", text))
    if not m:
        return None
    sign, whole, denominator = m.group(1), m.group(2).replace(",", ""), m.group(3)
    try:
        number = Fraction(whole) / (Fraction(denominator) if denominator else 1)
    except ZeroDivisionError:
        return None
    return -number if sign else number


def same_number(a, b) -> bool:
    """Equal as numbers (5.00 == 5, 3/4 == 0.75, 1,234 == 1234); non-numbers compare as stripped text."""
    fa, fb = to_fraction(a), to_fraction(b)
    if fa is not None and fb is not None:
        return fa == fb
    return str(a).strip() == str(b).strip()
