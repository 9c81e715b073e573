"""`minimind reason`: the thinking/direct data mix, the think-aware loss weights, the
think-block checker, a short run through the CLI, and bad input."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from minimind.cli import main
from minimind.data import encode_chats
from minimind.infer.thinking import check_thinking
from minimind.train.reason import ReasonObjective, mix_conversations, split_answer

COT = "Half of 48 is 48/2 = 24.\nSo 48 + 24 = 72 in all.\n答案/Answer: 72"


def user(text="How many clips?"):
    return {"role": "user", "content": text}


# ------------------------------------------------------------------------------ the data mix


def test_split_answer_takes_the_last_paragraph_else_the_last_line():
    assert split_answer("Step 1.\n\nStep 2.\nStill 2.\n\nSo 5.") == ("Step 1.\n\nStep 2.\nStill 2.", "So 5.")
    assert split_answer(COT) == ("Half of 48 is 48/2 = 24.\nSo 48 + 24 = 72 in all.", "答案/Answer: 72")
    assert split_answer("  just one line  ") is None


def test_mix_thinking_and_direct():
    plain = [user(), {"role": "assistant", "content": COT}]
    think, how = mix_conversations(plain, think=True)
    assert (
        how == "split"
        and think[1]["reasoning_content"].endswith("in all.")
        and think[1]["content"] == "答案/Answer: 72"
    )
    assert mix_conversations(plain, think=False) == (plain, "direct")
    # own reasoning is kept when thinking, dropped when direct (both spellings)
    for turn in (
        {"role": "assistant", "content": "72", "reasoning_content": "48 + 24"},
        {"role": "assistant", "content": "<think>\n48 + 24\n</think>\n\n72"},
    ):
        assert mix_conversations([user(), turn], think=True) == ([user(), turn], "own")
        direct, how = mix_conversations([user(), turn], think=False)
        assert how == "direct" and direct[1] == {"role": "assistant", "content": "72"}
    # a one-line answer cannot think: the conversation stays direct
    assert mix_conversations([user(), {"role": "assistant", "content": "72"}], think=True)[1] == "direct"


# ------------------------------------------------------------------------------ the weights


def rendered(tok, conversations):
    """(ids, labels) rows as the packed data gives them: labels -100 off the assistant turns."""
    rows = []
    for ids, mask in encode_chats(tok, conversations):
        rows.append((torch.tensor(ids), torch.tensor(np.where(mask == 1, ids, -100))))
    return rows


def test_weights_zero_the_prompt_tokens_and_weight_the_boundary(tok):
    obj = ReasonObjective()
    obj.use_tokenizer(tok)
    think = [user(), {"role": "assistant", "content": "答案/Answer: 72", "reasoning_content": "48 + 24 = 72"}]
    direct = [user(), {"role": "assistant", "content": "72 clips"}]
    for conv, zero_text in ((think, "<think>\n"), (direct, "<think>\n\n</think>\n\n")):
        ids, labels = rendered(tok, [conv])[0]
        w = obj.token_weights(labels[None, 1:], 4.0)[0]
        pieces = [tok.decode([int(t)]) for t in ids[1:]]
        start = int((labels[1:] != -100).nonzero()[0])  # first trained target: the turn's <think>
        zeros = len(tok.encode(zero_text))
        assert pieces[start] == "<think>" and (w[:start] == 0).all()  # prompt side: no loss at all
        assert (w[start : start + zeros] == 0).all(), "tokens the generation prompt supplies are not trained"
        end = start + pieces[start + 1 :].index("</think>") + 1
        heavy = (w == 4.0).nonzero().flatten().tolist()
        if conv is think:
            # </think>, "\n", "\n", and the answer's first token
            assert heavy == [end, end + 1, end + 2, end + 3] and int(ids[end + 4]) == tok.encode("答案/Answer: 72")[0]
            assert (w[start + zeros : end] == 1).all()  # the reasoning
        else:
            assert heavy == [start + zeros]  # the first answer token after the prompt's empty block
        assert pieces[-2:] == ["<|im_end|>", "\n"] and (w[heavy[-1] + 1 : -1] == 1).all() and w[-1] == 0


def test_weighted_loss_is_a_normalised_weighted_mean(tok):
    from minimind import MiniMindForCausalLM, preset

    model = MiniMindForCausalLM(preset("nano", vocab_size=tok.vocab_size)).init_weights(0)
    think = [user(), {"role": "assistant", "content": "答案/Answer: 72", "reasoning_content": "48 + 24 = 72"}]
    rows = rendered(tok, [think, [user("Why?"), {"role": "assistant", "content": COT}]])
    n = max(len(i) for i, _ in rows)
    ids = torch.stack([F.pad(i, (0, n - len(i))) for i, _ in rows])
    labels = torch.stack([F.pad(lab, (0, n - len(lab)), value=-100) for _, lab in rows])
    segments = torch.stack([F.pad(torch.zeros(len(i), dtype=torch.long), (0, n - len(i)), value=-1) for i, _ in rows])
    batch = {
        "input_ids": ids,
        "labels": labels,
        "segment_ids": segments,
        "position_ids": torch.arange(n).expand(len(rows), n),
    }
    obj = ReasonObjective()
    obj.use_tokenizer(tok)
    obj.tag_penalty = 0.0  # the cross entropy alone (the tag penalty has its own test)
    with torch.no_grad():
        logits = model(ids, attention_mask=(segments >= 0).long()).logits[:, :-1]
        ce = F.cross_entropy(logits.transpose(1, 2), labels[:, 1:], ignore_index=-100, reduction="none")
        for weight in (1.0, 6.0):
            obj.weight = weight
            w = obj.token_weights(labels[:, 1:], weight)
            loss, _, _ = obj.loss_sum(model, batch)
            assert obj.count(batch) == pytest.approx(float(w.sum()))
            assert float(loss) / obj.count(batch) == pytest.approx(float((ce * w).sum() / w.sum()), rel=1e-4)
    # weight 1 is SFT's token mean over the trained tokens, less those the prompt supplies:
    # "<think>\n" of the thinking turn (2 tokens) and the direct turn's empty block (6)
    trained = int((labels[:, 1:] != -100).sum())
    assert int(obj.token_weights(labels[:, 1:], 1.0).sum()) == trained - 2 - 6


def closed_naively(tok, ids):
    """after_block, one token at a time: is the turn's think block closed after ids[:i + 1]?"""
    state, out = False, []
    for t in ids.tolist():
        piece = tok.decode([t])
        if piece == "</think>":
            state = True
        elif piece in ("<think>", "<|im_start|>", "<|im_end|>"):
            state = False
        out.append(state)
    return torch.tensor(out)


