"""The one training loop. Every stage (pretrain, SFT, and later LoRA, DPO, distillation, RL)
runs through `train(cfg, objective)`; only the objective (its data and loss) differs.

One optimizer step:
  1. take the next `grad_accum` micro-batches (this rank's share of the global batch);
  2. count the loss tokens of the whole global batch (all micro-batches, all ranks);
  3. forward + backward each micro-batch with loss = summed token loss / that count, so the
     gradient is the exact token mean whatever the accumulation or number of processes
     (under DDP the all-reduce happens only on the last micro-batch: `no_sync`);
  4. clip, step, zero; log, evaluate, sample and checkpoint when due.
"""

from __future__ import annotations

import contextlib
import math
import random
import signal
import threading
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from ..checkpoint import load_model
from ..config import preset
from ..device import resolve_device, resolve_train_dtype
from ..errors import MiniMindError
from ..model import MiniMindForCausalLM, count_parameters
from ..model.lora import has_lora, trainable_summary
from ..tokenizer import Tokenizer
from .autocompile import auto_compile_plan, compile_model
from .config import RESUME_FIXED, TrainConfig
from .distributed import DistInfo, all_reduce_sum, barrier, init_distributed, shutdown
from .flops import flops_per_token, measured_peak_flops
from .lora import attach_lora
from .objectives import Objective, SetupContext, autocast, make_objective, real_tokens, to_device
from .optim import lr_at, make_optimizer
from .state import (
    check_out_dir,
    clear_out_dir,
    gather_state,
    list_checkpoints,
    load_checkpoint,
    load_objective_state,
    publish,
    read_state,
    save_checkpoint,
    save_rng,
    staging_dir,
    writing_checkpoint,
)
from .tracking import MetricsLog, Trackers


def build_model(cfg: TrainConfig):
    """The starting model and tokenizer: a model directory (--init) or a fresh preset (reshaped
    by --hidden-size & co., sized to the tokenizer)."""
    if cfg.init:
        return load_model(cfg.init), Tokenizer.from_dir(cfg.init)
    tokenizer = Tokenizer.from_dir(cfg.tokenizer)
    config = preset(cfg.preset, shape=cfg.shape, tokenizer=tokenizer)
    return MiniMindForCausalLM(config).init_weights(cfg.seed), tokenizer


class TrainingStopped(KeyboardInterrupt):
    """A run stopped by Ctrl-C (SIGINT) or SIGTERM after checkpointing its last step.

    A KeyboardInterrupt, so that whoever called train() stops too (a pipeline does not run its
    next stage on a half-trained model; pytest ends the session instead of running on) and can
    say how to continue (`--resume`)."""

    def __init__(self, out: Path, step: int, total_steps: int, signum: int):
        self.out, self.step, self.total_steps, self.signum = out, step, total_steps, signum
        name = signal.Signals(signum).name
        super().__init__(
            f"{name}: stopped at step {step} of {total_steps}; {out} holds its checkpoint: "
            "continue with --resume (TrainConfig(resume=True))"
        )


class StopRequested:
    """SIGINT/SIGTERM during training: finish the current step, checkpoint, stop cleanly. The
    handlers that were there before come back when the run ends, however it ends."""

    def __init__(self):
        self.requested = False
        self.signum = None
        self._old = {}

    def __enter__(self):
        # Signal handlers can only be set from the main thread; a run in another thread
        # (a notebook's or a server's worker) keeps the process's handlers.
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.requested, self.signum = True, signum

    def __exit__(self, *exc):
        for sig, old in self._old.items():  # (None: a handler set outside Python, which cannot be put back)
            signal.signal(sig, old if old is not None else signal.SIG_DFL)
        self._old.clear()


def shown(text: str, quote: bool = True) -> str:
    """A generated text for a one-line display: an untrained model's reply is often nothing
    or a run of newlines, which would print as a screenful of blank lines."""
    if not text:
        return "''"
    if not text.strip():
        return "(only whitespace)"
    return repr(text) if quote else text.strip()


# The time left is estimated once, from at least 3 steps and this many seconds after the first
# step: the first steps of a stage vary a lot (warm-ups, caches, other work on the machine).
ESTIMATE_AFTER_S = 10.0


