"""Training throughput against the original MiniMind code, in one run on one machine.

The anchor is MiniMind itself, imported as-is from ../shared/reference/minimind-upstream: its
model (`MiniMindForCausalLM`), its dataset class (`lm_dataset.PretrainDataset`: one document a
row, padded to seq_len) and its training step as trainer/train_pretrain.py runs it (forward
with labels, loss + aux_loss, GradScaler, clip 1.0, torch.optim.AdamW with its defaults,
zero_grad). Its CPU default is fp32 (no autocast on the CPU); `original bf16` patches a bf16
autocast into the same step (timed only where the CPU has bf16 matrix units, or with --bf16).
Ours is the trainer's step (packed rows, our AdamW: fused on the CPU, clip) in fp32, in bf16
autocast, and optionally compiled as the trainer compiles it (each decoder layer,
train/autocompile.py, in the dtype `--dtype auto` picks on this CPU). Both models start from
the same weights (ours is built from the original's state dict), both read the same JSONL,
both pay for their data loading (in the main process), both count only real (non-padding)
tokens.

The modes run in interleaved rounds (A B C ... A B C ...), so a machine that slows down
mid-run slows every mode alike; the table shows the median round. MFU is against the
machine's measured matmul peak in the mode's dtype.

MiniMind's dataset module imports HF `datasets`; where it is not installed, a stand-in that
reads the JSONL into a list of dicts is put in its place (load_dataset('json', ...) only).

    python benchmarks/train_throughput.py                         # h512 x 8 and h256 x 4, seq 512
    python benchmarks/train_throughput.py --configs 256x4 --steps 2 --rounds 2   # a quick check
    python benchmarks/train_throughput.py --compile               # adds ours compiled

Exits 2 when the original code (../shared) is not there: it is not part of a user's clone.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe_machine, machine_line  # noqa: E402

from minimind.data import build_datasets, iterate_batches  # noqa: E402
from minimind.device import cpu_has_fast_bf16, resolve_train_dtype  # noqa: E402
from minimind.export.common import build_model  # noqa: E402
from minimind.export.minimind_pth import infer_config  # noqa: E402
from minimind.tokenizer import Tokenizer  # noqa: E402
from minimind.train.autocompile import compile_model, min_rest_s  # noqa: E402
from minimind.train.flops import flops_per_token, measured_peak_flops  # noqa: E402
from minimind.train.objectives import LMObjective, autocast, packed_attention_mask, real_tokens, to_device  # noqa: E402
from minimind.train.optim import make_optimizer  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
UPSTREAM = SHARED / "reference" / "minimind-upstream"
DATA = SHARED / "data" / "minimind_format" / "pretrain_en_c4_wiki_demo.jsonl"
CPU = torch.device("cpu")


# ------------------------------------------------------------------ the original code


def _datasets_stand_in() -> types.ModuleType:
    """HF `datasets`, as much of it as MiniMind's lm_dataset uses for pretraining data:
    load_dataset('json', data_files=PATH, split='train') -> the records, as a list."""
    mod = types.ModuleType("datasets")

    def load_dataset(kind, data_files, split="train", features=None):
        assert kind == "json" and split == "train"
        with open(data_files, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    mod.load_dataset = load_dataset
    mod.Features = mod.Sequence = mod.Value = lambda *a, **k: None
    return mod


def upstream():
    """The original's modules (model_minimind, lm_dataset), imported as they are; exits 2
    with a message when ../shared is not there."""
    if not UPSTREAM.is_dir():
        print(f"needs the original MiniMind code at {UPSTREAM} (../shared, not in a user's clone)", file=sys.stderr)
        sys.exit(2)
    try:
        import datasets  # noqa: F401
    except ImportError:
        sys.modules["datasets"] = _datasets_stand_in()
    sys.path.insert(0, str(UPSTREAM))
    from dataset import lm_dataset
    from model import model_minimind

    return model_minimind, lm_dataset


def original_model(hidden: int, layers: int, seed: int = 0):
    model_minimind, _ = upstream()
    torch.manual_seed(seed)
    return model_minimind.MiniMindForCausalLM(
        model_minimind.MiniMindConfig(hidden_size=hidden, num_hidden_layers=layers)
    )


def ours_from(original) -> torch.nn.Module:
    """Our model holding the original's weights (the names are the same since minimind-3)."""
    sd = {k: v.detach().clone() for k, v in original.state_dict().items()}
    config = infer_config(sd, "upstream", max_position_embeddings=original.config.max_position_embeddings)
    if config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    return build_model(config, sd, "upstream")


