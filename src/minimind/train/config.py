"""The settings of a training run (TrainConfig), each with one home: its field.

A field's metadata (written with `setting(...)`) holds everything about it: the help text of
its flag, the stages it applies to, its per-stage defaults, the check its value must pass and
whether a resumed run must keep it. The command-line flags (train/commands.py), the YAML keys
and the resume check (trainer) are derived from these fields, so a new setting is one field.

Kept apart from the loop, and free of torch, so that building the parsers (`minimind --help`)
stays fast.
"""

from __future__ import annotations

import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from functools import cache

from ..config import PRESETS, SHAPE_FLAGS, check_shape, preset
from ..errors import MiniMindError

STAGES = ("pretrain", "sft", "reason", "distill", "lora", "dpo", "grpo", "agent", "ppo", "vlm_pretrain", "vlm_sft")
VLM_PARTS = ("projector", "first_last", "llm", "encoder", "all")  # model/vlm.py TRAIN_PARTS
TRACKERS = ("wandb", "swanlab", "tensorboard")
DPO_LOSSES = ("sigmoid", "ipo", "hinge")  # train/dpo.py
REF_MODES = ("cached", "online")
KL_DIRECTIONS = ("forward", "reverse")  # train/distill.py
RL_LOSSES = ("cispo", "grpo", "dr_grpo")  # rl/grpo.py
RL_STAGES = ("grpo", "agent", "ppo")  # the stages that sample, reward and train on rollouts (rl/)
GROUP_STAGES = ("grpo", "agent")  # those whose advantage compares a prompt's replies (ppo has a critic)


# ---------------------------------------------------------------------------- value checks
# Each takes (flag, value) and returns None for a good value, else the error message.


def at_least(low):
    rule = "0 or more" if low == 0 else f"at least {low}"
    return lambda flag, v: None if v >= low else f"{flag} must be {rule}, got {v}"


def positive(flag, v):
    return None if v > 0 else f"{flag} must be positive, got {v}"


def between(low, high, high_open=False):
    def check(flag, v):
        if high_open:
            return None if low <= v < high else f"{flag} must be in [{low}, {high}), got {v}"
        return None if low <= v <= high else f"{flag} must be between {low} and {high}, got {v}"

    return check


def one_of(*choices):
    listed = ", ".join(choices[:-1]) + " or " + choices[-1]
    return lambda flag, v: None if v in choices else f"unknown {flag} {v!r}; choose from: {listed}"


def setting(default=MISSING, help="", *, stages=None, per_stage=None, check=None, resume_fixed=False, factory=None):
    """A TrainConfig field with its metadata:
    help          the flag's help text
    stages        the stages that take it (default: all)
    per_stage     {stage: default} where a stage's default differs from `default`
    check         a value check (above), applied to each item of a list
    resume_fixed  a resumed run must have the same value, or it would not continue exactly"""
    meta = {
        "help": help,
        "stages": stages or STAGES,
        "per_stage": per_stage or {},
        "check": check,
        "resume_fixed": resume_fixed,
    }
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def _all(value):
    return {stage: value for stage in STAGES}


