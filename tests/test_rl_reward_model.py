"""`--reward-model DIR` (rl/reward_model.py): a tiny random LlamaForSequenceClassification with a
tokenizer made here, saved to a directory. Scores are the same in a batch as one by one and from
run to run; the chat template is used when the tokenizer has one; remote code and models with
more than one output are refused; `minimind grpo --reward reward_model=1` runs end to end."""

import json

import pytest
import torch

from helpers import rl_records, scrambled_model, write_jsonl
from minimind.errors import MiniMindError

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = [
    "Tom has 5 apples and buys 7 more. How many now?",
    "He has 12 apples now.",
    "The answer is 12.",
    "I do not know, maybe 57 or so.",
] * 20


def tiny_tokenizer(template: str | None = None):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    t = Tokenizer(models.BPE(unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<unk>", "<pad>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    t.train_from_iterator(TEXTS, trainer)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=t, unk_token="<unk>", eos_token="<eos>")
    if template:
        fast.chat_template = template
    return fast


def save_reward_model(path, template=None, num_labels=1, pad=True):
    tok = tiny_tokenizer(template)
    if pad:
        tok.pad_token = "<pad>"
    config = transformers.LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        num_labels=num_labels,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    transformers.LlamaForSequenceClassification(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory):
    return save_reward_model(tmp_path_factory.mktemp("rm") / "plain")


RECORD = {"conversations": [{"role": "user", "content": TEXTS[0]}, {"role": "assistant", "content": ""}], "gt": ["12"]}
REPLIES = ["He has 12 apples now.", "The answer is 12.", "maybe 57", "", "I do not know, " * 6]


def test_batched_scores_equal_one_by_one_and_repeat(rm_dir):
    from minimind.rl.reward_model import RewardModel

    rm = RewardModel(rm_dir, "cpu", batch_size=3)  # batches of unequal lengths, padded
    batched = rm.batch(REPLIES, [RECORD] * len(REPLIES))
    alone = [rm(r, RECORD) for r in REPLIES]
    assert len(batched) == len(REPLIES) and all(isinstance(s, float) for s in batched)
    assert batched == pytest.approx(alone, abs=1e-5)
    assert len(set(round(s, 6) for s in batched)) > 1  # it tells replies apart
    again = RewardModel(rm_dir, "cpu", batch_size=5).batch(REPLIES, [RECORD] * len(REPLIES))
    assert again == pytest.approx(batched, abs=1e-5)
    # plain text without a chat template: the prompt's messages, then the reply
    assert rm.text("The answer is 12.", RECORD) == TEXTS[0] + "\nThe answer is 12."


def test_the_chat_template_is_used_when_present(tmp_path):
    from minimind.rl.reward_model import RewardModel

    template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    rm = RewardModel(save_reward_model(tmp_path / "templated", template=template), "cpu")
    assert rm.text("12.", RECORD) == f"[user] {TEXTS[0]}\n[assistant] 12.\n"
    assert rm.batch(REPLIES[:2], [RECORD] * 2) == pytest.approx([rm(r, RECORD) for r in REPLIES[:2]], abs=1e-5)


def test_a_tokenizer_without_pad_token_uses_its_eos(tmp_path):
    from minimind.rl.reward_model import RewardModel

    rm = RewardModel(save_reward_model(tmp_path / "nopad", pad=False), "cpu", batch_size=4)
    assert rm.tokenizer.pad_token == "<eos>"
    assert rm.batch(REPLIES, [RECORD] * len(REPLIES)) == pytest.approx([rm(r, RECORD) for r in REPLIES], abs=1e-5)


def test_remote_code_and_wrong_directories_are_refused(tmp_path, rm_dir):
    from minimind.rl.reward_model import RewardModel

    remote = save_reward_model(tmp_path / "remote")
    config = json.loads((remote / "config.json").read_text())
    config["auto_map"] = {"AutoModelForSequenceClassification": "modeling_x.XForReward"}
    (remote / "config.json").write_text(json.dumps(config))
    with pytest.raises(MiniMindError, match="trust_remote_code"):
        RewardModel(remote)
    with pytest.raises(MiniMindError, match="no config.json"):
        RewardModel(tmp_path / "nowhere")
    with pytest.raises(MiniMindError, match="num_labels 1"):
        RewardModel(save_reward_model(tmp_path / "two", num_labels=2))


def test_grpo_with_a_reward_model_runs(rm_dir, tmp_path, tok_dir):
    from minimind.checkpoint import save_model_dir
    from minimind.rl.rewards import combine
    from minimind.tokenizer import Tokenizer
    from minimind.train.config import TrainConfig
    from minimind.train.trainer import train

    with pytest.raises(MiniMindError, match="--reward-model DIR"):
        combine("reward_model=1")
    save_model_dir(scrambled_model(), tmp_path / "base", Tokenizer.from_dir(tok_dir))
    write_jsonl(tmp_path / "rl.jsonl", rl_records(8))
    out = tmp_path / "run"
    cfg = TrainConfig.for_stage(
        "grpo",
        data=[str(tmp_path / "rl.jsonl")],
        init=str(tmp_path / "base"),
        out=str(out),
        max_gen_len=8,
        num_generations=2,
        batch_size=2,
        max_steps=2,
        save_every=2,
        log_every=1,
        dtype="fp32",
        progress=False,
        seq_len=96,
        reward="reward_model=1,repetition=0.5",
        reward_model=str(rm_dir),
        reward_model_batch=3,
    )
    train(cfg)
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = [m for m in logged if "loss" in m]
    assert len(logged) == 2
    assert {"reward", "reward_reward_model", "reward_repetition"} <= set(logged[-1])
    assert all(m["reward_reward_model"] != 0.0 for m in logged)
    assert (out / "model.safetensors").is_file()
