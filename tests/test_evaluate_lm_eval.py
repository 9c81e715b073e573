"""lm-evaluation-harness on a minimind model, offline: local tasks (YAML over local JSONL files)
through the harness's Python API and its command line, checked against direct forward passes."""
# ruff: noqa: E402

import json
import math

import pytest
import torch

# The imports below need lm_eval: after the skip (ruff: the file-level E402 exception above).
lm_eval = pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed (pip install -e '.[dev]')")
from lm_eval.tasks import TaskManager

import minimind
from minimind.cli import main
from minimind.errors import MiniMindError
from minimind.evaluate.lm_eval_adapter import MiniMindLM  # (registers "minimind")
from minimind.infer import SamplingParams, generate

CHOICE = [
    {"question": "What is 2 + 2?", "choices": ["3", "4", "five"], "answer": 1},
    {"question": "The capital of France is", "choices": ["Paris", "Rome", "Berlin, Germany"], "answer": 0},
    {"question": "中国的首都是", "choices": ["上海", "北京"], "answer": 1},
    {"question": "Once upon a", "choices": ["time", "banana"], "answer": 0},
]
GEN = [{"question": "Q: 1+1=", "answer": "2"}, {"question": "Q: say hi, then stop.", "answer": "hi"}]
TEXT = "Once upon a time there was a little model that learned to count to ten, then to twenty, then further."


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tok_dir):
    out = tmp_path_factory.mktemp("lm-eval") / "nano"
    assert main(["init", "--preset", "nano", "--tokenizer", str(tok_dir), "--out", str(out), "--seed", "3"]) == 0
    return out


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    """Three tasks of the three request types, each a YAML over a local JSONL file."""
    root = tmp_path_factory.mktemp("tasks")
    for name, rows in (("choice", CHOICE), ("gen", GEN), ("text", [{"text": TEXT}])):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))

    def task(name, data, body):
        (root / f"{name}.yaml").write_text(
            f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {root / data}\n"
            f"  cache_dir: {root / 'hf-cache'}\ntest_split: test\n" + body
        )

    task(
        "local_choice",
        "choice.jsonl",
        'output_type: multiple_choice\ndoc_to_text: "{{question}}"\n'
        'doc_to_choice: "{{choices}}"\ndoc_to_target: "{{answer}}"\nmetric_list:\n  - metric: acc\n',
    )
    task(
        "local_gen",
        "gen.jsonl",
        'output_type: generate_until\ndoc_to_text: "{{question}}"\n'
        'doc_to_target: "{{answer}}"\ngeneration_kwargs:\n  until: ["\\n", "."]\n  max_gen_toks: 6\n'
        "  do_sample: false\nmetric_list:\n  - metric: exact_match\n",
    )
    task(
        "local_text",
        "text.jsonl",
        'output_type: loglikelihood_rolling\ndoc_to_text: ""\n'
        'doc_to_target: "{{text}}"\nmetric_list:\n  - metric: bits_per_byte\n',
    )
    return root


def direct_logprob(model, tok, context: str, continuation: str) -> float:
    """log p(continuation | <bos> context) from one plain forward pass, no batching or padding."""
    ctx = [tok.bos_token_id] + tok.encode(context)
    whole = [tok.bos_token_id] + tok.encode(context + continuation)
    with torch.no_grad():
        logp = model(torch.tensor([whole])).logits[0].log_softmax(-1)
    return sum(logp[i - 1, whole[i]].item() for i in range(len(ctx), len(whole)))


