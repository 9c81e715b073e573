"""One generation request: its sampling settings, its tokens, its text, and its answer.

SamplingParams says how to pick tokens and when to stop; a Sequence is one prompt on its way
through the engine (engine.py), holding everything that belongs to that row alone: its own
random generator, its stop conditions, its decoded text (for stop strings and streaming), and
the log-probabilities of the tokens it sampled. When it has finished, `completion()` gives
the answer as a Completion.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import MiniMindError
from ..model.cache import RowKV

MIN_TEMPERATURE = 1e-4  # the smallest temperature above 0 (0 = greedy)


@dataclass
class SamplingParams:
    """How to pick tokens and when to stop. Checked on creation (MiniMindError if invalid)."""

    max_new_tokens: int = 512  # clipped so prompt + new tokens fit max_position_embeddings
    temperature: float = 0.85  # 0 = greedy (always the most likely token)
    top_k: int = 0  # keep only the k most likely tokens; 0 = off
    top_p: float = 0.95  # nucleus: smallest set of tokens with probability >= top_p; 1.0 = off
    repetition_penalty: float = 1.0  # > 1 discourages tokens already in prompt or output; 1 = off
    # OpenAI's penalties: subtract `frequency * count + presence * (count > 0)` from the logit
    # of every token generated so far (not the prompt). 0 = off.
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    stop_token_ids: tuple[int, ...] | None = None  # None = (tokenizer.eos_token_id,)
    # Stop as soon as the text contains one of these. They are matched on the decoded text,
    # so with skip_special_tokens a special token (<|im_end|>) never matches: use its id.
    stop_strings: tuple[str, ...] = ()
    seed: int | None = None  # same seed -> same output; None = drawn from torch's global RNG
    skip_special_tokens: bool = True  # drop <|im_start|> etc. from the text (not <think>)
    # Record the log-probability of every sampled token (Completion.logprobs), and of the
    # `top_logprobs` most likely alternatives at each step (0 = none).
    logprobs: bool = False
    top_logprobs: int = 0

    def __post_init__(self):
        if isinstance(self.stop_strings, str):  # a lone string is one stop string, not its chars
            self.stop_strings = (self.stop_strings,)
        self.stop_strings = tuple(self.stop_strings)
        if self.stop_token_ids is not None:
            self.stop_token_ids = tuple(int(t) for t in self.stop_token_ids)
        problems = []
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        # Below MIN_TEMPERATURE sampling is greedy in all but name, and near 1e-38 the scaled
        # logits overflow float32 (NaN probabilities): ask for 0 instead.
        if not (self.temperature == 0 or MIN_TEMPERATURE <= self.temperature < float("inf")):  # NaN too
            problems.append(
                f"temperature must be 0 (greedy) or a finite number >= {MIN_TEMPERATURE:g}, got {self.temperature!r}"
            )
        if not isinstance(self.top_k, int) or not 0 <= self.top_k < 2**63:
            problems.append(f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1] (1 = off), got {self.top_p!r}")
        if not 0 < self.repetition_penalty < float("inf"):
            problems.append(f"repetition_penalty must be finite and > 0 (1 = off), got {self.repetition_penalty!r}")
        for name in ("frequency_penalty", "presence_penalty"):
            value = getattr(self, name)
            if not -1e6 < value < 1e6:  # also rejects NaN and inf
                problems.append(f"{name} must be a finite number, got {value!r}")
        if self.seed is not None and (not isinstance(self.seed, int) or not -(2**63) <= self.seed < 2**64):
            problems.append(f"seed must be an integer that fits in 64 bits, got {self.seed!r}")
        if not isinstance(self.top_logprobs, int) or self.top_logprobs < 0:
            problems.append(f"top_logprobs must be an integer >= 0, got {self.top_logprobs!r}")
        if not all(isinstance(s, str) and s for s in self.stop_strings):
            problems.append(f"stop_strings must be non-empty strings, got {self.stop_strings!r}")
        if problems:
            raise MiniMindError("invalid sampling parameters: " + "; ".join(problems))

    @classmethod
    def from_flags(cls, args) -> SamplingParams:
        """The settings of the generation flags every generating command shares
        (cli.add_sampling_args: --max-new-tokens, --temperature, --top-p, --top-k,
        --repetition-penalty, --seed)."""
        return cls(
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            top_k=args.top_k,
            repetition_penalty=args.repetition_penalty,
            seed=args.seed,
        )

    @property
    def penalised(self) -> bool:
        """True when any penalty looks at earlier tokens (the engine then tracks them)."""
        return self.repetition_penalty != 1.0 or bool(self.frequency_penalty) or bool(self.presence_penalty)


@dataclass
class TokenLogprob:
    """A sampled token's log-probability under the model (before temperature, penalties and
    filters: the model's own distribution, as OpenAI reports it), with the most likely
    alternatives at that step when top_logprobs > 0."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)  # (token id, logprob), best first


