"""`minimind reason`: SFT that teaches a model to think first (open_thinking on) or answer
directly (open_thinking off), as minimind-3's chat template expects.

Each conversation is drawn, seeded, as a thinking example (probability --think-mix, its reply
split into reasoning and answer if it has no reasoning) or a direct one (reasoning dropped); the
mix is written once beside the token cache. ReasonObjective is SFT's cross entropy with
per-token weights: 0 on the tokens the generation prompt supplies, --think-weight on the
think/answer boundary, 1 elsewhere, plus an unlikelihood penalty (--tag-penalty) on think tags
after the block closed. Why each piece is there: docs/reasoning.md.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import torch

from ..data import BadRecords, default_cache_dir, read_records
from ..errors import MiniMindError
from ..files import atomic_write_text
from ..model.losses import next_token_nll
from .objectives import LMObjective, SetupContext, packed_attention_mask

MIX_VERSION = 1  # bump when the mixing rules change, so old mixed files are not reused


# --------------------------------------------------------------------------- the data mix


def split_answer(content: str) -> tuple[str, str] | None:
    """(reasoning, answer) from a chain-of-thought answer: its last paragraph is the answer,
    or its last line when it has no blank line; None when there is only one line."""
    text = content.strip()
    for sep in ("\n\n", "\n"):
        reasoning, _, answer = text.rpartition(sep)
        if reasoning.strip() and answer.strip():
            return reasoning.strip(), answer.strip()
    return None


def _has_reasoning(m: dict) -> bool:
    r = m.get("reasoning_content")
    return bool(r.strip()) if isinstance(r, str) else "</think>" in (m.get("content") or "")


def _without_reasoning(m: dict) -> dict:
    """The turn with its reasoning removed (the template then renders an empty block)."""
    m = {k: v for k, v in m.items() if k != "reasoning_content"}
    content = m.get("content") or ""
    if "</think>" in content:  # the template's own rule for reasoning inside content
        m["content"] = content.split("</think>")[-1].lstrip("\n")
    return m


def thinking_turns(messages: list[dict]) -> list[dict] | None:
    """The conversation with a think block in every assistant turn (tool-call turns excepted),
    or None if some turn has no reasoning and cannot be split."""
    out = []
    for m in messages:
        if m.get("role") == "assistant" and not m.get("tool_calls") and not _has_reasoning(m):
            parts = split_answer(m.get("content") or "")
            if parts is None:
                return None
            m = {**m, "reasoning_content": parts[0], "content": parts[1]}
        out.append(m)
    return out


def mix_conversations(messages: list[dict], think: bool) -> tuple[list[dict], str]:
    """One conversation as a thinking or a direct example: (messages, how) with how one of
    "own" (its own reasoning), "split" (answer split), "direct"."""
    if think:
        own = all(_has_reasoning(m) or m.get("tool_calls") for m in messages if m.get("role") == "assistant")
        turned = thinking_turns(messages)
        if turned is not None:
            return turned, "own" if own else "split"
    return [_without_reasoning(m) if m.get("role") == "assistant" else m for m in messages], "direct"


def mixed_file(path, think_mix: float, seed: int, out_dir: Path, on_bad_record: str = "error") -> tuple[Path, dict]:
    """Write (once) the thinking/direct mix of one SFT file; returns (its path, counts).
    Records are validated here, so bad data is reported against the user's file and line."""
    path = Path(path)
    if not path.is_file():
        raise MiniMindError(f"{path}: file not found")
    st = path.stat()
    key = json.dumps([MIX_VERSION, str(path.resolve()), st.st_size, st.st_mtime_ns, think_mix, seed, on_bad_record])
    target = out_dir / f"{path.stem[:40]}-think{think_mix:g}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.jsonl"
    counts_file = target.with_suffix(".counts.json")
    if target.is_file() and counts_file.is_file():
        return target, json.loads(counts_file.read_text())
    rng = random.Random(seed)
    counts = {"own": 0, "split": 0, "direct": 0, "unsplittable": 0, "skipped": 0}
    bad = BadRecords()
    lines = []
    for record in read_records(path, "sft", on_bad_record, bad):
        think = rng.random() < think_mix
        messages, how = mix_conversations(record.data["conversations"], think)
        counts[how] += 1
        counts["unsplittable"] += think and how == "direct"
        lines.append(json.dumps({"conversations": messages}, ensure_ascii=False))
    counts["skipped"] = bad.count
    if think_mix > 0 and lines and not counts["own"] + counts["split"]:
        raise MiniMindError(
            f"{path}: none of its {len(lines)} conversations can get a think block: they have no "
            "reasoning_content, no <think>...</think>, and their answers are a single line"
        )
    atomic_write_text(target, "\n".join(lines) + "\n" if lines else "")
    atomic_write_text(counts_file, json.dumps(counts))
    return target, counts


# --------------------------------------------------------------------------- the objective


