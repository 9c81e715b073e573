"""Multiple choice: the letter scorer against hand-computed log-softmax, the CSV layouts (on the real
C-Eval files), prompts, context fitting, error messages, and `minimind eval` end to end."""

import json
import math
import re

import pytest
import torch

from helpers import scrambled_model
from minimind import MiniMindError
from minimind.cli import main
from minimind.evaluate import read_results, write_result
from minimind.evaluate.choice import (
    Question,
    build_prompt,
    evaluate_choice,
    fit_prompt,
    letter_ids,
    letter_logprobs,
    load_exam,
    read_csv,
)
from minimind.model.minimind import CausalLMOutput

pytestmark = pytest.mark.usefixtures("one_thread")


def write_ceval(
    root, subjects=("accountant", "advanced_mathematics", "art_studies", "computer_network", "law"), questions=4
):
    """A small exam in C-Eval's layout: val/SUBJECT_val.csv and dev/SUBJECT_dev.csv (5 shots,
    with the explanation column), questions of the form "a + b = ?"; returns root."""
    for split, n, extra in (("val", questions, ""), ("dev", 5, ",explanation")):
        (root / split).mkdir(parents=True, exist_ok=True)
        for k, subject in enumerate(subjects):
            rows = ["id,question,A,B,C,D,answer" + extra]
            for i in range(n):
                a, b, right = i + k, 2 * i + 1, "ABCD"[(i + k) % 4]
                options = [a + b + "ABCD".index(x) - "ABCD".index(right) for x in "ABCD"]
                rows.append(
                    f'{i},"{a} + {b} = ?",'
                    + ",".join(map(str, options))
                    + f",{right}"
                    + (f",{a} + {b} = {a + b}" if extra else "")
                )
            (root / split / f"{subject}_{split}.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def model():
    """A nano model with weights scrambled to std 0.1, so its letter preferences differ by question."""
    return scrambled_model()


class FixedLogits(torch.nn.Module):
    """A 'model' whose next-token logits we choose, to check the scorer's arithmetic by hand."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.tensor(logits), requires_grad=False)

    def forward(self, input_ids, attention_mask=None, logits_to_keep=0):
        return CausalLMOutput(self.logits.expand(input_ids.shape[0], 1, -1))


def test_letter_logprobs_is_log_softmax_over_the_whole_vocabulary():
    logits = [2.0, 1.0, 0.0, -1.0, 3.0, 0.5]  # letters are ids 0..3; ids 4, 5 are other tokens
    log_z = math.log(sum(math.exp(x) for x in logits))  # 3.6041...
    scores = letter_logprobs(FixedLogits(logits), [[1, 2, 3]], [0, 1, 2, 3])
    assert scores.tolist()[0] == pytest.approx([x - log_z for x in logits[:4]], abs=1e-6)
    assert scores[0].argmax() == 0  # "A" wins although token 4 has the highest logit overall


def test_batched_left_padded_scores_equal_one_prompt_at_a_time(model, tok):
    prompts = [
        tok.encode(t)
        for t in (
            "以下是单项选择题。\n答案：",
            "Q?\nA. x\nB. y\nAnswer:",
            "长一些的问题，有很多字，要多几个词元才行。\n答案：",
        )
    ]
    ids = letter_ids(tok, "zh", "raw")
    batched = letter_logprobs(model, prompts, ids)
    for p, row in zip(prompts, batched):
        with torch.no_grad():
            alone = torch.log_softmax(model(torch.tensor([p])).logits[0, -1], -1)[ids]
        torch.testing.assert_close(row, alone, atol=1e-4, rtol=1e-4)


def test_reads_the_shared_ceval_files(shared_data):
    ceval = shared_data / "eval" / "ceval"
    exam = load_exam(ceval, "ceval", shots=5)
    assert exam.split == "val" and len(exam.subjects) == 52
    assert sum(len(s) for s in exam.subjects) == 1346
    assert all(len(v) == 5 for v in exam.dev.values()) and len(exam.dev) == 52
    q = read_csv(ceval / "val" / "computer_network_val.csv")[0]
    assert q.subject == "computer_network" and q.answer == "C" and q.options == ("1", "2", "3", "4")
    assert q.where.endswith("computer_network_val.csv:2")
    dev = read_csv(ceval / "dev" / "computer_network_dev.csv")  # with the explanation column
    assert len(dev) == 5 and dev[0].answer == "A"


def test_reads_cmmlu_and_mmlu_layouts(tmp_path):
    cmmlu = tmp_path / "cmmlu" / "test" / "anatomy.csv"
    cmmlu.parent.mkdir(parents=True)
    cmmlu.write_text(',Question,A,B,C,D,Answer\n0,"问题一，有逗号",甲,乙,丙,丁,B\n', encoding="utf-8")
    (tmp_path / "cmmlu" / "dev").mkdir()
    (tmp_path / "cmmlu" / "dev" / "anatomy.csv").write_text(
        ",Question,A,B,C,D,Answer\n0,例,1,2,3,4,D\n", encoding="utf-8"
    )
    exam = load_exam(tmp_path / "cmmlu", "cmmlu", shots=1)  # default split of cmmlu: test
    assert exam.subjects[0][0].question == "问题一，有逗号" and exam.subjects[0][0].answer == "B"
    assert exam.dev["anatomy"][0].answer == "D"
    mmlu = tmp_path / "abstract_algebra_test.csv"
    mmlu.write_text('"Find x, if 2x = 4.",1,2,3,4,b\n', encoding="utf-8")
    [q] = read_csv(mmlu)
    assert q.subject == "abstract_algebra" and q.answer == "B" and q.options[1] == "2"


@pytest.mark.parametrize(
    "text, message",
    [
        ("id,question,A,B,C,D\n0,q,1,2,3,4\n", ":1: header lacks column answer"),
        ("id,question,A,B,C,D,answer\n0,q,1,2,3,4,\n", ":2: empty answer"),
        ("id,question,A,B,C,D,answer\n0,q,1,2,3,4,A\n1,q,1,2,3,4,E\n", ":3: answer 'E' is not one of A, B, C, D"),
        ("id,question,A,B,C,D,answer\n0,q,1,2\n", ":2: 4 columns"),
        ("id,question,A,B,C,D,answer\n", "no questions (empty subject)"),
        ("", "empty file"),
    ],
)
def test_bad_csv_names_file_and_row(tmp_path, text, message):
    path = tmp_path / "law_val.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(
        MiniMindError, match="law_val.csv" + (".*" if message.startswith(":") else ": ") + re.escape(message)
    ):
        read_csv(path)


def test_wrong_layout_and_missing_dev_are_clear_errors(tmp_path):
    (tmp_path / "stuff").mkdir()
    with pytest.raises(MiniMindError, match=r"no val/\*\.csv files .*subfolders here: stuff"):
        load_exam(tmp_path, "ceval")
    single = write_ceval(tmp_path / "ceval") / "val" / "law_val.csv"
    assert len(load_exam(single, "ceval", shots=2).dev["law"]) == 2  # dev found beside val/
    folder = load_exam(single.parent, "ceval", shots=1, limit=1)  # the val folder itself
    assert len(folder.subjects) == 5 and folder.dev["law"] and folder.split == "val"
    lone = tmp_path / "law_val.csv"
    lone.write_bytes(single.read_bytes())
    with pytest.raises(MiniMindError, match="--shots 1: no dev file for subject law"):
        load_exam(lone, "ceval", shots=1)


def test_prompts_raw_and_chat(tok):
    q = Question("law", "问题？", ("甲", "乙", "丙", "丁"), "B", "x:2")
    shot = Question("law", "例题？", ("1", "2", "3", "4"), "C", "y:2")
    raw = tok.decode(build_prompt(tok, q, [shot], "zh", "raw"))
    shot_text = "例题？\nA. 1\nB. 2\nC. 3\nD. 4\n答案：C\n\n"
    assert (
        raw
        == "以下是单项选择题，请直接给出正确答案的选项。\n\n" + shot_text + "问题？\nA. 甲\nB. 乙\nC. 丙\nD. 丁\n答案："
    )
    chat = tok.decode(build_prompt(tok, q, [shot], "zh", "chat"))
    assert chat.count("<|im_start|>user") == 2 and "D. 4<|im_end|>\n<|im_start|>assistant\n" in chat
    assert chat.endswith("D. 丁<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")
    english = tok.decode(build_prompt(tok, q, [], "en", "raw"))
    assert english.startswith(
        "The following are multiple choice questions (with answers) about law."
    ) and english.endswith("Answer:")
    assert letter_ids(tok, "en", "raw") == [
        tok.token_to_id("ĠA"),
        tok.token_to_id("ĠB"),
        tok.token_to_id("ĠC"),
        tok.token_to_id("ĠD"),
    ]


def test_shots_are_dropped_to_fit_and_too_long_question_errors(tok):
    q = Question("law", "问题？", ("甲", "乙", "丙", "丁"), "B", "law_val.csv:7")
    shots = [Question("law", "很长的例题" * 20, ("1", "2", "3", "4"), "C", "d:2")] * 3
    zero = len(build_prompt(tok, q, [], "zh", "raw"))
    ids, k = fit_prompt(tok, q, shots, "zh", "raw", context=zero + 5)
    assert k == 0 and len(ids) == zero
    with pytest.raises(
        MiniMindError,
        match="law_val.csv:7: the question takes .* tokens zero-shot, more than the model's context of 10",
    ):
        fit_prompt(tok, q, shots, "zh", "raw", context=10)


def test_evaluate_choice_per_subject_and_average(model, tok, tmp_path):
    exam = load_exam(write_ceval(tmp_path / "ceval"), "ceval", shots=1, limit=2)
    exam.subjects = exam.subjects[:3]
    result = evaluate_choice(model, tok, exam, "raw", batch_size=4, log=lambda *a: None)
    m = result["metrics"]
    assert m["n"] == 6 and m["chance"] == 0.25 and 0 <= m["accuracy"] <= 1 and 0 < m["letter_mass"] < 1
    assert list(result["details"]["subjects"]) == ["accountant", "advanced_mathematics", "art_studies"]
    per = result["details"]["subjects"].values()
    assert m["accuracy_macro"] == pytest.approx(sum(s["accuracy"] for s in per) / 3)


def test_eval_cli_writes_result_json(tmp_path, tok_dir, capsys):
    model_dir = tmp_path / "nano"
    assert main(["init", "--preset", "nano", "--tokenizer", str(tok_dir), "--out", str(model_dir)]) == 0
    capsys.readouterr()
    data = write_ceval(tmp_path / "ceval") / "val" / "computer_network_val.csv"
    assert (
        main(["eval", "--model", str(model_dir), "--task", "ceval", "--data", str(data), "--limit", "3", "--json"]) == 0
    )
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads((model_dir / "eval" / "ceval.json").read_text())
    assert printed == saved and saved["kind"] == "choice" and saved["primary"] == "accuracy"
    assert saved["metrics"]["n"] == 3 and saved["split"] == "val" and saved["shots"] == 0 and saved["limit"] == 3
    assert [r["task"] for r in read_results(model_dir)] == ["ceval"]
    # bad input fails before the model loads, with one line naming the problem
    assert main(["eval", "--model", str(tmp_path / "missing"), "--task", "ceval", "--data", str(tmp_path)]) == 2
    assert "no val/*.csv files" in capsys.readouterr().err


def test_results_go_next_to_the_adapter_and_are_validated(tmp_path):
    result = {"task": "ppl", "kind": "perplexity", "metrics": {"bits_per_byte": 1.5}, "primary": "bits_per_byte"}
    path = write_result(result, tmp_path / "base", lora=tmp_path / "adapter")
    assert path == tmp_path / "adapter" / "eval" / "ppl.json"
    assert read_results(tmp_path / "adapter")[0]["minimind_version"]
    with pytest.raises(MiniMindError, match="primary metric 'accuracy' is not in its metrics"):
        write_result({**result, "primary": "accuracy"}, tmp_path)
    (tmp_path / "base" / "eval").mkdir(parents=True)
    (tmp_path / "base" / "eval" / "junk.json").write_text("{}")
    with pytest.raises(MiniMindError, match="junk.json: not an evaluation result"):
        read_results(tmp_path / "base")
