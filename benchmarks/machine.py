"""The machine a benchmark ran on, in one line, printed at the top of every benchmark.

Figures from different machines differ by large factors (bf16 matrix units or not, 2 cores or
16, a GPU), so every table names its machine: CPU model, cores, torch threads, the vector and
matrix instruction sets that decide which dtype is fast, the measured fp32 and bf16 matmul
peaks (the ceilings MFU is measured against), and the GPU if there is one.

    python benchmarks/machine.py        # prints the line
"""

from __future__ import annotations

import os
import platform

import torch

from minimind.train.flops import measured_peak_flops

# /proc/cpuinfo flag -> the name people know it by
CPU_FLAGS = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_bf16": "AVX512-BF16", "amx_bf16": "AMX-BF16"}


def cpu_info() -> tuple[str, list[str]]:
    """(CPU model name, the instruction-set flags of CPU_FLAGS it has). Linux only; elsewhere
    the platform's processor string and no flags."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return platform.processor() or "unknown CPU", []
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "")
    flags_line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    present = set(flags_line.split(":", 1)[-1].split())
    return model or platform.processor() or "unknown CPU", [name for flag, name in CPU_FLAGS.items() if flag in present]


def describe_machine(device: str = "cpu", peaks: bool = True) -> dict:
    """Everything the machine line says, as a dict (benchmarks also write it into their JSON)."""
    model, flags = cpu_info()
    info = {
        "cpu": model,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_flags": flags,
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    if peaks:
        dev = torch.device(device)
        info["fp32_gflops"] = measured_peak_flops(dev, torch.float32) / 1e9
        info["bf16_gflops"] = measured_peak_flops(dev, torch.bfloat16) / 1e9
        info["peak_device"] = device
    return info


def machine_line(info: dict | None = None, device: str = "cpu") -> str:
    """One Markdown-friendly line: `machine: AMD EPYC (2 cores, 2 torch threads; AVX2, ...)`."""
    info = info if info is not None else describe_machine(device)
    flags = ", ".join(info["cpu_flags"]) or "no AVX2"
    line = f"machine: {info['cpu']} ({info['cores']} cores, {info['torch_threads']} torch threads; {flags})"
    if "fp32_gflops" in info:
        ratio = info["bf16_gflops"] / info["fp32_gflops"]
        line += (
            f"; {info['peak_device']} matmul peak fp32 {info['fp32_gflops']:,.0f} GFLOP/s, "
            f"bf16 {info['bf16_gflops']:,.0f} GFLOP/s ({ratio:.2f}x fp32)"
        )
    line += f"; GPU: {info['gpu'] or 'none'}; torch {info['torch']}"
    return line


if __name__ == "__main__":
    print(machine_line())