def test_tag_penalty_is_the_unlikelihood_of_tags_after_the_block(tok):
    from minimind import MiniMindForCausalLM, preset

    model = MiniMindForCausalLM(preset("nano", vocab_size=tok.vocab_size)).init_weights(0)
    think = [
        user(),
        {"role": "assistant", "content": "答案/Answer: 72", "reasoning_content": "48 + 24 = 72"},
        user("And twice that?"),
        {"role": "assistant", "content": "144"},
    ]
    direct = [user("Why?"), {"role": "assistant", "content": COT}]
    rows = rendered(tok, [think, direct])
    obj = ReasonObjective()
    obj.use_tokenizer(tok)
    obj.weight = 1.0
    for ids, labels in rows:
        closed = obj.after_block(ids[None, :-1])[0]
        assert closed.tolist() == closed_naively(tok, ids[:-1]).tolist()
        w = obj.token_weights(labels[None, 1:], 1.0)[0]
        penalised = tok.decode(ids[1:][closed & (w > 0)].tolist())  # whole characters: runs end at <|im_end|>
        # exactly the answers (from the blank line the model writes after its own </think>, to
        # <|im_end|>): never the reasoning, never what the prompt supplies
        expected = "\n\n答案/Answer: 72<|im_end|>144<|im_end|>" if ids is rows[0][0] else COT + "<|im_end|>"
        assert penalised == expected

    n = max(len(i) for i, _ in rows)
    batch = {
        "input_ids": torch.stack([F.pad(i, (0, n - len(i))) for i, _ in rows]),
        "labels": torch.stack([F.pad(lab, (0, n - len(lab)), value=-100) for _, lab in rows]),
        "segment_ids": torch.stack(
            [F.pad(torch.zeros(len(i), dtype=torch.long), (0, n - len(i)), value=-1) for i, _ in rows]
        ),
        "position_ids": torch.arange(n).expand(len(rows), n),
    }
    with torch.no_grad():
        obj.tag_penalty = 0.0
        plain, _, m0 = obj.loss_sum(model, batch)
        obj.tag_penalty = 2.5
        penalised, _, m1 = obj.loss_sum(model, batch)
        probs = model(batch["input_ids"], attention_mask=(batch["segment_ids"] >= 0).long()).logits[:, :-1].softmax(-1)
    targets = batch["labels"][:, 1:]
    where = obj.after_block(batch["input_ids"][:, :-1]) & (obj.token_weights(targets, 1.0) > 0)
    p_tags = (probs[..., tok.token_to_id("<think>")] + probs[..., tok.token_to_id("</think>")])[where]
    # (the difference of two fp32 sums of ~10^3: good to ~10^-4 of the loss)
    assert float(penalised - plain) == pytest.approx(2.5 * float(-torch.log1p(-p_tags).sum()), abs=1e-4)
    assert float(m0["tag_p"]) == pytest.approx(float(p_tags.sum()), rel=1e-4) == pytest.approx(float(m1["tag_p"]))


