"""Text generation: batched, streaming, with stop tokens and stop strings.

    from minimind.infer import SamplingParams, generate, stream, chat

    params = SamplingParams(max_new_tokens=200, temperature=0.7, seed=0)
    [done] = generate(model, tokenizer, [tokenizer.encode("Once upon a time")], params)
    print(done.text, done.finish_reason)

    s = stream(model, tokenizer, tokenizer.encode("Hello"), params)
    for piece in s:                 # text pieces as soon as they are final
        print(piece, end="", flush=True)
    print(s.completion.finish_reason)

How it works (and where it differs from MiniMind's `generate`):
  * Prompts of different lengths are left-padded into one batch; the attention mask hides the
    padding and each row's positions start at 0, so a row gives exactly what it gives alone.
  * The prompt runs through the model once (prefill), filling a KV cache that is allocated
    once for the whole generation; then each step feeds only the newest token
    (`logits_to_keep=1`). MiniMind grows its cache with torch.cat, copying it every token.
  * A row that finishes leaves the batch (`cache.reorder`), so the rest run faster; MiniMind
    keeps computing finished rows until the last one ends.
  * Sampling is vectorised over the batch (see sampling.py) and uses its own seeded
    torch.Generator.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..errors import MiniMindError
from .sampling import sample_next


@dataclass
class SamplingParams:
    """How to pick tokens and when to stop. Checked on creation (MiniMindError if invalid)."""

    max_new_tokens: int = 512  # clipped so prompt + new tokens fit max_position_embeddings
    temperature: float = 0.85  # 0 = greedy (always the most likely token)
    top_k: int = 0  # keep only the k most likely tokens; 0 = off
    top_p: float = 0.95  # nucleus: smallest set of tokens with probability >= top_p; 1.0 = off
    repetition_penalty: float = 1.0  # > 1 discourages tokens already in prompt or output; 1 = off
    stop_token_ids: tuple[int, ...] | None = None  # None = (tokenizer.eos_token_id,)
    # Stop as soon as the text contains one of these. They are matched on the decoded text,
    # so with skip_special_tokens a special token (<|im_end|>) never matches: use its id.
    stop_strings: tuple[str, ...] = ()
    seed: int | None = None  # same seed -> same output; None = drawn from torch's global RNG
    skip_special_tokens: bool = True  # drop <|im_start|> etc. from the text (not <think>)

    def __post_init__(self):
        if isinstance(self.stop_strings, str):  # a lone string is one stop string, not its chars
            self.stop_strings = (self.stop_strings,)
        self.stop_strings = tuple(self.stop_strings)
        if self.stop_token_ids is not None:
            self.stop_token_ids = tuple(int(t) for t in self.stop_token_ids)
        problems = []
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        if not self.temperature >= 0:  # also rejects NaN
            problems.append(f"temperature must be >= 0 (0 = greedy), got {self.temperature!r}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            problems.append(f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1] (1 = off), got {self.top_p!r}")
        if not self.repetition_penalty > 0:
            problems.append(f"repetition_penalty must be > 0 (1 = off), got {self.repetition_penalty!r}")
        if not all(isinstance(s, str) and s for s in self.stop_strings):
            problems.append(f"stop_strings must be non-empty strings, got {self.stop_strings!r}")
        if problems:
            raise MiniMindError("invalid sampling parameters: " + "; ".join(problems))


@dataclass
class Completion:
    """One generated answer.

    token_ids: the generated ids. A stop token id is not included. When a stop string ended
        generation, the ids run up to and including the token that completed the stop string,
        so `decode(token_ids)` may show (part of) it while `text` does not.
    text: the decoded text, cut just before the first stop string.
    finish_reason: "stop" (stop token or stop string) or "length" (max_new_tokens reached,
        or the model's context is full).
    prompt_tokens: length of the prompt.
    completion_tokens: tokens the model generated, the stop token included (what it cost).
    """

    token_ids: list[int]
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


class _Row:
    """Bookkeeping for one sequence: its tokens, its text (when stop strings or streaming
    need it token by token) and whether and why it has finished."""

    def __init__(self, tokenizer, prompt_len: int, limit: int, stop_ids: frozenset,
                 params: SamplingParams, track_text: bool):
        self.tokenizer, self.prompt_len, self.limit = tokenizer, prompt_len, limit
        self.stop_ids, self.stops, self.skip = stop_ids, params.stop_strings, params.skip_special_tokens
        self.longest_stop = max(map(len, self.stops), default=0)
        self.decoder = tokenizer.stream_decoder(self.skip) if track_text or self.stops else None
        self.token_ids: list[int] = []
        self.text = ""  # decoded so far (only with a decoder)
        self.shown = 0  # characters of text already handed out by stream()
        self.stop_at: int | None = None  # where the first stop string starts in text
        self.ended_by_token = False
        self.finish_reason: str | None = None

    def push(self, token: int) -> bool:
        """Record one sampled token; return True when the row has finished."""
        if token in self.stop_ids:
            self.ended_by_token = True
            return self._finish("stop")
        self.token_ids.append(token)
        if self.decoder is not None and self._add_text(self.decoder.push(token)):
            return self._finish("stop")
        if len(self.token_ids) >= self.limit:
            return self._finish("length")
        return False

    def _add_text(self, piece: str) -> bool:
        """Append decoded text; return True if it completed a stop string. Only the new
        piece and the few characters before it can hold a new match, so only they are searched."""
        start = max(0, len(self.text) - self.longest_stop + 1)
        self.text += piece
        found = [i for s in self.stops if (i := self.text.find(s, start)) >= 0]
        if found:
            self.stop_at = min(found)
        return bool(found)

    def _finish(self, reason: str) -> bool:
        # The decoder may still hold bytes back; they could complete a stop string.
        if self.decoder is not None and self.stop_at is None and self._add_text(self.decoder.flush()):
            reason = "stop"
        self.finish_reason = reason
        return True

    def new_text(self) -> str:
        """Text that became final since the last call (for streaming).

        While running, a tail that could still grow into a stop string is held back ("Hel"
        with stop string "Hello"), so the stop string never reaches the reader, even in part.
        """
        if self.finish_reason is not None:
            end = self.stop_at if self.stop_at is not None else len(self.text)
        else:
            end = len(self.text) - _stop_prefix_len(self.text, self.stops, self.longest_stop)
        piece, self.shown = self.text[self.shown:end], max(self.shown, end)
        return piece

    def completion(self) -> Completion:
        if self.decoder is not None:
            text = self.text[:self.stop_at]
        else:
            text = self.tokenizer.decode(self.token_ids, skip_special_tokens=self.skip)
        return Completion(token_ids=self.token_ids, text=text, finish_reason=self.finish_reason,
                          prompt_tokens=self.prompt_len,
                          completion_tokens=len(self.token_ids) + self.ended_by_token)


def _stop_prefix_len(text: str, stops: tuple[str, ...], longest: int) -> int:
    """Length of the longest end of `text` that is the beginning of some stop string."""
    for n in range(min(len(text), longest - 1), 0, -1):
        tail = text[-n:]
        if any(s.startswith(tail) for s in stops):
            return n
    return 0


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


def _prepare(model, tokenizer, prompts, params: SamplingParams, track_text: bool) -> list[_Row]:
    """Check the prompts against the model and build one _Row per prompt."""
    if not isinstance(params, SamplingParams):
        raise MiniMindError(f"params must be a SamplingParams, got {type(params).__name__}")
    vocab, max_pos = model.config.vocab_size, model.config.max_position_embeddings
    stop_ids = params.stop_token_ids
    if stop_ids is None:
        stop_ids = () if tokenizer.eos_token_id is None else (tokenizer.eos_token_id,)
    rows = []
    for i, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise MiniMindError(f"prompt {i} is empty: give at least one token (e.g. the bos token)")
        bad = [t for t in prompt if not 0 <= int(t) < vocab]
        if bad:
            raise MiniMindError(f"prompt {i} has token ids outside the vocabulary [0, {vocab}): {bad[:5]}")
        if len(prompt) >= max_pos:
            raise MiniMindError(f"prompt {i} has {len(prompt)} tokens; the model's context is "
                                f"{max_pos} (max_position_embeddings), leaving no room to generate")
        # Clip instead of failing: users expect "generate until the context is full".
        limit = min(params.max_new_tokens, max_pos - len(prompt))
        rows.append(_Row(tokenizer, len(prompt), limit, frozenset(stop_ids), params, track_text))
    return rows


@torch.inference_mode()
def _decode_steps(model, prompts: list[list[int]], rows: list[_Row], params: SamplingParams) -> Iterator[None]:
    """The generation loop shared by generate() and stream().

    Prefills all prompts at once, then samples one token per unfinished row per step, hands
    it to that row's _Row.push, drops finished rows from the batch and yields (so stream()
    can hand out text between steps). Runs until every row has finished.
    """
    device = _model_device(model)
    B, lengths = len(prompts), [len(p) for p in prompts]
    width = max(lengths)
    total = width + max(r.limit for r in rows)  # cache columns: padded prompt + new tokens

    # Left-pad the prompts: every row's last prompt token sits in the same column, so one
    # decode step appends one column for all rows. mask: 1 = real token; generated = real.
    ids = torch.zeros(B, width, dtype=torch.long)
    mask = torch.ones(B, total, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.as_tensor(p, dtype=torch.long)
        mask[i, :width - len(p)] = 0
    ids, mask = ids.to(device), mask.to(device)
    padded = min(lengths) < width  # without padding the model needs no mask at all (faster)

    seen = None  # [B, vocab] True where a token occurred: what the repetition penalty hits
    if params.repetition_penalty != 1.0:
        counts = torch.zeros(B, model.config.vocab_size, device=device)
        counts.scatter_add_(1, ids, mask[:, :width].float())  # padding adds 0
        seen = counts > 0
    generator = None
    if params.temperature > 0:
        seed = params.seed if params.seed is not None else int(torch.randint(2**62, ()).item())
        generator = torch.Generator(device=device).manual_seed(seed)

    cache = model.new_cache(B, total)
    out = model(ids, attention_mask=mask[:, :width] if padded else None, cache=cache, logits_to_keep=1)
    logits = out.logits[:, -1]
    # Each row's next position counts its real tokens only; passing it saves the model from
    # re-deriving positions from the mask every step.
    positions = torch.tensor(lengths, device=device)[:, None]
    active = list(range(B))  # which original row each batch row is

    while True:
        next_ids = sample_next(logits, seen, params, generator)
        if seen is not None:
            seen.scatter_(1, next_ids[:, None], True)
        keep = [j for j, (row, tok) in enumerate(zip(active, next_ids.tolist())) if not rows[row].push(tok)]
        yield
        if not keep:
            return
        if len(keep) < len(active):  # drop finished rows from the batch and the cache
            idx = torch.tensor(keep, device=device)
            cache.reorder(idx)
            mask, positions, next_ids = mask[idx], positions[idx], next_ids[idx]
            seen = seen[idx] if seen is not None else None
            active = [active[j] for j in keep]
            padded = not bool(mask[:, :width].all())
        out = model(next_ids[:, None], attention_mask=mask[:, :cache.length + 1] if padded else None,
                    position_ids=positions, cache=cache, logits_to_keep=1)
        logits = out.logits[:, -1]
        positions = positions + 1


class _EvalMode:
    """Run the model in eval mode (no dropout) and restore its previous mode afterwards."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.was_training = self.model.training
        self.model.eval()

    def __exit__(self, *exc):
        self.model.train(self.was_training)