# Per-stage defaults: MiniMind's where they make sense, and why we differ:
#  - pretrain: lr 5e-4, batch 32 x accumulation 8, as MiniMind. seq_len 512: MiniMind's script
#    uses 340 while its README recommends ~768; with packing no document is cut short.
#  - sft: lr 1e-5, batch 16, accumulation 1, seq_len 768, as MiniMind. reason: the same with
#    seq_len 1024 (a think block makes replies longer).
#  - distill: SFT's settings (MiniMind: lr 5e-6, batch 32, seq_len 340, 6 epochs; alpha 0.5, T 1.5).
#  - lora: MiniMind uses lr 1e-4, batch 32 unpacked rows of 340 tokens, 10 epochs, rank 16
#    without scaling. Packed rows hold several short conversations, so a smaller batch keeps
#    small sets (lora_identity: 91 conversations) at several steps per epoch. The update is
#    scaled by alpha/r (rank can change without retuning lr); no weight decay.
#  - dpo: MiniMind uses lr 4e-8, which leaves the loss at 0.693 (issues #430, #674); 5e-6 gave
#    the lowest held-out loss of 4e-8, 1e-6, 5e-6, 2e-5 (benchmarks/README.md). batch = pairs;
#    no weight decay (it pulls towards zero, not towards the reference); seq_len 1024 as MiniMind.
#  - all: 1 epoch (MiniMind's published timings are per epoch), a warmup of 1% of the steps and
#    weight decay on matrices only (MiniMind has no warmup and decays everything).
@dataclass
class TrainConfig:
    stage: str = setting("pretrain", "the training stage (checked first, in check_values)", resume_fixed=True)
    data: list[str] = setting(
        help='JSONL files ({"text"} for pretrain, {"conversations"} for sft)', factory=list, resume_fixed=True
    )
    out: str = setting(
        "out/run",
        "output model directory (checkpoints, metrics.jsonl, the final model)",
        per_stage={s: f"out/{s}" for s in STAGES},
    )
    init: str | None = setting(None, "start from this model directory")
    preset: str | None = setting(
        None, "start from a fresh model of this preset (with --tokenizer)", check=one_of(*PRESETS), resume_fixed=True
    )
    tokenizer: str | None = setting(None, "tokenizer directory for --preset")
    # --hidden-size, --num-layers, ... (config.SHAPE_FLAGS): a fresh preset model reshaped.
    shape: dict = setting(
        help="model shape overrides on top of --preset", factory=dict, stages=("pretrain",), resume_fixed=True
    )
    max_steps: int | None = setting(None, "optimizer steps (default: from --epochs)", check=at_least(1))
    epochs: float = setting(1.0, "passes over the data", per_stage={"lora": 10.0}, check=positive)
    batch_size: int = setting(
        32,
        "rows per micro-batch per process",
        check=at_least(1),
        resume_fixed=True,
        per_stage={
            "vlm_pretrain": 16,
            "vlm_sft": 4,
            "sft": 16,
            "reason": 16,
            "distill": 16,
            "lora": 8,
            "dpo": 8,
            "grpo": 4,
            "agent": 4,
            "ppo": 4,
        },
    )
    grad_accum: int = setting(
        1, "micro-batches per optimizer step", per_stage={"pretrain": 8}, check=at_least(1), resume_fixed=True
    )
    seq_len: int = setting(
        512,
        "tokens per packed row",
        check=at_least(1),
        resume_fixed=True,
        per_stage={
            "vlm_pretrain": 512,
            "vlm_sft": 768,
            "sft": 768,
            "reason": 1024,
            "distill": 768,
            "lora": 384,
            "dpo": 1024,
            "grpo": 1024,
            "agent": 2048,
            "ppo": 1024,
        },
    )
    lr: float = setting(
        5e-4,
        "peak learning rate",
        check=positive,
        per_stage={
            "vlm_pretrain": 4e-4,
            "vlm_sft": 5e-6,
            "sft": 1e-5,
            "reason": 1e-5,
            "distill": 1e-5,
            "lora": 1e-4,
            "dpo": 5e-6,
            "grpo": 1e-6,
            "agent": 1e-6,
            "ppo": 1e-6,
        },
    )
    min_lr: float | None = setting(None, "final learning rate of the cosine (default lr/10)", check=at_least(0))
    warmup_steps: int | None = setting(None, "linear warmup steps (default 1% of the steps)", check=at_least(0))
    weight_decay: float = setting(
        0.1,
        "AdamW weight decay on matrices",
        per_stage={"lora": 0.0, "dpo": 0.0, "grpo": 0.0, "agent": 0.0, "ppo": 0.0},
        check=at_least(0),
    )
    grad_clip: float = setting(1.0, "max gradient norm", check=positive)
    save_every: int = setting(1000, "checkpoint every N optimizer steps (and at the end)", check=at_least(1))
    keep_last: int = setting(3, "checkpoints to keep", check=at_least(1))
    eval_every: int = setting(0, "validation loss every N steps (0: only at the end)", check=at_least(0))
    eval_batches: int = setting(20, "validation batches per evaluation", check=at_least(1))
    val_fraction: float = setting(
        0.01,
        "share of documents held out for validation",
        per_stage={"dpo": 0.05},
        check=between(0, 1, high_open=True),
        resume_fixed=True,
    )
    log_every: int = setting(10, "log every N steps", check=at_least(1))
    sample_every: int = setting(0, "print greedy samples every N steps (0: never)", check=at_least(0))
    seed: int = setting(42, "seed for initialisation, data order and dropout", resume_fixed=True)
    resume: bool = setting(False, "continue from the newest checkpoint in --out (exactly)")
    overwrite: bool = setting(
        False,
        "start afresh in an --out that holds another run or model: deletes its "
        "checkpoints, metrics.jsonl and model files first",
    )
    device: str = setting("auto", "auto, cpu, cuda, cuda:N, mps")
    dtype: str = setting(
        "auto",
        "auto, fp32, bf16, fp16 (auto: bf16 on GPUs and on CPUs with bf16 units, else fp32)",
        check=one_of("auto", "fp32", "bf16", "fp16"),
    )
    compile: bool = setting(
        False, "torch.compile the model (the first step pays the compile time, printed; pays off in long runs)"
    )
    auto_compile: bool = setting(
        True,
        "never turn torch.compile on by itself: by default a single-process language-model run "
        "compiles after its first steps if the rest is estimated to take 20 min or more (2 h in fp32)",
    )
    grad_checkpointing: bool = setting(False, "recompute activations in backward (less memory, ~30% slower)")
    fsdp: bool = setting(False, "shard the model over the torchrun processes (FSDP) instead of replicating it (DDP)")
    tracker: list[str] = setting(
        help="also log to wandb, swanlab and/or tensorboard", factory=list, check=one_of(*TRACKERS)
    )
    project: str = setting("minimind", "project name for trackers")
    run_name: str | None = setting(None, "run name for trackers (default: the --out folder name)")
    on_bad_record: str = setting("error", "error (default) or skip bad data records", check=one_of("error", "skip"))
    cache_dir: str | None = setting(None, "where tokenized data is cached (default ~/.cache/minimind/tokenized)")
    random_system_prompt: bool = setting(
        False, "sft: prepend a random system prompt to 20% of conversations (MiniMind's trick)"
    )
    strip_empty_think: bool = setting(
        False, "sft: drop empty <think></think> blocks from 80% of conversations (MiniMind's trick)"
    )
    # Reasoning SFT (train/reason.py).
    think_mix: float = setting(
        0.7,
        "reason: share of conversations trained to think (the rest answer directly)",
        stages=("reason",),
        check=between(0, 1),
        resume_fixed=True,
    )
    think_weight: float = setting(
        1.0,
        "reason: loss weight of </think>, the blank line and the first answer token",
        stages=("reason",),
        check=positive,
    )
    tag_penalty: float = setting(
        1.0,
        "reason: weight of the unlikelihood of <think>/</think> once the turn's think block is closed",
        stages=("reason",),
        check=at_least(0),
    )
    # LoRA as a parameter mode (train/lora.py): lora_rank > 0 freezes the model and trains
    # low-rank adapters only; checkpoints and the published result are then the adapter alone.
    lora_rank: int = setting(
        0,
        "LoRA rank r (lora: default 8; dpo: 0 = no LoRA)",
        stages=("lora", "dpo"),
        per_stage={"lora": 8},
        check=at_least(0),
        resume_fixed=True,
    )
    lora_alpha: float = setting(
        16.0,
        "LoRA alpha: the update is scaled by alpha / rank (default 16)",
        stages=("lora", "dpo"),
        check=positive,
        resume_fixed=True,
    )
    lora_dropout: float = setting(
        0.0,
        "dropout on the LoRA input (default 0)",
        stages=("lora", "dpo"),
        check=between(0, 1, high_open=True),
        resume_fixed=True,
    )
    lora_targets: list[str] = setting(
        help="layers to adapt: last name parts (q_proj ...) or globs of full names "
        "(default: all attention and MLP projections)",
        factory=list,
        stages=("lora", "dpo"),
        resume_fixed=True,
    )
    # White-box distillation (train/distill.py): loss = alpha * T^2 * KL_T + (1 - alpha) * CE.
    teacher: str | None = setting(
        None,
        "distill: the teacher model directory (same tokenizer as the student)",
        stages=("distill",),
        resume_fixed=True,
    )
    distill_alpha: float = setting(
        1.0,
        "distill: weight of the KL term; 1 - alpha weighs the cross entropy (MiniMind: 0.5)",
        stages=("distill",),
        check=between(0, 1),
    )
    distill_temperature: float = setting(
        1.0,
        "distill: softmax temperature of the KL term, scaled back by T^2 (MiniMind: 1.5)",
        stages=("distill",),
        check=positive,
    )
    distill_kl: str = setting(
        "forward",
        "distill: forward = KL(teacher||student) (default), reverse = KL(student||teacher)",
        stages=("distill",),
        check=one_of(*KL_DIRECTIONS),
    )
    # DPO (train/dpo.py): a frozen reference (the starting model unless --ref), beta, the loss variant.
    dpo_beta: float = setting(
        0.1, "dpo: beta, the strength of the pull towards the reference (default 0.1)", stages=("dpo",), check=positive
    )
    dpo_loss: str = setting(
        "sigmoid", "dpo: sigmoid (DPO, default), ipo or hinge", stages=("dpo",), check=one_of(*DPO_LOSSES)
    )
    dpo_label_smoothing: float = setting(
        0.0,
        "dpo: share of pairs assumed mislabelled (conservative DPO, sigmoid loss; default 0)",
        stages=("dpo",),
        check=between(0, 0.5, high_open=True),
    )
    dpo_length_norm: bool = setting(
        False, "dpo: score a reply by its mean token log-prob instead of the sum (no length bias)", stages=("dpo",)
    )
    dpo_sft_weight: float = setting(
        0.0,
        "dpo: weight of an SFT term, the chosen reply's token-mean NLL (default 0)",
        stages=("dpo",),
        check=at_least(0),
    )
    ref: str | None = setting(
        None, "dpo: reference model directory (default: the --init model), same tokenizer", stages=("dpo",)
    )
    ref_mode: str = setting(
        "cached",
        "dpo: cached (reference log-probs computed once, default) or online (reference run every step)",
        stages=("dpo",),
        check=one_of(*REF_MODES),
    )
    # RL with verifiable rewards (rl/grpo.py; agent RL, rl/agent.py, over multi-turn tool-using
    # trajectories): G samples per prompt, rewarded, compared within their group, trained on for
    # a few update iterations; a KL pull to the start model.
    num_generations: int = setting(
        4,
        "rl: replies sampled per prompt (grpo, agent: the group, >= 2; ppo: default 1, the critic is the baseline)",
        stages=RL_STAGES,
        per_stage={"ppo": 1},
        check=at_least(1),
        resume_fixed=True,
    )
    max_gen_len: int = setting(
        256, "rl: most tokens of a sampled reply", stages=RL_STAGES, check=at_least(1), resume_fixed=True
    )
    temperature: float = setting(
        1.0, "rl: sampling temperature of the rollouts", stages=RL_STAGES, check=positive, resume_fixed=True
    )
    top_p: float = setting(
        1.0,
        "rl: nucleus sampling of the rollouts (1 = off)",
        stages=RL_STAGES,
        check=between(0.01, 1),
        resume_fixed=True,
    )
    loss: str = setting(
        "cispo",
        "rl: cispo (default, MiniMind's), grpo (clipped ratio) or dr_grpo (no std, constant normaliser)",
        stages=GROUP_STAGES,
        check=one_of(*RL_LOSSES),
    )
    epsilon: float = setting(
        0.2, "rl: clip range of the ratio (losses grpo and dr_grpo; ppo)", stages=RL_STAGES, check=positive
    )
    epsilon_high: float = setting(5.0, "rl: cispo's cap on the importance weight", stages=GROUP_STAGES, check=positive)
    iterations: int = setting(
        2,
        "rl: optimizer steps on each batch of rollouts (from the second on, the ratio moves)",
        stages=RL_STAGES,
        check=at_least(1),
        resume_fixed=True,
    )
    kl_beta: float = setting(
        0.1,
        "rl: weight of the KL to the starting model (grpo, agent: k3 in the loss; ppo: a per-token "
        "penalty in the reward, default 0.02 as MiniMind's kl_coef; 0: no reference)",
        stages=RL_STAGES,
        per_stage={"ppo": 0.02},
        check=at_least(0),
    )
    reward: str = setting(
        "exact_answer=1",
        "rl: built-in rewards and weights, e.g. exact_answer=1,think_format=0.2,repetition=0.5",
        stages=RL_STAGES,
        per_stage={"agent": "answer_in_text=1,tool_calls=0.5"},
    )
    reward_fn: list[str] = setting(
        help="rl: your own rewards, module:function or file.py:function (weight 1 each)",
        factory=list,
        stages=RL_STAGES,
    )
    reward_model: str | None = setting(
        None,
        "rl: a local transformers sequence-classification model directory, scored as the reward "
        "`reward_model` (weight 1 unless --reward names it)",
        stages=RL_STAGES,
    )
    reward_model_batch: int = setting(
        16, "rl: replies per batch of the --reward-model", stages=RL_STAGES, check=at_least(1)
    )
    # PPO (rl/ppo.py): a critic (value model) beside the policy, GAE, value clipping, and an
    # early stop of a batch's updates once the policy has moved --target-kl away from the sampler.
    critic_lr: float = setting(
        5e-6,
        "ppo: peak learning rate of the critic (the same warmup and cosine as --lr)",
        stages=("ppo",),
        check=positive,
    )
    gamma: float = setting(1.0, "ppo: discount per token in GAE", stages=("ppo",), check=between(0, 1))
    lam: float = setting(
        0.95, "ppo: GAE's lambda (1: Monte Carlo returns, 0: one-step TD)", stages=("ppo",), check=between(0, 1)
    )
    value_clip: float = setting(
        0.2,
        "ppo: how far a value may move from its rollout value before its loss is clipped (0: off)",
        stages=("ppo",),
        check=at_least(0),
    )
    vf_coef: float = setting(0.5, "ppo: weight of the value loss", stages=("ppo",), check=at_least(0))
    target_kl: float = setting(
        0.25,
        "ppo: skip the rest of a batch's updates once the approximate KL to the sampling policy exceeds this (0: off)",
        stages=("ppo",),
        check=at_least(0),
    )
    # Agent RL (rl/agent.py): tools and turns of a trajectory.
    max_turns: int = setting(
        3,
        "agent: most replies per trajectory (each may call tools)",
        stages=("agent",),
        check=at_least(1),
        resume_fixed=True,
    )
    tools: list[str] = setting(
        help="agent: your own tools, module:function or file.py:function, or a module/file.py with a TOOLS list",
        factory=list,
        stages=("agent",),
        resume_fixed=True,
    )
    # Vision-language stages (train/vlm.py): which parameters train; the rest stay frozen.
    train: list[str] = setting(
        help="vlm: the parameters that train: projector, first_last (LLM layers 0 and -1), llm, "
        "encoder (our patch encoder), all (default: pretrain projector; sft projector first_last, as MiniMind-V)",
        factory=list,
        stages=("vlm_pretrain", "vlm_sft"),
        per_stage={"vlm_pretrain": ["projector"], "vlm_sft": ["projector", "first_last"]},
        check=one_of(*VLM_PARTS),
        resume_fixed=True,
    )
    feature_cache: bool = setting(
        True,
        "vlm: encode every batch's pictures instead of caching a frozen encoder's features on disk "
        "(default: each picture encoded once, data/vision_cache.py)",
        stages=("vlm_pretrain", "vlm_sft"),
    )
    # A bool that defaults to True is turned off on the command line: --no-progress.
    progress: bool = setting(True, "no progress bar")

    def __post_init__(self):
        """Each value on its own, and no setting of another stage: cheap checks that hold for
        any TrainConfig, including one built in code for a single objective."""
        check_values(self)

    @classmethod
    def for_stage(cls, stage: str, **settings) -> TrainConfig:
        """A stage's run as its command builds it: the stage's defaults, then `settings`, then
        the checks of a whole run (validate), all before any model or data is loaded."""
        if stage not in STAGES:
            raise MiniMindError(f"unknown stage {stage!r}; choose from: {', '.join(STAGES)}")
        known = {f.name for f in fields(cls)}
        for name in settings:
            if name not in known:
                raise MiniMindError(f"unknown setting {name!r} for minimind {stage}")
        return cls(stage=stage, **{**stage_defaults(stage), **settings}).validate()

    def validate(self) -> TrainConfig:
        """What a whole run needs beyond good values: data, a model to start from, the
        options that only make sense together. Called by the command builder and by the
        trainer, before any model or data is loaded; returns self."""
        s = self.stage
        if not self.data:
            raise MiniMindError(f"minimind {s} needs --data FILE... (or `data:` in --config)")
        if not (self.init or (self.preset and self.tokenizer)):
            raise MiniMindError("say where the model starts: --init DIR, or --preset NAME with --tokenizer DIR")
        if self.shape:
            if self.init:
                raise MiniMindError(
                    f"{shape_flags(self.shape)} reshape a fresh --preset model; the --init model "
                    f"{self.init} keeps its own shape"
                )
            config = preset(self.preset, shape=self.shape)  # the combination, with errors naming the flags
            if self.seq_len > config.max_position_embeddings:
                raise MiniMindError(
                    f"--seq-len {self.seq_len} is longer than the model's context "
                    f"(--max-position-embeddings {config.max_position_embeddings})"
                )
        if self.resume and self.overwrite:
            raise MiniMindError("--resume continues the run in --out and --overwrite starts it afresh: choose one")
        if s == "dpo" and (self.random_system_prompt or self.strip_empty_think):
            raise MiniMindError(
                "--random-system-prompt and --strip-empty-think are SFT augmentations; "
                "dpo renders both sides of a pair the same way"
            )
        if s in RL_STAGES and self.save_every % self.iterations:
            raise MiniMindError(
                f"--save-every {self.save_every} must be a multiple of --iterations {self.iterations}: a "
                "checkpoint falls between two batches of rollouts, so a resumed run samples them again exactly"
            )
        if s in GROUP_STAGES and self.num_generations < 2:
            raise MiniMindError(
                f"--num-generations must be at least 2 for minimind {s} (each reply is compared with "
                f"its group's), got {self.num_generations}"
            )
        if s == "ppo" and self.fsdp:
            raise MiniMindError("minimind ppo keeps a whole critic on every process: drop --fsdp (DDP is used)")
        if s in RL_STAGES and self.uses_lora:
            raise MiniMindError(f"minimind {s} trains the whole model; --lora-rank is not supported yet")
        if s.startswith("vlm_") and not self.init:
            raise MiniMindError(
                f"minimind vlm {s[4:]} starts from a vision-language model: pass --init DIR "
                "(make one with `minimind vlm init --lm LM_DIR --encoder patch --out DIR`)"
            )
        if s.startswith("vlm_") and (self.fsdp or self.uses_lora):
            raise MiniMindError(f"minimind vlm {s[4:]} supports neither --fsdp nor LoRA yet (DDP works)")
        if s == "distill" and not self.teacher:
            raise MiniMindError("minimind distill needs --teacher DIR (the model to learn from)")
        if s == "lora" and self.lora_rank < 1:
            raise MiniMindError(
                f"--lora-rank must be a whole number >= 1 for minimind lora (it trains an adapter), "
                f"got {self.lora_rank}"
            )
        if self.uses_lora:
            if not self.init:
                raise MiniMindError(f"minimind {s} with LoRA adapts an existing model: pass --init BASE_DIR")
            if self.fsdp:
                raise MiniMindError("--fsdp is not needed with LoRA (the adapter is tiny): drop --fsdp to use DDP")
        return self

    @property
    def uses_lora(self) -> bool:
        """LoRA as a parameter mode: the lora stage, or any stage given --lora-rank."""
        return self.stage == "lora" or self.lora_rank > 0


