"""An optional compiled decode step: the model's one-token forward pass through `torch.compile`.

    compile_decode(model)        # from now on every Engine of this model uses it
    Engine(model, compile=True)  # the same: it calls compile_decode

`minimind chat --compile` and `minimind serve --compile` turn it on.

Why a separate path: a decode step runs a few hundred small operations, and at batch 1 on a
CPU the time goes into launching them and into reading the weights, not into arithmetic.
Compiling fuses the element-wise work (norms, RoPE, SwiGLU) into a few kernels and, on the CPU,
*freezes* the weights: they become constants of the compiled code, so q/k/v and gate/up are
stacked once, at compile time. Each matrix-vector product is written as a multiply and a sum
(`linear` in model/layers.py), which inductor turns into one loop streaming the weights at
about the machine's memory bandwidth (37 GB/s on a 2-vCPU EPYC, where `F.linear` read 12):
the whole step ran 2.3-3.8x eager (benchmarks/README.md, "Compiled decode").

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

The price: the first step compiles (a first reply of 6-18 s for the small presets on a 2-core
CPU, 2-5 s once inductor's on-disk cache holds the code; a few seconds more at each new
width), and frozen weights are copies,
so the model must not change afterwards (training, RL rollouts). Chat, serving and generation
from a fixed checkpoint are what it is for.
"""

from __future__ import annotations

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


class CompiledDecoder:
    """Runs decode steps of one model through torch.compile (see the module's docstring)."""

    def __init__(self, model):
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
        with self.inductor_config.patch(freezing=self.device.type == "cpu"):
            logits = self.fn(ids, positions, cache.k, cache.v, cache.mask, index[:1], index[1:])
        cache.length += 1
        if self.device.type == "cuda":
            logits = logits.clone()  # a CUDA graph's output is overwritten by its next replay
        return logits
