"""RL prompts read from MiniMind's RLAIF and agent-RL files, checked line by line.

    for p in read_rl_prompts("rl_gsm8k_train_gt.jsonl"):
        p.messages   # the prompt: the conversation without its assistant placeholder
        p.tools      # the tool schemas the system message offers ([] for RLAIF prompts)
        p.gt         # the accepted answers as strings ([] when the file has none)
        p.record     # the whole row, which rewards receive as `record`

A bad row stops the reading with `FILE:LINE: what is wrong` (or is skipped and counted with
on_bad_record="skip"); the rules are data/formats.check_rl and data/rl.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from ..data.formats import BadRecords, read_records
from ..data.rl import offered_tools, prompt_messages


@dataclass
class RLPrompt:
    messages: list[dict]
    tools: list[dict]
    gt: list[str]
    record: dict
    where: str  # "FILE:LINE", for messages about this prompt

    @property
    def is_agent(self) -> bool:
        """Agent RL: the prompt offers tools."""
        return bool(self.tools)


def read_rl_prompts(path, on_bad_record: str = "error", bad: BadRecords | None = None) -> Iterator[RLPrompt]:
    """Stream the prompts of an RL file (kind "rl")."""
    for r in read_records(path, "rl", on_bad_record=on_bad_record, bad=bad):
        messages = r.data["conversations"]
        gt = [str(g).strip() for g in r.data.get("gt") or []]
        yield RLPrompt(prompt_messages(messages), offered_tools(messages), gt, r.data, f"{r.path}:{r.line}")
