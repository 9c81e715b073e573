"""The compiled decode step (infer/compiled.py) computes what eager decoding computes.

fp32 throughout: compiled and eager kernels differ in summation order, so tokens are compared
greedy and log-probabilities within a tolerance. Each new cache width compiles again (a few
seconds on a CPU), so the tests share one model and few widths.
"""

import pytest
import torch

from minimind import MiniMindForCausalLM, preset
from minimind.errors import MiniMindError
from minimind.infer import Engine, SamplingParams, Sequence, generate, stream
from minimind.infer.compiled import MIN_CAPACITY, compile_decode, compiled_decoder


@pytest.fixture(scope="module")
def model():
    m = MiniMindForCausalLM(preset("nano")).init_weights(0).eval()
    with torch.no_grad():  # larger weights: greedy decoding wanders instead of repeating a token
        for p in m.parameters():
            if p.dim() > 1:
                p.mul_(5)
    return m


def run(model, tok, prompts, compile, n=24, logprobs=False):
    params = SamplingParams(max_new_tokens=n, temperature=0, stop_token_ids=(), logprobs=logprobs)
    engine = Engine(model, compile=compile)
    seqs = [Sequence(model, tok, p, params) for p in prompts]
    engine.add(seqs, room=8)  # little room: the cache grows while decoding
    while engine.sequences:
        engine.step()
    return seqs


def test_compiled_steps_equal_eager_across_cache_growth(model, tok):
    # 240 prompt tokens + 40 new ones cross the first compiled width (256): the cache grows to
    # the next power of two mid-reply and the step compiles once more.
    prompt = [(i * 37) % 6000 + 10 for i in range(240)]
    eager = run(model, tok, [prompt], compile=False, n=40, logprobs=True)[0]
    compiled = run(model, tok, [prompt], compile=True, n=40, logprobs=True)[0]
    assert compiled.token_ids == eager.token_ids
    assert len(set(eager.token_ids)) > 5  # a real sequence, not one token repeated
    for a, b in zip(eager.logprobs, compiled.logprobs):
        assert abs(a.logprob - b.logprob) < 1e-4


def test_batch_rows_run_eager_until_one_is_left(model, tok):
    prompts = [[5, 6, 7], list(range(10, 60)), [300] * 12]
    decoder = compile_decode(model)
    engine = Engine(model)  # compile_decode turned it on for every engine of this model
    assert engine.decoder is decoder
    params = [SamplingParams(max_new_tokens=n, temperature=0, stop_token_ids=()) for n in (4, 9, 20)]
    seqs = [Sequence(model, tok, p, q) for p, q in zip(prompts, params)]
    engine.add(seqs)
    widths = []
    while engine.sequences:
        engine.step()
        widths.append(engine.cache.capacity if engine.cache is not None else None)
    assert MIN_CAPACITY in widths  # the last row ran compiled, in a power-of-two cache
    alone = [run(model, tok, [p], compile=False, n=q.max_new_tokens)[0] for p, q in zip(prompts, params)]
    assert [s.token_ids for s in seqs] == [s.token_ids for s in alone]


def test_generate_and_stream_use_a_compiled_model(model, tok):
    compile_decode(model)
    prompt = list(range(100, 130))
    params = SamplingParams(max_new_tokens=16, temperature=0, stop_token_ids=())
    [done] = generate(model, tok, [prompt], params)
    s = stream(model, tok, prompt, params)
    text = "".join(s)
    assert s.completion.token_ids == done.token_ids and text == done.text
    other = MiniMindForCausalLM(preset("nano")).init_weights(1).eval()
    assert compiled_decoder(other) is None and Engine(other).decoder is None  # per model


def test_compile_refused_for_moe():
    moe = MiniMindForCausalLM(preset("tiny-moe"))
    with pytest.raises(MiniMindError, match="dense models only"):
        Engine(moe, compile=True)


def test_compile_refused_with_llama_cpp(capsys):
    from minimind.cli import main

    code = main(["chat", "--model", "nowhere", "--backend", "llama.cpp", "--compile", "--prompt", "hi"])
    err = capsys.readouterr().err
    assert code == 2 and "--compile is for the torch backend" in err


def test_chat_compile_answers_as_eager(tmp_path, tok_dir):
    import subprocess
    import sys
    from pathlib import Path

    from minimind.cli import main

    assert main(["init", "--preset", "nano", "--tokenizer", str(tok_dir), "--out", str(tmp_path / "m")]) == 0
    script = Path(sys.executable).parent / "minimind"
    argv = [str(script), "chat", "--model", str(tmp_path / "m"), "--prompt", "hello", "--temperature", "0"]
    argv += ["--max-new-tokens", "40"]
    eager = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    compiled = subprocess.run([*argv, "--compile"], capture_output=True, text=True, timeout=300)
    assert eager.returncode == 0 and compiled.returncode == 0, compiled.stderr
    assert compiled.stdout == eager.stdout and "[40 tokens" in compiled.stderr


def test_compiled_linear_equals_separate_projections():
    # under torch.compile (inference) `linear` stacks the projections' weights, and a single
    # row runs as multiply-and-sum on the CPU: both must equal the separate nn.Linear calls
    from torch import nn

    from minimind.model.layers import linear

    torch.manual_seed(0)
    for bias in (False, True):
        projections = [nn.Linear(16, n, bias=bias) for n in (16, 8, 8)]
        for rows in (1, 3):
            x = torch.randn(1, rows, 16)
            fn = torch.compile(lambda x, ps=projections: linear(x, *ps, training=False), dynamic=False)
            for got, p in zip(fn(x), projections):
                torch.testing.assert_close(got, p(x))
    assert len(linear(x, *projections, training=False)) == 3  # eager: the module calls themselves