def cycle(make):
    while True:
        yield from make()


class OriginalStep:
    """trainer/train_pretrain.py's step on its own model, dataset and optimizer."""

    def __init__(self, hidden, layers, seq_len, batch_size, bf16: bool, device: torch.device = CPU):
        _, lm_dataset = upstream()
        from transformers import AutoTokenizer

        self.device = device
        self.model = original_model(hidden, layers).to(device).train()
        tokenizer = AutoTokenizer.from_pretrained(str(UPSTREAM / "model"))
        ds = lm_dataset.PretrainDataset(str(DATA), tokenizer, max_length=seq_len)
        loader = torch.utils.data.DataLoader
        self.batches = cycle(lambda: loader(ds, batch_size=batch_size, shuffle=True, num_workers=0, drop_last=True))
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=5e-4)
        self.scaler = torch.amp.GradScaler(device.type, enabled=False)  # its fp16-only scaler, off
        self.ctx = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
        self.config = self.model.config

    def __call__(self) -> int:
        input_ids, labels = next(self.batches)
        input_ids, labels = input_ids.to(self.device), labels.to(self.device)
        with self.ctx():
            res = self.model(input_ids, labels=labels)
            loss = res.loss + res.aux_loss
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return int((labels != -100).sum())


class OurStep:
    """The trainer's step (train/trainer.py): packed rows, token-mean loss, clip, our AdamW."""

    def __init__(
        self, hidden, layers, seq_len, batch_size, dtype: torch.dtype, compile: bool = False, device: torch.device = CPU
    ):
        self.device = device
        self.model = ours_from(original_model(hidden, layers)).to(device).train()
        tok = Tokenizer.from_dir(UPSTREAM / "model")
        train_ds, _ = build_datasets([str(DATA)], tok, "pretrain", seq_len)
        epochs = iter(range(10**6))
        self.batches = cycle(lambda: iterate_batches(train_ds, batch_size, seed=0, epoch=next(epochs)))
        self.optimizer = make_optimizer(self.model, lr=5e-4)
        self.objective, self.dtype = LMObjective(), dtype
        self.forward = compile_model(self.model, fall_back_to_eager=False) if compile else self.model
        self.config = self.model.config
        self.mask_kinds = set()  # seen batches with packed documents (True) and without (False)

    def __call__(self) -> int:
        batch = to_device(next(self.batches), self.device)
        self.mask_kinds.add(packed_attention_mask(batch) is not None)
        with autocast(self.device, self.dtype):
            loss_sum, aux, _ = self.objective.loss_sum(self.forward, batch)
        (loss_sum / max(self.objective.count(batch), 1) + aux).backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return real_tokens(batch)


# ------------------------------------------------------------------ the run