@dataclass
class Completion:
    """One generated answer.

    token_ids: the generated ids. A stop token id is not included. When a stop string ended
        generation, the ids run up to and including the token that completed the stop string,
        so `decode(token_ids)` may show (part of) it while `text` does not.
    text: the decoded text, cut just before the first stop string.
    finish_reason: "stop" (stop token or stop string), "length" (max_new_tokens reached,
        or the model's context is full) or "error" (this row's sampling failed, e.g. its
        probabilities were not finite; `error` says why, the other rows were not affected).
    prompt_tokens: length of the prompt.
    completion_tokens: tokens the model generated, the stop token included (what it cost).
    logprobs: one TokenLogprob per generated token, the stop token included (with
        SamplingParams.logprobs or top_logprobs; else None).
    """

    token_ids: list[int]
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[TokenLogprob] | None = None
    error: str | None = None


class Sequence:
    """One prompt in the engine: its settings, sampling state and text bookkeeping.

    generator: the torch.Generator its random draws come from. None makes one from
        params.seed, so the row samples the same tokens in any company. Rows that share one
        generator object (generate() does, for the batch of one call) draw together.
    images: for a vision-language model, the prompt's images preprocessed ([n, 3, S, S], e.g.
        model.preprocess(pil_images)), in the order of their <|image_pad|> runs; the engine
        hands them to the model at prefill. None for text.
    past: the keys and values of the prompt's first past.length tokens, kept from an earlier
        run (`kv` of a finished Sequence whose tokens begin this prompt: the next turn of a
        conversation); the engine then prefills only the rest. It must be the KV of exactly
        those tokens, by this model; it cannot go with images.
    keep_kv: when this sequence finishes, the engine leaves its keys and values in `kv` (a
        RowKV of every token the model has read: the prompt and the replies' tokens but the
        last one, which was sampled and never fed back).
    Raises MiniMindError for a prompt the model cannot take (empty, too long, bad ids, images
    that do not match its <|image_pad|> runs).
    """

    def __init__(
        self,
        model,
        tokenizer,
        prompt: list[int],
        params: SamplingParams | None = None,
        generator: torch.Generator | None = None,
        track_text: bool = True,
        images: torch.Tensor | None = None,
        past: RowKV | None = None,
        keep_kv: bool = False,
    ):
        params = params if params is not None else SamplingParams()
        if not isinstance(params, SamplingParams):
            raise MiniMindError(f"params must be a SamplingParams, got {type(params).__name__}")
        self.prompt, self.params, self.tokenizer = _checked_prompt(model, prompt), params, tokenizer
        self.images = _checked_images(model, self.prompt, images)
        self.past = _checked_past(model, self.prompt, past, images)
        self.keep_kv = keep_kv
        self.kv: RowKV | None = None  # set when it finishes, with keep_kv
        max_pos = model.config.max_position_embeddings
        # Clip instead of failing: users expect "generate until the context is full".
        self.limit = min(params.max_new_tokens, max_pos - len(self.prompt))
        stop_ids = params.stop_token_ids
        if stop_ids is None:
            stop_ids = () if tokenizer.eos_token_id is None else (tokenizer.eos_token_id,)
        self.stop_ids = frozenset(stop_ids)
        if generator is None and params.temperature > 0:
            generator = seeded_generator(params, next(model.parameters()).device)
        self.generator = generator
        self.cancelled = False  # set from any thread; the engine drops the row before its next step

        self.stops, self.skip = params.stop_strings, params.skip_special_tokens
        self.longest_stop = max(map(len, self.stops), default=0)
        self.decoder = tokenizer.stream_decoder(self.skip) if track_text or self.stops else None
        self.token_ids: list[int] = []
        self.logprobs: list[TokenLogprob] | None = [] if params.logprobs or params.top_logprobs else None
        self.text = ""  # decoded so far (only with a decoder)
        self.shown = 0  # characters of text already handed out by new_text()
        self.logprobs_shown = 0  # entries of logprobs already handed out by new_logprobs()
        self.stop_at: int | None = None  # where the first stop string starts in text
        self.ended_by_token = False
        self.finish_reason: str | None = None
        self.error: str | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def push(self, token: int) -> bool:
        """Record one sampled token; return True when the sequence has finished."""
        if token in self.stop_ids:
            self.ended_by_token = True
            return self._finish("stop")
        self.token_ids.append(token)
        if self.decoder is not None and self._add_text(self.decoder.push(token)):
            return self._finish("stop")
        if len(self.token_ids) >= self.limit:
            return self._finish("length")
        return False

    def fail(self, why: str) -> None:
        """End this sequence alone: its sampling cannot go on (see Completion.error)."""
        self.error = why
        self._finish("error")

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
        piece, self.shown = self.text[self.shown : end], max(self.shown, end)
        return piece

    def new_logprobs(self) -> list[TokenLogprob]:
        """Log-probabilities of the tokens generated since the last call (for streaming);
        the stop token's entry is left out, as the stop token is left out of the text."""
        if self.logprobs is None:
            return []
        end = len(self.token_ids)
        entries, self.logprobs_shown = self.logprobs[self.logprobs_shown : end], max(self.logprobs_shown, end)
        return entries

    def completion(self) -> Completion:
        if self.decoder is not None:
            text = self.text[: self.stop_at]
        else:
            text = self.tokenizer.decode(self.token_ids, skip_special_tokens=self.skip)
        return Completion(
            token_ids=self.token_ids,
            text=text,
            finish_reason=self.finish_reason,
            prompt_tokens=len(self.prompt),
            completion_tokens=len(self.token_ids) + self.ended_by_token,
            logprobs=self.logprobs,
            error=self.error,
        )


