"""`minimind dpo`: the loss maths against a direct computation, training, resume, bad input."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from helpers import train_project_tokenizer
from minimind import MiniMindForCausalLM, preset
from minimind.checkpoint import load_model, save_model_dir
from minimind.cli import main
from minimind.data.pairs import build_pair_datasets, cut_pair, length_grouped_batches
from minimind.tokenizer import Tokenizer
from minimind.train.dpo import DPOObjective, dpo_losses, sequence_logps
from minimind.train.trainer import TrainConfig

QUESTIONS = [
    "头痛怎么办？",
    "How do I treat a mild fever?",
    "感冒了应该吃什么？",
    "What is a healthy breakfast?",
    "失眠有什么好办法？",
    "How much water should I drink?",
    "咳嗽一直不好怎么办？",
    "Is walking good exercise?",
]


def pair(q: str, i: int, system: bool = False) -> dict:
    prompt = ([{"role": "system", "content": "你是医生。"}] if system else []) + [{"role": "user", "content": q}]
    good = f"建议多休息，多喝水，如果{i + 2}天不见好转请及时就医。Rest and drink water."
    bad = "不知道。" * (1 + i % 3)
    return {
        "chosen": prompt + [{"role": "assistant", "content": good}],
        "rejected": prompt + [{"role": "assistant", "content": bad}],
    }


def write_jsonl(path: Path, rows) -> Path:
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows), encoding="utf-8"
    )
    return path


@pytest.fixture(scope="module")
def setup(tok_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("dpo")
    tok = str(tok_dir)
    assert main(["init", "--preset", "nano", "--tokenizer", tok, "--out", str(root / "nano"), "--seed", "3"]) == 0
    data = write_jsonl(root / "pairs.jsonl", [pair(q, i, system=i % 4 == 0) for i, q in enumerate(QUESTIONS * 2)])
    return {"root": root, "tok": tok, "model": root / "nano", "data": data}


def dpo_args(s, out, *extra):
    return [
        "dpo",
        "--init",
        str(s["model"]),
        "--data",
        str(s["data"]),
        "--out",
        str(out),
        "--batch-size",
        "4",
        "--seq-len",
        "96",
        "--lr",
        "3e-3",
        "--log-every",
        "1",
        "--save-every",
        "2",
        "--eval-every",
        "2",
        "--val-fraction",
        "0.25",
        "--max-steps",
        "4",
        "--seed",
        "1",
        "--no-progress",
        *extra,
    ]


def records(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- the maths


def test_log_probs_and_losses_match_a_direct_computation(setup):
    """Sequence log-probs of a padded batch = a per-token sum over each side run alone;
    the DPO, IPO and hinge losses = their formulas written out by hand."""
    tokenizer = Tokenizer.from_dir(setup["model"])
    ds, _ = build_pair_datasets([str(setup["data"])], tokenizer, seq_len=96)
    model = load_model(setup["model"]).float()
    batch = ds.get_batch([0, 1])
    with torch.no_grad():
        logp, n, _ = sequence_logps(model, batch)
        direct, counts = [], []
        for side, p in [
            (ds.chosen[0], ds.prompt_len[0]),
            (ds.chosen[1], ds.prompt_len[1]),
            (ds.rejected[0], ds.prompt_len[0]),
            (ds.rejected[1], ds.prompt_len[1]),
        ]:
            log_probs = torch.log_softmax(model(torch.tensor(side[None])).logits[0].double(), -1)  # unpadded
            direct.append(sum(log_probs[t - 1, side[t]].item() for t in range(p, len(side))))  # token t from t-1
            counts.append(len(side) - p)
    assert logp.tolist() == pytest.approx(direct, abs=1e-3)
    assert n.tolist() == counts

    pc, pr, rc, rr, beta = -10.0, -14.0, -11.0, -12.0, 0.1
    h = (pc - rc) - (pr - rr)  # 3.0
    t = lambda x: torch.tensor([x], dtype=torch.float64)
    loss, chosen_r, rejected_r = dpo_losses(t(pc), t(pr), t(rc), t(rr), beta, "sigmoid")
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-beta * h)))
    assert (chosen_r - rejected_r).item() == pytest.approx(beta * h)
    eps = 0.2
    loss, _, _ = dpo_losses(t(pc), t(pr), t(rc), t(rr), beta, "sigmoid", eps)
    assert loss.item() == pytest.approx(
        (1 - eps) * math.log(1 + math.exp(-beta * h)) + eps * math.log(1 + math.exp(beta * h))
    )
    assert dpo_losses(t(pc), t(pr), t(rc), t(rr), beta, "ipo")[0].item() == pytest.approx((h - 1 / (2 * beta)) ** 2)
    assert dpo_losses(t(pc), t(pr), t(rc), t(rr), beta, "hinge")[0].item() == pytest.approx(max(0.0, 1 - beta * h))


def test_objective_sums_per_pair_with_length_norm_and_sft_term(setup):
    tokenizer = Tokenizer.from_dir(setup["model"])
    ds, _ = build_pair_datasets([str(setup["data"])], tokenizer, seq_len=96)
    ds.set_reference(torch.tensor([[-50.0, -40.0], [-60.0, -30.0]], dtype=torch.float64).repeat(8, 1))
    model = load_model(setup["model"])
    batch = ds.get_batch([0, 1])
    objective = DPOObjective()
    objective.cfg = TrainConfig(stage="dpo", dpo_beta=0.2, dpo_length_norm=True, dpo_sft_weight=0.5)
    with torch.no_grad():
        loss, _, metrics = objective.loss_sum(model, batch)
        logp, n, _ = sequence_logps(model, batch)
    mean = (logp / n).double()
    ref = batch["ref_logp"] / torch.stack([n[:2], n[2:]], 1)
    margins = 0.2 * ((mean[:2] - ref[:, 0]) - (mean[2:] - ref[:, 1]))
    expected = sum(math.log(1 + math.exp(-m)) for m in margins.tolist()) + 0.5 * -mean[:2].sum().item()
    assert objective.count(batch) == 2
    assert loss.item() == pytest.approx(expected, rel=1e-4)
    assert metrics["reward_margin"] == pytest.approx(margins.sum().item(), rel=1e-4)
    assert metrics["reward_accuracy"] == (margins > 0).sum().item()
    assert metrics["sft_loss"] == pytest.approx(-mean[:2].sum().item(), rel=1e-4)


def test_a_dropped_dummy_pair_counts_nowhere(setup):
    """Under FSDP evaluation a rank's short share ends with a dummy pair that must still run:
    dropping it leaves the loss, the count and every metric of the real pairs alone."""
    tokenizer = Tokenizer.from_dir(setup["model"])
    ds, _ = build_pair_datasets([str(setup["data"])], tokenizer, seq_len=96)
    ds.set_reference(torch.tensor([[-50.0, -40.0], [-60.0, -30.0]], dtype=torch.float64).repeat(8, 1))
    model = load_model(setup["model"])
    objective = DPOObjective()
    objective.cfg = TrainConfig(stage="dpo", dpo_sft_weight=0.5)
    with torch.no_grad():
        alone = objective.loss_sum(model, real := ds.get_batch([1, 2]))
        padded = ds.get_batch([1, 2, 0])
        objective.drop_last_unit(padded)
        with_dummy = objective.loss_sum(model, padded)
    assert objective.count(padded) == objective.count(real) == 2
    assert with_dummy[0].item() == pytest.approx(alone[0].item(), rel=1e-5)
    assert with_dummy[2] == pytest.approx(alone[2], rel=1e-5)


# ---------------------------------------------------------------- data


def test_both_sides_rendered_alike_and_truncated_around_the_reply(setup):
    tokenizer = Tokenizer.from_dir(setup["model"])
    ds, _ = build_pair_datasets([str(setup["data"])], tokenizer, seq_len=96)
    for c, r, p in zip(ds.chosen, ds.rejected, ds.prompt_len):
        assert np.array_equal(c[:p], r[:p])  # one prompt, two replies
        assert tokenizer.decode(c[:p].tolist()).endswith("<|im_start|>assistant\n")
        assert tokenizer.decode(c[p:].tolist()).startswith("<think>\n\n</think>\n\n")  # the same template on both
        assert c[-1] == r[-1] == tokenizer.token_to_id("<|im_end|>")
    # a long prompt keeps its end, the replies their start, and both keep the same prompt tokens
    ids = np.arange(100, 200)
    mask_c = np.r_[np.zeros(60), np.ones(40)].astype(np.uint8)
    rej = np.r_[ids[:60], np.arange(500, 510)]
    c, r, p, cut = cut_pair(ids, mask_c, rej, np.r_[np.zeros(60), np.ones(10)].astype(np.uint8), 64, "x:1")
    assert cut and p == 32 and len(c) == 64 and len(r) == 42
    assert c[:p].tolist() == r[:p].tolist() == list(range(128, 160)) and c[p:].tolist() == list(range(160, 192))
    # length-grouped batches: a permutation of the pairs, the same for the same (seed, epoch)
    lengths = np.random.default_rng(0).integers(10, 500, 103)
    batches = length_grouped_batches(lengths, 4, seed=1, epoch=0)
    flat = np.concatenate(batches)
    assert len(flat) == 100 and len(set(flat.tolist())) == 100
    assert all(np.array_equal(a, b) for a, b in zip(batches, length_grouped_batches(lengths, 4, seed=1, epoch=0)))


# ---------------------------------------------------------------- training


def test_dpo_trains_logs_pair_metrics_and_resumes_exactly(setup, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(dpo_args(setup, out)) == 0
    assert "data: 12 pairs of at most 96 tokens a side" in capsys.readouterr().out  # 16 pairs, a quarter held out
    rows = records(out)
    steps = [r for r in rows if "loss" in r]
    assert len(steps) == 4
    for key in ("reward_margin", "reward_accuracy", "logp_chosen", "logp_rejected"):
        assert all(key in r for r in steps)
    assert steps[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)  # policy = reference at the start
    val = [r for r in rows if "val_loss" in r]
    assert steps[-1]["loss"] < 0.3 and steps[-1]["reward_accuracy"] == 1.0 and val[-1]["val_loss"] < 0.3
    assert len(val) == 2 and {"val_reward_accuracy", "val_reward_margin"} <= set(val[-1])
    assert (out / "ref_logps.safetensors").is_file() and (out / "model.safetensors").is_file()

    # Resume from the step-2 checkpoint: the same losses and bit-identical weights.
    again = tmp_path / "again"
    shutil.copytree(out, again)
    for ckpt in sorted((again / "checkpoints").iterdir())[1:]:
        shutil.rmtree(ckpt)
    assert main(dpo_args(setup, again, "--resume")) == 0
    assert [r["loss"] for r in records(again) if "loss" in r] == [r["loss"] for r in steps]
    final, resumed = load_file(str(out / "model.safetensors")), load_file(str(again / "model.safetensors"))
    assert all(torch.equal(final[k], resumed[k]) for k in final)

    # The reference run every step (MiniMind's way) gives the same training as the cache.
    online = tmp_path / "online"
    assert main(dpo_args(setup, online, "--ref-mode", "online", "--max-steps", "2")) == 0
    assert [r["loss"] for r in records(online) if "loss" in r] == pytest.approx(
        [r["loss"] for r in steps[:2]], abs=1e-5
    )


# ---------------------------------------------------------------- bad input


def test_bad_input_fails_before_training(setup, tmp_path, capsys):
    good = pair("头痛怎么办？", 0)
    no_rejected = write_jsonl(tmp_path / "a.jsonl", [good, good, {"chosen": good["chosen"]}])
    args = dpo_args(setup, tmp_path / "x")
    args[args.index("--data") + 1] = str(no_rejected)
    assert main(args) == 2
    assert f"{no_rejected}:3: missing 'rejected'" in capsys.readouterr().err

    other_prompt = {
        "chosen": good["chosen"],
        "rejected": [{"role": "user", "content": "别的问题"}, good["rejected"][-1]],
    }
    args[args.index("--data") + 1] = str(write_jsonl(tmp_path / "b.jsonl", [good, other_prompt]))
    assert main(args) == 2
    assert "b.jsonl:2: 'chosen' and 'rejected' have different prompts" in capsys.readouterr().err

    assert main(dpo_args(setup, tmp_path / "x", "--dpo-loss", "kto")) == 2
    assert "unknown --dpo-loss 'kto'" in capsys.readouterr().err
    assert main(dpo_args(setup, tmp_path / "x", "--strip-empty-think")) == 2
    assert "both sides of a pair the same way" in capsys.readouterr().err

    # A reference with another tokenizer (of the same size), and one whose vocabulary has another size.
    other = tmp_path / "other"
    assert (
        main(
            [
                "init",
                "--preset",
                "nano",
                "--tokenizer",
                str(train_project_tokenizer(tmp_path / "tok2", seed=1)),
                "--out",
                str(other),
            ]
        )
        == 0
    )
    assert main(dpo_args(setup, tmp_path / "y", "--ref", str(other))) == 2
    assert "its tokenizer differs from the policy's" in capsys.readouterr().err
    bigger = tmp_path / "bigger"
    tokenizer = Tokenizer.from_dir(setup["model"])
    save_model_dir(MiniMindForCausalLM(preset("nano", vocab_size=tokenizer.vocab_size + 64)), bigger, tokenizer)
    assert main(dpo_args(setup, tmp_path / "z", "--ref", str(bigger))) == 2
    assert "vocab_size 6464 does not match the policy's 6400" in capsys.readouterr().err
    assert not (tmp_path / "z" / "checkpoints").exists()
