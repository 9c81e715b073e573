"""The MiniMind tokenizer: load, encode/decode, chat template, streaming decode, BPE training.

A tokenizer directory holds two files, exactly as Hugging Face writes them:
  tokenizer.json         the byte-level BPE itself (vocab, merges, added tokens), read by the
                         Rust `tokenizers` library, which is fast and multi-threaded;
  tokenizer_config.json  which tokens are bos/eos/pad, and the Jinja chat template.
We render the chat template ourselves with jinja2, the same way transformers does, so the
package never needs transformers at run time yet produces byte-identical prompts.
"""

from __future__ import annotations

import codecs
import hashlib
import itertools
import json
import re
from datetime import datetime
from functools import lru_cache
from pathlib import Path

import jinja2
import tokenizers
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import decoders, models, pre_tokenizers, trainers

from .errors import MiniMindError
from .files import atomic_write_text, read_json

# MiniMind's 36 added tokens, in id order 0..35. Only the first NUM_SPECIAL_TOKENS (0..20) are
# "special" (dropped by decode(skip_special_tokens=True)); <tool_call>, <think> and the
# buffers are plain added tokens, so they survive skipping and the user sees them.
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",  # 0 pad/unk, 1 bos, 2 eos
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<|audio_start|>",
    "<|audio_end|>",
    "<|audio_pad|>",
    "<tts_pad>",
    "<tts_text_bos>",
    "<tts_text_eod>",
    "<tts_text_bos_single>",  # 3..20: reserved for MiniMind-V/O
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",  # 21..24
    "<think>",
    "</think>",  # 25, 26
    "<|buffer1|>",
    "<|buffer2|>",
    "<|buffer3|>",
    "<|buffer4|>",
    "<|buffer5|>",
    "<|buffer6|>",
    "<|buffer7|>",
    "<|buffer8|>",
    "<|buffer9|>",  # 27..35
]
NUM_SPECIAL_TOKENS = 21  # ids 0..20 are special, 21..35 are plain added tokens

# MINIMIND3_CHAT_TEMPLATE (the minimind-3 Jinja chat template) is at the end of this file.


# --------------------------------------------------------------------------------- files ---


def _token_str(value) -> str | None:
    """Config files store a token either as "<x>" or, in older HF files, as {"content": "<x>"}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


# ------------------------------------------------------------------------- chat template ---


@lru_cache(maxsize=8)
def _compile_template(source: str):
    """Compile a chat template once, in the same sandboxed environment transformers uses."""

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # Jinja's own tojson HTML-escapes and sorts keys; chat templates expect plain json.dumps.
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    # trim_blocks/lstrip_blocks: template authors indent their {% %} tags, this drops that
    # whitespace. Immutable sandbox: a template can read our messages but never change them.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)


def _parse_json_field(value, where: str):
    """MiniMind data stores `tools`/`tool_calls` as JSON strings; the template wants lists."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as e:
        raise MiniMindError(f"chat template: {where} is not valid JSON ({e.msg} at column {e.colno})") from None


def _prepare_messages(messages, tools):
    """Copy the messages into what the template expects, as MiniMind's SFT dataset does.

    Returns (messages, tools). The caller's dicts are never modified. Like transformers we drop
    keys whose value is None (Arrow-loaded rows have them) and copy `thinking`/`reasoning`
    into `reasoning_content`. Like MiniMind's SFTDataset we take `tools` from a system message
    when the caller gave none, and parse JSON-string `tool_calls` into a list.
    """
    if isinstance(tools, str):
        tools = _parse_json_field(tools, "the tools argument")
    if not isinstance(messages, (list, tuple)) or not messages:
        raise MiniMindError("chat template: messages must be a non-empty list of {role, content} dicts")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise MiniMindError(f"message {i}: expected a dict with role and content, got {type(message).__name__}")
        m = {k: v for k, v in message.items() if v is not None}
        if m.get("role") == "system" and m.get("tools") and tools is None:
            found = _parse_json_field(m["tools"], f"`tools` of message {i}")
            tools = found if isinstance(found, list) else [found]
        if m.get("tool_calls"):
            m["tool_calls"] = _parse_json_field(m["tool_calls"], f"`tool_calls` of message {i}")
        reasoning = next((m[k] for k in ("reasoning_content", "thinking", "reasoning") if k in m), None)
        if reasoning is not None:  # same aliasing (and key order) as transformers 5
            m = {"thinking": reasoning, **m, "reasoning_content": reasoning}
        out.append(m)
    if tools is not None and not all(isinstance(t, dict) for t in tools):
        raise MiniMindError("chat template: tools must be a list of JSON-schema dicts")
    return out, tools


