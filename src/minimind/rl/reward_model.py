"""A learned reward: a LOCAL transformers sequence-classification model scoring each reply
(`--reward-model DIR`, logged as the reward component `reward_model`).

    rm = RewardModel("path/to/reward-model", torch.device("cpu"), batch_size=16)
    rm.batch(["reply one", "reply two"], [record, record])   # [0.73, -1.2]: one score per reply
    rm("reply one", record)                                 # the same score, alone

DIR is a directory as `save_pretrained` writes it: config.json, the weights and the model's own
tokenizer. It is loaded with AutoModelForSequenceClassification, local_files_only=True and
trust_remote_code=False: nothing is downloaded and no Python shipped with the model runs. A
directory whose config (or tokenizer config) names its own code (`auto_map`, as MiniMind's
InternLM2-1.8B-Reward does) is refused, with a message that says so. The model must have one
output (num_labels 1): its logit is the score.

What the model reads: the prompt (the record's conversation without its assistant placeholder)
and the reply, through the model tokenizer's chat template when it has one, else as plain text,
the prompt's messages one a line and then the reply. Long inputs are cut from the left, so the
reply, which is what is being scored, is kept. Replies are scored --reward-model-batch at a time,
right-padded (the model reads its score at each row's last real token, so a reply scores the
same in any batch), in eval mode without gradients, on the run's device.

transformers is needed only here (pip install 'minimind[reward-model]'); our own model never
goes through it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..data.rl import prompt_messages
from ..errors import MiniMindError


class RewardModel:
    """A sequence-classification model as a reward `(completion_text, record) -> float`, with
    `batch(completions, records)` to score many at once."""

    def __init__(self, path, device: torch.device | str = "cpu", batch_size: int = 16, dtype=torch.float32):
        if batch_size < 1:
            raise MiniMindError(f"--reward-model-batch must be at least 1, got {batch_size}")
        self.path, self.batch_size = Path(path), batch_size
        self.device = torch.device(device)
        _refuse_remote_code(self.path)
        try:
            import transformers
        except ImportError:
            raise MiniMindError(
                "--reward-model needs transformers: pip install 'minimind[reward-model]' (or transformers)"
            ) from None
        local = dict(local_files_only=True, trust_remote_code=False)
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(self.path), **local)
        except Exception as e:  # no tokenizer files, or a tokenizer class transformers lacks
            raise MiniMindError(
                f"--reward-model {self.path}: cannot load its tokenizer ({type(e).__name__}: {_first_line(e)}); "
                "the directory needs the model's own tokenizer (save_pretrained writes it)"
            ) from None
        try:
            model = transformers.AutoModelForSequenceClassification.from_pretrained(str(self.path), **local)
        except Exception as e:
            raise MiniMindError(
                f"--reward-model {self.path}: not a transformers sequence-classification model "
                f"({type(e).__name__}: {_first_line(e)})"
            ) from None
        if model.config.num_labels != 1:
            raise MiniMindError(
                f"--reward-model {self.path}: a reward model has one output (num_labels 1), this one has "
                f"{model.config.num_labels}"
            )
        tok = self.tokenizer
        if tok.pad_token_id is None:  # batches need a pad token; the eos is the usual stand-in
            if tok.eos_token is None:
                raise MiniMindError(f"--reward-model {self.path}: its tokenizer has neither a pad nor an eos token")
            tok.pad_token = tok.eos_token
        if model.config.pad_token_id is None:  # where the model looks for each row's last token
            model.config.pad_token_id = tok.pad_token_id
        tok.padding_side, tok.truncation_side = "right", "left"
        context = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
        self.max_length = min(tok.model_max_length, context) if context else tok.model_max_length
        self.templated = bool(getattr(tok, "chat_template", None))
        self.model = model.to(device=self.device, dtype=dtype).eval().requires_grad_(False)

    def text(self, completion: str, record: dict) -> str:
        """What the model reads for one reply (see the module doc)."""
        conversation = record.get("conversations") if isinstance(record, dict) else None
        messages = [
            {"role": m.get("role", "user"), "content": str(m.get("content") or "")}
            for m in prompt_messages(conversation or [])
        ]
        if not self.templated:
            return "\n".join([m["content"] for m in messages] + [completion])
        try:
            return self.tokenizer.apply_chat_template(
                messages + [{"role": "assistant", "content": completion}], tokenize=False
            )
        except Exception as e:  # e.g. a template that refuses a system turn
            raise MiniMindError(
                f"--reward-model {self.path}: its chat template failed on a prompt ({type(e).__name__}: "
                f"{_first_line(e)})"
            ) from None

    @torch.no_grad()
    def batch(self, completions: list[str], records: list[dict]) -> list[float]:
        """One score per reply, in order, --reward-model-batch replies per forward pass."""
        if len(completions) != len(records):
            raise MiniMindError(f"reward model: {len(completions)} replies for {len(records)} records")
        texts = [self.text(c, r) for c, r in zip(completions, records)]
        scores = []
        for start in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(
                texts[start : start + self.batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                # a chat template writes its own special tokens (a second <bos> would be read)
                add_special_tokens=not self.templated,
                return_tensors="pt",
            ).to(self.device)
            logits = self.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
            scores += logits[:, 0].float().cpu().tolist()
        return scores

    def __call__(self, completion: str, record: dict) -> float:
        return self.batch([completion], [record])[0]


def _refuse_remote_code(path: Path) -> None:
    """Stop before transformers reads anything when the directory asks to run its own code."""
    config = path / "config.json"
    if not config.is_file():
        raise MiniMindError(
            f"--reward-model {path}: not a model directory (no config.json); give a local directory "
            "as save_pretrained writes it"
        )
    for name in ("config.json", "tokenizer_config.json"):
        file = path / name
        if not file.is_file():
            continue
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise MiniMindError(f"--reward-model {file}: not valid JSON ({e})") from None
        if isinstance(data, dict) and data.get("auto_map"):
            raise MiniMindError(
                f"--reward-model {path}: {name} names its own code (auto_map: "
                f"{', '.join(map(str, data['auto_map']))}), which needs trust_remote_code; minimind never runs "
                "a model's own code: use a model of an architecture transformers ships"
            )


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else ""