def generate(model, tokenizer, prompts: list[list[int]], params: SamplingParams | None = None) -> list[Completion]:
    """Generate a completion for each prompt (token id lists, any lengths), as one batch.

    Returns one Completion per prompt, in order. Raises MiniMindError for an empty prompt,
    ids outside the vocabulary, or a prompt that already fills the model's context;
    max_new_tokens is clipped per prompt so prompt + completion fit the context.
    """
    params = params if params is not None else SamplingParams()
    prompts = [list(map(int, p)) for p in prompts]
    if not prompts:
        return []
    rows = _prepare(model, tokenizer, prompts, params, track_text=False)
    with _EvalMode(model):
        for _ in _decode_steps(model, prompts, rows, params):
            pass
    return [r.completion() for r in rows]


class Stream:
    """What stream() returns: iterate it for text pieces; afterwards `.completion` is set.

    The pieces never split a character and never show any part of a stop string; joined,
    they equal `completion.text`. Stopping early (break, or `.close()`) ends generation and
    leaves `.completion` as None.
    """

    def __init__(self, model, tokenizer, prompt_ids: list[int], params: SamplingParams | None = None):
        self.params = params if params is not None else SamplingParams()
        self.prompt = [int(t) for t in prompt_ids]
        self._row = _prepare(model, tokenizer, [self.prompt], self.params, track_text=True)[0]
        self.completion: Completion | None = None
        self._pieces = self._run(model)

    def _run(self, model) -> Iterator[str]:
        with _EvalMode(model):
            for _ in _decode_steps(model, [self.prompt], [self._row], self.params):
                if piece := self._row.new_text():
                    yield piece
        self.completion = self._row.completion()

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> str:
        return next(self._pieces)

    def close(self) -> None:
        """Stop generating now (frees the KV cache)."""
        self._pieces.close()


