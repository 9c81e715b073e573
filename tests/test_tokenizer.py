"""Tokenizer tests: loading MiniMind's tokenizers, the chat template against transformers (the
real peer), streaming decode, BPE training, and the errors a user sees for broken inputs."""

import copy
import json
import random

import pytest

from helpers import babble, chat_records, rl_records, write_jsonl
from minimind.data.demo import build_demo_corpus
from minimind.errors import MiniMindError
from minimind.tokenizer import (
    MINIMIND3_CHAT_TEMPLATE,
    NUM_SPECIAL_TOKENS,
    SPECIAL_TOKENS,
    Tokenizer,
    minimind_tokenizer_config,
    train_tokenizer,
)

SAMPLE = (
    "你好，世界！MiniMind 是一个小模型。Hello, world 😀🎉👩‍👩‍👧 naïve café 𠀀𪚥\n"
    "\t  indented <think>x</think> <tool_call>{}</tool_call><|im_end|> tail"
)


def hf_tokenizer(path):
    transformers = pytest.importorskip("transformers")
    return transformers.PreTrainedTokenizerFast.from_pretrained(str(path))


@pytest.fixture(scope="module", params=["project-made", "minimind3", "minimind2"])
def tok_dir(request, tok_dir):
    """Each tokenizer under test: the project-made one (conftest's) everywhere, MiniMind's two
    where ../shared/data is there."""
    if request.param == "project-made":
        return tok_dir
    return request.getfixturevalue("shared_data") / "tokenizer" / request.param


@pytest.fixture(scope="module")
def tok(tok_dir):
    return Tokenizer.from_dir(tok_dir)


@pytest.fixture(scope="module")
def hf_tok(tok_dir):
    return hf_tokenizer(tok_dir)


# ---------------------------------------------------------------------- 1. loading ---


def test_tokenizers_load_with_minimind_ids(tok):
    assert tok.vocab_size == 6400
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (1, 2, 0)
    assert tok.token_to_id("<|im_start|>") == 1 and tok.id_to_token(2) == "<|im_end|>"
    assert "<|im_start|>" in tok.chat_template
    assert tok.encode("") == []


def test_special_tokens_and_template_match_the_shipped_files(shared_data):
    d = shared_data / "tokenizer" / "minimind3"
    added = json.loads((d / "tokenizer.json").read_text(encoding="utf-8"))["added_tokens"]
    assert [(a["id"], a["content"]) for a in added] == list(enumerate(SPECIAL_TOKENS))
    assert [a["special"] for a in added] == [i < NUM_SPECIAL_TOKENS for i in range(36)]
    config = json.loads((d / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["chat_template"] == MINIMIND3_CHAT_TEMPLATE
    assert minimind_tokenizer_config() == config  # what train_tokenizer writes


def test_encode_decode_round_trip_matches_transformers(tok, hf_tok):
    ids = tok.encode(SAMPLE)
    assert tok.decode(ids) == SAMPLE
    assert ids == hf_tok(SAMPLE, add_special_tokens=False).input_ids
    assert ids == hf_tok.encode(SAMPLE)  # no post-processor: add_special_tokens adds nothing
    assert tok.decode(ids) == hf_tok.decode(ids)
    assert tok.decode(ids, skip_special_tokens=True) == hf_tok.decode(ids, skip_special_tokens=True)
    # <|im_end|> is special (skipped), <think>/<tool_call> are plain added tokens (kept)
    skipped = tok.decode(ids, skip_special_tokens=True)
    assert "<|im_end|>" not in skipped and "<think>" in skipped and "<tool_call>" in skipped
    texts = [SAMPLE, "", "abc", "中文" * 50]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]


# ----------------------------------------------------------------- 2. chat template ---


def read_records(path, n=50):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for _, line in zip(range(n), f)]


