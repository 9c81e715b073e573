"""An optional compiled decode step: the model's one-token forward pass through `torch.compile`.

    compile_decode(model)        # from now on every Engine of this model uses it
    Engine(model, compile=True)  # the same: it calls compile_decode

`minimind chat --compile` and `minimind serve --compile` turn it on.

Why a separate path: a decode step runs a few hundred small operations, and at batch 1 on a
CPU the time goes into launching them and into reading the weights, not into arithmetic.
Compiling fuses the element-wise work (norms, RoPE, SwiGLU) into a few kernels and, on the CPU,
*freezes* the weights: they become constants of the compiled code, packed once for oneDNN
(bf16; fp32 too where it reads faster than MKL, timed on the model's weights) or MKL, whose
matrix-vector products read them faster than `F.linear` reads a plain weight
(benchmarks/README.md, "Compiled decode").

What the compiled code must not see is a shape or a Python number that changes every step,
or it would compile again each time. Our KV cache's live part grows by one column a step, so
the compiled step instead attends over the cache's whole capacity with a mask of the live
columns, and writes the new column at an index given as a tensor. The capacity itself is
rounded up to a power of two (at least 256), so a conversation that grows meets a new shape,
and one more compile, only when it doubles. Only one-row steps are compiled (chat, a single
stream, the last row of a batch): a batch's size changes whenever a row finishes, and each new
size would compile again. (Compiling with symbolic sizes instead kept one graph but lost most
of the gain: 395 tok/s on `tiny` against 534 static and about 320 eager.) Batched steps are
compute-bound anyway and gain least.

The price: the first step compiles (a first reply of 4-8 s for the small presets on a 2-core
CPU, a few seconds more at each new width), and frozen weights are copies,
so the model must not change afterwards (training, RL rollouts). Chat, serving and generation
from a fixed checkpoint are what it is for.
"""

from __future__ import annotations

import contextlib
import time

import torch

from ..errors import MiniMindError

MIN_CAPACITY = 256  # smallest cache width compiled for: short chats share one compiled step


class ColumnWriter:
    """The KV cache as the compiled step sees it: full buffers [B, K, capacity, D] per layer,
    the new token's keys and values written at `column` (a 1-element tensor), every column
    returned (the mask hides those that are not live)."""

    def __init__(self, k: list[torch.Tensor], v: list[torch.Tensor], column: torch.Tensor):
        self.k, self.v, self.column = k, v, column
        self.length = 0  # the model reads it as the past length; the 4D mask makes it unused

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        self.k[layer].index_copy_(2, self.column, k)
        self.v[layer].index_copy_(2, self.column, v)
        return self.k[layer], self.v[layer]


def decode_logits(model, ids, positions, k, v, padding, start, column):
    """One decode step: next-token logits [B, vocab] for ids [B, 1] at positions [B, 1].

    padding [B, capacity] is the cache's mask (1 = real token); the live columns are
    [start, column], both 1-element tensors, column being where the new token goes."""
    columns = torch.arange(padding.shape[1], device=padding.device)
    visible = (columns >= start) & (columns <= column) & padding.bool()  # [B, capacity]
    cache = ColumnWriter(k, v, column)
    out = model(ids, attention_mask=visible[:, None, None, :], position_ids=positions, cache=cache, logits_to_keep=1)
    return out.logits[:, -1]


def compile_decode(model) -> CompiledDecoder:
    """Make every Engine of `model` run its one-row decode steps compiled (see the module's
    docstring); returns the model's CompiledDecoder. It is kept on the model, so a chat's
    second reply (a new Engine) does not compile again, and it goes when the model goes."""
    if getattr(model.config, "use_moe", False):
        raise MiniMindError(
            "compiled decode (--compile) supports dense models only: an MoE layer picks its experts from the data, "
            "so each step would compile again (measured slower than eager); run without --compile"
        )
    if compiled_decoder(model) is None:
        model.compiled_decoder = CompiledDecoder(model)
    return model.compiled_decoder


def compiled_decoder(model) -> CompiledDecoder | None:
    """The model's CompiledDecoder if compile_decode was called on it, else None."""
    return getattr(model, "compiled_decoder", None)


