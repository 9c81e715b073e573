"""Inference: generation (batched, streaming, stop strings) and chat helpers."""

from .generate import (
    Completion,
    SamplingParams,
    Stream,
    chat,
    chat_prompt,
    generate,
    stream,
    stream_chat,
)
from .sampling import (
    apply_repetition_penalty,
    apply_top_k,
    apply_top_p,
    process_logits,
    sample_next,
)

__all__ = [
    "Completion",
    "SamplingParams",
    "Stream",
    "apply_repetition_penalty",
    "apply_top_k",
    "apply_top_p",
    "chat",
    "chat_prompt",
    "generate",
    "process_logits",
    "sample_next",
    "stream",
    "stream_chat",
]