def bench_config(hidden, layers, args) -> list[dict]:
    default = resolve_train_dtype("auto", CPU)  # each side's default: ours follows the CPU, the original is fp32
    bf16, fp32 = torch.bfloat16, torch.float32
    name_of = {fp32: "fp32", bf16: "bf16"}
    modes = {
        "original fp32 (its CPU default)": (
            lambda: OriginalStep(hidden, layers, args.seq_len, args.batch_size, False),
            fp32,
        ),
        "ours fp32": (lambda: OurStep(hidden, layers, args.seq_len, args.batch_size, fp32), fp32),
    }
    if args.bf16:
        modes["original bf16 (autocast patched in)"] = (
            lambda: OriginalStep(hidden, layers, args.seq_len, args.batch_size, True),
            bf16,
        )
        modes["ours bf16"] = (lambda: OurStep(hidden, layers, args.seq_len, args.batch_size, bf16), bf16)
    compiled = f"ours {name_of[default]} compiled"  # the dtype a run compiles itself in: its default
    if args.compile:
        modes[compiled] = (
            lambda: OurStep(hidden, layers, args.seq_len, args.batch_size, default, True),
            default,
        )
    steps, setup = {}, {}
    for name, (make, _) in modes.items():
        started = time.perf_counter()
        steps[name] = make()
        steps[name]()  # warm-up (and compile)
        if name == compiled:  # compiled once for batches with a packed mask, once without
            for _ in range(20):
                if len(steps[name].mask_kinds) == 2:
                    break
                steps[name]()
        setup[name] = time.perf_counter() - started
    rates = {name: [] for name in modes}
    for _ in range(args.rounds):
        for name, step in steps.items():
            tokens, started = 0, time.perf_counter()
            for _ in range(args.steps):
                tokens += step()
            rates[name].append(tokens / (time.perf_counter() - started))
    rows = []
    for name, (_, dtype) in modes.items():
        tps = statistics.median(rates[name])
        flops = flops_per_token_of(steps[name], args.seq_len)
        rows.append(
            {
                "config": f"h{hidden} x {layers}",
                "mode": name,
                "dtype": name_of[dtype],
                "tokens_per_s": tps,
                "rounds": rates[name],
                "mfu": tps * flops / measured_peak_flops(CPU, dtype),
                "first_step_s": setup[name],
            }
        )
    by = {r["mode"]: r["tokens_per_s"] for r in rows}
    original_of = {"fp32": "original fp32 (its CPU default)", "bf16": "original bf16 (autocast patched in)"}
    for r in rows:  # ours against the original in the same dtype, where that was timed
        if r["mode"].startswith("ours") and original_of[r["dtype"]] in by:
            r["ratio"] = r["tokens_per_s"] / by[original_of[r["dtype"]]]
    original, threshold = by["original fp32 (its CPU default)"], min_rest_s(default) // 60
    ours_default = f"ours {name_of[default]}"
    if ours_default in by:
        rows.append(
            {
                "config": f"h{hidden} x {layers}",
                "mode": f"default vs default, a run under {threshold} min ({ours_default} / original fp32)",
                "ratio": by[ours_default] / original,
            }
        )
    if args.compile:
        # A run with `threshold` min or more to go compiles itself after its first steps
        # (train/autocompile.py): over a whole run of T minutes it pays the compile steps once
        # (the first steps above: both builds, with and without a packed mask).
        compile_s = setup[compiled]
        for minutes in sorted({threshold, 120}):
            compiled_share = max(0.0, 1 - compile_s / (minutes * 60))
            rows.append(
                {
                    "config": f"h{hidden} x {layers}",
                    "mode": f"default vs default over {minutes} min (ours compiles itself in a run that long, "
                    "its compile steps counted / original fp32)",
                    "ratio": by[compiled] * compiled_share / original,
                }
            )
    return rows


def flops_per_token_of(step, seq_len) -> float:
    """Training FLOPs per token of the step's model (the original's config read as ours)."""
    if isinstance(step, OurStep):
        return flops_per_token(step.config, seq_len)
    return flops_per_token(ours_from(step.model).config, seq_len)


def markdown(rows: list[dict], args) -> str:
    lines = [
        f"seq_len {args.seq_len}, batch {args.batch_size}, {args.rounds} interleaved rounds of {args.steps} steps "
        "(median round shown), real tokens only; first step: the warm-up (compiled: the steps until both "
        "graphs, with and without a packed mask, were built)",
        "",
        "| config | mode | tokens/s | MFU | ours / original | first step (s) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        tps = f"{r['tokens_per_s']:,.0f}" if "tokens_per_s" in r else ""
        mfu = f"{r['mfu'] * 100:.1f}%" if "mfu" in r else ""
        ratio = f"{r['ratio']:.2f}x" if r.get("ratio") else ""
        first = f"{r['first_step_s']:.1f}" if "first_step_s" in r else ""
        lines.append(f"| {r['config']} | {r['mode']} | {tps} | {mfu} | {ratio} | {first} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=["512x8", "256x4"], help="HIDDENxLAYERS (default 512x8 256x4)")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--steps", type=int, default=3, help="timed steps per mode per round (default 3)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument(
        "--compile", action="store_true", help="also time ours compiled, in the dtype a run picks here (--dtype auto)"
    )
    p.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also time both sides in bf16 autocast (default: only where the CPU has bf16 matrix units; "
        "elsewhere a bf16 step can take minutes)",
    )
    p.add_argument("--json", help="write the results here too")
    args = p.parse_args()
    if args.bf16 is None:
        args.bf16 = cpu_has_fast_bf16()
    upstream()  # exits 2 without the original code
    if not DATA.is_file():
        print(f"needs {DATA} (../shared/data)", file=sys.stderr)
        return 2
    info = describe_machine()
    print(machine_line(info), flush=True)
    rows = []
    for spec in args.configs:
        hidden, layers = (int(x) for x in spec.split("x"))
        rows += bench_config(hidden, layers, args)
    print(markdown(rows, args))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
