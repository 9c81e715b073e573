"""DPO: Direct Preference Optimisation (Rafailov et al. 2023) as an objective of the one trainer.

For a pair (prompt x, chosen y+, rejected y-), with the policy's log-probs log pi(y|x) (summed
over the reply tokens, or their mean with --dpo-length-norm) and a frozen reference's log ref:

    h = (log pi(y+) - log ref(y+)) - (log pi(y-) - log ref(y-))
    sigmoid  loss = -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)   (eps: label smoothing)
    ipo      loss = (h - 1 / (2 beta))^2                                        (Azar et al. 2023)
    hinge    loss = max(0, 1 - beta h)                                          (SLiC)
    plus     dpo_sft_weight * (mean negative log-likelihood of the chosen reply's tokens)

Rewards are beta * (log pi - log ref) per side; the logged reward_margin is their difference
and reward_accuracy the share of pairs whose margin is positive. All are per pair: count() is
the number of pairs, so the loop logs means over pairs.

The reference: by default (--ref-mode cached) its log-probs are computed once, before
training, in eval mode, and kept in OUT/ref_logps.safetensors keyed by the data and the
reference weights, so a resumed run reads back exactly the same numbers. --ref-mode online
keeps a frozen copy of the reference and runs it every step instead (MiniMind's way: one more
forward per step, and a second model in memory). The reference is the starting model (--init)
unless --ref DIR names another with the same tokenizer.
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from ..checkpoint import load_model
from ..data.pairs import build_pair_datasets, length_grouped_batches, padding_fraction
from ..errors import MiniMindError
from ..files import atomic_write
from ..model.losses import IGNORE_INDEX, next_token_nll
from ..tokenizer import Tokenizer
from .config import DPO_LOSSES
from .distributed import all_reduce_sum
from .objectives import Objective, SetupContext

CACHE_NAME = "ref_logps.safetensors"


def dpo_losses(
    pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta: float, kind: str = "sigmoid", label_smoothing: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair (loss, chosen reward, rejected reward) from per-pair sequence log-probs."""
    chosen_reward = beta * (pi_chosen - ref_chosen)
    rejected_reward = beta * (pi_rejected - ref_rejected)
    h = (pi_chosen - ref_chosen) - (pi_rejected - ref_rejected)
    if kind == "sigmoid":
        loss = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    elif kind == "ipo":
        loss = (h - 1 / (2 * beta)) ** 2
    elif kind == "hinge":
        loss = torch.relu(1 - beta * h)
    else:
        raise MiniMindError(f"unknown --dpo-loss {kind!r}; choose from: {', '.join(DPO_LOSSES)}")
    return loss, chosen_reward.detach(), rejected_reward.detach()


