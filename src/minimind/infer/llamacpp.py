"""llama.cpp as a backend for `minimind chat` and `minimind serve` (`--backend llama.cpp`).

For people who want the fastest CPU chat: llama.cpp (through llama-cpp-python, when it is
installed) runs the model as a GGUF file (`minimind export gguf`; f32, or q8_0 which reads a
quarter of the bytes per token). Only the forward pass moves there. Everything around it stays
ours: the chat template and tokenizer, the sampling (`BatchSampling`, so greedy, temperature,
top-k/top-p, the penalties and seeds mean exactly what they mean with our engine), stop
tokens and strings, streaming text and log-probabilities (`Sequence`).

    model = LlamaCppModel.from_model_dir("out/sft")            # exports a q8_0 GGUF first
    model = LlamaCppModel.from_model_dir("out/sft", gguf="m.gguf")
    for piece in model.stream(tokenizer, prompt_ids, params): ...

`LlamaCppModel` stands where our model stands for the REPL and the server's scheduler: it has
the model's `config`, and `engine()` gives the object they drive (`LlamaCppEngine`: the same
`add` / `step` / `drop_cancelled` / `sequences` as infer.engine.Engine). llama.cpp holds one
KV cache here, so requests are decoded one after another, not batched: the first in line
generates, the others wait for it. A new prompt that starts like the previous one (the next
turn of a chat) reuses the cached prefix.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ..config import ModelConfig
from ..errors import MiniMindError
from .compiled import compile_decode
from .sampling import BatchSampling
from .sequence import Completion, SamplingParams, Sequence, TokenLogprob

# The context llama.cpp allocates when the model's is larger: a KV cache for MiniMind's 32k
# positions would take hundreds of MB for replies that are rarely longer than a few thousand.
DEFAULT_CONTEXT = 8192
INSTALL = (
    "--backend llama.cpp needs llama-cpp-python: pip install llama-cpp-python "
    "(it compiles llama.cpp; scripts/install-test-peers.sh does it)"
)


def import_llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        raise MiniMindError(INSTALL) from None
    return llama_cpp


class LlamaCppModel:
    """A GGUF file loaded in llama.cpp; `config` is the model's own (context cut to n_ctx)."""

    def __init__(self, gguf: str | Path, config: ModelConfig, threads: int | None = None, n_ctx: int | None = None):
        llama_cpp = import_llama_cpp()
        if not Path(gguf).is_file():
            raise MiniMindError(f"{gguf}: GGUF file not found (make one with `minimind export gguf`)")
        n_ctx = n_ctx or min(config.max_position_embeddings, DEFAULT_CONTEXT)
        self.config = dataclasses.replace(config, max_position_embeddings=n_ctx)
        self.device = torch.device("cpu")  # where sampling happens (the logits come back here)
        # An f32 KV cache (type 0), like our engine's, so greedy replies match ours; the cache
        # of a model this small is a few MB either way.
        self.llm = llama_cpp.Llama(
            model_path=str(gguf),
            n_ctx=n_ctx,
            n_threads=threads,
            n_threads_batch=threads,
            type_k=0,
            type_v=0,
            verbose=False,
        )
        self._get_logits = llama_cpp.llama_get_logits_ith
        if self.llm.n_vocab() != self.config.vocab_size:
            raise MiniMindError(
                f"{gguf}: {self.llm.n_vocab()} tokens in the GGUF, config.json says {self.config.vocab_size}"
            )

    @classmethod
    def from_model_dir(
        cls,
        model_dir: str | Path,
        gguf: str | Path | None = None,
        dtype: str = "q8_0",
        threads: int | None = None,
        export=None,
    ) -> LlamaCppModel:
        """The model of a model directory in llama.cpp: its GGUF file `gguf`, or one exported
        now (`dtype`: q8_0, f32, f16 or bf16) into a temporary folder that lives as long as
        the model. `export` is export.gguf.export_gguf, handed in by the commands (inference
        sits below export in the package's layers)."""
        model_dir = Path(model_dir)
        config = ModelConfig.load(model_dir / "config.json")
        import_llama_cpp()  # before spending time on an export
        tmp = None
        if gguf is None:
            if export is None:
                raise MiniMindError("llama.cpp needs a GGUF file: pass --gguf FILE (from `minimind export gguf`)")
            tmp = tempfile.TemporaryDirectory(prefix="minimind-gguf-")
            gguf = Path(tmp.name) / f"model-{dtype}.gguf"
            started = time.perf_counter()
            export(model_dir, gguf, dtype=dtype)
            print(
                f"exported {model_dir} to a {dtype} GGUF for llama.cpp ({time.perf_counter() - started:.1f} s; "
                "--gguf FILE reuses one made by `minimind export gguf`)",
                file=sys.stderr,
            )
        model = cls(gguf, config, threads=threads)
        model._tmp = tmp  # removed with the model
        return model

    def parameters(self) -> Iterator[torch.Tensor]:
        """Sequence() asks a model for its device this way (to seed a row's generator)."""
        yield torch.empty(0, device=self.device)

    def engine(self) -> LlamaCppEngine:
        return LlamaCppEngine(self)

    def prefill(self, prompt: list[int]) -> torch.Tensor:
        """Run the prompt and return its next-token logits [vocab]. The part of the prompt that
        is already in the cache (the previous request's prompt and reply) is not run again."""
        llm = self.llm
        cached = llm.input_ids[: llm.n_tokens]
        same = 0
        limit = min(len(cached), len(prompt) - 1)  # at least one token runs, for the logits
        while same < limit and cached[same] == prompt[same]:
            same += 1
        llm.n_tokens = same  # eval() drops the cache past this point first
        llm.eval(prompt[same:])
        return self._logits()

    def decode(self, token: int) -> torch.Tensor:
        """Append one token and return the logits that follow it."""
        self.llm.eval([token])
        return self._logits()

    def _logits(self) -> torch.Tensor:
        ptr = self._get_logits(self.llm.ctx, -1)  # the last evaluated token's logits
        return torch.from_numpy(np.ctypeslib.as_array(ptr, shape=(self.config.vocab_size,)).copy())

    def stream(self, tokenizer, prompt_ids: list[int], params: SamplingParams | None = None) -> LlamaCppStream:
        """infer.stream() on llama.cpp: iterate for text pieces; `.completion` afterwards."""
        return LlamaCppStream(self, tokenizer, prompt_ids, params)

    def generate(self, tokenizer, prompts: list[list[int]], params: SamplingParams | None = None) -> list[Completion]:
        """infer.generate() on llama.cpp: one Completion per prompt, one prompt after another."""
        sequences = [Sequence(self, tokenizer, p, params, track_text=True) for p in prompts]
        engine = self.engine()
        engine.add(sequences)
        while engine.sequences:
            engine.step()
        return [s.completion() for s in sequences]


