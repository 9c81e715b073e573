"""Chat rendering and assistant-only loss masks, checked against hand-computed ones."""

import json
import re

import numpy as np
import pytest

from helpers import chat_records, dpo_records, write_jsonl
from minimind.data import encode_chats, read_records
from minimind.data.sft import EMPTY_THINK, SYSTEM_PROMPTS, ChatRenderer
from minimind.data.template import render_minimind3
from minimind.tokenizer import Tokenizer


def masked_runs(tok, ids, mask):
    """The text of each contiguous run of trained tokens."""
    runs, start = [], None
    for i, m in enumerate(list(mask) + [0]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            runs.append(tok.decode(ids[start:i]))
            start = None
    return runs


def expected_turn(message) -> str:
    """What an assistant turn should train on, built by hand from the record (not the template)."""
    content, reasoning = message.get("content") or "", message.get("reasoning_content")
    if reasoning is None and "</think>" in content:
        reasoning = content.split("</think>")[0].split("<think>")[-1].strip("\n")
        content = content.split("</think>")[-1].lstrip("\n")
    text = "<think>\n" + (reasoning or "").strip("\n") + "\n</think>\n\n" + content.lstrip("\n")
    calls = message.get("tool_calls")
    for i, call in enumerate(json.loads(calls) if isinstance(calls, str) else calls or []):
        args = call["arguments"]
        args = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
        text += "\n" if content or i else ""
        text += '<tool_call>\n{"name": "' + call["name"] + '", "arguments": ' + args + "}\n</tool_call>"
    return text + "<|im_end|>"


def test_handmade_conversation_mask_token_by_token(minimind_tok):
    tok = minimind_tok  # the token pieces below are MiniMind's
    conv = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4", "reasoning_content": "add"},
    ]
    ((ids, mask),) = encode_chats(tok, [conv])
    # Every token of the rendered chat and whether it is trained, written out by hand:
    # role headers, system and user turns and the "\n" after each <|im_end|> are not;
    # everything from <think> through <|im_end|> of each assistant turn is.
    header = [("<|im_start|>", 0), ("ass", 0), ("ist", 0), ("ant", 0), ("\n", 0)]
    expected = [
        ("<|im_start|>", 0),
        ("s", 0),
        ("ystem", 0),
        ("\n", 0),
        ("B", 0),
        ("e", 0),
        (" b", 0),
        ("ri", 0),
        ("ef", 0),
        (".", 0),
        ("<|im_end|>", 0),
        ("\n", 0),
        ("<|im_start|>", 0),
        ("us", 0),
        ("er", 0),
        ("\n", 0),
        ("h", 0),
        ("i", 0),
        ("<|im_end|>", 0),
        ("\n", 0),
        *header,
        ("<think>", 1),
        ("\n", 1),
        ("\n", 1),
        ("</think>", 1),
        ("\n", 1),
        ("\n", 1),
        ("hello", 1),
        ("<|im_end|>", 1),
        ("\n", 0),
        ("<|im_start|>", 0),
        ("us", 0),
        ("er", 0),
        ("\n", 0),
        ("2", 0),
        ("+", 0),
        ("2", 0),
        ("?", 0),
        ("<|im_end|>", 0),
        ("\n", 0),
        *header,
        ("<think>", 1),
        ("\n", 1),
        ("add", 1),
        ("\n", 1),
        ("</think>", 1),
        ("\n", 1),
        ("\n", 1),
        ("4", 1),
        ("<|im_end|>", 1),
        ("\n", 0),
    ]
    assert [(tok.decode([i]), int(m)) for i, m in zip(ids, mask)] == expected


@pytest.mark.parametrize("source", ["generated", "shared"])
def test_tool_call_records_train_every_assistant_turn(tok, source, request, tmp_path):
    if source == "shared":
        path = request.getfixturevalue("shared_data") / "minimind_format" / "sft_toolcall_glaive_demo_zh_en.jsonl"
    else:
        path = write_jsonl(tmp_path / "chats.jsonl", chat_records(120))
    records = [r.data["conversations"] for r in read_records(path, "sft")][:120]
    assert sum(1 for c in records for m in c if m.get("tool_calls")) > 30
    for conv, (ids, mask) in zip(records, encode_chats(tok, records)):
        turns = [m for m in conv if m["role"] == "assistant"]
        assert masked_runs(tok, ids, mask) == [expected_turn(m) for m in turns]
        # everything else (tools header, user turns, tool results) is never trained
        assert "<tool_response>" not in tok.decode(ids[mask == 1]) and "# Tools" not in tok.decode(ids[mask == 1])
        assert "<tool_response>" in tok.decode(ids) or not any(m["role"] == "tool" for m in conv)


def test_reasoning_records_train_the_think_block(tok):
    chats = [
        [
            {"role": "user", "content": f"What is {a} × {a + 7}?"},  # chains of thought, answers in \boxed{}
            {
                "role": "assistant",
                "content": f"{a} × {a} = {a * a}.\n{a} × 7 = {7 * a}.\nSo the product is \\boxed{{{a * a + 7 * a}}}.",
            },
        ]
        for a in range(40)
    ]
    variants = []
    for conv in chats:  # the same chain of thought three ways: content only, reasoning_content, inline <think>
        user, reply = conv[0], conv[1]["content"]
        answer = (re.findall(r"\\boxed\{([^}]*)\}", reply) or ["?"])[-1]
        variants += [
            conv,
            [user, {"role": "assistant", "content": f"The answer is {answer}.", "reasoning_content": reply}],
            [user, {"role": "assistant", "content": f"<think>\n{reply}\n</think>\n\nThe answer is {answer}."}],
        ]
    for conv, (ids, mask) in zip(variants, encode_chats(tok, variants)):
        assert masked_runs(tok, ids, mask) == [expected_turn(conv[-1])]
        assert tok.decode(ids[mask == 0]).startswith("<|im_start|>user\n")