# ---------------------------------------------------------------------------- derived views


def check_values(cfg: TrainConfig) -> None:
    """Every field's own check, and no value set for a setting of another stage."""
    if cfg.stage not in STAGES:
        raise MiniMindError(f"unknown stage {cfg.stage!r}; choose from: {', '.join(STAGES)}")
    for f in fields(cfg):
        value, meta = getattr(cfg, f.name), f.metadata
        if cfg.stage not in meta["stages"] and value != _default(f):
            flag = shape_flags(value) if f.name == "shape" else flag_name(f.name)
            raise MiniMindError(
                f"{flag} is a setting of minimind {'/'.join(meta['stages'])}, not of minimind {cfg.stage}"
            )
        if value is None or meta["check"] is None:
            continue
        for item in value if isinstance(value, list) else [value]:
            problem = meta["check"](flag_name(f.name), item)
            if problem:
                raise MiniMindError(problem)
    check_shape(cfg.shape)


def _default(f):
    return f.default_factory() if f.default_factory is not MISSING else f.default


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def shape_flags(shape: dict) -> str:
    return " ".join(SHAPE_FLAGS[k][0][0] for k in shape if k in SHAPE_FLAGS)


def stage_fields(stage: str) -> list:
    """The TrainConfig fields a stage takes as settings (all but `stage` itself)."""
    return [f for f in fields(TrainConfig) if f.name != "stage" and stage in f.metadata["stages"]]


def stage_defaults(stage: str) -> dict:
    """The defaults of the settings that depend on the stage (lr, batch_size, seq_len, ...),
    as this stage has them."""
    return {
        f.name: f.metadata["per_stage"].get(stage, f.default) for f in stage_fields(stage) if f.metadata["per_stage"]
    }


def default_for(stage: str, name: str):
    """A setting's default in this stage."""
    f = next(f for f in fields(TrainConfig) if f.name == name)
    return f.metadata["per_stage"].get(stage, _default(f))


@cache
def setting_types() -> dict:
    """Each field's value type, from the real annotations (typing.get_type_hints), with
    `X | None` read as X: int, float, str, bool, list[str] or dict."""
    out = {}
    for name, hint in typing.get_type_hints(TrainConfig).items():
        if typing.get_origin(hint) in (typing.Union, types.UnionType):
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
        out[name] = hint
    return out


# Settings that must not change when resuming, or the run would not continue exactly (the
# trainer adds world_size, which is not a setting).
RESUME_FIXED = tuple(f.name for f in fields(TrainConfig) if f.metadata["resume_fixed"])
