"""The server's scheduler: one background thread owns the model and decodes every request together.

    scheduler = Scheduler(model, tokenizer)
    scheduler.start()
    job = scheduler.submit([(prompt_ids, params)], loop=asyncio.get_running_loop())
    async for index, piece, done in job:      # text as it is generated, per choice
        ...

Each loop iteration admits waiting requests (their prompts are prefilled together and join
the running batch), then runs one decode step for all rows (the generation engine,
infer.engine.Engine, which every other caller uses too).
New text goes to the request's asyncio queue through `loop.call_soon_threadsafe`, so the
event loop never waits on the model, and a request that arrives while others are
generating starts at the next step instead of after they finish. A cancelled job (client
gone) leaves the batch before the next step.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque

import torch

from ..infer.engine import Engine
from ..infer.llamacpp import new_engine  # ours, or llama.cpp's with --backend llama.cpp
from ..infer.sequence import Completion, SamplingParams, Sequence

log = logging.getLogger("minimind.serve")


class QueueFull(Exception):
    """More requests are waiting than the engine accepts (answered with 429)."""


class Job:
    """One request: its sequences (choices: n per prompt) and the queue their output goes to.

    Iterating it yields (choice index, new text, Completion or None, new TokenLogprobs) until
    every choice has finished; the Completion comes with the last piece of its choice. The
    log-probabilities are those of the tokens behind the text (empty unless requested).
    """

    def __init__(self, sequences: list[Sequence], loop: asyncio.AbstractEventLoop):
        self.sequences = sequences
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()
        self.open = len(sequences)  # choices not yet finished (read on the event loop only)
        self.ready: deque = deque()  # merged items not yet handed out

    def emit(self, index: int, piece: str, done: Completion | None, logprobs: list) -> None:
        """Called from the engine thread."""
        self._put((index, piece, done, logprobs))

    def fail(self, error: BaseException) -> None:
        self._put(error)

    def _put(self, item) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the event loop has closed (server shutting down): nobody listens
            pass

    def cancel(self) -> None:
        """Stop generating (safe from any thread; the engine drops the rows before its next step)."""
        for s in self.sequences:
            s.cancelled = True

    def __aiter__(self):
        return self

    async def __anext__(self) -> tuple[int, str, Completion | None, list]:
        """The next piece of some choice. When the reader has fallen behind (many clients,
        a busy event loop), everything queued for a choice comes as one piece: fewer, larger
        chunks instead of a backlog of one-token events."""
        if not self.ready:
            if self.open == 0:
                raise StopAsyncIteration
            items = [await self.queue.get()]
            while not self.queue.empty():
                items.append(self.queue.get_nowait())
            merged: dict[int, list] = {}  # choice -> [text, completion, logprobs]; in order per choice
            for item in items:
                if isinstance(item, BaseException):
                    self.open = 0
                    raise item
                index, piece, done, logprobs = item
                entry = merged.setdefault(index, ["", None, []])
                entry[0] += piece
                entry[1] = done
                entry[2] += logprobs
            self.ready = deque((i, *entry) for i, entry in merged.items())
        item = self.ready.popleft()
        if item[2] is not None:
            self.open -= 1
        return item


class Scheduler:
    """Owns the model; `submit` is called from the event loop, everything else runs in its thread.

    max_batch: rows decoded together at most (more wait for a free row).
    max_queue: rows allowed to wait; beyond it `submit` raises QueueFull.
    """

    def __init__(self, model, tokenizer, max_batch: int = 32, max_queue: int = 64):
        self.model, self.tokenizer = model, tokenizer
        self.max_batch, self.max_queue = max_batch, max_queue
        self.waiting: deque[tuple[Job, int, Sequence]] = deque()
        self.wakeup = threading.Condition()
        self.running = False
        self.thread: threading.Thread | None = None
        self.rows_running = 0  # rows in the batch after the last step (for /health)

    def start(self) -> None:
        self.running = True
        self.thread = threading.Thread(target=self._loop, name="minimind-engine", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        with self.wakeup:
            self.running = False
            self.wakeup.notify()
        if self.thread is not None:
            self.thread.join()

    def submit(
        self, requests: list[tuple[list[int], SamplingParams]], loop: asyncio.AbstractEventLoop, images=None
    ) -> Job:
        """Queue one job: a (prompt ids, SamplingParams) pair per choice, and the prompt's
        preprocessed images for a vision-language model (every choice's prompt is the same one).
        Raises MiniMindError for a prompt the model cannot take (too long for its context,
        images that do not fill its <|image_pad|> tokens, ...) and QueueFull."""
        sequences = [Sequence(self.model, self.tokenizer, prompt, params, images=images) for prompt, params in requests]
        job = Job(sequences, loop)
        with self.wakeup:
            if len(self.waiting) + len(sequences) > self.max_queue:
                raise QueueFull(f"{len(self.waiting)} requests are waiting; try again shortly")
            self.waiting.extend((job, i, s) for i, s in enumerate(sequences))
            self.wakeup.notify()
        return job

    @property
    def load(self) -> dict:
        return {"running": self.rows_running, "waiting": len(self.waiting)}

    def _admit(self, batch: Engine) -> list[tuple[Job, int, Sequence]]:
        """Take waiting rows (cancelled ones are dropped) while there is room; block when idle."""
        with self.wakeup:
            self.rows_running = len(batch.sequences)
            while self.running and not self.waiting and not batch.sequences:
                self.wakeup.wait()
            taken = []
            while self.waiting and len(batch.sequences) + len(taken) < self.max_batch:
                item = self.waiting.popleft()
                if not item[2].cancelled:
                    taken.append(item)
            self.rows_running += len(taken)  # counted before their prefill, so none looks idle
            return taken

    def _prefill(self, batch: Engine, admitted, rows: dict) -> None:
        """Prefill the newcomers together; if that fails, one at a time, so that a request whose
        input breaks the model (an image, say) fails alone and the others go on. (A failed
        add leaves the batch as it was: the engine merges only after the forward pass.)"""
        groups = [admitted]
        while groups:
            group = groups.pop()
            try:
                batch.add([s for _, _, s in group])
            except Exception as e:
                if len(group) > 1:  # find the culprit: try them one by one
                    groups.extend([item] for item in group)
                    continue
                log.exception("prefill failed")
                job, _, s = group[0]
                rows.pop(id(s))
                job.cancel()  # its other choices, if they got in
                job.fail(e)

    def _loop(self) -> None:
        batch = new_engine(self.model)
        rows: dict[int, tuple[Job, int]] = {}  # id(sequence) -> (job, choice index)
        while self.running:
            try:
                for s in batch.drop_cancelled():
                    rows.pop(id(s))
                admitted = self._admit(batch)
                if admitted:
                    rows.update((id(s), (job, i)) for job, i, s in admitted)
                    self._prefill(batch, admitted, rows)
                for s in batch.step():
                    job, i = rows[id(s)]
                    piece = s.new_text()
                    done = s.completion() if s.finished else None
                    if done is not None:
                        rows.pop(id(s))
                    if piece or done is not None:
                        job.emit(i, piece, done, s.new_logprobs())
                self.rows_running = len(rows)
            except Exception as e:  # a bug or out of memory: fail these requests, keep serving
                log.exception("generation failed")
                for job in {id(j): j for j, _ in rows.values()}.values():
                    job.fail(e)
                batch, rows = new_engine(self.model), {}
                self.rows_running = 0
                if isinstance(e, torch.cuda.OutOfMemoryError):
                    torch.cuda.empty_cache()