def test_older_template_without_think_blocks(shared_data):
    tok2 = Tokenizer.from_dir(shared_data / "tokenizer" / "minimind2")
    chats = [
        r.data["conversations"]
        for r in read_records(shared_data / "minimind_format" / "tiny" / "tiny_sft.jsonl", "sft")
    ]
    for conv, (ids, mask) in zip(chats, encode_chats(tok2, chats)):
        assert masked_runs(tok2, ids, mask) == [conv[-1]["content"] + "<|im_end|>"]


@pytest.mark.parametrize("source", ["generated", "shared"])
def test_fast_renderer_equals_the_jinja_template(tok, source, request):
    if source == "shared":
        d = request.getfixturevalue("shared_data") / "minimind_format"
        names = [
            "sft_toolcall_glaive_demo_zh_en.jsonl",
            "sft_sharegpt_zh_1k.jsonl",
            "dpo_medicalgpt_zh_500.jsonl",
            "sft_numina_math_cot_1k.jsonl",
            "lora_identity.jsonl",
            "tiny/tiny_sft.jsonl",
        ]
        records = [json.loads(line) for name in names for line in (d / name).read_text(encoding="utf-8").splitlines()]
    else:
        records = chat_records(300) + dpo_records(100)
    chats = [r[k] for r in records for k in ("conversations", "chosen", "rejected") if k in r]
    call = [{"function": {"name": "f", "arguments": '{"x": 1}'}}, {"name": "g", "arguments": {"y": "是"}}]
    chats += [  # edge cases the shared files do not cover
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": "\n\n<think>\nr\n</think>\n\n\nans"}],
        [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "a</think>b", "reasoning_content": "\nr\n"},
        ],
        [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "see:", "tool_calls": call},
            {"role": "tool", "content": "1"},
            {"role": "tool", "content": "2"},
            {"role": "user", "content": "ok"},
            {"role": "system", "content": "late system"},
            {"role": "assistant", "content": None, "tool_calls": json.dumps(call)},
        ],
        [
            {"role": "system", "content": "sys", "tools": "[]"},
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "a"},
        ],
        [
            {"role": "user", "content": "q"},
            {"role": "system", "content": "s2", "tools": json.dumps([{"name": "t"}])},
            {"role": "assistant", "content": "a"},
        ],
        [{"role": "tool", "content": "first"}, {"role": "assistant", "content": "a"}],
    ]
    assert len(chats) > (3500 if source == "shared" else 500)
    for messages in chats:
        assert render_minimind3(messages) == tok.apply_chat_template(messages)
    # shapes it does not handle go to Jinja instead of being guessed
    assert render_minimind3([{"role": "assistant", "content": "x", "thinking": "t"}]) is None


def test_augmentations_are_seeded_and_off_by_default(tok):
    chats = [[{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}] for i in range(400)]
    plain = ChatRenderer(tok)
    assert all(plain(c) == tok.apply_chat_template(c) for c in chats)
    texts = [ChatRenderer(tok, random_system_prompt=True, strip_empty_think=True, seed=3)(c) for c in chats[:1]]
    r1 = ChatRenderer(tok, random_system_prompt=True, strip_empty_think=True, seed=3)
    r2 = ChatRenderer(tok, random_system_prompt=True, strip_empty_think=True, seed=3)
    a, b = [r1(c) for c in chats], [r2(c) for c in chats]
    assert a == b and texts[0] == a[0]  # same seed, same draws
    with_system = sum(t.startswith("<|im_start|>system\n") for t in a)
    stripped = sum(EMPTY_THINK not in t for t in a)
    assert 0.12 < with_system / 400 < 0.28 and 0.72 < stripped / 400 < 0.88  # p = 0.2 and 0.8
    assert {t.split("\n")[1].split("<|im_end|>")[0] for t in a if t.startswith("<|im_start|>system")} <= set(
        SYSTEM_PROMPTS
    )
    # never a second system prompt, and never on tool chats (their system message holds the tools)
    tools = json.dumps([{"name": "f"}])
    other = [
        [{"role": "system", "content": "mine"}, *chats[0]],
        [{"role": "system", "content": "", "tools": tools}, *chats[0]],
    ]
    r = ChatRenderer(tok, random_system_prompt=True, seed=0)
    for _ in range(50):
        assert [r(c) for c in other] == [tok.apply_chat_template(c) for c in other]
    # stripped chats still train the reply and <|im_end|>, from right after the header
    ((ids, mask),) = encode_chats(tok, [chats[0]], renderer=ChatRenderer(tok, strip_empty_think=True, seed=1))
    if EMPTY_THINK not in tok.decode(ids):
        assert masked_runs(tok, ids, mask) == ["a0<|im_end|>"]
    assert np.asarray(mask).dtype == np.uint8
