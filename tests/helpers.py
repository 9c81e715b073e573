"""Helpers shared by several test modules (imported as `from helpers import ...`; pytest puts
this folder on sys.path)."""

import json
import os
import random
import re
import socket
import subprocess
import sys
import time
from itertools import accumulate
from pathlib import Path

import pytest
import torch

from minimind.config import preset
from minimind.model import MiniMindForCausalLM


def scrambled_model(seed: int = 0, **overrides) -> MiniMindForCausalLM:
    """A nano model (config overrides allowed) whose matrices are redrawn with std 0.1, so
    its greedy text varies and its preferences differ from prompt to prompt (the default
    init is nearly uniform)."""
    model = MiniMindForCausalLM(preset("nano", **overrides)).init_weights(0).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


# ------------------------------------------------------------- data the tests make themselves
# A user's clone has no ../shared/data. Tests that need *some* tokenizer or *some* records use
# what follows (and conftest's `tok`/`tok_dir`, a tokenizer trained from it), so they run
# everywhere; only the tests of compatibility with MiniMind's own files use shared_data.


def write_jsonl(path, records) -> Path:
    """Write records (dicts) one JSON object a line; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def babble(seed: int = 0, docs: int = 2000) -> list[str]:
    """Deterministic pseudo-text, 60% English-like and 40% Chinese-like, with a Zipf-like spread
    of word frequencies: enough distinct words for a byte-level BPE to reach 6400 tokens, the
    size of MiniMind's vocabulary and of every preset, from nothing but a seed."""
    rng = random.Random(seed)
    onsets = (
        "",
        "b",
        "c",
        "d",
        "f",
        "g",
        "h",
        "j",
        "k",
        "l",
        "m",
        "n",
        "p",
        "r",
        "s",
        "t",
        "v",
        "w",
        "y",
        "z",
        "bl",
        "br",
        "ch",
        "cl",
        "cr",
        "dr",
        "fl",
        "fr",
        "gl",
        "gr",
        "pl",
        "pr",
        "sh",
        "sl",
        "sm",
        "sn",
        "sp",
        "st",
        "str",
        "th",
        "tr",
        "wh",
    )
    vowels = ("a", "e", "i", "o", "u", "ai", "ea", "ee", "oa", "oo", "ou", "y")
    codas = ("", "", "", "n", "r", "s", "t", "l", "m", "nd", "ng", "st", "ck", "rt", "nt", "sh")
    words = sorted(
        {
            "".join(
                rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas)
                for _ in range(rng.choice((1, 1, 2, 2, 3, 4)))
            )
            for _ in range(12000)
        }
    )
    hanzi = [chr(0x4E00 + i) for i in rng.sample(range(0x5000), 3000)]
    zwords = ["".join(rng.choices(hanzi, k=rng.choice((1, 2, 2, 3)))) for _ in range(6000)]
    w_cum = list(accumulate(1 / (i + 10) for i in range(len(words))))
    z_cum = list(accumulate(1 / (i + 10) for i in range(len(zwords))))
    out = []
    for _ in range(docs):
        if rng.random() < 0.6:
            sentences = (
                " ".join(rng.choices(words, cum_weights=w_cum, k=rng.randint(4, 14))).capitalize() + rng.choice(".!?")
                for _ in range(rng.randint(2, 6))
            )
            out.append(" ".join(sentences))
        else:
            clauses = (
                "".join(rng.choices(zwords, cum_weights=z_cum, k=rng.randint(3, 10))) + rng.choice("，。！？")
                for _ in range(rng.randint(2, 5))
            )
            out.append("".join(clauses))
    return out


