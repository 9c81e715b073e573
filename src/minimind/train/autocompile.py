"""When a training run turns on torch.compile by itself (on by default; `--no-auto-compile`).

torch.compile makes a training step faster (on a 2-vCPU AMD EPYC with AVX512-BF16: 17% on
the h512 x 8 config and 21% on h256 x 4, benchmarks/README.md "Training throughput"), but it
first builds the kernels: 83 and 57 s there with a cold cache, for two graphs (batches with
packed documents and without). A short run (the quickstart, a LoRA on a few hundred
conversations) would spend more on compiling than it saves; a long pretraining run pays it
back many times. So the trainer starts eager and, once it has timed its first steps (the
"~N to go" line), compiles the model if the rest of the run is estimated to take at least
min_rest_s(dtype): 20 minutes under bf16/fp16 autocast, where the compile paid for itself
after 5-8 minutes and the threshold leaves more than twice that margin for slower compilers
and smaller gains. An fp32 step is mostly matrix products, which compiling leaves as they
are: on a 2-vCPU AMD EPYC with AVX2 only (where `--dtype auto` is fp32), h512 x 8 trained
1.06x eager after a 108 s compile, paid back after about 34 minutes, so fp32 runs compile
only with 2 hours or more to go.

It stays eager where compiling is not known to pay or to work: several processes (the DDP
wrapper is built around the model once), FSDP, objectives whose batches change shape
(generation inside RL, images; Objective.compiles_well), devices other than CPU and CUDA,
and machines without what inductor builds its kernels with (a C++ compiler on the CPU,
Triton on CUDA; the run then says so). If compiling fails anyway, dynamo falls back to eager
(suppress_errors) and the run goes on. `--compile` compiles from the first step instead.
"""

from __future__ import annotations

import importlib.util
import os
import shutil

import torch

AUTO_COMPILE_MIN_REST_S = 20 * 60  # bf16 / fp16 autocast
AUTO_COMPILE_MIN_REST_S_FP32 = 120 * 60


def min_rest_s(dtype: torch.dtype) -> int:
    """How long the rest of a run must be (s) for compiling its steps to pay, by their dtype."""
    return AUTO_COMPILE_MIN_REST_S_FP32 if dtype == torch.float32 else AUTO_COMPILE_MIN_REST_S


def compile_blocker(device: torch.device) -> str | None:
    """Why torch.compile cannot build kernels for `device` on this machine, or None if it can."""
    if device.type == "cpu":
        compilers = [os.environ.get("CXX"), "g++", "c++", "clang++"]
        if not any(c and shutil.which(c) for c in compilers):
            return "no C++ compiler (g++, clang++ or $CXX) for inductor's CPU kernels"
        return None
    if device.type == "cuda":
        return None if importlib.util.find_spec("triton") else "Triton is not installed"
    return f"torch.compile is not used on {device.type}"


def auto_compile_plan(
    enabled: bool,
    rest_s: float,
    device: torch.device,
    dtype: torch.dtype,
    processes: int,
    objective_compiles_well: bool,
) -> tuple[bool, str | None]:
    """(compile now?, the line to print or None) for a run that is `rest_s` from its end and
    trains in `dtype` (its autocast dtype, or fp32)."""
    needed = min_rest_s(dtype)
    if not enabled or processes > 1 or not objective_compiles_well or rest_s < needed:
        return False, None
    left = f"about {rest_s / 60:.0f} min to go"
    blocker = compile_blocker(device)
    if blocker is not None:
        return False, f"compile: staying eager with {left} ({blocker})"
    threshold = f"at least {needed // 60} min in {str(dtype).removeprefix('torch.')}"
    return True, f"compile: turning torch.compile on ({left}, {threshold}; --no-auto-compile keeps the run eager)"


def compile_model(model: torch.nn.Module, fall_back_to_eager: bool) -> torch.nn.Module:
    """Compile each decoder layer of `model` in place (nn.Module.compile) and return the model.

    Regional compilation: the layers share one code path, so torch.compile builds one layer's
    kernels and reuses them for the others, where compiling the whole model unrolls every
    layer. On the 2-vCPU AMD EPYC (h512 x 8, bf16, cold caches) it built in 69 s against 232
    s and trained 1.16x eager against 1.09x (benchmarks/README.md). Names in the state dict
    stay the same. With fall_back_to_eager, a kernel that fails to build leaves its code
    eager (with a warning) instead of stopping the run: the run compiled on its own, so the
    user did not ask for it."""
    from ..model.minimind import DecoderLayer

    if fall_back_to_eager:
        import torch._dynamo

        torch._dynamo.config.suppress_errors = True
    for module in model.modules():
        if isinstance(module, DecoderLayer):
            module.compile()
    return model