def _byte_level_alphabet() -> dict[str, int]:
    """Byte-level BPE writes each byte as one printable character: bytes that are printable
    Latin-1 stand for themselves, the others (controls, space, ...) are moved to chr(256 + n)
    in byte order. This is the inverse map, character -> byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), 256)]
    chars, shifted = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + shifted)] = b
            shifted += 1
    return chars


_BYTE_OF_CHAR = _byte_level_alphabet()

# ----------------------------------------------------------------------------- tokenizer ---


class Tokenizer:
    """A loaded tokenizer directory: encode/decode text and render chats into prompts."""

    def __init__(self, backend: tokenizers.Tokenizer, config: dict, source: str = "<memory>"):
        self._tk = backend
        self.config = config
        self.source = source  # where it came from, for error messages
        self.vocab_size = backend.get_vocab_size(with_added_tokens=True)
        self.bos_token_id = self._named_id("bos_token")
        self.eos_token_id = self._named_id("eos_token")
        pad = self._named_id("pad_token")
        self.pad_token_id = pad if pad is not None else self.eos_token_id
        template = config.get("chat_template")
        if isinstance(template, list):  # HF "named templates" form: [{"name", "template"}, ...]
            template = next(
                (t.get("template") for t in template if isinstance(t, dict) and t.get("name") == "default"), None
            )
        if template is not None and not isinstance(template, str):
            raise MiniMindError(
                f"{source}/tokenizer_config.json: chat_template must be a string (a Jinja template), "
                f"got {type(template).__name__}"
            )
        self.chat_template = template
        # Everything named "*_token" in the config (bos_token, image_token, ...) is visible to the
        # template, as in transformers' special_tokens_map.
        self._template_tokens = {
            k: s for k, v in config.items() if k.endswith("_token") and (s := _token_str(v)) is not None
        }

    def _named_id(self, key: str) -> int | None:
        token = _token_str(self.config.get(key))
        if token is None:
            return None
        token_id = self._tk.token_to_id(token)
        if token_id is None:
            raise MiniMindError(f"{self.source}/tokenizer_config.json: {key} {token!r} is not in the vocabulary")
        return token_id

    @classmethod
    def from_dir(cls, path) -> Tokenizer:
        """Load `path/tokenizer.json` and `path/tokenizer_config.json`."""
        path = Path(path)
        if not path.is_dir():
            raise MiniMindError(f"{path}: tokenizer directory not found")
        tokenizer_json = path / "tokenizer.json"
        read_json(tokenizer_json)  # for a clear "not found" / "invalid JSON at line N" message
        try:
            backend = tokenizers.Tokenizer.from_file(str(tokenizer_json))
        except Exception as e:  # valid JSON but not a tokenizer (the Rust error is one line)
            raise MiniMindError(f"{tokenizer_json}: not a valid tokenizers file: {e}") from None
        config = read_json(path / "tokenizer_config.json")
        if not isinstance(config, dict):
            raise MiniMindError(f"{path / 'tokenizer_config.json'}: expected a JSON object")
        return cls(backend, config, source=str(path))

    def save(self, path) -> None:
        """Write tokenizer.json and tokenizer_config.json into `path` (created if needed)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path / "tokenizer.json", self._tk.to_str(pretty=True))
        atomic_write_text(path / "tokenizer_config.json", json.dumps(self.config, ensure_ascii=False, indent=4))

    # --- text <-> ids ---
    def encode(self, text: str) -> list[int]:
        """Text to ids. Never adds bos/eos: MiniMind's tokenizer has no post-processor."""
        return self._tk.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str], plain_text: bool = False) -> list[list[int]]:
        """Many texts at once, on all CPU cores (the Rust library runs a thread pool).

        plain_text: a special token written in the text (`<|im_start|>` in a web page) is
        encoded as the ordinary text it spells, never as its special id. Pretraining data is
        encoded so: only the chat template and the data pipeline place the control ids."""
        tk = self._plain_backend() if plain_text else self._tk
        batch = getattr(tk, "encode_batch_fast", tk.encode_batch)  # _fast skips offsets
        return [e.ids for e in batch(list(texts), add_special_tokens=False)]

    def _plain_backend(self) -> tokenizers.Tokenizer:
        """A copy of the backend that splits special tokens as text (a setting of the whole
        backend, so a copy: the shared one keeps encoding templates with special ids)."""
        if getattr(self, "_plain", None) is None:
            plain = tokenizers.Tokenizer.from_str(self._tk.to_str())
            plain.encode_special_tokens = True
            self._plain = plain
        return self._plain

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        """Ids to text. skip_special_tokens drops ids 0..20 but keeps <think>, <tool_call>, ..."""
        ids = ids.tolist() if hasattr(ids, "tolist") else [int(i) for i in ids]  # tensors too
        return self._tk.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._tk.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        return self._tk.id_to_token(int(i))

    def stream_decoder(self, skip_special_tokens: bool = False) -> StreamDecoder:
        """A decoder for generation: push ids one at a time, get printable text back."""
        return StreamDecoder(self, skip_special_tokens)

    @property
    def byte_level(self) -> bool:
        """True for byte-level BPE (MiniMind's tokenizers): every token stands for raw bytes."""
        return isinstance(self._tk.decoder, tokenizers.decoders.ByteLevel)

    def token_bytes(self, i: int) -> bytes:
        """The raw bytes one token of a byte-level tokenizer stands for (it may hold part of a
        UTF-8 character, which decode() would show as U+FFFD). As the library's decoder does:
        a token whose characters are all byte-alphabet characters is those bytes, any other
        (an added token such as "<|im_end|> ") is its UTF-8 text."""
        token = self._tk.id_to_token(int(i))
        if token is None:
            return b""
        if any(c not in _BYTE_OF_CHAR for c in token):
            return token.encode("utf-8")
        return bytes(_BYTE_OF_CHAR[c] for c in token)

    @property
    def special_ids(self) -> frozenset[int]:
        """Ids that decode(skip_special_tokens=True) drops (<|im_start|> ..., not <think>)."""
        if not hasattr(self, "_special_ids"):
            added = self._tk.get_added_tokens_decoder()
            self._special_ids = frozenset(i for i, t in added.items() if t.special)
        return self._special_ids

    # --- chats ---
    def apply_chat_template(
        self, messages, tools=None, add_generation_prompt=False, open_thinking=False, **kwargs
    ) -> str:
        """Render a conversation into the prompt string the model was trained on.

        `messages` are {"role", "content", ...} dicts; `tools`/`tool_calls` may be JSON strings
        (MiniMind's data format). `enable_thinking=True` is accepted as an alias of
        `open_thinking`; it is also passed on as is, because MiniMind2's template reads it.
        """
        if not self.chat_template:
            raise MiniMindError(f"{self.source}/tokenizer_config.json: no chat_template")
        try:
            template = _compile_template(self.chat_template)
        except jinja2.TemplateSyntaxError as e:
            raise MiniMindError(
                f"{self.source}/tokenizer_config.json: chat_template line {e.lineno}: {e.message}"
            ) from None
        open_thinking = bool(open_thinking or kwargs.get("enable_thinking", False))
        messages, tools = _prepare_messages(messages, tools)
        # Special tokens first, then the caller's kwargs (they win, as in transformers).
        variables = {**self._template_tokens, **kwargs, "open_thinking": open_thinking}
        try:
            return template.render(
                messages=messages, tools=tools, documents=None, add_generation_prompt=add_generation_prompt, **variables
            )
        except jinja2.TemplateError as e:  # raise_exception() inside the template: bad messages
            raise MiniMindError(f"chat template of {self.source}: {e}") from None

    def encode_chat(
        self, messages, tools=None, add_generation_prompt=False, open_thinking=False, **kwargs
    ) -> list[int]:
        """apply_chat_template, then encode (the template already wrote every special token)."""
        return self.encode(self.apply_chat_template(messages, tools, add_generation_prompt, open_thinking, **kwargs))