def packed_fp32_kernel(weights: list[torch.Tensor], rounds: int = 5) -> str:
    """ "onednn" or "mkl": whichever packed fp32 matrix-vector product reads these weights
    faster on this CPU, timed here on the model's own weights (a fraction of a second).

    Inductor packs frozen fp32 weights for MKL on x86; oneDNN's packed product is the one it
    uses for bf16. At batch 1 the step is bound by how fast the weights are read, and the two
    differ: on a 2-vCPU AMD EPYC (AVX-512) oneDNN read minimind2-small's weights at 24 GB/s
    and MKL at 16 (benchmarks/README.md, "Compiled decode"). Other CPUs may differ, so we
    measure instead of assuming."""
    if not (torch.backends.mkldnn.is_available() and torch._C.has_mkl):
        return "mkl"  # nothing to choose: inductor's own default
    rows = {w.shape[1]: torch.randn(1, w.shape[1]) for w in weights}
    mkl = [(torch.ops.mkl._mkl_reorder_linear_weight(w, 1), w) for w in weights]
    onednn = [(torch.ops.mkldnn._reorder_linear_weight(w, 1), w) for w in weights]

    def read_mkl():
        for packed, w in mkl:
            torch.ops.mkl._mkl_linear(rows[w.shape[1]], packed, w, None, 1)

    def read_onednn():
        for packed, w in onednn:
            torch.ops.mkldnn._linear_pointwise(rows[w.shape[1]], packed, None, "none", [], "")

    best = {read_mkl: float("inf"), read_onednn: float("inf")}
    for _ in range(rounds):  # interleaved, best of each: the fairest reading on a shared machine
        for read in best:
            t = time.perf_counter()
            read()
            best[read] = min(best[read], time.perf_counter() - t)
    return "onednn" if best[read_onednn] < best[read_mkl] else "mkl"


@contextlib.contextmanager
def packed_for_onednn():
    """While compiling, make inductor pack frozen fp32 weights for oneDNN instead of MKL.

    Inductor 2.13 has no switch for this; it takes the oneDNN path for fp32 only when the
    batch size is symbolic, which it learns from `has_free_symbols`. Saying "symbolic" to that
    one check (in the weight-packing pass alone) picks oneDNN; the batch size is still the
    static 1 everywhere else."""
    from torch._inductor.fx_passes import mkldnn_fusion

    check = mkldnn_fusion.has_free_symbols
    mkldnn_fusion.has_free_symbols = lambda _: True
    try:
        yield
    finally:
        mkldnn_fusion.has_free_symbols = check


class CompiledDecoder:
    """Runs decode steps of one model through torch.compile (see the module's docstring)."""

    def __init__(self, model, fp32_kernel: str | None = None):
        """fp32_kernel: "mkl" or "onednn" for a CPU fp32 model's packed weights; by default
        the faster of the two on this machine (packed_fp32_kernel)."""
        from torch._inductor import config  # here, not at the top: importing it takes about 1 s

        self.inductor_config = config

        def step(ids, positions, k, v, padding, start, column):
            # the model is reached through this closure, not passed in: an argument's
            # parameters are inputs of the compiled code, which freezing cannot fold
            return decode_logits(model, ids, positions, k, v, padding, start, column)

        device = next(model.parameters()).device
        if device.type == "cuda":
            # CUDA graphs replay the whole step as one launch. The cache buffers are written in
            # place, so their addresses must stay fixed: marked static (see `step`).
            self.fn = torch.compile(step, mode="reduce-overhead")
        else:
            self.fn = torch.compile(step, dynamic=False)
        self.device = device
        if fp32_kernel not in (None, "mkl", "onednn"):
            raise ValueError(f"fp32_kernel must be 'mkl' or 'onednn', not {fp32_kernel!r}")
        weight = next(model.parameters())
        self.fp32_kernel = None  # inductor's own choice: CUDA, or bf16/fp16 weights (oneDNN)
        if device.type == "cpu" and weight.dtype == torch.float32:
            linears = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
            self.fp32_kernel = fp32_kernel or packed_fp32_kernel([w.detach() for w in linears])

    def step(self, ids: torch.Tensor, positions: torch.Tensor, cache) -> torch.Tensor:
        """Logits [B, vocab] of the next token after ids [B, 1]; advances the cache by one."""
        capacity = max(MIN_CAPACITY, 1 << (cache.capacity - 1).bit_length())
        if capacity != cache.capacity:
            cache.resize(capacity)  # a copy of the live part, once per doubling
        if self.device.type == "cuda":
            for t in (*cache.k, *cache.v, cache.mask):
                torch._dynamo.mark_static_address(t)
        column = cache.start + cache.length
        index = torch.tensor([cache.start, column], device=self.device)
        # Freezing is switched on only around our own calls, where it is read (it cannot be
        # passed through torch.compile's `options` in torch 2.13), so no other compiled code
        # (the trainer's --compile) gets its weights frozen.
        onednn = packed_for_onednn() if self.fp32_kernel == "onednn" else contextlib.nullcontext()
        with self.inductor_config.patch(freezing=self.device.type == "cpu"), onednn:
            logits = self.fn(ids, positions, cache.k, cache.v, cache.mask, index[:1], index[1:])
        cache.length += 1
        if self.device.type == "cuda":
            logits = logits.clone()  # a CUDA graph's output is overwritten by its next replay
        return logits