def _say(line: str, bar) -> None:
    """Print a line of the run's story above the progress bar (or plainly, without one)."""
    bar.write(line) if bar is not None else print(line, flush=True)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 90 * 60 else f"{seconds / 3600:.1f} h"


def _micro_batches(objective: Objective, ds, cfg: TrainConfig, dist: DistInfo, epoch: int, index: int):
    """Endless stream of (epoch, index-after-this-batch, batch), continuing at (epoch, index)."""
    while True:
        for batch in objective.iterate_batches(
            ds, cfg.batch_size, cfg.seed, epoch, start=index, rank=dist.rank, world_size=dist.world_size
        ):
            index += 1
            yield epoch, index, batch
        epoch, index = epoch + 1, 0


def new_window() -> dict:
    """What is summed between two log lines: loss, loss units (tokens, or pairs for DPO), real
    tokens, seconds, and the objective's own metrics (sums over the same units as the loss)."""
    return {"loss": torch.zeros((), dtype=torch.float64), "count": 0, "tokens": 0, "time": 0.0, "metrics": {}}


class Trainer:
    def __init__(self, cfg: TrainConfig, objective: Objective | None = None):
        # The whole run's settings are checked before any model or data is loaded.
        self.cfg = cfg.validate()
        # The stage's own objective unless given one (pretrain/sft: LM; dpo: DPO; ...).
        self.objective = objective if objective is not None else make_objective(cfg.stage)
        self.out = Path(cfg.out)

    # ------------------------------------------------------------------ set-up
    def setup(self):
        cfg = self.cfg
        check_out_dir(cfg)  # before anything is loaded: never overwrite a model
        self.dist, self.device = init_distributed(resolve_device(cfg.device))
        if cfg.overwrite and self.dist.is_main:  # (the other ranks look at OUT after the data barrier)
            clear_out_dir(self.out)
        if cfg.fsdp and not self.dist.enabled:
            raise MiniMindError("--fsdp shards over several processes: launch with torchrun --nproc_per_node N")
        self.dtype = resolve_train_dtype(cfg.dtype, self.device)
        seed = cfg.seed + self.dist.rank
        torch.manual_seed(seed), random.seed(seed), np.random.seed(seed % 2**32)

        self.model, self.tokenizer = build_model(cfg)
        if cfg.uses_lora:  # before the data: a bad target or base fails fast
            attach_lora(self.model, cfg)
        self.model.to(self.device).train()
        self.model.model.gradient_checkpointing = cfg.grad_checkpointing

        # Rank 0 tokenizes (and caches) first; the others then read its cache.
        if not self.dist.is_main:
            barrier(self.dist)
        self.train_ds, self.val_ds = self.objective.build_data(cfg, self.tokenizer)
        if self.dist.is_main:
            barrier(self.dist)
        # Objectives that need more than data and a loss (a frozen reference or teacher model,
        # precomputed log-probs) prepare it here, with the model, device and dtype known.
        self.objective.setup(
            SetupContext(
                cfg=cfg,
                model=self.model,
                tokenizer=self.tokenizer,
                device=self.device,
                dtype=self.dtype,
                dist=self.dist,
                train_ds=self.train_ds,
                val_ds=self.val_ds,
                out=self.out,
            )
        )

        global_rows = cfg.batch_size * self.dist.world_size
        self.micro_per_epoch = len(self.train_ds) // global_rows
        if self.micro_per_epoch == 0:
            raise MiniMindError(
                f"the training data packs into {len(self.train_ds)} rows of {cfg.seq_len} tokens, "
                f"fewer than one batch of {global_rows}: lower --batch-size or --seq-len, or add data"
            )
        self.total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * self.micro_per_epoch / cfg.grad_accum))
        self.warmup = cfg.warmup_steps if cfg.warmup_steps is not None else max(1, self.total_steps // 100)
        self.min_lr = cfg.min_lr if cfg.min_lr is not None else cfg.lr / 10

        if cfg.compile:  # each layer in place, before FSDP wraps the layers (as torchtitan orders them)
            compile_model(self.model, fall_back_to_eager=False)
        if cfg.fsdp:
            self._shard()
        self.optimizer = make_optimizer(self.model, cfg.lr, cfg.weight_decay, device_type=self.device.type)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self.resumed_from, state, window = self._maybe_resume()
        self.step, self.position = state.get("step", 0), (state.get("epoch", 0), state.get("batch_in_epoch", 0))
        # Real (non-padding) tokens trained up to the last log line, all ranks; with this rank's
        # share of the logging window open at the checkpoint, a resumed run logs what the
        # uninterrupted one logs, line for line.
        self.tokens_seen = state.get("tokens_seen", 0)
        self.window = window if window is not None else new_window()
        tracker_ids = state.get("tracker_ids", {})

        self.forward_model = self.model
        # The step this run turned torch.compile on by itself (autocompile.py), kept in its
        # checkpoints: a resumed run compiles from its first step as the stopped one had.
        self.compiled_at = state.get("compiled_at")
        if not cfg.compile and self.compiled_at is not None:
            if cfg.auto_compile and not self.dist.enabled:
                compile_model(self.model, fall_back_to_eager=True)
            else:  # --no-auto-compile (or now under torchrun): this run stays eager
                self.compiled_at = None
        if self.dist.enabled and not cfg.fsdp:
            self.forward_model = DDP(
                self.forward_model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=self.model.config.use_moe,
            )  # an expert may get no tokens
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            resume_step = self.step if self.resumed_from else None
            self.metrics = MetricsLog(self.out / "metrics.jsonl", resume_step=resume_step)
            self.trackers = Trackers(
                cfg.tracker, cfg.project, cfg.run_name or self.out.name, asdict(cfg), self.out, tracker_ids, resume_step
            )

    def _shard(self):
        """FSDP (PyTorch's fully_shard): each process keeps 1/N of every layer's weights,
        gradients and AdamW state and gathers a layer's weights only while it runs. For models
        that do not fit one device; the checkpoints are the same as without it."""
        for layer in self.model.model.layers:
            fully_shard(layer)
        fully_shard(self.model)

    def _run_settings(self) -> dict:
        d = asdict(self.cfg)
        return {**{k: d[k] for k in RESUME_FIXED if k in d}, "world_size": self.dist.world_size}

    def _maybe_resume(self) -> tuple[Path | None, dict, dict | None]:
        """Load the newest checkpoint when resuming: (its path, its state.json, this rank's open
        logging window), else (None, {}, None)."""
        existing = list_checkpoints(self.out)
        if not existing:
            return None, {}, None
        if not self.cfg.resume:
            raise MiniMindError(
                f"{self.out} already holds checkpoints of a run: pass --resume to continue it, or choose another --out"
            )
        latest = existing[-1]
        saved = read_state(latest).get("run", {})
        for key, now in self._run_settings().items():
            if key in saved and saved[key] != now:
                raise MiniMindError(f"cannot resume {latest} exactly: {key} was {saved[key]!r}, now {now!r}")
        state, window = load_checkpoint(latest, self.model, self.optimizer, self.scaler, self.dist.rank)
        load_objective_state(latest, self.objective)  # (PPO's critic; nothing for most objectives)
        return latest, state, window

    # ------------------------------------------------------------------ the loop
    def fit(self) -> Path:
        cfg, dist = self.cfg, self.dist
        precision = autocast(self.device, self.dtype)
        # With several micro-batches a step, one autocast region spans them all: autocast caches
        # the compute-dtype copy of each weight until its outermost region ends, so every weight
        # is cast once a step instead of once a micro-batch (the weights change only at the
        # optimizer step). Backward runs with autocast off inside it, as PyTorch recommends. Not
        # under FSDP, whose gathered weights are new tensors at every forward.
        cache_casts = cfg.grad_accum > 1 and not cfg.fsdp and self.dtype != torch.float32
        no_autocast = torch.autocast(self.device.type, enabled=False)
        batches = _micro_batches(self.objective, self.train_ds, cfg, dist, *self.position)
        flops_tok = flops_per_token(self.model.config, cfg.seq_len)
        peak = measured_peak_flops(self.device, self.dtype) * dist.world_size
        self._announce()
        bar = self._progress_bar()
        window = self.window  # (a resumed run continues the window open at its checkpoint)
        clock = None  # (step, time) at the end of this run's first step, which pays for warm-ups
        compiling_step = None  # the step that pays for an automatic compile, to print its time
        with StopRequested() as stop:
            while self.step < self.total_steps:
                started = time.perf_counter()
                group = [next(batches) for _ in range(cfg.grad_accum)]
                lr = lr_at(self.step, self.total_steps, cfg.lr, self.min_lr, self.warmup)
                for g in self.optimizer.param_groups:
                    g["lr"] = lr
                count = all_reduce_sum(
                    torch.tensor(float(sum(self.objective.count(b) for _, _, b in group)), device=self.device), dist
                ).item()
                with autocast(self.device, self.dtype) if cache_casts else contextlib.nullcontext():
                    for i, (_, _, batch) in enumerate(group):
                        batch = to_device(batch, self.device)
                        last = i == len(group) - 1
                        with self._grad_sync(last):
                            with precision:
                                loss_sum, aux, metrics = self.objective.loss_sum(self.forward_model, batch)
                            # DDP averages gradients over ranks; * world_size turns that into the sum.
                            loss = loss_sum * dist.world_size / max(count, 1) + aux / len(group)
                            with no_autocast:
                                self.scaler.scale(loss).backward()
                        window["loss"] += loss_sum.detach().double().cpu()
                        window["tokens"] += real_tokens(batch) if count else 0  # (none: a step PPO skipped)
                        for name, value in metrics.items():
                            window["metrics"][name] = window["metrics"].get(name, 0.0) + float(value)
                window["count"] += count
                # The objective steps what else it trains (PPO's critic), or holds this update
                # back (PPO's KL early stop: then no AdamW step at all, not a step on zeros).
                if self.objective.before_step(lr / cfg.lr, self.scaler):
                    self.scaler.unscale_(self.optimizer)
                    grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
                    grad_norm = (grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm).item()
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                else:
                    grad_norm = 0.0
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                self.position = group[-1][0], group[-1][1]
                window["time"] += time.perf_counter() - started

                last_step = self.step == self.total_steps
                if self.step % cfg.log_every == 0 or last_step:
                    self._log(window, lr, grad_norm, flops_tok, peak, bar)
                    window = self.window = new_window()
                if (cfg.eval_every and self.step % cfg.eval_every == 0) or last_step:
                    self._evaluate()
                if cfg.sample_every and self.step % cfg.sample_every == 0 and (dist.is_main or cfg.fsdp):
                    self._sample()
                if self.step % cfg.save_every == 0 or last_step or stop.requested:
                    self._save()
                if clock is None:
                    clock = (self.step, time.perf_counter())
                    if (cfg.compile or self.compiled_at is not None) and dist.is_main:  # the price of compiling
                        line = f"compile: the first step took {clock[1] - started:.1f} s (torch.compile builds kernels)"
                        _say(line, bar)
                elif clock[0] >= 0 and self.step - clock[0] >= 3 and time.perf_counter() - clock[1] >= ESTIMATE_AFTER_S:
                    seconds_per_step = (time.perf_counter() - clock[1]) / (self.step - clock[0])
                    if dist.is_main:
                        self._estimate(seconds_per_step, bar)
                    if self._maybe_auto_compile(seconds_per_step, bar):
                        compiling_step = self.step + 1
                    clock = (-1, 0.0)  # once
                elif self.step == compiling_step:
                    took = time.perf_counter() - started
                    line = f"compile: step {self.step} took {took:.1f} s (torch.compile built kernels)"
                    _say(line, bar)
                if stop.requested:
                    break
        if bar is not None:
            bar.close()
        if self.dist.is_main:
            if self.step == self.total_steps:
                publish(list_checkpoints(self.out)[-1], self.out)  # OUT itself is the final model
            self.metrics.close()
            self.trackers.finish()
        shutdown(dist)
        if stop.requested:
            raise TrainingStopped(self.out, self.step, self.total_steps, stop.signum)
        return self.out

    def _grad_sync(self, last: bool):
        """Accumulating micro-batches: all-reduce gradients only on the last one."""
        if not self.dist.enabled or last:
            if self.cfg.fsdp:
                self.model.set_requires_gradient_sync(True)
            return contextlib.nullcontext()
        if self.cfg.fsdp:
            self.model.set_requires_gradient_sync(False)
            return contextlib.nullcontext()
        return self.forward_model.no_sync()

    # ------------------------------------------------------------------ reporting
    def _announce(self):
        if not self.dist.is_main:
            return
        total, active = count_parameters(self.model.config)
        where = f"resuming from {self.resumed_from.name}" if self.resumed_from else "starting"
        print(
            f"{self.cfg.stage}: {total / 1e6:.2f}M parameters"
            + (f" ({active / 1e6:.2f}M active)" if active != total else "")
            + f" on {self.device} in {str(self.dtype).replace('torch.', '')}"
            + (f" x {self.dist.world_size} processes" if self.dist.enabled else ""),
            flush=True,
        )
        if has_lora(self.model):
            print(trainable_summary(self.model), flush=True)
        print("data: " + self.objective.describe_data(self.cfg, self.train_ds, self.val_ds), flush=True)
        print(
            f"{where}: {self.total_steps} optimizer steps of "
            f"{self.cfg.batch_size * self.dist.world_size * self.cfg.grad_accum} "
            f"rows, lr {self.cfg.lr:g} -> {self.min_lr:g}, warmup {self.warmup}",
            flush=True,
        )

    def _estimate(self, seconds_per_step: float, bar):
        """Once, after the first steps: how long the rest takes at this machine's speed."""
        left = self.total_steps - self.step
        if left > 0:
            line = (
                f"{self.cfg.stage}: ~{_duration(seconds_per_step * left)} to go at this speed "
                f"({seconds_per_step:.2f} s a step, {left} step{'s' if left != 1 else ''} left)"
            )
            _say(line, bar)

    def _maybe_auto_compile(self, seconds_per_step: float, bar) -> bool:
        """Once, after the first timed steps: compile the model from the next step on if the
        rest of the run is long enough to pay for it (autocompile.py). True if it did."""
        if self.cfg.compile or self.cfg.fsdp or self.dist.enabled or self.compiled_at is not None:
            return False
        rest_s = seconds_per_step * (self.total_steps - self.step)
        now, line = auto_compile_plan(
            self.cfg.auto_compile, rest_s, self.device, self.dtype, self.dist.world_size, self.objective.compiles_well
        )
        if line is not None and self.dist.is_main:
            _say(line, bar)
        if now:
            compile_model(self.model, fall_back_to_eager=True)
            self.compiled_at = self.step
        return now

    def _progress_bar(self):
        if not (self.cfg.progress and self.dist.is_main):
            return None
        return tqdm(total=self.total_steps, initial=self.step, desc=self.cfg.stage, dynamic_ncols=True)

    def _log(self, window, lr, grad_norm, flops_tok, peak, bar):
        loss_sum = all_reduce_sum(window["loss"].to(self.device), self.dist).item()
        tokens = all_reduce_sum(torch.tensor(float(window["tokens"]), device=self.device), self.dist).item()
        tokens_per_s = tokens / max(window["time"], 1e-9)
        self.tokens_seen += int(tokens)
        record = {
            "step": self.step,
            "tokens": self.tokens_seen,
            "loss": loss_sum / max(window["count"], 1),
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens_per_s": tokens_per_s,
            "mfu": tokens_per_s * flops_tok / peak,
            "epoch": self.position[0] + self.position[1] / self.micro_per_epoch,
        }
        names = sorted(window["metrics"])  # the same on every rank: all ranks run the same objective
        if names:
            sums = all_reduce_sum(
                torch.tensor([window["metrics"][n] for n in names], dtype=torch.float64, device=self.device), self.dist
            ).tolist()
            record.update({n: v / max(window["count"], 1) for n, v in zip(names, sums)})
        if not self.dist.is_main:
            return
        self.metrics.write(record)
        self.trackers.log(record, self.step)
        if bar is not None:
            bar.update(self.step - bar.n)
            bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_s:,.0f}")

    @torch.no_grad()
    def _evaluate(self):
        """Mean loss over the first eval_batches x batch_size x world_size held-out rows. Rows
        are dealt round-robin to ranks and none is dropped, so the figure does not depend on
        the number of processes."""
        if self.val_ds is None or len(self.val_ds) == 0:
            return
        cfg, dist = self.cfg, self.dist
        n = min(len(self.val_ds), cfg.eval_batches * cfg.batch_size * dist.world_size)
        rows = list(range(n))[dist.rank :: dist.world_size]
        # Under FSDP every rank must run every forward: a short share gets a dummy last row
        # that the objective drops from its sums, so the figure is still the mean over the
        # first n rows.
        dummy = len(rows) < -(-n // dist.world_size)
        rows += [0] * dummy
        self.model.eval()
        precision = autocast(self.device, self.dtype)
        total = torch.zeros(2, dtype=torch.float64, device=self.device)
        metric_sums: dict[str, float] = {}
        for i in range(0, len(rows), cfg.batch_size):
            batch = self.val_ds.get_batch(rows[i : i + cfg.batch_size])
            if dummy and i + cfg.batch_size >= len(rows):
                self.objective.drop_last_unit(batch)
            batch = to_device(batch, self.device)
            with precision:
                loss_sum, _, metrics = self.objective.loss_sum(self.model, batch)
            total += torch.tensor(
                [loss_sum.item(), self.objective.count(batch)], dtype=torch.float64, device=self.device
            )
            for name, value in metrics.items():
                metric_sums[name] = metric_sums.get(name, 0.0) + float(value)
        all_reduce_sum(total, dist)
        names = sorted(metric_sums)
        if names:
            sums = all_reduce_sum(
                torch.tensor([metric_sums[n] for n in names], dtype=torch.float64, device=self.device), dist
            )
            metric_sums = dict(zip(names, sums.tolist()))
        self.model.train()
        if dist.is_main and total[1] > 0:
            record = {
                "step": self.step,
                "val_loss": (total[0] / total[1]).item(),
                **{f"val_{n}": v / total[1].item() for n, v in metric_sums.items()},
            }
            self.metrics.write(record)
            self.trackers.log(record, self.step)

    def _sample(self):
        """Greedy continuations of a few fixed prompts, to see what the model has learnt."""
        from ..infer import SamplingParams, generate

        tok = self.tokenizer
        if self.cfg.stage == "pretrain":
            prompts = [[tok.bos_token_id] + tok.encode(p) for p in ("The capital of France is", "中国的首都是")]
        else:
            prompts = [
                tok.encode_chat([{"role": "user", "content": p}], add_generation_prompt=True)
                for p in ("Hello, who are you?", "你好，请介绍一下你自己。")
            ]
        self.model.eval()  # (under FSDP every rank generates: each forward gathers weights)
        done = generate(self.model, tok, prompts, SamplingParams(max_new_tokens=32, temperature=0.0))
        self.model.train()
        if not self.dist.is_main:
            return
        for prompt, c in zip(prompts, done):
            self.metrics.write({"step": self.step, "sample": {"prompt": tok.decode(prompt), "completion": c.text}})
            print(f"\n[step {self.step}] {tok.decode(prompt)!r} -> {shown(c.text)}", flush=True)

    def _save(self):
        stage = staging_dir(self.out, self.step)
        if self.dist.is_main:
            with writing_checkpoint(self.out, self.step):
                stage.mkdir(parents=True, exist_ok=True)
        barrier(self.dist)
        save_rng(stage, self.dist.rank, self.window)  # with this rank's open logging window
        # The exact token count at this step (tokens_seen counts up to the last log line).
        open_tokens = all_reduce_sum(torch.tensor(float(self.window["tokens"]), device=self.device), self.dist).item()
        model_state, optimizer_state = gather_state(self.model, self.optimizer)  # every rank: FSDP gathers
        barrier(self.dist)
        if self.dist.is_main:
            state = {
                "epoch": self.position[0],
                "batch_in_epoch": self.position[1],
                "run": self._run_settings(),
                "tracker_ids": self.trackers.run_ids,
                "total_steps": self.total_steps,
                "tokens_seen": self.tokens_seen,
                "tokens_at_step": self.tokens_seen + int(open_tokens),
                "compiled_at": self.compiled_at,
            }
            save_checkpoint(
                self.out,
                self.step,
                self.model,
                model_state,
                optimizer_state,
                self.tokenizer,
                self.scaler,
                state,
                self.cfg.keep_last,
                objective_state=self.objective.state_dict(),
            )
        barrier(self.dist)


def train(cfg: TrainConfig, objective: Objective | None = None) -> Path:
    """Run a whole training stage; returns the output model directory."""
    trainer = Trainer(cfg, objective)
    trainer.setup()
    return trainer.fit()
