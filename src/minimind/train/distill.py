"""White-box distillation: a student learns the teacher's whole next-token distribution.

    minimind distill --teacher out/big --init out/small --data sft.jsonl --out out/distilled

On every assistant token (the packed rows and loss mask of `minimind sft`) the loss is

    loss = alpha * T^2 * KL_T + (1 - alpha) * CE

KL_T compares the teacher's and the student's distributions softened by T, forward
(teacher || student, the default) or reverse; T^2 keeps the gradient's size independent of T.
Logged per assistant token: `kl` (forward KL at T = 1, the distance to watch), `kd` (the term as
trained) and `ce`. The settings, how they differ from MiniMind's, and measurements: the README's
Distillation section and benchmarks/README.md.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..checkpoint import load_model
from ..config import ModelConfig
from ..errors import MiniMindError
from ..tokenizer import Tokenizer, tokenizer_difference
from .objectives import LMObjective, SetupContext, packed_attention_mask


def distill_terms(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    direction: str = "forward",
) -> dict[str, torch.Tensor]:
    """Summed (not averaged) losses over N token positions: logits [N, vocab], targets [N].

    Returns kd = T^2 * KL_T (direction as asked), kl = KL(teacher || student) at T = 1 and
    ce = cross entropy on the targets, each summed over the N positions, in fp32.
    """
    s, t = student_logits.float(), teacher_logits.float()
    ce = F.cross_entropy(s, targets, reduction="sum")
    log_s, log_t = F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1)
    if direction == "forward":  # sum_v p_t (log p_t - log p_s)
        kl_t = F.kl_div(log_s, log_t, log_target=True, reduction="sum")
    else:  # sum_v p_s (log p_s - log p_t)
        kl_t = F.kl_div(log_t, log_s, log_target=True, reduction="sum")
    kd = kl_t * temperature**2
    if temperature == 1.0 and direction == "forward":
        kl = kl_t.detach()
    else:
        with torch.no_grad():
            kl = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="sum")
    return {"kd": kd, "kl": kl, "ce": ce}


def _tokenizer_difference(a, b) -> str | None:
    """What differs between the teacher's tokenizer (a) and the student's (b) in a way that
    changes token ids, or None. Not only the size: two tokenizers of the same size with other
    merges split text differently, so a size check alone would let a mismatched teacher through."""
    return tokenizer_difference(a, b, ("the teacher's", "the student's"))


def check_teacher(teacher_dir, tokenizer) -> None:
    """Fail fast (before data is tokenized or weights are read) on a missing teacher or one
    whose tokenizer is not the student's: logits over different vocabularies cannot be compared."""
    d = Path(teacher_dir)
    if not d.is_dir():
        raise MiniMindError(f"--teacher {d}: model directory not found")
    if not (d / "config.json").is_file():
        raise MiniMindError(f"--teacher {d}: no config.json (not a model directory)")
    teacher_tok = Tokenizer.from_dir(d)
    diff = _tokenizer_difference(teacher_tok, tokenizer)
    if diff:
        raise MiniMindError(
            f"--teacher {d}: its tokenizer is not the student's ({tokenizer.source}): {diff}; "
            "distillation needs teacher and student to share one tokenizer"
        )


class DistillObjective(LMObjective):
    """SFT data (packed and masked exactly as LMObjective does), loss mixed from the KL to a
    frozen teacher and the cross entropy."""

    name = "distill"

    def build_data(self, cfg, tokenizer):
        # (the settings themselves were checked when the TrainConfig was built)
        check_teacher(cfg.teacher, tokenizer)
        self.alpha, self.temperature, self.direction = cfg.distill_alpha, cfg.distill_temperature, cfg.distill_kl
        return super().build_data(cfg, tokenizer)

    def setup(self, ctx: SetupContext) -> None:
        """Load the teacher frozen, in eval mode (no dropout), on the student's device and in the
        training precision; re-created the same way on resume (it never changes)."""
        d = Path(ctx.cfg.teacher)
        teacher_vocab = ModelConfig.load(d / "config.json").vocab_size
        student_vocab = ctx.model.config.vocab_size
        if teacher_vocab != student_vocab:
            raise MiniMindError(
                f"--teacher {d}: vocab_size {teacher_vocab} in config.json, the student has "
                f"{student_vocab}; their logits must cover the same tokens"
            )
        self.teacher = load_model(d, device=ctx.device, dtype=ctx.dtype)
        self.teacher.requires_grad_(False)

    def loss_sum(self, model, batch: dict):
        mask = packed_attention_mask(batch)
        out = model(batch["input_ids"], attention_mask=mask, position_ids=batch["position_ids"])
        with torch.no_grad():  # under the trainer's autocast, like the student
            teacher_logits = self.teacher(
                batch["input_ids"], attention_mask=mask, position_ids=batch["position_ids"]
            ).logits
        targets = batch["labels"][:, 1:]
        keep = targets != -100  # assistant tokens only: fp32 copies of just these rows
        terms = distill_terms(
            out.logits[:, :-1][keep], teacher_logits[:, :-1][keep], targets[keep], self.temperature, self.direction
        )
        loss = self.alpha * terms["kd"] + (1 - self.alpha) * terms["ce"]
        return loss, out.aux_loss, {name: value.detach() for name, value in terms.items()}
