"""PPO with a critic, as an objective of the one trainer (`minimind ppo`).

Its batches are made online exactly as GRPO's (rl/grpo.py, which this builds on): prompts,
rollouts on the generation engine (a seed per reply), rewards against `gt`, old and reference
log-probs in the training precision, --iterations optimizer steps per batch of rollouts, and
the same exact resume. What PPO adds, per batch of rollouts:
  1. values: the critic's V for every reply token (under no_grad, in the training precision);
  2. token rewards: r_t = -kl_beta * (log pi_old - log ref)_t on every reply token, plus the
     reply's reward on its last token (standard PPO-RLHF: the KL to the starting model is a
     cost paid per token, not a term of the loss);
  3. GAE: delta_t = r_t + gamma * V_(t+1) - V_t, A_t = delta_t + gamma * lam * A_(t+1), with
     V = 0 after a reply's last token; the returns are R_t = A_t + V_t;
  4. the advantages are whitened over the whole global batch of rollouts (every micro-batch of
     every process: an all-reduce), so two processes give what one does.
The loss per reply token, summed; the trainer divides by the reply tokens of the global batch:
  policy: -min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A)        (grpo.policy_loss)
  value:  vf_coef * 0.5 * max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2),  c = --value-clip
Approximate-KL early stop: each step measures k3(pi_old || pi) over the global batch (the
policy after the updates so far). Above --target-kl, that step's update and the rest of the
batch's are not made, for the policy and the critic, on every process alike (the measure is
all-reduced, so every rank takes the same decision and DDP's collectives stay aligned; the
skipped steps run no forward at all). The first update of a batch is always made (its KL is 0).

The critic (rl/value.py) is a separate model: a copy of the policy's trunk and a scalar head,
as MiniMind's train_ppo.py has it, with its own AdamW and --critic-lr (MiniMind: 5e-7 for the
critic, 3e-7 for the actor), following the model's warmup and cosine. A value head on the
policy's own trunk would save memory, but the value loss would then pull on the policy's
features and one learning rate would serve both. Its weights, its optimizer and the early-stop
decision are checkpointed with the run (train_state/objective.pt), so resuming is exact.

--num-generations is 1 by default: the critic is the baseline, no group is needed (more
replies per prompt still work).
"""

from __future__ import annotations

import math

import torch
from tqdm import tqdm

from ..errors import MiniMindError
from ..train.distributed import all_reduce_sum
from ..train.optim import make_optimizer
from .grpo import GRPOObjective, kl_k3, policy_loss, token_logprobs
from .value import ValueModel


