"""The generation engine's continuous batching: rows that join a running batch at different
times, and leave it at different times, generate exactly what they generate alone; one row's
broken sampling ends that row alone; log-probabilities are the model's own."""

import pytest
import torch

from helpers import scrambled_model
from minimind.errors import MiniMindError
from minimind.infer import Engine, SamplingParams, Sequence, generate

GREEDY = {"temperature": 0.0, "stop_token_ids": ()}
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizer(tok):
    """conftest's project-made tokenizer (vocabulary 6400), under the name these tests use."""
    return tok


@pytest.fixture(scope="module")
def model():
    return scrambled_model()


def run(model, tokenizer, arrivals: dict[int, list[Sequence]]) -> None:
    """Step an Engine, adding arrivals[k] before step k, until every row has finished."""
    batch, k = Engine(model), 0
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
    assert [s.completion() for s in seqs] == alone


def test_seeded_sampling_is_reproducible_in_any_company(model, tokenizer):
    prompt = tokenizer.encode("The answer is")
    params = SamplingParams(max_new_tokens=12, temperature=1.0, top_p=0.9, seed=7, stop_token_ids=())
    [alone] = generate(model, tokenizer, [prompt], params)
    seq = Sequence(model, tokenizer, prompt, params)
    other = Sequence(model, tokenizer, tokenizer.encode("你好，世界"), SamplingParams(max_new_tokens=20, **GREEDY))
    run(model, tokenizer, {0: [other], 4: [seq]})
    assert seq.completion() == alone


def test_cancelled_rows_leave_and_the_rest_continue(model, tokenizer):
    prompts = [tokenizer.encode(t) for t in ("Once upon a time", "你好")]
    params = SamplingParams(max_new_tokens=10, **GREEDY)
    alone = generate(model, tokenizer, [prompts[1]], params)[0]
    seqs = [Sequence(model, tokenizer, p, params) for p in prompts]
    batch = Engine(model)
    batch.add(seqs)
    batch.step()
    seqs[0].cancelled = True
    assert batch.drop_cancelled() == [seqs[0]]
    while batch.sequences:
        batch.step()
    assert seqs[0].finish_reason is None and seqs[1].completion() == alone


def test_openai_penalties_change_the_choice(model, tokenizer):
    """A frequency penalty pushes down tokens already generated: greedy output with a large
    penalty repeats no token, and equals a naive loop that applies the formula itself."""
    prompt = tokenizer.encode("a a a a a")
    params = SamplingParams(max_new_tokens=8, frequency_penalty=100.0, **GREEDY)
    seq = Sequence(model, tokenizer, prompt, params)
    run(model, tokenizer, {0: [seq]})
    ids, counts = list(prompt), torch.zeros(model.config.vocab_size)
    with torch.no_grad():
        for _ in range(8):
            logits = model(torch.tensor([ids])).logits[0, -1] - 100.0 * counts
            ids.append(int(logits.argmax()))
            counts[ids[-1]] += 1
    assert seq.token_ids == ids[len(prompt) :]
    assert len(set(seq.token_ids)) == 8


def test_rows_with_different_settings_each_sample_as_alone(model, tokenizer):
    """One step samples every row in a few tensor ops, each with its own temperature, top-k,
    top-p, penalties and seed: each row's tokens equal what it samples alone."""
    prompt = tokenizer.encode("Once upon a time")
    settings = [
        dict(temperature=1.3, top_k=5, seed=1),
        dict(temperature=0.7, top_p=0.8, seed=2),
        dict(temperature=0.0),
        dict(temperature=1.0, top_p=1.0, repetition_penalty=1.3, seed=3),
        dict(temperature=0.9, top_k=40, top_p=0.9, presence_penalty=0.5, seed=4),
    ]
    params = [SamplingParams(max_new_tokens=10, stop_token_ids=(), **kw) for kw in settings]
    alone = []
    for p in params:
        seq = Sequence(model, tokenizer, prompt, p)
        run(model, tokenizer, {0: [seq]})
        alone.append(seq.completion().token_ids)
    together = [Sequence(model, tokenizer, prompt, p) for p in params]
    run(model, tokenizer, {0: together[:3], 2: together[3:]})
    assert [s.completion().token_ids for s in together] == alone


def test_the_cache_grows_when_rows_outlive_their_room(model, tokenizer):
    prompts = [tokenizer.encode(t) for t in ("Once upon a time", "你好")]
    params = SamplingParams(max_new_tokens=30, **GREEDY)
    alone = generate(model, tokenizer, prompts, params)
    seqs = [Sequence(model, tokenizer, p, params) for p in prompts]
    batch = Engine(model)
    batch.add(seqs, room=2)  # every few steps the buffers move to larger ones
    while batch.sequences:
        batch.step()
    assert [s.completion() for s in seqs] == alone