def _id_parts(tok: Tokenizer) -> dict:
    """What decides the ids a text becomes: the vocabulary, the BPE merges, the added
    (special) tokens and the bos/eos/pad ids."""
    spec = json.loads(tok._tk.to_str())
    model = spec.get("model") or {}
    return {
        "vocabulary": model.get("vocab") or {},
        "BPE merges": model.get("merges") or [],
        "added tokens": [[t["id"], t["content"], bool(t.get("special"))] for t in spec.get("added_tokens") or []],
        "bos/eos/pad ids": [tok.bos_token_id, tok.eos_token_id, tok.pad_token_id],
    }


def tokenizer_fingerprint(tok: Tokenizer) -> dict[str, str]:
    """_id_parts hashed one by one (sha256, 16 hex digits): two tokenizers with equal
    fingerprints turn every text into the same ids, and unequal ones say which part differs."""
    return {
        k: hashlib.sha256(json.dumps(v, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]
        for k, v in _id_parts(tok).items()
    }


def _shown_token(token: str) -> str:
    """A vocabulary entry as the text it stands for ('Ġthe' -> ' the'), quoted."""
    if token and all(c in _BYTE_OF_CHAR for c in token):
        token = bytes(_BYTE_OF_CHAR[c] for c in token).decode("utf-8", errors="replace")
    return repr(token)


def tokenizer_difference(
    a: Tokenizer, b: Tokenizer, names: tuple[str, str] = ("the first", "the second")
) -> str | None:
    """What differs between two tokenizers in a way that changes token ids (None: nothing), in
    words: the tokens only one of them has, tokens under other ids, other merges, ...
    `names` name the two in the message ("the teacher's", "the student's")."""
    pa, pb = _id_parts(a), _id_parts(b)
    va, vb = pa["vocabulary"], pb["vocabulary"]
    if va != vb:
        parts = [f"{len(va)} vs {len(vb)} tokens"]
        for name, x, y in ((names[0], va, vb), (names[1], vb, va)):
            only = sorted((t for t in x if t not in y), key=x.get)
            if only:
                parts.append(f"{len(only)} only in {name} (e.g. {', '.join(map(_shown_token, only[:3]))})")
        moved = sorted((t for t in va if t in vb and va[t] != vb[t]), key=va.get)
        if moved:
            t = moved[0]
            parts.append(
                f"{len(moved)} shared tokens under other ids (e.g. {_shown_token(t)} is {va[t]} in "
                f"{names[0]}, {vb[t]} in {names[1]})"
            )
        return "vocabularies differ: " + "; ".join(parts)
    ma, mb = pa["BPE merges"], pb["BPE merges"]
    if ma != mb:
        i = next((i for i, (x, y) in enumerate(zip(ma, mb)) if x != y), min(len(ma), len(mb)))
        return (
            f"same vocabulary, but the BPE merges differ ({len(ma)} vs {len(mb)}, first at merge {i + 1}): "
            "the same text splits into other tokens"
        )
    if pa["added tokens"] != pb["added tokens"]:
        ta, tb = ({t[0]: t[1] for t in p["added tokens"]} for p in (pa, pb))
        i = next(i for i in sorted(set(ta) | set(tb)) if ta.get(i) != tb.get(i))
        return f"added/special tokens differ (e.g. id {i} is {ta.get(i)!r} in {names[0]}, {tb.get(i)!r} in {names[1]})"
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(a, name) != getattr(b, name):
            return f"{name} differs ({getattr(a, name)} in {names[0]}, {getattr(b, name)} in {names[1]})"
    return None


class StreamDecoder:
    """Turn a stream of generated ids into text pieces that never split a character.

    Byte-level BPE tokens are bytes, not characters: one Chinese character or emoji is 3-4
    UTF-8 bytes and is often spread over two tokens. Decoding one token at a time would print
    '\ufffd' garbage. For a byte-level tokenizer the token bytes go through Python's
    incremental UTF-8 decoder, which holds an unfinished character back and replaces invalid
    bytes exactly as decoding the whole output at once does, so the pieces always join to
    `tokenizer.decode(ids)`. Other tokenizers decode a small window of recent ids and hand out
    the new text once it no longer ends in an incomplete character (the trick used by HF's
    text-generation-inference and vLLM).
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = False):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace") if tokenizer.byte_level else None
        self.skipped = tokenizer.special_ids if skip_special_tokens else frozenset()
        self.ids: list[int] = []
        self.prefix = 0  # window start: already-printed ids kept as context for the decoder
        self.read = 0  # ids before this index have been printed

    def _decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def push(self, token_id: int) -> str:
        """Add one id; return the newly completed text ('' while a character is incomplete)."""
        if self.utf8 is not None:
            return "" if token_id in self.skipped else self.utf8.decode(self.tokenizer.token_bytes(token_id))
        self.ids.append(int(token_id))
        done = self._decode(self.ids[self.prefix : self.read])
        text = self._decode(self.ids[self.prefix :])
        # A UTF-8 character is at most 4 bytes, so after 4 more tokens a trailing '\ufffd' is
        # genuinely invalid bytes rather than an unfinished character: let it through.
        if text.endswith("\ufffd"):
            if len(self.ids) - self.read < 4:
                return ""
            # 4+ tokens and still no complete character: there are invalid bytes. A character
            # is at most 4 bytes, so only the last 3 tokens can hold the start of one still
            # being written: hand out everything before them, keep them pending.
            cut = len(self.ids) - 3
            head = self._decode(self.ids[self.prefix : cut])
            self.prefix = self.read = cut
            return head[len(done) :]
        self.prefix, self.read = self.read, len(self.ids)
        return text[len(done) :]

    def flush(self) -> str:
        """Return whatever is still held back (call once, at the end of generation)."""
        if self.utf8 is not None:
            return self.utf8.decode(b"", final=True)
        done = self._decode(self.ids[self.prefix : self.read])
        text = self._decode(self.ids[self.prefix :])
        self.prefix = self.read = len(self.ids)
        return text[len(done) :]


# ------------------------------------------------------------------------------ training ---

_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_LATIN = re.compile(r"[A-Za-z]")
_TXT_CHUNK_CHARS = 4000  # a .txt "document" is cut at a line boundary after this many chars


def _check_corpus_file(path: Path) -> None:
    """Fail before training, not halfway through, when an input file is unusable."""
    if path.suffix.lower() not in (".txt", ".jsonl", ".json"):
        raise MiniMindError(f"{path}: unsupported file type (use .txt, .jsonl or .json)")
    if not path.is_file():
        raise MiniMindError(f"{path}: file not found")


def _documents(path: Path, max_lines: int | None):
    """Yield the training documents of one file (see train_tokenizer for the formats)."""
    suffix = path.suffix.lower()
    if suffix == ".json":
        records = read_json(path)
        if not isinstance(records, list):
            raise MiniMindError(f"{path}: expected a JSON array of records with `paragraphs`")
        for record in records[:max_lines]:
            record = record if isinstance(record, dict) else {}
            lines = record.get("paragraphs") or record.get("content")
            if isinstance(lines, list):
                head = next((record[k] for k in ("title", "rhythmic", "chapter") if isinstance(record.get(k), str)), "")
                yield "\n".join([head] * bool(head) + [str(x) for x in lines])
        return
    with path.open(encoding="utf-8", errors="replace") as f:
        paragraph: list[str] = []
        size = 0
        for lineno, line in enumerate(f, 1):
            if max_lines is not None and lineno > max_lines:
                break
            if suffix == ".txt":  # blank-line separated paragraphs, long ones cut in chunks
                if line.strip():
                    paragraph.append(line)
                    size += len(line)
                if (not line.strip() or size >= _TXT_CHUNK_CHARS) and paragraph:
                    yield "".join(paragraph).rstrip("\n")
                    paragraph, size = [], 0
                continue
            if not line.strip():
                continue
            try:
                record = json.loads(line.rstrip("\r\n"))  # (a cut line's error is then on its own line)
            except json.JSONDecodeError as e:
                raise MiniMindError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
            if isinstance(record, dict) and isinstance(record.get("text"), str):
                yield record["text"]
            elif isinstance(record, dict) and isinstance(record.get("conversations"), list):
                # Like MiniMind's train_tokenizer.py: all message contents joined by newlines.
                yield "\n".join(
                    m["content"]
                    for m in record["conversations"]
                    if isinstance(m, dict) and isinstance(m.get("content"), str)
                )
            else:
                raise MiniMindError(f'{path}:{lineno}: expected a "text" string or a "conversations" list')
        if paragraph:
            yield "".join(paragraph).rstrip("\n")


def minimind_tokenizer_config(chat_template: str | None = None) -> dict:
    """The tokenizer_config.json MiniMind ships, rebuilt (same keys, same order)."""
    entry = dict(lstrip=False, normalized=False, rstrip=False, single_word=False)
    return {
        "add_bos_token": False,
        "add_eos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(i): {"content": t, **entry, "special": i < NUM_SPECIAL_TOKENS} for i, t in enumerate(SPECIAL_TOKENS)
        },
        "additional_special_tokens": SPECIAL_TOKENS[1:NUM_SPECIAL_TOKENS],
        "bos_token": "<|im_start|>",
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "legacy": True,
        "model_max_length": 131072,
        "pad_token": "<|endoftext|>",
        "sp_model_kwargs": {},
        "spaces_between_special_tokens": False,
        "unk_token": "<|endoftext|>",
        "image_token": "<|image_pad|>",
        "audio_token": "<|audio_pad|>",
        "video_token": "<|video_pad|>",
        "vision_bos_token": "<|vision_start|>",
        "vision_eos_token": "<|vision_end|>",
        "audio_bos_token": "<|audio_start|>",
        "audio_eos_token": "<|audio_end|>",
        "chat_template": chat_template or MINIMIND3_CHAT_TEMPLATE,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }


def _chars_per_token(tok: Tokenizer, docs: list[str]) -> float | None:
    n_tokens = sum(len(ids) for ids in tok.encode_batch(docs))
    return round(sum(map(len, docs)) / n_tokens, 3) if n_tokens else None


def train_tokenizer(
    files: list[str],
    vocab_size: int = 6400,
    *,
    out_dir: str,
    holdout_fraction: float = 0.02,
    max_lines: int | None = None,
) -> dict:
    """Train a MiniMind-style byte-level BPE tokenizer and save it to `out_dir`.

    Input formats, by file extension:
      .txt    paragraphs separated by blank lines are documents (long paragraphs are cut at a
              line boundary every ~4,000 characters, so a file without blank lines still works);
      .jsonl  {"text": ...} (pretrain) or {"conversations": [...]} (SFT: the contents joined
              with "\\n", as MiniMind's own train_tokenizer.py does);
      .json   an array of chinese-poetry records (title + `paragraphs` or `content` lines).
    `max_lines` limits the lines (records for .json) read from each file.

    Every k-th document (k = 1/holdout_fraction) is held out from training and used to
    measure chars per token, the compression figure MiniMind quotes (~1.5 zh, ~4 en).
    Returns a report dict; prints nothing.
    """
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise MiniMindError(
            f"vocab_size {vocab_size} is too small: byte-level BPE needs 256 byte tokens "
            f"+ {len(SPECIAL_TOKENS)} special tokens = {256 + len(SPECIAL_TOKENS)} at least"
        )
    if not 0 <= holdout_fraction <= 0.5:
        raise MiniMindError(f"holdout_fraction {holdout_fraction} must be between 0 and 0.5")
    if not files:
        raise MiniMindError("train_tokenizer: no input files given")
    for file in files:
        _check_corpus_file(Path(file))
    every = round(1 / holdout_fraction) if holdout_fraction > 0 else 0
    heldout: list[str] = []
    counts = {"train": 0}

    def training_docs():
        # A generator, so a large corpus streams through the trainer instead of sitting in RAM.
        n = 0
        for file in files:
            for doc in _documents(Path(file), max_lines):
                if not doc.strip():
                    continue
                n += 1
                if every and n % every == 0:
                    heldout.append(doc)
                else:
                    counts["train"] += 1
                    yield doc

    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator(training_docs(), trainer=trainer)
    if counts["train"] == 0:
        raise MiniMindError(f"no training text found in {', '.join(map(str, files))}")
    backend.decoder = decoders.ByteLevel()
    # The trainer marks every token in special_tokens as special; MiniMind wants <think>,
    # <tool_call> etc. (ids 21..35) to be plain added tokens so decoding keeps them.
    spec = json.loads(backend.to_str())
    for added in spec["added_tokens"]:
        added["special"] = added["id"] < NUM_SPECIAL_TOKENS
    tok = Tokenizer(tokenizers.Tokenizer.from_str(json.dumps(spec)), minimind_tokenizer_config(), str(out_dir))
    tok.save(out_dir)

    # Without a holdout, measure on the first 1,000 training documents instead.
    measured = heldout or list(
        itertools.islice((d for f in files for d in _documents(Path(f), max_lines) if d.strip()), 1000)
    )
    report = {
        "vocab_size": tok.vocab_size,
        "train_docs": counts["train"],
        "heldout_docs": len(heldout),
        "chars_per_token": _chars_per_token(tok, measured),
    }
    # A document counts as Chinese or English by which script has more characters in it.
    zh = [d for d in measured if len(_CJK.findall(d)) > len(_LATIN.findall(d))]
    en = [d for d in measured if len(_LATIN.findall(d)) > len(_CJK.findall(d))]
    if zh and en:
        report["chars_per_token_zh"] = _chars_per_token(tok, zh)
        report["chars_per_token_en"] = _chars_per_token(tok, en)
    report["out_dir"] = str(out_dir)
    return report


# ------------------------------------------------------------------------- the template ---

# The minimind-3 chat template, copied verbatim from MiniMind's tokenizer_config.json
# (ChatML + Qwen3-style tools, <think> blocks, open_thinking). tests/test_tokenizer.py checks
# that it still equals the shipped file.
MINIMIND3_CHAT_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\n\n' }}
    {%- endif %}
    {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in content %}
                {%- set reasoning_content = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
                {%- set content = content.split('</think>')[-1].lstrip('\n') %}
            {%- endif %}
        {%- endif %}
        {%- if true %}
            {{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}
                    {{- '\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if open_thinking is defined and open_thinking is true %}
        {{- '<think>\n' }}
    {%- else %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}"""
