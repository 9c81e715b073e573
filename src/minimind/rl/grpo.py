"""GRPO, CISPO and Dr. GRPO: reinforcement learning with verifiable rewards, as an objective
of the one trainer (`minimind grpo`).

Its batches are made online. For every batch of prompts:
  1. rollouts: the current model samples G replies per prompt on the generation engine
     (batched, KV-cached, the prompt read once for its G replies; each reply draws from its
     own seeded generator, so a reply is the same whatever else is in the batch, on any
     number of processes);
  2. rewards: each reply is scored by the rewards named in --reward (rl/rewards.py) against
     the prompt's `gt`; its advantage is its reward against its group's:
     A = (r - mean) / (std + 1e-4), or r - mean for Dr. GRPO;
  3. old and reference log-probs: one forward pass each, without gradients, in the training
     precision (the engine's own log-probs come from a KV-cached decode, which need not round
     the same way as the training forward);
  4. --iterations optimizer steps on these rollouts: from the second on, the policy has moved
     and the ratio pi / pi_old is no longer 1 (with one update per rollout it always is).

The loss, per reply token t (the completion mask runs through the EOS token):
  grpo / dr_grpo:  -min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A) + beta * k3
  cispo:           -stopgrad(min(ratio, eps_high)) * A * log pi + beta * k3
  k3 = exp(ref - log pi) - (ref - log pi) - 1, the KL estimate to the starting model.
grpo and cispo average over reply tokens (DAPO's token mean: a long reply does not weigh less
per token than a short one, as in MiniMind's mean of per-reply means); dr_grpo divides by
replies x --max-gen-len, a constant. The trainer divides by the count over the whole global
batch, so gradient accumulation and DDP give the same update as one big batch.

Resuming: checkpoints fall between two batches of rollouts (--save-every is a multiple of
--iterations), where the rollouts are made again from the restored weights and seeds, exactly.
A run stopped by Ctrl-C checkpoints wherever it is; for that case the rollouts in use are also
kept in OUT/rollouts-rankN.pt and read back on --resume.
"""

from __future__ import annotations

import copy

import torch

from ..errors import MiniMindError
from ..files import atomic_write
from ..infer import Engine, SamplingParams, Sequence
from ..model.losses import next_token_nll
from ..train.objectives import Objective, SetupContext
from .data import read_rl_prompts
from .rewards import combine, parse_weights


class PromptSet:
    """The RL prompts, tokenized: the objective's `dataset`. Its length is counted in prompt
    uses (each prompt is trained on --iterations times), so the trainer's steps-per-epoch
    arithmetic holds as it does for packed rows."""

    def __init__(self, ids: list[list[int]], records: list[dict], iterations: int):
        self.ids, self.records, self.iterations = ids, records, iterations
        self.usable = len(ids)  # whole rollout batches only; set in GRPOObjective.setup
        self.stats = {"docs": len(ids), "padding_fraction": 0.0}

    def __len__(self) -> int:
        return self.usable * self.iterations