# ------------------------------------------------------------------------------ the checker


@pytest.mark.parametrize(
    "text, opened, finished, kind, problem",
    [
        ("48 + 24 = 72\n</think>\n\n72", True, True, "think", ""),
        ("<think>\n48 + 24\n</think>\n\n72", False, True, "think", ""),
        ("  \n<think>x</think>y", False, True, "think", ""),
        ("72 clips", False, True, "none", ""),
        ("", False, True, "malformed", "empty answer"),
        ("72 clips", False, False, "malformed", "cut off at the token limit"),
        ("48 + 24\n</think>\n\n72", True, False, "malformed", "cut off at the token limit"),
        ("48 + 24 and on and on", True, True, "malformed", "<think> is never closed"),
        ("\n</think>\n\n72", True, True, "malformed", "empty reasoning"),
        ("48 + 24\n</think>\n\n  ", True, True, "malformed", "no answer after </think>"),
        ("a</think>b</think>c", True, True, "malformed", "1 <think> and 2 </think> tags, expected one each"),
        ("<think>a</think>b", True, True, "malformed", "2 <think> and 1 </think> tags, expected one each"),
        ("72 clips</think>", False, True, "malformed", "</think> without <think>"),
        ("So <think>a</think> b", False, True, "malformed", "text before <think>"),
    ],
)
def test_check_thinking(text, opened, finished, kind, problem):
    check = check_thinking(text, opened=opened, finished=finished)
    assert (check.kind, check.problem) == (kind, problem)
    if kind == "think":
        assert check.reasoning and check.answer and "<" not in check.answer


# ------------------------------------------------------------------------------ the command


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_reason_trains_end_to_end(tmp_path, tok_dir, capsys):
    data = write_jsonl(
        tmp_path / "math.jsonl",
        [
            {
                "conversations": [
                    user(f"What is {i} + {i}?"),
                    {"role": "assistant", "content": f"{i} + {i} = {2 * i}.\n答案/Answer: {2 * i}"},
                ]
            }
            for i in range(40)
        ],
    )
    out = tmp_path / "model"
    argv = [
        "reason",
        "--preset",
        "nano",
        "--tokenizer",
        str(tok_dir),
        "--data",
        str(data),
        "--out",
        str(out),
        "--max-steps",
        "2",
        "--batch-size",
        "2",
        "--seq-len",
        "64",
        "--think-weight",
        "3",
        "--think-mix",
        "0.5",
        "--no-progress",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "thinking conversations" in printed and "boundary weight 3" in printed
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 2 and np.isfinite(records[-1]["val_loss"])
    assert (out / "model.safetensors").is_file()


def tokenizer_without_think_tokens(out) -> str:
    """A tokenizer with MiniMind2's three special tokens only (no <think>, </think>)."""
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers, trainers

    from minimind.tokenizer import Tokenizer, minimind_tokenizer_config

    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(["How many clips? 48 + 24 = 72"] * 10, trainer=trainer)
    Tokenizer(backend, minimind_tokenizer_config(), str(out)).save(out)
    return str(out)


def test_bad_input_fails_before_training(tmp_path, tok_dir, capsys):
    tokenizer = str(tok_dir)
    good = write_jsonl(
        tmp_path / "good.jsonl", [{"conversations": [user(), {"role": "assistant", "content": COT}]}] * 4
    )
    one_line = write_jsonl(
        tmp_path / "short.jsonl", [{"conversations": [user(), {"role": "assistant", "content": "72"}]}] * 4
    )
    broken = tmp_path / "broken.jsonl"
    broken.write_text(good.read_text() + '{"conversations": [{"role": "user"}]}\n')
    base = ["reason", "--preset", "nano", "--max-steps", "1", "--no-progress"]
    cases = [
        (["--tokenizer", tokenizer, "--data", str(good), "--think-mix", "1.5"], "--think-mix must be between 0 and 1"),
        (["--tokenizer", tokenizer, "--data", str(good), "--think-weight", "0"], "--think-weight must be positive"),
        (["--tokenizer", tokenizer, "--data", str(good), "--tag-penalty", "-1"], "--tag-penalty must be 0 or more"),
        (
            ["--tokenizer", tokenizer_without_think_tokens(tmp_path / "no-think"), "--data", str(good)],
            "has no <think> and </think>",
        ),
        (["--tokenizer", tokenizer, "--data", str(one_line)], "none of its 4 conversations can get a think block"),
        (["--tokenizer", tokenizer, "--data", str(broken)], f"{broken}:5:"),
    ]
    for i, (extra, message) in enumerate(cases):
        out = tmp_path / f"out{i}"
        assert main(base + extra + ["--out", str(out)]) == 2
        assert message in capsys.readouterr().err
        assert not (out / "checkpoints").exists()
