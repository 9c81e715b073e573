"""Inference: the one generation engine (batched, streaming, continuous) and chat helpers."""

from .engine import Engine
from .generate import Stream, chat, chat_prompt, generate, stream, stream_chat
from .sampling import BatchSampling, apply_repetition_penalty, apply_top_k, apply_top_p
from .sequence import Completion, SamplingParams, Sequence, TokenLogprob

__all__ = [
    "BatchSampling",
    "Completion",
    "Engine",
    "SamplingParams",
    "Sequence",
    "Stream",
    "TokenLogprob",
    "apply_repetition_penalty",
    "apply_top_k",
    "apply_top_p",
    "chat",
    "chat_prompt",
    "generate",
    "stream",
    "stream_chat",
]