def train_project_tokenizer(root, seed: int = 0) -> Path:
    """A tokenizer the project makes itself (about a second): byte-level BPE trained on the
    built-in demo corpus plus babble(), to MiniMind's vocabulary size (6400) with MiniMind's
    special tokens and chat template. Its ids differ from MiniMind's: tests that need
    MiniMind's exact tokenizer use conftest's `minimind_tok` instead. Another seed gives another
    tokenizer of the same size (other babble). Returns its directory."""
    from minimind.data.demo import build_demo_corpus
    from minimind.data.template import render_minimind3
    from minimind.tokenizer import SPECIAL_TOKENS, train_tokenizer

    root = Path(root)
    files = build_demo_corpus(root / "corpus", pretrain_docs=400)
    # Rendered chats (tool headers, tool calls, think blocks), so that the JSON of a tool call is a
    # few tokens as in a real tokenizer, without the special tokens (added tokens anyway) and
    # without blank lines: like MiniMind's, this tokenizer has no "\n\n" token, so the template's
    # "</think>\n\n" is the same tokens in a generation prompt and in a rendered conversation.
    chats = [c for c in (render_minimind3(r["conversations"]) for r in chat_records(300)) if c]
    for special in SPECIAL_TOKENS:
        chats = [c.replace(special, " ") for c in chats]
    chats = [re.sub(r"\n\s*\n", "\n", c) for c in chats]
    extra = write_jsonl(root / "corpus" / "extra.jsonl", ({"text": t} for t in babble(seed) + chats))
    report = train_tokenizer(
        [str(files["pretrain"]), str(files["sft"]), str(extra)],
        vocab_size=6400,
        out_dir=str(root / "tokenizer"),
        holdout_fraction=0,
    )
    assert report["vocab_size"] == 6400, report
    return root / "tokenizer"


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather of a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    },
    {
        "type": "function",
        "function": {
            "name": "add",
            "description": "加法",
            "parameters": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}},
        },
    },
]
_CITIES = [("Paris", "巴黎"), ("Tokyo", "东京"), ("Cairo", "开罗"), ("Lima", "利马"), ("Oslo", "奥斯陆")]


def chat_records(n: int = 60, seed: int = 0) -> list[dict]:
    """SFT records ({"conversations": [...]}) in every shape MiniMind's data uses: system
    prompts, several turns, English and Chinese (and emoji), tools as a JSON string on the system
    message, tool_calls as a JSON string or a list, tool results, reasoning_content and inline
    <think> blocks. Deterministic for a seed."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        city, zcity = rng.choice(_CITIES)
        shape = i % 6
        conv = [{"role": "system", "content": "You are a helpful assistant."}] if i % 4 == 1 else []
        if shape == 0:  # plain multi-turn
            conv += [
                {"role": "user", "content": f"What is {a} + {b}?"},
                {"role": "assistant", "content": f"{a} + {b} = {a + b}."},
                {"role": "user", "content": "谢谢！😀"},
                {"role": "assistant", "content": "不客气！"},
            ]
        elif shape == 1:  # a tool call (JSON strings, as in MiniMind's files) and its result
            if conv:
                conv[0]["tools"] = json.dumps(TOOLS, ensure_ascii=False)
            else:
                conv = [{"role": "system", "content": "", "tools": json.dumps(TOOLS, ensure_ascii=False)}]
            conv += [
                {"role": "user", "content": f"What is the weather in {city}?"},
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": json.dumps([{"name": "get_weather", "arguments": {"city": city}}]),
                },
                {"role": "tool", "content": json.dumps({"city": city, "weather": "sunny", "celsius": a % 35})},
                {"role": "assistant", "content": f"It is sunny in {city}, {a % 35} °C."},
            ]
        elif shape == 2:  # two calls as a list, two tool results in a row
            conv = [{"role": "system", "content": "", "tools": json.dumps(TOOLS, ensure_ascii=False)}]
            conv += [
                {"role": "user", "content": f"{zcity}天气如何？再算{a}加{b}。"},
                {
                    "role": "assistant",
                    "content": "好的。",
                    "tool_calls": [
                        {"name": "get_weather", "arguments": {"city": zcity}},
                        {"name": "add", "arguments": json.dumps({"a": a, "b": b})},
                    ],
                },
                {"role": "tool", "content": "晴"},
                {"role": "tool", "content": str(a + b)},
                {"role": "assistant", "content": f"{zcity}晴；{a}加{b}等于{a + b}。"},
            ]
        elif shape == 3:  # reasoning_content
            conv += [
                {"role": "user", "content": f"{a}乘以{b}等于多少？"},
                {
                    "role": "assistant",
                    "content": f"{a}乘以{b}等于{a * b}。",
                    "reasoning_content": f"\n{a} × {b}: {a} × {b // 10 * 10} + {a} × {b % 10} = {a * b}.\n",
                },
            ]
        elif shape == 4:  # an inline <think> block, then a later turn
            conv += [
                {"role": "user", "content": f"Is {a} bigger than {b}?"},
                {
                    "role": "assistant",
                    "content": f"<think>\nCompare {a} and {b}.\n</think>\n\n{'Yes' if a > b else 'No'}.",
                },
                {"role": "user", "content": "Why?"},
                {"role": "assistant", "content": "Because of the digits.", "reasoning_content": "easy"},
            ]
        else:  # a long answer (a few hundred tokens)
            conv += [
                {"role": "user", "content": f"Tell me about {city}."},
                {
                    "role": "assistant",
                    "content": " ".join(f"{city} has {k * a} streets and {k * b} parks." for k in range(1, 6 + a % 10)),
                },
            ]
        out.append({"conversations": conv})
    return out


def pretrain_records(n: int = 60, seed: int = 0) -> list[dict]:
    """{"text": ...} documents of varied length (tens to about a thousand tokens)."""
    rng = random.Random(seed)
    texts = babble(seed, 4 * n)
    return [{"text": " ".join(texts[4 * i : 4 * i + rng.choice((1, 1, 2, 4))])} for i in range(n)]


def dpo_records(n: int = 20, seed: int = 0) -> list[dict]:
    """Preference pairs {"chosen": [...], "rejected": [...]}, sharing the prompt."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        a, b = rng.randint(1, 50), rng.randint(1, 50)
        prompt = [{"role": "user", "content": f"What is {a} + {b}?" if i % 2 else f"{a}加{b}等于多少？"}]
        good = f"{a} + {b} = {a + b}." if i % 2 else f"{a}加{b}等于{a + b}。"
        bad = f"{a} + {b} = {a + b + 1}." if i % 2 else "不知道。"
        out.append(
            {
                "chosen": prompt + [{"role": "assistant", "content": good}],
                "rejected": prompt + [{"role": "assistant", "content": bad}],
            }
        )
    return out