def original_minimind_render(hf_tok, conversations, **kwargs):
    """Render a data record the way MiniMind's SFTDataset.create_chat_prompt does: tools taken
    from the system message and tool_calls parsed from their JSON strings, then transformers."""
    messages, tools = [], None
    for message in conversations:
        message = dict(message)
        if message.get("role") == "system" and message.get("tools"):
            tools = json.loads(message["tools"]) if isinstance(message["tools"], str) else message["tools"]
        if message.get("tool_calls") and isinstance(message["tool_calls"], str):
            message["tool_calls"] = json.loads(message["tool_calls"])
        messages.append(message)
    return hf_tok.apply_chat_template(messages, tools=tools, tokenize=False, **kwargs)


def reasoning_records(math_records):
    """Reasoning in every form from records whose answer is "steps\n\nanswer": the field,
    <think> inside content, a system prompt, and multi-turn history with earlier reasoning."""
    out = []
    for i, rec in enumerate(math_records[:12]):
        user, assistant = rec["conversations"]
        steps, _, answer = assistant["content"].rpartition("\n\n")
        if i % 3 == 0:
            a = {"role": "assistant", "content": answer, "reasoning_content": "\n" + steps + "\n"}
        elif i % 3 == 1:
            a = {"role": "assistant", "content": f"<think>\n{steps}\n</think>\n\n{answer}"}
        else:
            a = {"role": "assistant", "content": answer, "reasoning_content": None}
        convo = [
            user,
            a,
            {"role": "user", "content": "再解释一下?"},
            {"role": "assistant", "content": "好的。", "reasoning_content": "简单"},
        ]
        if i % 2:
            convo.insert(0, {"role": "system", "content": "You are minimind, a small but useful model."})
        out.append({"conversations": convo})
    return out


def generated_math(n=12):
    return [
        {
            "conversations": [
                {"role": "user", "content": f"{a} × {a + 3} = ?"},
                {
                    "role": "assistant",
                    "content": f"{a} × {a} = {a * a}\n{a} × 3 = {3 * a}\n\n\\boxed{{{a * a + 3 * a}}}",
                },
            ]
        }
        for a in range(2, 2 + n)
    ]


@pytest.fixture(scope="module")
def generated_chats():
    records = chat_records(60) + generated_math() + reasoning_records(generated_math())
    assert any(m.get("role") == "tool" for r in records for m in r["conversations"])
    return records


@pytest.fixture(scope="module")
def shared_chats(shared_data):
    fmt = shared_data / "minimind_format"
    math = read_records(fmt / "sft_numina_math_cot_1k.jsonl")
    records = (
        read_records(fmt / "sft_sharegpt_zh_1k.jsonl")
        + read_records(fmt / "sft_toolcall_glaive_demo_zh_en.jsonl")
        + math
        + reasoning_records(math)
        + read_records(fmt / "tiny" / "tiny_sft.jsonl")
    )
    assert any(m.get("role") == "tool" for r in records for m in r["conversations"])
    return records


@pytest.mark.parametrize("records", ["generated_chats", "shared_chats"])
def test_chat_template_equals_transformers(tok, hf_tok, records, request):
    # transformers 5 loads both MiniMind dirs without complaint and renders every record, so no
    # fallback to a direct jinja2 rendering is needed.
    for rec in request.getfixturevalue(records):
        before = copy.deepcopy(rec)
        for agp in (False, True):
            for think in (False, True):
                ours = tok.apply_chat_template(rec["conversations"], add_generation_prompt=agp, open_thinking=think)
                theirs = original_minimind_render(
                    hf_tok, rec["conversations"], add_generation_prompt=agp, open_thinking=think
                )
                assert ours == theirs, (rec, agp, think)
        assert rec == before  # the caller's messages are not modified


