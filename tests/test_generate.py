"""Generation: cached batched decoding equals the naive loop, sampling, stopping, streaming.

The models are `nano` ones with random weights, scrambled to std 0.1 so that greedy decoding
wanders through the vocabulary (with the default small init it just repeats the last token,
which would make the comparisons below too easy to pass). A scripted fake model, which emits
a fixed list of tokens, tests the text-level behaviour (UTF-8, stop strings) exactly.
"""

import pytest
import torch

from helpers import scrambled_model
from minimind import MiniMindError, preset
from minimind.infer import (
    Completion,
    SamplingParams,
    apply_repetition_penalty,
    apply_top_k,
    apply_top_p,
    chat,
    generate,
    stream,
)
from minimind.model import KVCache

GREEDY = {"temperature": 0.0, "stop_token_ids": ()}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizer(tok):
    """conftest's project-made tokenizer (vocabulary 6400), under the name these tests use."""
    return tok


@pytest.fixture(scope="module")
def model():
    return scrambled_model()


@pytest.fixture(scope="module")
def prompts(tokenizer):
    return [tokenizer.encode(t) for t in ("Once upon a time, in a small village", "你好", "The answer is")]


def naive_greedy(model, prompt, n, penalty=1.0):
    """Reference: recompute the whole sequence every step, no cache, no batching."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([ids])).logits[0, -1].clone()
            for t in set(ids):  # CTRL penalty, one token at a time
                logits[t] = logits[t] / penalty if logits[t] > 0 else logits[t] * penalty
            ids.append(int(logits.argmax()))
    return ids[len(prompt) :]


class ScriptedModel(torch.nn.Module):
    """A stand-in model that always predicts the next token of a fixed script (batch of 1)."""

    def __init__(self, script, vocab_size=6400):
        super().__init__()
        self.script = list(script)
        self.config = preset("nano")
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.calls = 0

    def new_cache(self, batch_size, capacity):
        self.calls = 0
        return KVCache(1, batch_size, 1, 1, capacity)  # a real cache: the engine trims and grows it

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, logits_to_keep=0):
        token = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        cache.length += input_ids.shape[1]
        logits = torch.full((input_ids.shape[0], 1, self.config.vocab_size), -10.0)
        logits[:, :, token] = 10.0
        return type("Out", (), {"logits": logits})()


# ------------------------------------------------------------------- cache and batching


@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_greedy_matches_naive_loop_without_cache(model, prompts, tokenizer, penalty):
    for prompt in prompts:
        [done] = generate(
            model, tokenizer, [prompt], SamplingParams(max_new_tokens=24, repetition_penalty=penalty, **GREEDY)
        )
        assert done.token_ids == naive_greedy(model, prompt, 24, penalty)
        assert done.finish_reason == "length" and done.completion_tokens == 24
        assert done.prompt_tokens == len(prompt)


@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_batch_of_different_lengths_equals_each_alone(model, prompts, tokenizer, penalty):
    params = SamplingParams(max_new_tokens=20, repetition_penalty=penalty, **GREEDY)
    alone = [generate(model, tokenizer, [p], params)[0] for p in prompts]
    batch = generate(model, tokenizer, prompts, params)
    assert [c.token_ids for c in batch] == [c.token_ids for c in alone]
    assert [c.text for c in batch] == [c.text for c in alone]


def test_rows_that_stop_early_leave_the_batch_without_disturbing_the_rest(model, prompts, tokenizer):
    free = [c.token_ids for c in generate(model, tokenizer, prompts, SamplingParams(max_new_tokens=20, **GREEDY))]
    # a stop token that appears early in the middle row's output
    stop = next(t for i, t in enumerate(free[1]) if i >= 2 and t not in free[1][:i])
    params = SamplingParams(max_new_tokens=20, temperature=0.0, stop_token_ids=(stop,))
    batch = generate(model, tokenizer, prompts, params)
    assert batch == [generate(model, tokenizer, [p], params)[0] for p in prompts]
    assert batch[1].finish_reason == "stop" and stop not in batch[1].token_ids


# ------------------------------------------------------------------------------ sampling


def test_same_seed_same_output_different_seed_different(model, prompts, tokenizer):
    hot = {"max_new_tokens": 30, "temperature": 1.5, "top_p": 1.0, "stop_token_ids": ()}
    a = generate(model, tokenizer, prompts, SamplingParams(seed=7, **hot))
    torch.manual_seed(123)  # the global RNG must not matter
    torch.rand(10)
    b = generate(model, tokenizer, prompts, SamplingParams(seed=7, **hot))
    c = generate(model, tokenizer, prompts, SamplingParams(seed=8, **hot))
    assert [x.token_ids for x in a] == [x.token_ids for x in b]
    assert [x.token_ids for x in a] != [x.token_ids for x in c]
    greedy = generate(model, tokenizer, prompts, SamplingParams(max_new_tokens=30, **GREEDY))
    assert [x.token_ids for x in a] != [x.token_ids for x in greedy]


def test_no_seed_follows_the_global_rng(model, prompts, tokenizer):
    params = SamplingParams(max_new_tokens=10, temperature=1.5, stop_token_ids=())
    torch.manual_seed(3)
    a = generate(model, tokenizer, prompts, params)
    torch.manual_seed(3)
    assert generate(model, tokenizer, prompts, params) == a


def test_top_k_1_and_tiny_top_p_are_greedy(model, prompts, tokenizer):
    greedy = generate(model, tokenizer, prompts, SamplingParams(max_new_tokens=15, **GREEDY))
    hot = {"max_new_tokens": 15, "temperature": 2.0, "seed": 1, "stop_token_ids": ()}
    assert generate(model, tokenizer, prompts, SamplingParams(top_k=1, top_p=1.0, **hot)) == greedy
    assert generate(model, tokenizer, prompts, SamplingParams(top_p=1e-6, **hot)) == greedy


def test_repetition_penalty_formula():
    logits = torch.tensor([[2.0, -2.0, 1.0, -0.5], [3.0, 0.0, -1.0, 4.0]])
    seen = torch.tensor([[True, True, False, False], [False, True, True, False]])
    out = apply_repetition_penalty(logits, seen, 2.0)
    assert torch.equal(out, torch.tensor([[1.0, -4.0, 1.0, -0.5], [3.0, 0.0, -2.0, 4.0]]))
    assert apply_repetition_penalty(logits, seen, 1.0) is logits


def test_top_k_and_top_p_filters():
    inf = float("-inf")
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    assert torch.equal(apply_top_k(logits, 2), torch.tensor([[inf, 3.0, 2.0, inf]]))
    assert torch.equal(apply_top_k(logits, 0), logits)
    probs = torch.tensor([[0.15, 0.5, 0.3, 0.05]])
    lp = probs.log()
    keep = lambda p: torch.isfinite(apply_top_p(lp, p))[0].tolist()
    assert keep(0.75) == [False, True, True, False]  # 0.5 < 0.75 <= 0.5 + 0.3
    assert keep(0.9) == [True, True, True, False]
    assert keep(0.45) == [False, True, False, False]
    assert keep(1e-9) == [False, True, False, False]  # the top token always survives
    assert keep(1.0) == [True] * 4


# ------------------------------------------------------------------------------ stopping


def test_stop_token_ends_generation(model, prompts, tokenizer):
    free = generate(model, tokenizer, prompts[:1], SamplingParams(max_new_tokens=20, **GREEDY))[0].token_ids
    i = next(i for i, t in enumerate(free) if i >= 3 and t not in free[:i])
    [done] = generate(
        model, tokenizer, prompts[:1], SamplingParams(max_new_tokens=20, temperature=0, stop_token_ids=(free[i],))
    )
    assert done.finish_reason == "stop"
    assert done.token_ids == free[:i]  # the stop token itself is not part of the output
    assert done.completion_tokens == i + 1  # ... but counts as generated


def test_eos_is_the_default_stop_token(tokenizer):
    script = tokenizer.encode("Hi there") + [tokenizer.eos_token_id] + tokenizer.encode(" more")
    [done] = generate(ScriptedModel(script), tokenizer, [[1]], SamplingParams(temperature=0))
    assert (done.text, done.finish_reason) == ("Hi there", "stop")


def test_stop_string_ends_generation_and_is_cut_from_text(tokenizer):
    script = tokenizer.encode("Hello world. Question: what? STOP more text")
    params = SamplingParams(max_new_tokens=50, temperature=0, stop_strings=("Question:", "zzz"))
    [done] = generate(ScriptedModel(script), tokenizer, [[1]], params)
    assert done.finish_reason == "stop"
    assert done.text == "Hello world. "
    assert tokenizer.decode(done.token_ids).startswith("Hello world. Question")


def test_max_new_tokens_gives_length(model, prompts, tokenizer):
    for done in generate(model, tokenizer, prompts, SamplingParams(max_new_tokens=7, **GREEDY)):
        assert done.finish_reason == "length"
        assert len(done.token_ids) == done.completion_tokens == 7


def test_max_new_tokens_is_clipped_to_the_context(tokenizer):
    model = scrambled_model(max_position_embeddings=40)
    [done] = generate(model, tokenizer, [list(range(100, 135))], SamplingParams(max_new_tokens=100, **GREEDY))
    assert (done.finish_reason, len(done.token_ids)) == ("length", 5)
    with pytest.raises(MiniMindError, match="context"):
        generate(model, tokenizer, [list(range(100, 140))], SamplingParams(**GREEDY))


# ----------------------------------------------------------------------------- streaming


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(max_new_tokens=40, **GREEDY),
        SamplingParams(max_new_tokens=40, temperature=1.2, seed=5, stop_token_ids=()),
    ],
)
def test_stream_pieces_join_to_the_generated_text(model, prompts, tokenizer, params):
    for prompt in prompts:
        s = stream(model, tokenizer, prompt, params)
        assert s.completion is None
        pieces = list(s)
        [done] = generate(model, tokenizer, [prompt], params)
        assert "".join(pieces) == done.text == s.completion.text
        assert s.completion == done


def test_stream_never_splits_a_character(tokenizer):
    text = "🙂 naïve 😀 龘 你好，世界!"
    script = tokenizer.encode(text) + [tokenizer.eos_token_id]
    assert len(script) > len(text) - 3  # multi-byte characters really are split over tokens
    s = stream(ScriptedModel(script), tokenizer, [1], SamplingParams(temperature=0))
    pieces = list(s)
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == text and s.completion.finish_reason == "stop"


def test_stream_never_shows_a_stop_string(tokenizer):
    text = "Tell me a story. The End is near. The End. Epilogue"
    script = tokenizer.encode(text)
    s = stream(ScriptedModel(script), tokenizer, [1], SamplingParams(temperature=0, stop_strings=("The End.",)))
    pieces = list(s)
    shown = ""
    for p in pieces:
        shown += p
        assert "The End." not in shown
    assert shown == "Tell me a story. The End is near. " == s.completion.text
    assert s.completion.finish_reason == "stop"


def test_stream_can_stop_early(model, prompts, tokenizer):
    s = stream(model, tokenizer, prompts[0], SamplingParams(max_new_tokens=50, **GREEDY))
    next(s)
    s.close()
    assert s.completion is None


# ------------------------------------------------------------------- errors, dtype, chat


@pytest.mark.parametrize(
    "bad",
    [
        {"temperature": -0.1},
        {"top_p": 0.0},
        {"top_p": 1.5},
        {"top_k": -1},
        {"max_new_tokens": 0},
        {"repetition_penalty": 0.0},
        {"stop_strings": ("",)},
        {"temperature": float("nan")},
    ],
)
def test_bad_params_raise(bad):
    with pytest.raises(MiniMindError):
        SamplingParams(**bad)


def test_bad_prompts_raise(model, tokenizer):
    with pytest.raises(MiniMindError, match="empty"):
        generate(model, tokenizer, [[1, 2], []], SamplingParams())
    with pytest.raises(MiniMindError, match="vocabulary"):
        generate(model, tokenizer, [[1, 99999]], SamplingParams())
    with pytest.raises(MiniMindError, match="empty"):
        stream(model, tokenizer, [], SamplingParams())  # raised at once, not on iteration
    assert generate(model, tokenizer, [], SamplingParams()) == []


def test_bfloat16_model_generates(prompts, tokenizer):
    model = scrambled_model().to(torch.bfloat16)
    out = generate(
        model, tokenizer, prompts, SamplingParams(max_new_tokens=8, temperature=0.9, seed=0, stop_token_ids=())
    )
    assert [len(c.token_ids) for c in out] == [8, 8, 8]


def test_generation_restores_training_mode(prompts, tokenizer):
    model = scrambled_model().train()
    generate(model, tokenizer, prompts[:1], SamplingParams(max_new_tokens=2))
    assert model.training


def test_chat_renders_the_template(model, tokenizer):
    messages = [{"role": "user", "content": "你好"}]
    done = chat(model, tokenizer, messages, SamplingParams(max_new_tokens=5, **GREEDY))
    prompt = tokenizer.encode_chat(messages, add_generation_prompt=True)
    assert isinstance(done, Completion) and done.prompt_tokens == len(prompt)
    assert (
        done.token_ids == generate(model, tokenizer, [prompt], SamplingParams(max_new_tokens=5, **GREEDY))[0].token_ids
    )


def test_decoding_attention_keeps_sdpa_off_cudnn_on_cuda_only():
    """Generation runs in decoding_attention: on CUDA it turns SDPA's cuDNN backend off (cuDNN
    plans every new shape, and each decode step is one; benchmarks/gpu_decode.py), keeps
    flash and memory-efficient attention, and restores the flags afterwards. The flags are
    plain process settings, so this is checked without a GPU."""
    import torch

    from minimind.model.layers import decoding_attention

    before = (
        torch.backends.cuda.cudnn_sdp_enabled(),
        torch.backends.cuda.flash_sdp_enabled(),
        torch.backends.cuda.mem_efficient_sdp_enabled(),
        torch.backends.cuda.math_sdp_enabled(),
    )
    with decoding_attention(torch.device("cuda")):
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()
        assert torch.backends.cuda.math_sdp_enabled()
    assert (
        torch.backends.cuda.cudnn_sdp_enabled(),
        torch.backends.cuda.flash_sdp_enabled(),
        torch.backends.cuda.mem_efficient_sdp_enabled(),
        torch.backends.cuda.math_sdp_enabled(),
    ) == before
    with decoding_attention(torch.device("cpu")):
        assert torch.backends.cuda.cudnn_sdp_enabled() == before[0]


def test_the_model_enters_decoding_attention_only_with_a_cache(model, tokenizer, prompts, monkeypatch):
    """The model's forward is where the context is entered, so every caller with a KV cache
    (generate, the server's batcher) gets it, and training (no cache) keeps cuDNN."""
    import contextlib

    import minimind.model.minimind as modeling

    entered = []
    monkeypatch.setattr(
        modeling, "decoding_attention", lambda device: entered.append(device) or contextlib.nullcontext()
    )
    model(torch.tensor([prompts[0]]))
    assert entered == []
    generate(model, tokenizer, [prompts[0]], SamplingParams(max_new_tokens=3, temperature=0, stop_token_ids=()))
    assert len(entered) == 3  # the prefill and two decode steps