class PPOObjective(GRPOObjective):
    name = "ppo"

    def describe_data(self, cfg, train_ds, val_ds) -> str:
        skipped = f", {self.too_long} longer than --seq-len - --max-gen-len skipped" if self.too_long else ""
        replies = "1 reply" if cfg.num_generations == 1 else f"{cfg.num_generations} replies"
        return (
            f"{len(train_ds.ids)} prompts ({train_ds.usable} in whole batches){skipped}; {replies} each, "
            f"{cfg.iterations} updates per batch of rollouts; a critic of "
            f"{sum(p.numel() for p in self.critic.parameters()) / 1e6:.2f}M parameters"
        )

    # ------------------------------------------------------------------ set-up
    def setup(self, ctx) -> None:
        super().setup(ctx)  # rewards, the frozen reference, the batches of prompts
        cfg = ctx.cfg
        # From the starting weights: the trainer restores a checkpoint (and with it the critic,
        # load_state_dict) only after setup.
        self.critic = ValueModel(ctx.model).to(ctx.device).train()
        self.critic_optimizer = make_optimizer(
            self.critic, cfg.critic_lr, cfg.weight_decay, device_type=ctx.device.type
        )
        self.kl_stopped = False  # the rest of this batch of rollouts' updates are skipped
        self.kl_sums = [0.0, 0.0]  # this step's approximate-KL sum and reply tokens, this rank
        self.first_update = True  # this step is a batch's first update (its ratio is 1: never stopped)

    def iterate_batches(self, ds, batch_size, seed, epoch, start=0, rank=0, world_size=1):
        """GRPO's micro-batches, noting whether they make the first update of their batch."""
        per_cycle = self.cfg.grad_accum * self.cfg.iterations
        for k, batch in enumerate(super().iterate_batches(ds, batch_size, seed, epoch, start, rank, world_size), start):
            self.first_update = k % per_cycle < self.cfg.grad_accum
            yield batch

    # ------------------------------------------------------------------ rollouts
    def _advantages(self, rewards: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(rewards)  # (per token, from GAE: see _rollout_batch)

    def _rollout_batch(self, ds, prompt_rows: list[int], epoch: int, positions: list[int]) -> dict:
        """GRPO's rollouts (replies, rewards, old and reference log-probs), then the critic's
        values, the token rewards and GAE's advantages and returns."""
        batch = super()._rollout_batch(ds, prompt_rows, epoch, positions)
        cfg, ctx = self.cfg, self.ctx
        mask = batch["reply_mask"][:, 1:]
        with torch.no_grad(), ctx.autocast():
            ids, attn = batch["input_ids"].to(ctx.device), batch["attention_mask"].to(ctx.device)
            values = self.critic(ids, attn)[:, :-1].float().cpu() * mask
        rewards = token_rewards(batch["rewards"], batch["old_logp"], batch["ref_logp"], mask, cfg.kl_beta)
        batch["advantages"], batch["returns"] = gae(rewards, values, mask, cfg.gamma, cfg.lam)
        batch["values"] = values
        return batch

    def _rollouts_done(self, micro: list[dict]) -> list[dict]:
        """Whiten the advantages over the global batch of rollouts, and measure how much of
        the returns' variance the critic's values explained (1 - Var(R - V) / Var(R))."""
        self.kl_stopped = False  # a fresh batch of rollouts: its updates start again
        sums = torch.zeros(7, dtype=torch.float64)
        for b in micro:
            m = b["reply_mask"][:, 1:]
            a, r, v = (b[k][m].double() for k in ("advantages", "returns", "values"))
            e = r - v
            sums += torch.stack(
                [a.new_tensor(float(m.sum())), a.sum(), (a * a).sum(), r.sum(), (r * r).sum(), e.sum(), (e * e).sum()]
            )
        sums = all_reduce_sum(sums.to(self.ctx.device), self.ctx.dist).tolist()
        n = max(sums[0], 1.0)
        mean = sums[1] / n
        std = math.sqrt(max(sums[2] / n - mean * mean, 0.0))
        var_r = sums[4] / n - (sums[3] / n) ** 2
        var_e = sums[6] / n - (sums[5] / n) ** 2
        explained = 1.0 - var_e / var_r if var_r > 1e-12 else 0.0
        for b in micro:
            m = b["reply_mask"][:, 1:]
            b["advantages"] = (b["advantages"] - mean) / (std + 1e-8) * m
            b["explained_var"] = torch.tensor(explained)
        return micro

    # ------------------------------------------------------------------ the loss
    def count(self, batch: dict) -> float:
        return 0.0 if self.kl_stopped else float(batch["reply_mask"][:, 1:].sum())

    def loss_sum(self, model, batch: dict):
        cfg = self.cfg
        m = batch["reply_mask"][:, 1:]
        zero = torch.zeros((), device=m.device)
        if self.kl_stopped:  # a skipped update: no forward, no gradient, nothing logged
            return torch.zeros((), device=m.device, requires_grad=True), zero, {}
        logp = token_logprobs(model, batch).float()
        values = self.critic(batch["input_ids"], batch["attention_mask"])[:, :-1]
        policy, clipped = policy_loss(logp, batch["old_logp"], batch["advantages"], "grpo", cfg.epsilon, 0.0)
        value = value_loss(values, batch["values"], batch["returns"], cfg.value_clip)
        mf = m.float()
        units = float(mf.sum())
        approx_kl = float((kl_k3(batch["old_logp"], logp.detach()) * mf).sum())
        self.kl_sums[0] += approx_kl
        self.kl_sums[1] += units
        metrics = {  # sums over reply tokens, as the trainer wants them
            "approx_kl": approx_kl,
            "clipped": float((clipped.float() * mf).sum()),
            "value_loss": float((value.detach() * mf).sum()),
            "value": float((values.detach() * mf).sum()),
            "explained_var": float(batch["explained_var"]) * units,
            "reward": float(batch["rewards"].mean()) * units,
            "reply_len": float(mf.sum(dim=1).mean()) * units,
        }
        if self.reference is not None:
            metrics["kl"] = float((kl_k3(logp.detach(), batch["ref_logp"]) * mf).sum())
        for name, values_ in batch["reward_parts"].items():
            metrics[f"reward_{name}"] = float(values_.float().mean()) * units
        return ((policy + cfg.vf_coef * value) * mf).sum(), zero, metrics

    # ------------------------------------------------------------------ the critic's step
    def before_step(self, lr_scale: float, scaler) -> bool:
        """The early-stop decision, then the critic's optimizer step (the trainer makes the
        policy's). Every rank calls this at every step, so the all-reduces line up."""
        cfg, dist = self.cfg, self.ctx.dist
        if not self.kl_stopped and not self.first_update and cfg.target_kl > 0:
            kl = all_reduce_sum(torch.tensor(self.kl_sums, dtype=torch.float64, device=self.ctx.device), dist)
            approx = (kl[0] / kl[1].clamp(min=1)).item()
            if approx > cfg.target_kl:
                self.kl_stopped = True
                if dist.is_main:
                    tqdm.write(
                        f"ppo: approximate KL {approx:.4g} > --target-kl {cfg.target_kl:g}: the rest of this "
                        "batch of rollouts' updates are skipped"
                    )
        self.kl_sums = [0.0, 0.0]
        if self.kl_stopped:
            self.critic.zero_grad(set_to_none=True)
            return False
        params = list(self.critic.parameters())
        for p in params:
            if p.grad is None:  # (every rank must all-reduce tensors of the same layout)
                p.grad = torch.zeros_like(p)
        if dist.enabled:  # the critic is not under DDP: average its gradients as DDP does the policy's
            flat = all_reduce_sum(torch.cat([p.grad.flatten() for p in params]), dist) / dist.world_size
            for p, g in zip(params, flat.split([p.numel() for p in params])):
                p.grad.copy_(g.view_as(p))
        for group in self.critic_optimizer.param_groups:
            group["lr"] = cfg.critic_lr * lr_scale
        scaler.unscale_(self.critic_optimizer)
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        scaler.step(self.critic_optimizer)
        self.critic_optimizer.zero_grad(set_to_none=True)
        return True

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {
            "critic": self.critic.state_dict(),
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "kl_stopped": self.kl_stopped,
        }

    def load_state_dict(self, state: dict) -> None:
        missing = [k for k in ("critic", "critic_optimizer", "kl_stopped") if k not in state]
        if missing:
            raise MiniMindError(f"no {', '.join(missing)}: the critic of a minimind ppo run is needed to resume it")
        self.critic.load_state_dict(state["critic"])  # strict: every tensor, of its shape
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.kl_stopped = bool(state["kl_stopped"])


def token_rewards(rewards, old_logp, ref_logp, mask, beta: float) -> torch.Tensor:
    """[B, T]: -beta * (log pi_old - log ref) on every reply token, plus each reply's reward
    [B] on its last token (mask marks the reply's tokens)."""
    r = -beta * (old_logp - ref_logp) * mask
    last = mask.long().cumsum(dim=1).argmax(dim=1)  # where the count of reply tokens first peaks
    r[torch.arange(r.shape[0]), last] += rewards.to(r.dtype) * mask.any(dim=1)
    return r


def gae(rewards, values, mask, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over each row's reply tokens, all [B, T] (a reply's
    tokens are contiguous; the value after its last one is 0: the episode ends there).
    Returns (advantages, returns), 0 outside the mask."""
    m = mask.to(values.dtype)
    advantages = torch.zeros_like(values)
    next_value = next_adv = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantages[:, t] = (delta + gamma * lam * next_adv) * m[:, t]
        next_value, next_adv = values[:, t] * m[:, t], advantages[:, t]
    return advantages, (advantages + values) * m


def value_loss(values, old_values, returns, clip: float) -> torch.Tensor:
    """0.5 * the squared error to the returns, per token; with clip > 0 the larger of that and
    the error of the value moved at most `clip` from its rollout value (PPO's value clipping)."""
    loss = (values - returns) ** 2
    if clip > 0:
        moved = old_values + (values - old_values).clamp(-clip, clip)
        loss = torch.maximum(loss, (moved - returns) ** 2)
    return 0.5 * loss