def sequence_logps(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(summed log-prob of each row's labelled tokens, their number, MoE aux loss).

    Rows are right-padded: with causal attention no real token attends to the padding after
    it, so the model runs without a mask (SDPA's fast causal kernel)."""
    out = model(batch["input_ids"], position_ids=batch["position_ids"])
    labels = batch["labels"]
    return -next_token_nll(out.logits, labels).sum(1), (labels[:, 1:] != IGNORE_INDEX).sum(1), out.aux_loss


class DPOObjective(Objective):
    """The DPO loss on preference pairs; its units are pairs, not tokens. Its settings
    (dpo_beta, dpo_loss, ...) were checked when the TrainConfig was built."""

    name = "dpo"

    def __init__(self):
        self.ref_model = None
        self.cfg = None
        self.padding = None  # share of padding in the training batches (length-grouped), for the start line

    # ------------------------------------------------------------------ data
    def build_data(self, cfg, tokenizer):
        self.cfg = cfg
        return build_pair_datasets(cfg.data, tokenizer, cfg.seq_len, cfg.val_fraction, cfg.seed, cfg.on_bad_record)

    def describe_data(self, cfg, train_ds, val_ds) -> str:
        padding = self.padding if self.padding is not None else train_ds.stats.get("padding_fraction", 0)
        return f"{len(train_ds)} pairs of at most {cfg.seq_len} tokens a side, {padding * 100:.1f}% padding" + (
            f", {len(val_ds)} validation pairs" if val_ds is not None else ""
        )

    def iterate_batches(
        self, ds, batch_size: int, seed: int, epoch: int, start: int = 0, rank: int = 0, world_size: int = 1
    ):
        """Length-grouped batches (little padding), resumable at batch `start`, sharded by rank."""
        batches = length_grouped_batches(ds.lengths, batch_size, seed, epoch, world_size)
        for rows in batches[start:]:
            yield ds.get_batch(rows[rank * batch_size : (rank + 1) * batch_size])

    # ------------------------------------------------------------------ the reference
    def setup(self, ctx: SetupContext) -> None:
        """Load and check the reference, then cache its log-probs (or keep it for online use).
        Runs before any training step and before a checkpoint is restored, so ctx.model still
        holds the starting weights."""
        cfg = self.cfg
        ref = load_reference(cfg.ref, ctx) if cfg.ref else ctx.model
        ds = ctx.train_ds
        if len(ds) >= cfg.batch_size * ctx.dist.world_size:
            self.padding = padding_fraction(
                ds, length_grouped_batches(ds.lengths, cfg.batch_size, cfg.seed, 0, ctx.dist.world_size)
            )
        if cfg.ref_mode == "online":
            self.ref_model = copy.deepcopy(ref) if ref is ctx.model else ref
            self.ref_model.requires_grad_(False).eval()
            return
        parts = {"train": ctx.train_ds, **({"val": ctx.val_ds} if ctx.val_ds is not None else {})}
        cache = ctx.out / CACHE_NAME
        key = cache_key(ref, parts, ctx.dtype)
        cached = read_cache(cache, key)
        for name, part in parts.items():
            part.set_reference(cached[name] if cached else reference_logps(ref, part, ctx))
        if cached is None and ctx.dist.is_main:
            tensors = {name: part.ref.contiguous() for name, part in parts.items()}
            atomic_write(cache, lambda tmp: save_file(tensors, tmp, metadata={"key": key}))

    # ------------------------------------------------------------------ the loss
    def count(self, batch: dict) -> int:
        return int((batch["pair"] >= 0).sum())

    def drop_last_unit(self, batch: dict) -> None:
        """Make the batch's last pair count nowhere (the trainer's dummy row under FSDP: both of
        its sides still run, as every rank must run every forward)."""
        batch["pair"][-1] = -1

    def loss_sum(self, model, batch: dict):
        cfg = self.cfg
        B = batch["pair"].shape[0]
        keep = batch["pair"] >= 0  # False only on a dropped dummy pair
        logp, n_tokens, aux = sequence_logps(model, batch)
        if "ref_logp" in batch:
            ref_sum = batch["ref_logp"].to(logp.dtype)
        else:
            with torch.no_grad():
                ref_logp, _, _ = sequence_logps(self.ref_model, batch)
            ref_sum = torch.stack([ref_logp[:B], ref_logp[B:]], 1)
        n = n_tokens.clamp(min=1).to(logp.dtype)
        per_side = logp / n if cfg.dpo_length_norm else logp
        ref_side = ref_sum / torch.stack([n[:B], n[B:]], 1) if cfg.dpo_length_norm else ref_sum
        loss, chosen_reward, rejected_reward = dpo_losses(
            per_side[:B],
            per_side[B:],
            ref_side[:, 0],
            ref_side[:, 1],
            cfg.dpo_beta,
            cfg.dpo_loss,
            cfg.dpo_label_smoothing,
        )
        margin = chosen_reward - rejected_reward
        sums = {
            "reward_margin": margin[keep].sum(),
            "reward_accuracy": (margin[keep] > 0).sum(),
            "logp_chosen": per_side[:B][keep].detach().sum(),
            "logp_rejected": per_side[B:][keep].detach().sum(),
        }
        total = loss[keep].sum()
        if cfg.dpo_sft_weight:
            sft = -(logp[:B] / n[:B])[keep]  # the chosen reply's mean token NLL, per pair
            total = total + cfg.dpo_sft_weight * sft.sum()
            sums["sft_loss"] = sft.detach().sum()
        metrics = dict(zip(sums, torch.stack([v.float() for v in sums.values()]).tolist()))  # one device sync
        return total, aux, metrics


def load_reference(ref_dir: str, ctx: SetupContext):
    """A --ref model directory, checked against the policy: same vocabulary, token for token."""
    ref = load_model(ref_dir, device=ctx.device)
    policy_tok, ref_tok = ctx.tokenizer, Tokenizer.from_dir(ref_dir)
    if ref.config.vocab_size != ctx.model.config.vocab_size:
        raise MiniMindError(
            f"--ref {ref_dir}: vocab_size {ref.config.vocab_size} does not match the policy's "
            f"{ctx.model.config.vocab_size}: the reference must use the policy's tokenizer"
        )
    if ref_tok.vocab_size != policy_tok.vocab_size or any(
        ref_tok.id_to_token(i) != policy_tok.id_to_token(i) for i in range(policy_tok.vocab_size)
    ):
        raise MiniMindError(
            f"--ref {ref_dir}: its tokenizer differs from the policy's ({policy_tok.source}): "
            "log-probs of the same token ids would mean different text"
        )
    return ref.requires_grad_(False).eval()


@torch.no_grad()
def reference_logps(ref, ds, ctx: SetupContext) -> torch.Tensor:
    """[N, 2] float64 summed log-probs of each pair's (chosen, rejected) reply under `ref`.

    Eval mode, fixed batches of pairs sorted by length (little padding), the training
    precision: the same numbers every time. Under DDP each rank computes every world_size-th
    batch and the sums are combined."""
    was_training = ref.training
    ref.eval()
    dist, bs = ctx.dist, ctx.cfg.batch_size
    out = torch.zeros(len(ds), 2, dtype=torch.float64, device=ctx.device)
    order = np.argsort(ds.lengths, kind="stable").tolist()
    for k, i in enumerate(range(0, len(ds), bs)):
        if k % dist.world_size != dist.rank:
            continue
        rows = order[i : i + bs]
        batch = {name: v.to(ctx.device) for name, v in ds.get_batch(rows).items()}
        with ctx.autocast():
            logp, _, _ = sequence_logps(ref, batch)
        out[rows] = torch.stack([logp[: len(rows)], logp[len(rows) :]], 1).double()
    ref.train(was_training)
    return all_reduce_sum(out, dist).cpu()


def cache_key(ref, parts: dict, dtype: torch.dtype) -> str:
    """Hash of what the cached log-probs depend on: the data's tokens, the reference's weights
    and the precision."""
    h = hashlib.sha256(str(dtype).encode())
    for name, part in parts.items():
        h.update(name.encode())
        h.update(part.content_key())
    for name, t in ref.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def read_cache(path: Path, key: str) -> dict | None:
    """The cached reference log-probs in `path` if they were made for `key`, else None."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}).get("key") != key:
                return None
            return {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 - safe_open is no dict
    except Exception:  # noqa: BLE001 - any unreadable cache is simply computed again
        return None  # unreadable: compute again