class ReasonObjective(LMObjective):
    """SFT cross entropy with think-aware token weights (see the module docstring)."""

    name = "reason"

    def build_data(self, cfg, tokenizer):
        # (think_mix, think_weight and tag_penalty were checked when the TrainConfig was built)
        self.use_tokenizer(tokenizer)
        self.weight = cfg.think_weight
        self.tag_penalty = cfg.tag_penalty
        out_dir = default_cache_dir(cfg.cache_dir) / "reason-mix"
        mixed = [mixed_file(f, cfg.think_mix, cfg.seed, out_dir, cfg.on_bad_record) for f in cfg.data]
        self.mix_counts = {k: sum(c[k] for _, c in mixed) for k in mixed[0][1]}
        return self.datasets(cfg, tokenizer, [p for p, _ in mixed], "sft")

    def setup(self, ctx: SetupContext) -> None:
        if ctx.dist.is_main:
            c = self.mix_counts
            print(
                f"reason data: {c['own'] + c['split']} thinking conversations ({c['own']} with their own reasoning, "
                f"{c['split']} split at the answer's last paragraph), {c['direct']} direct"
                + (f" ({c['unsplittable']} drawn to think had a one-line answer)" if c["unsplittable"] else "")
                + f"; think/answer boundary weight {self.weight:g}, stray-tag penalty {self.tag_penalty:g}",
                flush=True,
            )

    def use_tokenizer(self, tokenizer):
        """The token sequences the weights are found by, checked against this tokenizer."""
        think, end = tokenizer.token_to_id("<think>"), tokenizer.token_to_id("</think>")
        if think is None or end is None:
            raise MiniMindError(
                f"tokenizer {tokenizer.source} has no <think> and </think> tokens: reasoning "
                "training needs a tokenizer whose chat template writes think blocks (e.g. minimind3)"
            )
        probe = tokenizer.encode_chat(
            [{"role": "user", "content": "q"}], add_generation_prompt=True, open_thinking=True
        )
        self.on_prompt = tokenizer.encode("<think>\n")
        if probe[-len(self.on_prompt) :] != self.on_prompt:
            raise MiniMindError(
                f"tokenizer {tokenizer.source}: its chat template does not end a thinking prompt with "
                "<think>\\n (open_thinking), so it cannot train minimind-3 style reasoning"
            )
        self.empty_block = tokenizer.encode("<think>\n\n</think>\n\n")
        self.boundary = tokenizer.encode("</think>\n\n")
        self.think_id, self.end_id = think, end
        # a turn starts or ends at these: a closed block never carries over to the next turn
        self.turn_ids = [
            i for i in (tokenizer.token_to_id("<|im_start|>"), tokenizer.token_to_id("<|im_end|>")) if i is not None
        ]

    def token_weights(self, targets: torch.Tensor, weight: float) -> torch.Tensor:
        """Loss weight of each target token (0 where the label is -100)."""
        prompt = _cover(_match(targets, self.empty_block), len(self.empty_block))
        prompt |= _cover(_match(targets, self.on_prompt), len(self.on_prompt))
        # </think>, the blank line, and the first answer token (len(boundary) + 1 tokens)
        edge = _cover(_match(targets, self.boundary), len(self.boundary) + 1) | (targets == self.end_id)
        w = (targets != -100).float()
        w[edge & ~prompt] *= weight
        w[prompt] = 0.0
        return w

    def after_block(self, inputs: torch.Tensor) -> torch.Tensor:
        """True where the turn's think block is already closed: the last </think> among the
        tokens so far comes after the last <think> and the last turn start or end."""
        pos = torch.arange(inputs.shape[1], device=inputs.device).expand_as(inputs)
        last_close = torch.where(inputs == self.end_id, pos, -1).cummax(1).values
        opens = inputs == self.think_id
        for i in self.turn_ids:
            opens |= inputs == i
        return last_close > torch.where(opens, pos, -1).cummax(1).values

    def tag_log_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """log(p(<think>) + p(</think>)) of each row of logits [N, vocab], in fp32."""
        logits = logits.float()
        return torch.logsumexp(logits[:, [self.think_id, self.end_id]], -1) - torch.logsumexp(logits, -1)

    def count(self, batch: dict) -> float:
        return float(self.token_weights(batch["labels"][:, 1:], self.weight).sum())

    def loss_sum(self, model, batch: dict):
        out = model(batch["input_ids"], attention_mask=packed_attention_mask(batch), position_ids=batch["position_ids"])
        logits, targets = out.logits[:, :-1], batch["labels"][:, 1:]
        w = self.token_weights(targets, self.weight)
        loss = (next_token_nll(out.logits, batch["labels"])[:, :-1] * w).sum()
        # the unlikelihood of a tag on the trained tokens after the block closed (a tag that is
        # the data's own target there is left to cross entropy)
        where = (
            self.after_block(batch["input_ids"][:, :-1])
            & (w > 0)
            & (targets != self.think_id)
            & (targets != self.end_id)
        )
        log_p = self.tag_log_probs(logits[where]).clamp(max=-1e-6)  # log p < 0 keeps log(1 - p) finite
        if self.tag_penalty:
            log_not = torch.where(log_p > -0.693, torch.log(-torch.expm1(log_p)), torch.log1p(-torch.exp(log_p)))
            loss = loss - self.tag_penalty * log_not.sum()
        return loss, out.aux_loss, {"tag_p": log_p.exp().sum().detach()}


def _match(x: torch.Tensor, seq: list[int]) -> torch.Tensor:
    """True where `seq` starts in the rows of x (within a row)."""
    hit = torch.ones_like(x, dtype=torch.bool)
    for k, token in enumerate(seq):
        nxt = torch.full_like(x, -1)
        nxt[:, : x.shape[1] - k] = x[:, k:]
        hit &= nxt == token
    return hit


def _cover(starts: torch.Tensor, length: int) -> torch.Tensor:
    """True on the `length` positions from each start."""
    out = starts.clone()
    for k in range(1, length):
        out[:, k:] |= starts[:, :-k]
    return out
