"""Continuous batching: rows that join a running batch at different times, and leave it at
different times, generate exactly what they generate alone."""

import pytest
import torch
from helpers import scrambled_model

from minimind.infer import SamplingParams, generate
from minimind.infer.continuous import RunningBatch, Sequence

GREEDY = {"temperature": 0.0, "stop_token_ids": ()}
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizer(tok):
    """conftest's minimind3 tokenizer, under the name these tests use."""
    return tok


@pytest.fixture(scope="module")
def model():
    return scrambled_model()


def run(model, tokenizer, arrivals: dict[int, list[Sequence]]) -> None:
    """Step a RunningBatch, adding arrivals[k] before step k, until every row has finished."""
    batch, k = RunningBatch(model), 0
    while batch.sequences or any(key >= k for key in arrivals):
        batch.add(arrivals.get(k, []))
        batch.step()
        k += 1


def test_staggered_rows_equal_each_alone(model, tokenizer):
    texts = ["Once upon a time, in a small village", "你好", "The answer is", "a b c d e f g h i j k l m n o p"]
    prompts = [tokenizer.encode(t) for t in texts]
    lengths = [12, 20, 5, 16]  # rows leave at different steps, so the cache gets trimmed
    params = [SamplingParams(max_new_tokens=n, **GREEDY) for n in lengths]
    alone = [generate(model, tokenizer, [p], q)[0] for p, q in zip(prompts, params)]
    seqs = [Sequence(model, tokenizer, p, q) for p, q in zip(prompts, params)]
    # two arrive together (one prefill), the others while those are generating
    run(model, tokenizer, {0: seqs[:2], 3: [seqs[2]], 9: [seqs[3]]})
    assert [s.row.completion() for s in seqs] == alone


def test_seeded_sampling_is_reproducible_in_any_company(model, tokenizer):
    prompt = tokenizer.encode("The answer is")
    params = SamplingParams(max_new_tokens=12, temperature=1.0, top_p=0.9, seed=7, stop_token_ids=())
    [alone] = generate(model, tokenizer, [prompt], params)
    seq = Sequence(model, tokenizer, prompt, params)
    other = Sequence(model, tokenizer, tokenizer.encode("你好，世界"), SamplingParams(max_new_tokens=20, **GREEDY))
    run(model, tokenizer, {0: [other], 4: [seq]})
    assert seq.row.completion() == alone


def test_cancelled_rows_leave_and_the_rest_continue(model, tokenizer):
    prompts = [tokenizer.encode(t) for t in ("Once upon a time", "你好")]
    params = SamplingParams(max_new_tokens=10, **GREEDY)
    alone = generate(model, tokenizer, [prompts[1]], params)[0]
    seqs = [Sequence(model, tokenizer, p, params) for p in prompts]
    batch = RunningBatch(model)
    batch.add(seqs)
    batch.step()
    seqs[0].cancelled = True
    assert batch.drop_cancelled() == [seqs[0]]
    while batch.sequences:
        batch.step()
    assert seqs[0].row.finish_reason is None and seqs[1].row.completion() == alone


def test_openai_penalties_change_the_choice(model, tokenizer):
    """A frequency penalty pushes down tokens already generated: greedy output with a large
    penalty repeats no token, and equals a naive loop that applies the formula itself."""
    prompt = tokenizer.encode("a a a a a")
    params = SamplingParams(max_new_tokens=8, **GREEDY)
    seq = Sequence(model, tokenizer, prompt, params, frequency_penalty=100.0)
    run(model, tokenizer, {0: [seq]})
    ids, counts = list(prompt), torch.zeros(model.config.vocab_size)
    with torch.no_grad():
        for _ in range(8):
            logits = model(torch.tensor([ids])).logits[0, -1] - 100.0 * counts
            ids.append(int(logits.argmax()))
            counts[ids[-1]] += 1
    assert seq.row.token_ids == ids[len(prompt):]
    assert len(set(seq.row.token_ids)) == 8
