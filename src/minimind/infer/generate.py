"""Text generation: batched, streaming, with stop tokens and stop strings.

    from minimind.infer import SamplingParams, generate, stream, chat

    params = SamplingParams(max_new_tokens=200, temperature=0.7, seed=0)
    [done] = generate(model, tokenizer, [tokenizer.encode("Once upon a time")], params)
    print(done.text, done.finish_reason)

    s = stream(model, tokenizer, tokenizer.encode("Hello"), params)
    for piece in s:                 # text pieces as soon as they are final
        print(piece, end="", flush=True)
    print(s.completion.finish_reason)

Both are thin wrappers over the one generation engine (engine.py): generate() puts all its
prompts into one Engine at once and steps it until every row has finished; stream() does the
same for one prompt and hands out its text between steps. The rows of one generate() call draw
from one seeded torch.Generator, so the same seed gives the same batch.
"""

from __future__ import annotations

from collections.abc import Iterator

from ..data.vision import expand_images
from ..errors import MiniMindError
from .engine import Engine
from .sequence import Completion, SamplingParams, Sequence, seeded_generator


class _EvalMode:
    """Run the model in eval mode (no dropout) and restore its previous mode afterwards."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.was_training = self.model.training
        self.model.eval()

    def __exit__(self, *exc):
        self.model.train(self.was_training)


def generate(
    model, tokenizer, prompts: list[list[int]], params: SamplingParams | None = None, images: list | None = None
) -> list[Completion]:
    """Generate a completion for each prompt (token id lists, any lengths), as one batch.

    Returns one Completion per prompt, in order. Raises MiniMindError for an empty prompt,
    ids outside the vocabulary, or a prompt that already fills the model's context;
    max_new_tokens is clipped per prompt so prompt + completion fit the context.
    images: for a vision-language model, one entry per prompt: its images preprocessed
    ([n, 3, S, S], model.preprocess) or None (see Sequence).
    """
    params = params if params is not None else SamplingParams()
    if not prompts:
        return []
    sequences = _sequences(model, tokenizer, prompts, params, track_text=False, images=images)
    with _EvalMode(model):
        engine = Engine(model)
        engine.add(sequences, room=max(s.limit for s in sequences))  # no cache growth mid-way
        while engine.sequences:
            engine.step()
    return [s.completion() for s in sequences]


def _sequences(model, tokenizer, prompts, params: SamplingParams, track_text: bool, images=None) -> list[Sequence]:
    """One Sequence per prompt, all drawing from one generator seeded from params.seed (or
    from torch's global RNG when it is None)."""
    generator = None
    if isinstance(params, SamplingParams) and params.temperature > 0:
        generator = seeded_generator(params, next(model.parameters()).device)
    if images is not None and len(images) != len(prompts):
        raise MiniMindError(f"images: one entry per prompt is needed, got {len(images)} for {len(prompts)} prompts")
    sequences = []
    for i, prompt in enumerate(prompts):
        try:
            row_images = images[i] if images is not None else None
            sequences.append(Sequence(model, tokenizer, prompt, params, generator, track_text, images=row_images))
        except MiniMindError as e:
            raise MiniMindError(f"prompt {i}: {e}") from None
    return sequences


class Stream:
    """What stream() returns: iterate it for text pieces; afterwards `.completion` is set.

    The pieces never split a character and never show any part of a stop string; joined,
    they equal `completion.text`. Stopping early (break, or `.close()`) ends generation and
    leaves `.completion` as None.
    """

    def __init__(self, model, tokenizer, prompt_ids: list[int], params: SamplingParams | None = None, images=None):
        self.params = params if params is not None else SamplingParams()
        rows = None if images is None else [images]
        [self._sequence] = _sequences(model, tokenizer, [prompt_ids], self.params, track_text=True, images=rows)
        self.prompt = self._sequence.prompt
        self.completion: Completion | None = None
        self._pieces = self._run(model)

    def _run(self, model) -> Iterator[str]:
        with _EvalMode(model):
            engine = Engine(model)
            engine.add([self._sequence], room=self._sequence.limit)
            while engine.sequences:
                engine.step()
                if piece := self._sequence.new_text():
                    yield piece
        self.completion = self._sequence.completion()

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> str:
        return next(self._pieces)

    def close(self) -> None:
        """Stop generating now (frees the KV cache)."""
        self._pieces.close()


def stream(model, tokenizer, prompt_ids: list[int], params: SamplingParams | None = None, images=None) -> Stream:
    """Generate for one prompt, handing out text as it is produced (see Stream).

    images: the prompt's preprocessed images for a vision-language model (see generate()).
    Bad prompts or parameters raise MiniMindError here, not on the first iteration.
    """
    return Stream(model, tokenizer, prompt_ids, params, images)


def chat_prompt(
    tokenizer, messages: list[dict], open_thinking: bool = False, tools=None, image_tokens: int = 0
) -> list[int]:
    """Render a conversation with the chat template, ending with the assistant's turn opener.
    image_tokens: for a vision-language model (its vision_config.image_tokens), each `<image>` in
    the messages becomes that many <|image_pad|> tokens, which the images fill at prefill."""
    if image_tokens:
        messages = expand_images(messages, image_tokens)
    return tokenizer.encode_chat(messages, tools=tools, add_generation_prompt=True, open_thinking=open_thinking)


def chat(
    model,
    tokenizer,
    messages: list[dict],
    params: SamplingParams | None = None,
    open_thinking: bool = False,
    tools=None,
) -> Completion:
    """Answer a conversation ([{"role": "user", "content": "..."}, ...]) with one Completion.

    open_thinking=True lets the model write a <think> block first; tools is a list of
    JSON-schema function descriptions (or a JSON string of one), as the template expects.
    """
    return generate(model, tokenizer, [chat_prompt(tokenizer, messages, open_thinking, tools)], params)[0]


def stream_chat(
    model,
    tokenizer,
    messages: list[dict],
    params: SamplingParams | None = None,
    open_thinking: bool = False,
    tools=None,
) -> Stream:
    """chat(), streamed: returns a Stream of text pieces (see stream())."""
    return stream(model, tokenizer, chat_prompt(tokenizer, messages, open_thinking, tools), params)