def stream(model, tokenizer, prompt_ids: list[int], params: SamplingParams | None = None) -> Stream:
    """Generate for one prompt, handing out text as it is produced (see Stream).

    Bad prompts or parameters raise MiniMindError here, not on the first iteration.
    """
    return Stream(model, tokenizer, prompt_ids, params)


def chat_prompt(tokenizer, messages: list[dict], open_thinking: bool = False, tools=None) -> list[int]:
    """Render a conversation with the chat template, ending with the assistant's turn opener."""
    return tokenizer.encode_chat(messages, tools=tools, add_generation_prompt=True, open_thinking=open_thinking)


def chat(model, tokenizer, messages: list[dict], params: SamplingParams | None = None,
         open_thinking: bool = False, tools=None) -> Completion:
    """Answer a conversation ([{"role": "user", "content": "..."}, ...]) with one Completion.

    open_thinking=True lets the model write a <think> block first; tools is a list of
    JSON-schema function descriptions (or a JSON string of one), as the template expects.
    """
    return generate(model, tokenizer, [chat_prompt(tokenizer, messages, open_thinking, tools)], params)[0]


def stream_chat(model, tokenizer, messages: list[dict], params: SamplingParams | None = None,
                open_thinking: bool = False, tools=None) -> Stream:
    """chat(), streamed: returns a Stream of text pieces (see stream())."""
    return stream(model, tokenizer, chat_prompt(tokenizer, messages, open_thinking, tools), params)