def seeded_generator(params: SamplingParams, device) -> torch.Generator:
    """The random generator a sampled row draws from: seeded by params.seed, or from torch's
    global RNG when it is None (so torch.manual_seed still makes a run repeatable)."""
    seed = params.seed if params.seed is not None else int(torch.randint(2**62, ()).item())
    return torch.Generator(device=device).manual_seed(seed)


def _checked_prompt(model, prompt) -> list[int]:
    """The prompt as a list of ints, or a MiniMindError saying why the model cannot take it."""
    prompt = [int(t) for t in prompt]
    vocab, max_pos = model.config.vocab_size, model.config.max_position_embeddings
    if not prompt:
        raise MiniMindError("the prompt is empty: give at least one token (e.g. the bos token)")
    bad = [t for t in prompt if not 0 <= t < vocab]
    if bad:
        raise MiniMindError(f"the prompt has token ids outside the vocabulary [0, {vocab}): {bad[:5]}")
    if len(prompt) >= max_pos:
        raise MiniMindError(
            f"the prompt has {len(prompt)} tokens; the model's context is "
            f"{max_pos} (max_position_embeddings), leaving no room to generate"
        )
    return prompt


def _checked_images(model, prompt: list[int], images):
    """The images as a tensor, or a MiniMindError: a model that cannot see, a wrong shape, or a
    count that does not fill the prompt's <|image_pad|> tokens (checked here, so a bad request
    fails alone instead of failing the batch it would join)."""
    if images is None:
        return None
    vision = getattr(model, "vision_config", None)
    if vision is None:
        raise MiniMindError("this model has no vision encoder: it cannot take images")
    S = vision.image_size
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or tuple(images.shape[1:]) != (3, S, S):
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise MiniMindError(f"images must be a tensor [n, 3, {S}, {S}] (model.preprocess(...)), got {got}")
    pads = sum(t == vision.image_token_id for t in prompt)
    if pads != images.shape[0] * vision.image_tokens:
        raise MiniMindError(
            f"the prompt has {pads} <|image_pad|> tokens; {images.shape[0]} image(s) need "
            f"{images.shape[0] * vision.image_tokens} ({vision.image_tokens} each)"
        )
    return images if images.shape[0] else None


def _checked_past(model, prompt: list[int], past: RowKV | None, images) -> RowKV | None:
    """The past, or a MiniMindError when it cannot be the start of this prompt's KV."""
    if past is None:
        return None
    if images is not None:
        raise MiniMindError("a sequence with a past cannot take images (they enter at its first prefill)")
    if len(past.k) != model.config.num_hidden_layers:
        raise MiniMindError(f"the past has {len(past.k)} layers; the model has {model.config.num_hidden_layers}")
    if not 0 < past.length < len(prompt):
        raise MiniMindError(
            f"the past covers {past.length} tokens of a {len(prompt)}-token prompt; it must leave at least one to read"
        )
    return past


def _stop_prefix_len(text: str, stops: tuple[str, ...], longest: int) -> int:
    """Length of the longest end of `text` that is the beginning of some stop string."""
    for n in range(min(len(text), longest - 1), 0, -1):
        tail = text[-n:]
        if any(s.startswith(tail) for s in stops):
            return n
    return 0