@pytest.mark.parametrize("poison", [{"temperature": 1e-40}, {"repetition_penalty": 1e-300, "temperature": 1.0}])
def test_a_row_whose_sampling_breaks_ends_alone(model, tokenizer, poison):
    """Extreme settings can turn a row's probabilities into NaN (SamplingParams refuses
    temperature 1e-40 now, so they are set after its check); that row finishes with
    finish_reason "error", and the rows beside it go on unchanged."""
    prompts = [tokenizer.encode(t) for t in ("Once upon a time", "你好")]
    healthy = SamplingParams(max_new_tokens=12, temperature=0.8, seed=5, stop_token_ids=())
    alone = Sequence(model, tokenizer, prompts[0], healthy)
    run(model, tokenizer, {0: [alone]})
    good = Sequence(model, tokenizer, prompts[0], healthy)
    poisoned = SamplingParams(max_new_tokens=12, stop_token_ids=(), seed=1)
    for name, value in poison.items():
        setattr(poisoned, name, value)
    bad = Sequence(model, tokenizer, prompts[1], poisoned)
    run(model, tokenizer, {0: [good], 3: [bad]})
    assert good.completion() == alone.completion()
    done = bad.completion()
    assert done.finish_reason == "error" and "not finite" in done.error and len(done.token_ids) < 12


def test_logprobs_are_the_models_own(model, tokenizer):
    """Each sampled token's log-probability (and the top alternatives) equal a log-softmax of
    a full forward pass over prompt + tokens so far; sampling settings do not change them."""
    prompt = tokenizer.encode("The answer is")
    params = SamplingParams(
        max_new_tokens=6, temperature=1.5, top_k=20, seed=0, stop_token_ids=(), logprobs=True, top_logprobs=3
    )
    [done] = generate(model, tokenizer, [prompt], params)
    assert len(done.logprobs) == 6
    ids = list(prompt)
    with torch.no_grad():
        for entry, token in zip(done.logprobs, done.token_ids):
            reference = model(torch.tensor([ids])).logits[0, -1].float().log_softmax(-1)
            assert entry.token_id == token
            assert entry.logprob == pytest.approx(float(reference[token]), abs=1e-4)
            best = reference.topk(3)
            assert [t for t, _ in entry.top] == best.indices.tolist()
            assert [v for _, v in entry.top] == pytest.approx(best.values.tolist(), abs=1e-4)
            ids.append(token)
    assert generate(model, tokenizer, [prompt], SamplingParams(max_new_tokens=2))[0].logprobs is None


def test_a_row_given_its_past_reads_only_the_rest_and_equals_a_full_prefill(model, tokenizer):
    """A conversation's next turn started from the keys and values its first turn left
    (keep_kv -> kv -> past) generates what a full prefill of the whole history generates, in a
    batch with rows of other past lengths and a row without one, and with the repetition
    penalty seeing the whole prompt (past included)."""
    params = SamplingParams(max_new_tokens=5, repetition_penalty=1.3, logprobs=True, **GREEDY)
    firsts = [tokenizer.encode(t) for t in ("Once upon a time", "a b c d e f g h i j", "你好")]
    turn1 = [Sequence(model, tokenizer, p, params, keep_kv=True) for p in firsts]
    run(model, tokenizer, {0: turn1[:2], 2: turn1[2:]})
    for s, p in zip(turn1, firsts):
        assert s.kv.length == len(p) + len(s.token_ids) - 1  # the newest token was never read
    follow = tokenizer.encode(" and then")
    seconds = [p + s.token_ids + follow for p, s in zip(firsts, turn1)]
    fresh = tokenizer.encode("The answer is")
    with_past = [Sequence(model, tokenizer, q, params, past=s.kv) for q, s in zip(seconds, turn1)]
    with_past.append(Sequence(model, tokenizer, fresh, params))
    run(model, tokenizer, {0: with_past})
    reference = generate(model, tokenizer, seconds + [fresh], params)
    assert [s.completion().token_ids for s in with_past] == [c.token_ids for c in reference]
    for s, c in zip(with_past, reference):
        assert [e.logprob for e in s.logprobs] == pytest.approx([e.logprob for e in c.logprobs], abs=1e-4)


def test_a_past_that_cannot_be_the_prompts_start_is_refused(model, tokenizer):
    prompt = tokenizer.encode("Once upon a time")
    first = Sequence(model, tokenizer, prompt, SamplingParams(max_new_tokens=3, **GREEDY), keep_kv=True)
    run(model, tokenizer, {0: [first]})
    with pytest.raises(MiniMindError, match="must leave at least one"):
        Sequence(model, tokenizer, prompt[:2], past=first.kv)  # covers more than the prompt
    with pytest.raises(MiniMindError, match="layers"):
        Sequence(scrambled_model(num_hidden_layers=1), tokenizer, prompt + first.token_ids, past=first.kv)