def test_harness_scores_equal_direct_forward_passes(model_dir, task_dir):
    tm = TaskManager(include_path=str(task_dir), include_defaults=False)  # skip indexing 10k built-in tasks
    out = lm_eval.simple_evaluate(
        model="minimind",
        model_args=f"path={model_dir},batch_size=3",
        tasks=["local_choice", "local_gen", "local_text"],
        task_manager=tm,
        log_samples=True,
    )
    model, tok = minimind.load(model_dir)

    # multiple choice: every option's log-likelihood (batched, right-padded) = a lone forward pass
    correct = 0
    for sample in sorted(out["samples"]["local_choice"], key=lambda s: s["doc_id"]):
        doc = CHOICE[sample["doc_id"]]
        direct = [direct_logprob(model, tok, doc["question"], " " + c) for c in doc["choices"]]
        harness = [resp[0][0] for resp in sample["resps"]]
        assert harness == pytest.approx(direct, abs=1e-4)
        correct += max(range(len(direct)), key=direct.__getitem__) == doc["answer"]
    assert out["results"]["local_choice"]["acc,none"] == pytest.approx(correct / len(CHOICE))

    # generation: greedy, cut at the first stop string, at most max_gen_toks tokens
    for sample in out["samples"]["local_gen"]:
        prompt = [tok.bos_token_id] + tok.encode(GEN[sample["doc_id"]]["question"])
        [alone] = generate(
            model, tok, [prompt], SamplingParams(max_new_tokens=6, temperature=0, stop_strings=("\n", "."))
        )
        assert sample["resps"][0][0] == alone.text
        assert "\n" not in alone.text and "." not in alone.text and len(tok.encode(alone.text)) <= 6

    # perplexity: one window (the text is far shorter than the context): bits per byte of the whole text
    bits = -direct_logprob(model, tok, "", TEXT) / (len(TEXT.encode()) * math.log(2))
    assert out["results"]["local_text"]["bits_per_byte,none"] == pytest.approx(bits, rel=1e-4)


def test_rolling_windows_predict_every_token_once(model_dir):
    """Windows of 8 tokens: the first sees <bos>, each next one the 8 tokens before its targets."""
    lm = MiniMindLM(path=str(model_dir), max_length=8, batch_size=2)
    model, tok = lm.model, lm.tokenizer
    ids = tok.encode(TEXT)
    assert len(ids) > 20
    expected, start = 0.0, 0
    with torch.no_grad():
        while start < len(ids):
            end = min(start + 8, len(ids))
            inputs = ([tok.bos_token_id] + ids)[max(0, end - 8) : end]  # the 8 tokens before each target...
            logp = model(torch.tensor([inputs])).logits[0].log_softmax(-1)
            targets = ids[start:end]  # ...of which the last len(targets) positions are scored
            expected += sum(logp[len(inputs) - len(targets) + k, t].item() for k, t in enumerate(targets))
            start = end

    class Request:  # what the harness hands over: .args = (text,)
        args = (TEXT,)

    assert lm.loglikelihood_rolling([Request()], disable_tqdm=True)[0] == pytest.approx(expected, abs=1e-3)


def test_command_line_runs_a_local_task_and_saves_the_result(model_dir, task_dir, capsys):
    code = main(
        [
            "lm-eval",
            "--model_args",
            f"path={model_dir}",
            "--tasks",
            "local_choice",
            "--include_path",
            str(task_dir),
            "--limit",
            "3",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "local_choice" in printed and "acc" in printed  # the harness's own table
    saved = json.loads((model_dir / "eval" / "lm_eval.local_choice.json").read_text())
    assert saved["kind"] == "lm_eval" and saved["primary"] == "acc" and saved["metrics"]["n"] == 3
    assert 0 <= saved["metrics"]["acc"] <= 1 and saved["model"] == str(model_dir)


def test_bad_model_args_are_clear_errors(model_dir, tmp_path):
    with pytest.raises(MiniMindError, match="model directory not found"):
        MiniMindLM(path=str(tmp_path / "nowhere"))
    with pytest.raises(MiniMindError, match="path=MODEL_DIR"):
        MiniMindLM()
    with pytest.raises(MiniMindError, match="batch_size"):
        MiniMindLM(path=str(model_dir), batch_size="many")