class GRPOObjective(Objective):
    name = "grpo"

    # ------------------------------------------------------------------ data
    def build_data(self, cfg, tokenizer):
        ids, records, too_long = [], [], 0
        room = cfg.seq_len - cfg.max_gen_len  # what a prompt may take
        if room < 1:
            raise MiniMindError(
                f"--seq-len {cfg.seq_len} leaves no room for a prompt next to --max-gen-len "
                f"{cfg.max_gen_len}: raise --seq-len or lower --max-gen-len"
            )
        for path in cfg.data:
            for p in read_rl_prompts(path, on_bad_record=cfg.on_bad_record):
                prompt = self.prompt_ids(p, tokenizer)
                if len(prompt) > room:
                    too_long += 1
                    continue
                ids.append(prompt)
                records.append({**p.record, "gt": p.gt})
        if not ids:
            raise MiniMindError(
                f"no prompt of {', '.join(cfg.data)} fits --seq-len {cfg.seq_len} "
                f"- --max-gen-len {cfg.max_gen_len} tokens"
            )
        self.too_long = too_long
        return PromptSet(ids, records, cfg.iterations), None

    def prompt_ids(self, p, tokenizer) -> list[int]:
        """One prompt's tokens (an RLPrompt of data/rl.py), or a MiniMindError naming its line."""
        return tokenizer.encode_chat(p.messages, tools=p.tools or None, add_generation_prompt=True)

    def describe_data(self, cfg, train_ds, val_ds) -> str:
        skipped = f", {self.too_long} longer than --seq-len - --max-gen-len skipped" if self.too_long else ""
        return (
            f"{len(train_ds.ids)} prompts ({train_ds.usable} in whole batches){skipped}; "
            f"{cfg.num_generations} replies each, {cfg.iterations} updates per batch of rollouts"
        )

    # ------------------------------------------------------------------ set-up
    def setup(self, ctx: SetupContext) -> None:
        cfg = ctx.cfg
        self.cfg, self.ctx = cfg, ctx
        weights = parse_weights(cfg.reward) if cfg.reward.strip() else {}
        weights.update({spec: 1.0 for spec in cfg.reward_fn})  # a user's reward, module:function
        given = {}
        if cfg.reward_model:  # a local sequence-classification model (rl/reward_model.py)
            from .reward_model import RewardModel

            given["reward_model"] = RewardModel(cfg.reward_model, ctx.device, batch_size=cfg.reward_model_batch)
            weights.setdefault("reward_model", 1.0)
        if not weights:
            raise MiniMindError(
                f"minimind {cfg.stage} needs a reward: --reward NAME=WEIGHT,..., --reward-fn and/or --reward-model"
            )
        self.rewards = combine(weights, given)  # (loads a user's reward now: a bad one fails before training)
        # The reference: a frozen copy of the starting weights (the trainer restores a
        # checkpoint only after setup, so on --resume this is still the starting model).
        self.reference = None
        if cfg.kl_beta > 0:
            self.reference = copy.deepcopy(ctx.model).eval().requires_grad_(False)
        ds = ctx.train_ds
        self.prompts_per_cycle = cfg.batch_size * ctx.dist.world_size * cfg.grad_accum
        ds.usable = (len(ds.ids) // self.prompts_per_cycle) * self.prompts_per_cycle
        if ds.usable == 0:
            raise MiniMindError(
                f"{len(ds.ids)} prompts make no whole batch of {self.prompts_per_cycle} "
                "(--batch-size x processes x --grad-accum): lower them or add prompts"
            )
        self.saved = ctx.out / f"rollouts-rank{ctx.dist.rank}.pt"
        self.current = None  # (epoch, cycle, micro-batches) of the rollouts in use

    # ------------------------------------------------------------------ batches
    def iterate_batches(self, ds, batch_size, seed, epoch, start=0, rank=0, world_size=1):
        """This rank's micro-batches of one epoch: for each batch of prompts, the rollouts'
        --grad-accum micro-batches, --iterations times over."""
        per_cycle = self.cfg.grad_accum * self.cfg.iterations
        order = torch.randperm(len(ds.ids), generator=torch.Generator().manual_seed(seed * 1000 + epoch)).tolist()
        for k in range(start, (ds.usable // self.prompts_per_cycle) * per_cycle):
            cycle, micro = k // per_cycle, k % self.cfg.grad_accum
            if self.current is None or self.current[:2] != (epoch, cycle):
                self.current = (
                    epoch,
                    cycle,
                    self._rollouts(ds, order, epoch, cycle, rank, world_size, resumed_inside=k % per_cycle != 0),
                )
            yield self.current[2][micro]

    def _rollouts(self, ds, order, epoch, cycle, rank, world_size, resumed_inside: bool) -> list[dict]:
        """The cycle's micro-batches for this rank: made now, or read back when a run resumes
        in the middle of a cycle (it stopped there; its rollouts were kept)."""
        if resumed_inside:
            return self._read_saved(epoch, cycle)
        cfg = self.cfg
        first = cycle * self.prompts_per_cycle
        micro = []
        for m in range(cfg.grad_accum):
            # micro-batch m of every rank together holds prompts [base, base + batch * world)
            base = first + m * cfg.batch_size * world_size + rank * cfg.batch_size
            positions = list(range(base, base + cfg.batch_size))
            micro.append(self._rollout_batch(ds, [order[p] for p in positions], epoch, positions))
        micro = self._rollouts_done(micro)
        atomic_write(self.saved, lambda f: torch.save({"epoch": epoch, "cycle": cycle, "batches": micro}, f))
        return micro

    def _rollouts_done(self, micro: list[dict]) -> list[dict]:
        """This rank's micro-batches of a fresh batch of rollouts, before they are kept: a hook
        for what needs the whole global batch (PPO whitens its advantages over it; every rank
        calls it at the same moment, so it may all-reduce). Default: as they are."""
        return micro

    def _read_saved(self, epoch, cycle) -> list[dict]:
        if not self.saved.is_file():
            raise MiniMindError(
                f"{self.saved}: not found; the run stopped inside a batch of rollouts and "
                "they are needed to resume it exactly"
            )
        try:
            saved = torch.load(self.saved, weights_only=True)
        except Exception as e:  # a truncated or foreign file: one line, naming it
            raise MiniMindError(f"{self.saved}: not a rollouts file ({type(e).__name__})") from None
        if (saved.get("epoch"), saved.get("cycle")) != (epoch, cycle):
            raise MiniMindError(
                f"{self.saved} holds the rollouts of epoch {saved.get('epoch')} batch "
                f"{saved.get('cycle')}, not those of epoch {epoch} batch {cycle} that the "
                "checkpoint stopped in"
            )
        return saved["batches"]

    @torch.no_grad()
    def _rollout_batch(self, ds, prompt_rows: list[int], epoch: int, positions: list[int]) -> dict:
        """Sample G replies for each prompt, score them, and build the training rows."""
        cfg, ctx, model = self.cfg, self.ctx, self.ctx.model
        tok = ctx.tokenizer
        params = SamplingParams(
            max_new_tokens=cfg.max_gen_len,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            stop_token_ids=() if tok.eos_token_id is None else (tok.eos_token_id,),
        )
        prompts = [ds.ids[row] for row in prompt_rows for _ in range(cfg.num_generations)]
        seeds = [reply_seed(cfg.seed, epoch, p, g) for p in positions for g in range(cfg.num_generations)]
        was_training = model.training
        model.eval()
        try:
            with ctx.autocast():
                engine = Engine(model)
                # the G copies of a prompt (and prompts that begin alike) read their common prefix once
                pasts = engine.shared_prefixes(prompts)
                generators = [torch.Generator(device=ctx.device).manual_seed(seed % 2**63) for seed in seeds]
                sequences = [
                    Sequence(model, tok, prompt, params, generator=gen, track_text=False, past=past)
                    for prompt, gen, past in zip(prompts, generators, pasts)
                ]
                engine.add(sequences, room=cfg.max_gen_len)
                while engine.sequences:
                    engine.step()
        finally:
            model.train(was_training)
        done = [s.completion() for s in sequences]
        replies = [c.token_ids + ([tok.eos_token_id] if c.completion_tokens > len(c.token_ids) else []) for c in done]
        records = [ds.records[row] for row in prompt_rows for _ in range(cfg.num_generations)]
        rewards, parts = self._score([c.text for c in done], records)
        batch = self._rows([s.prompt for s in sequences], replies)
        batch["advantages"] = self._advantages(rewards)
        batch["rewards"] = rewards
        batch["reward_parts"] = parts
        return self._with_old_and_ref(batch)

    def _with_old_and_ref(self, batch: dict) -> dict:
        """The batch with the old and reference log-probs of its tokens, on the CPU (kept for a resume)."""
        with self.ctx.autocast():
            batch["old_logp"] = token_logprobs(self.ctx.model, batch).float()
            batch["ref_logp"] = (
                token_logprobs(self.reference, batch).float()
                if self.reference is not None
                else torch.zeros_like(batch["old_logp"])
            )
        return {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def _score(self, texts: list[str], records: list[dict]):
        """Total reward per reply and each named component's (unweighted) values."""
        totals, parts = self.rewards.batch(texts, records)
        return torch.tensor(totals, dtype=torch.float32), {k: torch.tensor(v) for k, v in parts.items()}

    def _advantages(self, rewards: torch.Tensor) -> torch.Tensor:
        groups = rewards.view(-1, self.cfg.num_generations)
        centred = groups - groups.mean(dim=1, keepdim=True)
        if self.cfg.loss != "dr_grpo":
            centred = centred / (groups.std(dim=1, unbiased=False, keepdim=True) + 1e-4)
        return centred.flatten()

    def _rows(self, prompts: list[list[int]], replies: list[list[int]]) -> dict:
        """Prompt + reply per row, right-padded; `reply_mask` marks the reply's tokens."""
        width = max(len(p) + len(r) for p, r in zip(prompts, replies))
        n = len(prompts)
        ids = torch.zeros(n, width, dtype=torch.long)
        mask = torch.zeros(n, width, dtype=torch.long)
        reply = torch.zeros(n, width, dtype=torch.bool)
        for i, (p, r) in enumerate(zip(prompts, replies)):
            ids[i, : len(p) + len(r)] = torch.tensor(p + r)
            mask[i, : len(p) + len(r)] = 1
            reply[i, len(p) : len(p) + len(r)] = True
        device = self.ctx.device
        return {
            "input_ids": ids.to(device),
            "attention_mask": mask.to(device),
            "reply_mask": reply.to(device),
            "segment_ids": (mask - 1).to(device),
        }  # 0 = a real token, -1 = padding (what the trainer counts)

    # ------------------------------------------------------------------ the loss
    def count(self, batch: dict) -> float:
        if self.cfg.loss == "dr_grpo":
            return float(batch["input_ids"].shape[0] * self.cfg.max_gen_len)
        return float(batch["reply_mask"][:, 1:].sum())

    def loss_sum(self, model, batch: dict):
        cfg = self.cfg
        logp = token_logprobs(model, batch).float()
        per_token, clipped = policy_loss(
            logp, batch["old_logp"], batch["advantages"], cfg.loss, cfg.epsilon, cfg.epsilon_high
        )
        m = batch["reply_mask"][:, 1:].float()
        # The k3 KL to the reference; with --kl-beta 0 there is no reference (ref_logp is zeros)
        # and nothing to measure, so neither the loss nor the log has it.
        k3 = kl_k3(logp, batch["ref_logp"]) if cfg.kl_beta > 0 else None
        if k3 is not None:
            per_token = per_token + cfg.kl_beta * k3
        units = self.count(batch)
        per_reply_token = units / max(m.sum().item(), 1.0)  # loss units per reply token (1 but for dr_grpo)
        metrics = {  # sums over the loss units, as the trainer wants them
            "clipped": (clipped.float() * m).sum().item() * per_reply_token,
            "reward": batch["rewards"].mean().item() * units,
            "reply_len": m.sum(dim=1).mean().item() * units,
        }
        if k3 is not None:
            metrics["kl"] = (k3.detach() * m).sum().item() * per_reply_token
        for name, values in batch["reward_parts"].items():
            metrics[f"reward_{name}"] = values.float().mean().item() * units
        return (per_token * m).sum(), torch.zeros((), device=logp.device), metrics

    def drop_last_unit(self, batch: dict) -> None:
        batch["reply_mask"][-1] = False


def reply_seed(seed: int, epoch: int, position: int, sample: int) -> int:
    """The seed of one reply (or trajectory): by (epoch, place in the epoch's order, sample), so
    it is the same on any number of processes, in any company."""
    return ((seed * 1_000_003 + epoch) * 1_000_003 + position) * 64 + sample


def token_logprobs(model, batch: dict) -> torch.Tensor:
    """log pi(token t | tokens before it) for t = 1.. of every row: [B, L - 1]."""
    out = model(batch["input_ids"], attention_mask=batch["attention_mask"])
    return -next_token_nll(out.logits, batch["input_ids"])[:, :-1]


def policy_loss(logp, old_logp, advantages, loss: str, epsilon: float, epsilon_high: float):
    """The per-token policy loss [B, T] and where the ratio was clipped (see the module doc).
    `advantages` is one per reply [B] (GRPO) or one per token [B, T] (PPO)."""
    ratio = torch.exp(logp - old_logp)
    adv = (advantages[:, None] if advantages.dim() == 1 else advantages).to(logp.dtype)
    if loss == "cispo":
        weight = ratio.clamp(max=epsilon_high)
        return -(weight.detach() * adv * logp), ratio > epsilon_high
    unclipped, clipped = ratio * adv, ratio.clamp(1 - epsilon, 1 + epsilon) * adv
    return -torch.minimum(unclipped, clipped), clipped < unclipped


def kl_k3(logp, ref_logp):
    """Schulman's k3 estimate of KL(pi || ref) per token: always >= 0, unbiased."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1