def test_chat_prompt_for_generation(tok, hf_tok):
    # RLAIF style: drop the placeholder answer, ask for a generation prompt (thinking on/off).
    plain = [r for r in chat_records(12) if not any("tools" in m or "tool_calls" in m for m in r["conversations"])]
    for rec in rl_records(10) + plain:
        msgs = rec["conversations"][:-1]
        for think in (False, True):
            ours = tok.encode_chat(msgs, add_generation_prompt=True, open_thinking=think)
            assert ours == hf_tok.apply_chat_template(
                msgs, add_generation_prompt=True, open_thinking=think, tokenize=True, return_dict=False
            )


@pytest.mark.parametrize("tok_dir", ["project-made", "minimind3"], indirect=True)
def test_minimind3_template_details(tok):
    msgs = [{"role": "user", "content": "hi"}]
    assert tok.apply_chat_template(msgs, add_generation_prompt=True) == (
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    opened = tok.apply_chat_template(msgs, add_generation_prompt=True, open_thinking=True)
    assert opened.endswith("<|im_start|>assistant\n<think>\n")
    assert tok.apply_chat_template(msgs, add_generation_prompt=True, enable_thinking=True) == opened
    # tools: a JSON string in the system message, or a list argument, render the same
    tools = [{"type": "function", "function": {"name": "add", "parameters": {"b": 1, "a": "中"}}}]
    as_string = [{"role": "system", "content": "", "tools": json.dumps(tools)}] + msgs
    as_list = [{"role": "system", "content": ""}] + msgs
    rendered = tok.apply_chat_template(as_string)
    assert rendered == tok.apply_chat_template(as_list, tools=tools)
    assert '{"b": 1, "a": "中"}' in rendered  # transformers' tojson: no key sorting, no \u escapes
    with pytest.raises(MiniMindError, match="tool_calls` of message 1"):
        tok.apply_chat_template(msgs + [{"role": "assistant", "content": "", "tool_calls": "[{oops"}])


def test_minimind2_enable_thinking_is_passed_through(shared_data):
    d = shared_data / "tokenizer" / "minimind2"
    tok, hf = Tokenizer.from_dir(d), hf_tokenizer(d)
    msgs = [{"role": "user", "content": "1+1?"}]
    for flag in (False, True):
        assert tok.apply_chat_template(
            msgs, add_generation_prompt=True, enable_thinking=flag
        ) == hf.apply_chat_template(msgs, add_generation_prompt=True, enable_thinking=flag, tokenize=False)


# ----------------------------------------------------------------- 3. stream decoder ---


@pytest.mark.parametrize("skip", [False, True])
def test_stream_decoder_never_splits_characters(tok, skip):
    ids = tok.encode(SAMPLE * 2)
    stream = tok.stream_decoder(skip_special_tokens=skip)
    pieces = [stream.push(i) for i in ids]
    assert not any("\ufffd" in p for p in pieces)
    assert "" in pieces  # some emoji/CJK characters really were split across tokens
    assert "".join(pieces) + stream.flush() == tok.decode(ids, skip_special_tokens=skip)


def test_stream_decoder_flushes_an_unfinished_character(tok):
    ids = tok.encode("ok😀")
    stream = tok.stream_decoder()
    text = "".join(stream.push(i) for i in ids[:-1])
    assert text + stream.flush() == tok.decode(ids[:-1])  # cut mid-emoji: flush hands it out


def test_stream_decoder_on_invalid_bytes_equals_a_full_decode(tok):
    """Undertrained models emit invalid byte sequences; the pieces must still join to exactly
    what decoding all ids at once gives (no character lost or shifted)."""
    import random

    sequences = [[196, 196, 196, 196, 152, 291]]  # four stray lead bytes, then a real character
    sequences += [[rng.randrange(36, tok.vocab_size) for _ in range(40)] for rng in map(random.Random, range(100))]
    for ids in sequences:
        stream = tok.stream_decoder()
        assert "".join(stream.push(i) for i in ids) + stream.flush() == tok.decode(ids), ids


# ------------------------------------------------------------------------ 4. training ---


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tok")
    # The demo corpus (facts in English and Chinese) and 300 documents of babble: the demo corpus
    # alone has too few distinct words to fill 1000 tokens. 6000 lines a file at most.
    demo = build_demo_corpus(tmp / "demo", pretrain_docs=1500)
    files = [demo["pretrain"], demo["sft"], write_jsonl(tmp / "babble.jsonl", ({"text": t} for t in babble(1, 300)))]
    report = train_tokenizer(
        [str(f) for f in files], vocab_size=1000, out_dir=str(tmp / "trained"), holdout_fraction=0.05, max_lines=6000
    )
    return tmp / "trained", report


def test_train_tokenizer_report(trained):
    out, report = trained
    assert report["vocab_size"] == 1000 and report["out_dir"] == str(out)
    assert report["train_docs"] > 1000 and report["heldout_docs"] > 50
    assert report["chars_per_token"] > 1
    assert report["chars_per_token_en"] > 1.5 and report["chars_per_token_zh"] > 0.5


def test_trained_tokenizer_loads_everywhere(trained):
    out, _ = trained
    spec = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    assert [(a["id"], a["content"], a["special"]) for a in spec["added_tokens"]] == [
        (i, t, i < NUM_SPECIAL_TOKENS) for i, t in enumerate(SPECIAL_TOKENS)
    ]
    assert spec["pre_tokenizer"]["type"] == "ByteLevel" and spec["decoder"]["type"] == "ByteLevel"
    assert json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8")) == minimind_tokenizer_config()
    tok, hf = Tokenizer.from_dir(out), hf_tokenizer(out)
    assert (tok.vocab_size, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (1000, 1, 2, 0)
    ids = tok.encode(SAMPLE)
    assert tok.decode(ids) == SAMPLE and ids == hf(SAMPLE, add_special_tokens=False).input_ids
    msgs = [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "你好"},
        {"role": "assistant", "content": "Hi!", "reasoning_content": "greet"},
    ]
    prompt = tok.apply_chat_template(msgs, add_generation_prompt=True)
    assert prompt == hf.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert tok.encode_chat(msgs)[:1] == [1]  # <|im_start|> is one token
    tok.save(out / "copy")
    assert Tokenizer.from_dir(out / "copy").encode(SAMPLE) == ids


def test_train_tokenizer_formats_and_no_holdout(tmp_path):
    (tmp_path / "a.txt").write_text("First para\nline two\n\nSecond para\n\n\nThird\n", encoding="utf-8")
    (tmp_path / "b.jsonl").write_text(
        '{"text": "pretrain text"}\n\n'
        '{"conversations": [{"role": "user", "content": "问"}, '
        '{"role": "assistant", "content": "答"}]}\n',
        encoding="utf-8",
    )
    (tmp_path / "c.json").write_text(
        json.dumps(
            [
                {"title": "静夜思", "paragraphs": ["床前明月光，", "疑是地上霜。"]},
                {"chapter": "学而", "paragraphs": ["子曰"]},
            ],
            ensure_ascii=False,
        ),
        encoding="utf-8",
    )
    files = [str(tmp_path / n) for n in ("a.txt", "b.jsonl", "c.json")]
    report = train_tokenizer(files, vocab_size=300, out_dir=str(tmp_path / "t"), holdout_fraction=0)
    assert (report["train_docs"], report["heldout_docs"]) == (7, 0)
    assert report["chars_per_token"] > 0 and report["vocab_size"] <= 300
    tok = Tokenizer.from_dir(tmp_path / "t")
    assert tok.decode(tok.encode("床前明月光 hello")) == "床前明月光 hello"


def test_train_tokenizer_refuses_bad_input(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(MiniMindError, match="256"):
        train_tokenizer([str(empty)], vocab_size=100, out_dir=str(tmp_path / "o"))
    with pytest.raises(MiniMindError, match="empty.txt"):
        train_tokenizer([str(empty)], vocab_size=300, out_dir=str(tmp_path / "o"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": oops}\n', encoding="utf-8")
    with pytest.raises(MiniMindError, match=r"bad.jsonl:2: invalid JSON"):
        train_tokenizer([str(bad)], vocab_size=300, out_dir=str(tmp_path / "o"))
    with pytest.raises(MiniMindError, match="missing.txt: file not found"):
        train_tokenizer([str(tmp_path / "missing.txt")], vocab_size=300, out_dir=str(tmp_path / "o"))
    (tmp_path / "x.csv").write_text("a,b\n", encoding="utf-8")
    with pytest.raises(MiniMindError, match="x.csv: unsupported file type"):
        train_tokenizer([str(tmp_path / "x.csv")], vocab_size=300, out_dir=str(tmp_path / "o"))


# ---------------------------------------------------------------------- 5. bad input ---


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tokenizer trained in-test (no shared data needed), for the error tests."""
    d = tmp_path_factory.mktemp("tiny")
    (d / "corpus.txt").write_text(
        "\n\n".join(f"line {i} 中文 {random.Random(i).random()}" for i in range(50)), encoding="utf-8"
    )
    train_tokenizer([str(d / "corpus.txt")], vocab_size=300, out_dir=str(d / "tok"))
    return d / "tok"


def broken_copy(tiny_dir, tmp_path, **files):
    """A copy of tiny_dir where each keyword names a file to overwrite (None: delete it)."""
    d = tmp_path / "broken"
    d.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        content = files.get(name.replace(".", "_"), (tiny_dir / name).read_text(encoding="utf-8"))
        if content is not None:
            (d / name).write_text(content, encoding="utf-8")
    return d


def test_error_missing_dir(tmp_path):
    with pytest.raises(MiniMindError, match="nope: tokenizer directory not found"):
        Tokenizer.from_dir(tmp_path / "nope")


def test_error_missing_tokenizer_json(tiny_dir, tmp_path):
    with pytest.raises(MiniMindError, match=r"broken/tokenizer\.json: file not found"):
        Tokenizer.from_dir(broken_copy(tiny_dir, tmp_path, tokenizer_json=None))


def test_error_invalid_config_json_names_file_and_line(tiny_dir, tmp_path):
    with pytest.raises(MiniMindError, match=r"tokenizer_config\.json:3: invalid JSON"):
        Tokenizer.from_dir(broken_copy(tiny_dir, tmp_path, tokenizer_config_json='{\n "a": 1,\n "b": oops\n}'))


def test_error_not_a_tokenizer(tiny_dir, tmp_path):
    with pytest.raises(MiniMindError, match=r"tokenizer\.json: not a valid tokenizers file"):
        Tokenizer.from_dir(broken_copy(tiny_dir, tmp_path, tokenizer_json='{"hello": 1}'))


def test_error_missing_chat_template(tiny_dir, tmp_path):
    config = json.loads((tiny_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    del config["chat_template"]
    tok = Tokenizer.from_dir(broken_copy(tiny_dir, tmp_path, tokenizer_config_json=json.dumps(config)))
    assert tok.decode(tok.encode("line 1")) == "line 1"  # plain encoding still works
    with pytest.raises(MiniMindError, match=r"tokenizer_config\.json: no chat_template"):
        tok.apply_chat_template([{"role": "user", "content": "hi"}])


def test_error_bad_template_and_unknown_bos(tiny_dir, tmp_path):
    config = json.loads((tiny_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["chat_template"] = "{% for m in messages %}{{ m.content }"
    tok = Tokenizer.from_dir(broken_copy(tiny_dir, tmp_path, tokenizer_config_json=json.dumps(config)))
    with pytest.raises(MiniMindError, match="chat_template line 1"):
        tok.apply_chat_template([{"role": "user", "content": "hi"}])
    config["bos_token"] = "<s>"
    (tmp_path / "broken" / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(MiniMindError, match="bos_token '<s>' is not in the vocabulary"):
        Tokenizer.from_dir(tmp_path / "broken")
