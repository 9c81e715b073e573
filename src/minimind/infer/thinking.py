"""Is a generated answer a well-formed think block followed by an answer?

The minimind-3 chat template writes a reasoning turn as `<think>\\n{reasoning}\\n</think>\\n\\n
{answer}`. With `open_thinking=True` the generation prompt already ends with `<think>\\n`, so
the model's text starts inside the block; with it off the prompt ends with the empty block
`<think>\\n\\n</think>\\n\\n` and the model should write the answer alone.

check_thinking(text) sorts a completion into one of three kinds:
  "think"      exactly one <think> ... </think> at the start, non-empty reasoning inside and a
               non-empty answer after it
  "none"       no <think> or </think> anywhere, and a non-empty answer
  "malformed"  anything else (an unclosed block, a stray or repeated tag, empty reasoning,
               nothing after </think>, text before <think>, or a completion cut off at the
               token limit), with `problem` saying which
Used by benchmarks/reasoning.py; small and dependency-free so `minimind eval` can reuse it.
"""

from __future__ import annotations

from dataclasses import dataclass

THINK, END_THINK = "<think>", "</think>"


@dataclass
class ThinkCheck:
    kind: str  # "think", "none" or "malformed"
    reasoning: str = ""  # the text inside the block, stripped ("" when there is none)
    answer: str = ""  # the text after </think> (or the whole text when there is no block), stripped
    problem: str = ""  # why it is malformed ("" otherwise)


def check_thinking(text: str, opened: bool = False, finished: bool = True) -> ThinkCheck:
    """Classify a completion.

    opened    the prompt ended with `<think>` (open_thinking=True): `text` is what follows it
    finished  False when generation stopped at the token limit: the answer may be incomplete,
              so the completion is malformed whatever it looks like
    """
    body = (THINK + text) if opened else text.lstrip()
    if not finished:
        return ThinkCheck("malformed", problem="cut off at the token limit")
    opens, closes = body.count(THINK), body.count(END_THINK)
    if opens == 0 and closes == 0:
        answer = body.strip()
        return ThinkCheck("none", answer=answer) if answer else ThinkCheck("malformed", problem="empty answer")
    if not body.startswith(THINK):
        return ThinkCheck("malformed", problem=f"text before {THINK}" if opens else f"{END_THINK} without {THINK}")
    if closes == 0:
        return ThinkCheck("malformed", reasoning=body[len(THINK) :].strip(), problem=f"{THINK} is never closed")
    if opens != 1 or closes != 1:
        return ThinkCheck("malformed", problem=f"{opens} {THINK} and {closes} {END_THINK} tags, expected one each")
    reasoning, answer = (part.strip() for part in body[len(THINK) :].split(END_THINK))
    if not reasoning:
        return ThinkCheck("malformed", reasoning, answer, "empty reasoning")
    if not answer:
        return ThinkCheck("malformed", reasoning, answer, f"no answer after {END_THINK}")
    return ThinkCheck("think", reasoning, answer)