class LlamaCppEngine:
    """The Engine interface on llama.cpp, one sequence at a time (see the module's docstring)."""

    def __init__(self, model: LlamaCppModel):
        self.model = model
        self.vocab = model.config.vocab_size
        self.sequences: list[Sequence] = []
        self._current: Sequence | None = None  # the sequence whose logits are in self._logits
        self._logits: torch.Tensor | None = None
        self._sampling: BatchSampling | None = None

    def add(self, sequences: list[Sequence], room: int | None = None) -> None:
        """Queue sequences; they start when the ones before them have finished."""
        self.sequences += sequences

    def drop_cancelled(self) -> list[Sequence]:
        gone = [s for s in self.sequences if s.cancelled]
        self.sequences = [s for s in self.sequences if not s.cancelled]
        if self._current is not None and self._current.cancelled:
            self._current = None
        return gone

    def step(self) -> list[Sequence]:
        """One token for the first sequence in line; returns [it] (or [] when none waits)."""
        if not self.sequences:
            return []
        s = self.sequences[0]
        if self._current is not s:
            self._current, self._logits = s, self.model.prefill(s.prompt)
            self._sampling = BatchSampling([s.params], [s.generator], self.model.device)
        seen, counts = self._penalty_state(s)
        token = int(self._sampling.choose(self._logits[None], seen, counts)[0])
        if token < 0:
            p = s.params
            s.fail(
                f"sampling failed: the probabilities are not finite (temperature {p.temperature}, "
                f"repetition_penalty {p.repetition_penalty})"
            )
        else:
            if s.logprobs is not None:
                self._record_logprob(s, token)
            if not s.push(token):
                self._logits = self.model.decode(token)
                return [s]
        self.sequences.pop(0)
        self._current = None
        return [s]

    def _penalty_state(self, s: Sequence):
        """`seen` (prompt + generated tokens) and `counts` (generated) as the engine keeps them."""
        p = s.params
        seen = counts = None
        if p.repetition_penalty != 1.0:
            seen = torch.bincount(torch.tensor(s.prompt + s.token_ids), minlength=self.vocab)[None] > 0
        if p.frequency_penalty or p.presence_penalty:
            counts = torch.bincount(torch.tensor(s.token_ids, dtype=torch.long), minlength=self.vocab)[None].float()
        return seen, counts

    def _record_logprob(self, s: Sequence, token: int) -> None:
        logprobs = self._logits.float().log_softmax(dim=-1)
        n = s.params.top_logprobs
        top = []
        if n:
            values, ids = logprobs.topk(min(n, self.vocab))
            top = list(zip(ids.tolist(), values.tolist()))
        s.logprobs.append(TokenLogprob(token, float(logprobs[token]), top))


