"""Chat data for training: render a conversation, tokenize it, and mark what the model learns.

A conversation is rendered with the tokenizer's chat template (no generation prompt) and
tokenized as one string, as MiniMind's SFTDataset does, so the token ids are the same. The loss
mask is 1 on the assistant turns only, from the token after `<|im_start|>assistant\n` through
the closing `<|im_end|>` (not the "\n" after it, which MiniMind also trains: the model never
needs to generate it). ChatRenderer applies MiniMind's two optional, seeded augmentations
(random_system_prompt, strip_empty_think), drawn once when the cache is built. See docs/data.md.
"""

from __future__ import annotations

import random

import numpy as np

from ..errors import MiniMindError
from .template import fast_renderer_for

SYSTEM_PROMPTS = [
    "你是 MiniMind，一个小而聪明的中文助手，回答简洁、准确。",
    "你是一个乐于助人的 AI 助手，请认真回答用户的问题。",
    "你是 MiniMind，由开源社区训练的语言模型，请用清晰的语言帮助用户。",
    "你是一位知识丰富的助手，回答问题时条理清楚、实事求是。",
    "你是一个友好的聊天助手，请礼貌、耐心地回复用户。",
    "You are MiniMind, a small but capable assistant. Answer clearly and concisely.",
    "You are a helpful AI assistant. Answer the user's questions carefully.",
    "You are MiniMind, an open-source language model. Be accurate and friendly.",
    "You are a knowledgeable assistant who explains things step by step.",
    "You are a friendly chat assistant. Reply politely and to the point.",
]
SYSTEM_PROMPT_PROBABILITY = 0.2
EMPTY_THINK = "<think>\n\n</think>\n\n"
STRIP_THINK_PROBABILITY = 0.8


class ChatRenderer:
    """Render conversations to text, with the optional seeded augmentations.

    Draws come from one random.Random(seed) consumed in record order, so the same file and
    seed always give the same text.
    """

    def __init__(self, tokenizer, random_system_prompt: bool = False, strip_empty_think: bool = False, seed: int = 42):
        self.tokenizer = tokenizer
        self.random_system_prompt = random_system_prompt
        self.strip_empty_think = strip_empty_think
        self.rng = random.Random(seed)
        self.fast = fast_renderer_for(tokenizer)  # plain-Python minimind-3 template, if it applies

    def __call__(self, messages: list[dict]) -> str:
        if (
            self.random_system_prompt
            and messages[0].get("role") != "system"
            and not any(m.get("tools") for m in messages)
            and self.rng.random() < SYSTEM_PROMPT_PROBABILITY
        ):
            messages = [{"role": "system", "content": self.rng.choice(SYSTEM_PROMPTS)}, *messages]
        text = self.fast(messages) if self.fast else None
        if text is None:
            text = self.tokenizer.apply_chat_template(messages)
        if self.strip_empty_think and EMPTY_THINK in text and self.rng.random() < STRIP_THINK_PROBABILITY:
            text = text.replace(EMPTY_THINK, "")
        return text


class AssistantMasker:
    """Find the assistant spans in token ids (vectorised with numpy, many documents at once)."""

    def __init__(self, tokenizer):
        start, end = tokenizer.token_to_id("<|im_start|>"), tokenizer.token_to_id("<|im_end|>")
        if start is None or end is None:
            raise MiniMindError(
                f"tokenizer {tokenizer.source}: chat data needs the ChatML tokens "
                "<|im_start|> and <|im_end|>, which it does not have"
            )
        self.end = end
        # "<|im_start|>" is an added token, so the text after it is tokenized on its own and
        # "assistant" always gives the same ids. The "\n" after it is matched separately: in
        # some vocabularies it could merge with the start of the reply, and then the merged
        # token is trained rather than the whole turn lost.
        self.header = np.array([start, *tokenizer.encode("assistant")], dtype=np.int64)
        newline = tokenizer.encode("\n")
        self.newline = newline[0] if len(newline) == 1 else -1

    def spans(self, ids: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(starts, ends, doc) of every assistant span in the concatenated documents.

        `ids` holds documents end to end, document d at ids[offsets[d]:offsets[d + 1]].
        A span covers ids[start:end] (end exclusive: one past the closing <|im_end|>); a span
        with no closing <|im_end|> in its own document gets end = -1.
        """
        ids = np.asarray(ids, dtype=np.int64)
        n, k = len(ids), len(self.header)
        if n < k:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, empty
        hit = np.ones(n - k + 1, dtype=bool)
        for j, token in enumerate(self.header):
            hit &= ids[j : n - k + 1 + j] == token
        starts = np.flatnonzero(hit) + k
        inside = starts < n
        starts[inside] += ids[starts[inside]] == self.newline  # skip the header's "\n"
        closes = np.flatnonzero(ids == self.end)
        j = np.searchsorted(closes, starts)  # the first <|im_end|> at or after each start
        ends = np.where(j < len(closes), closes[np.minimum(j, len(closes) - 1)] + 1, -1)
        doc = np.searchsorted(offsets, starts, side="right") - 1
        end_doc = np.searchsorted(offsets, np.maximum(ends - 1, 0), side="right") - 1
        ends[(ends < 0) | (end_doc != doc)] = -1
        return starts, ends, doc

    def mask(self, ids: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mask uint8, spans per document, unclosed spans per document) for concatenated docs."""
        starts, ends, doc = self.spans(ids, offsets)
        ndocs = len(offsets) - 1
        ok = ends >= 0
        edges = np.zeros(len(ids) + 1, dtype=np.int64)
        np.add.at(edges, starts[ok], 1)
        np.add.at(edges, ends[ok], -1)
        mask = (np.cumsum(edges[:-1]) > 0).astype(np.uint8)
        per_doc = np.bincount(doc, minlength=ndocs)
        unclosed = np.bincount(doc[~ok], minlength=ndocs)
        return mask, per_doc, unclosed


def encode_chats(
    tokenizer,
    conversations: list[list[dict]],
    renderer: ChatRenderer | None = None,
    masker: AssistantMasker | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Tokenize conversations: a list of (ids int64, loss mask uint8) pairs, one per chat.

    The convenient form for a few conversations (tests, DPO pairs, `data check`); the token
    cache does the same in bulk. Raises MiniMindError if an assistant turn cannot be located,
    which would mean the template does not write `<|im_start|>assistant` headers.
    """
    renderer = renderer or ChatRenderer(tokenizer)
    masker = masker or AssistantMasker(tokenizer)
    texts = [renderer(messages) for messages in conversations]
    encoded = [np.asarray(ids, dtype=np.int64) for ids in tokenizer.encode_batch(texts)]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    flat = np.concatenate(encoded) if encoded else np.zeros(0, dtype=np.int64)
    mask, per_doc, unclosed = masker.mask(flat, offsets)
    out = []
    for d, messages in enumerate(conversations):
        expected = sum(m.get("role") == "assistant" for m in messages)
        if per_doc[d] != expected or unclosed[d]:
            raise MiniMindError(
                f"found {per_doc[d] - unclosed[d]} of {expected} assistant turns after "
                f"rendering with the chat template of {tokenizer.source}"
            )
        out.append((encoded[d], mask[offsets[d] : offsets[d + 1]]))
    return out