def rl_records(n: int = 20, seed: int = 0) -> list[dict]:
    """RL prompts with a ground truth: {"conversations": [user, assistant placeholder], "gt": ["42"]}."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randint(2, 30), rng.randint(2, 30)
        question = f"Tom has {a} apples and buys {b} more. How many now?"
        out.append(
            {
                "conversations": [{"role": "user", "content": question}, {"role": "assistant", "content": ""}],
                "gt": [str(a + b)],
            }
        )
    return out


def start_server(model_dir: Path, log_path: Path, *flags: str, env: dict | None = None):
    """`minimind serve` on a free loopback port; returns (process, base URL) once /health answers.
    Output goes to log_path. No API key unless `env` gives MINIMIND_API_KEY (or a flag does)."""
    import httpx  # (here: only the serve tests need it)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    extra, env = env or {}, {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MINIMIND_API_KEY", None)  # no key unless `env` gives one
    env.update(extra)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "minimind.cli",
                "serve",
                "--model",
                str(model_dir),
                "--port",
                str(port),
                "--log-level",
                "warning",
                *flags,
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120  # a busy machine imports torch slowly
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"minimind serve did not start:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.1)


# ---------------------------------------------------------------------------- vision (tests/test_vision_*.py)

VISION_TOKENS = 16  # image tokens per image of the tiny model (32 px, 8 px patches)


def tiny_vlm_dir(path, tokenizer, seed: int = 0):
    """A nano language model with our patch encoder (32 px images, 16 tokens each), every matrix
    redrawn with std 0.1 so that its greedy text varies with the image; saved to `path`."""
    from minimind.checkpoint import save_model_dir
    from minimind.model.vision import VisionConfig
    from minimind.model.vlm import MiniMindVLM

    vision = VisionConfig(image_size=32, patch_size=8, hidden_size=32, image_tokens=VISION_TOKENS, num_heads=2)
    model = MiniMindVLM(preset("nano", tokenizer=tokenizer), vision).init_weights(seed).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    save_model_dir(model, path, tokenizer)
    return path


def shape_image(path, colour, size=64, shape="ellipse"):
    """A coloured shape on white, written as PNG; returns the path."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), "white")
    getattr(ImageDraw.Draw(image), shape)((size // 6, size // 6, size * 5 // 6, size * 5 // 6), fill=colour)
    image.save(path)
    return path