class LlamaCppStream:
    """What LlamaCppModel.stream returns: text pieces, then `.completion` (None if stopped early)."""

    def __init__(self, model: LlamaCppModel, tokenizer, prompt_ids: list[int], params: SamplingParams | None = None):
        self.params = params if params is not None else SamplingParams()
        self._sequence = Sequence(model, tokenizer, prompt_ids, self.params, track_text=True)
        self.prompt = self._sequence.prompt
        self.completion: Completion | None = None
        self._pieces = self._run(model.engine())

    def _run(self, engine: LlamaCppEngine) -> Iterator[str]:
        engine.add([self._sequence])
        while engine.sequences:
            engine.step()
            if piece := self._sequence.new_text():
                yield piece
        self.completion = self._sequence.completion()

    def __iter__(self) -> LlamaCppStream:
        return self

    def __next__(self) -> str:
        return next(self._pieces)

    def close(self) -> None:
        self._pieces.close()


def new_engine(model):
    """The engine for `model`: llama.cpp's for a LlamaCppModel, ours for everything else."""
    if isinstance(model, LlamaCppModel):
        return model.engine()
    from .engine import Engine

    return Engine(model)


# ---------------------------------------------------------------------- the commands


def load_for_inference(args, export=None):
    """(model, tokenizer) for chat and serve from their flags (serve.commands.add_backend_args):
    our model on --device/--dtype (with --lora), or the model in llama.cpp (`export`: export.gguf.export_gguf, see
    LlamaCppModel.from_model_dir)."""
    from ..checkpoint import load
    from ..device import resolve_device, resolve_inference_dtype
    from ..tokenizer import Tokenizer

    threads = getattr(args, "threads", None)
    if threads is not None and threads < 1:
        raise MiniMindError(f"--threads must be at least 1, got {threads}")
    if getattr(args, "backend", "torch") == "llama.cpp":
        if getattr(args, "compile", False):
            raise MiniMindError("--compile is for the torch backend (llama.cpp runs its own compiled kernels)")
        if args.lora:
            raise MiniMindError(
                "--backend llama.cpp cannot apply --lora: merge it first (`minimind lora merge`) and export that"
            )
        model = LlamaCppModel.from_model_dir(
            args.model, gguf=args.gguf, dtype=args.gguf_dtype, threads=threads, export=export
        )
        return model, Tokenizer.from_dir(args.model)
    if threads is not None:
        torch.set_num_threads(threads)
    device = resolve_device(args.device)
    dtype = resolve_inference_dtype(args.dtype, device)
    model, tokenizer = load(args.model, device=device, dtype=dtype, lora=args.lora)
    if getattr(args, "compile", False):
        compile_decode(model)
    return model, tokenizer
