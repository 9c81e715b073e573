"""`--backend llama.cpp`: the same replies as our engine, from llama.cpp running the exported GGUF.

Only the forward pass moves to llama.cpp; sampling, stops and text stay ours, so greedy
tokens must be equal token for token (on a model whose next-token choices are far from ties:
see test_export_gguf.peaked_model), and a seeded sampled reply too, since the logits agree to
f32 noise. Then the server with the backend, through the official OpenAI client.
"""

import pytest
import torch

from helpers import start_server
from minimind.checkpoint import save_model_dir
from minimind.config import preset
from minimind.errors import MiniMindError
from minimind.infer import SamplingParams, generate, stream
from minimind.model import MiniMindForCausalLM

pytest.importorskip("gguf", reason="the gguf package is not installed (pip install 'minimind[export]')")
pytest.importorskip(
    "llama_cpp",
    reason="llama-cpp-python is not installed (scripts/install-test-peers.sh builds it: it compiles llama.cpp)",
)
pytestmark = pytest.mark.usefixtures("one_thread")


def peaked_model():
    """A nano model with confident next-token logits whose continuations depend on the context
    (as in test_export_gguf): a random init's near-ties would make any comparison luck."""
    model = MiniMindForCausalLM(preset("nano")).init_weights(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "model.embed_tokens.weight":
                p.mul_(25)
            elif p.dim() == 2:
                p.mul_(10)
    return model.eval()


@pytest.fixture(scope="module")
def exported(tok, tmp_path_factory):
    from minimind.export import export_gguf
    from minimind.infer.llamacpp import LlamaCppModel

    root = tmp_path_factory.mktemp("llamacpp")
    model = peaked_model()
    save_model_dir(model, root / "m", tok)
    export_gguf(root / "m", root / "m.gguf", dtype="f32")
    return model, root / "m", LlamaCppModel.from_model_dir(root / "m", gguf=root / "m.gguf", threads=1)


def prompts(tok):
    return [
        tok.encode_chat([{"role": "user", "content": text}], add_generation_prompt=True)
        for text in ("用一句话介绍你自己。Introduce yourself.", "What is 2 + 3?")
    ]


def test_greedy_and_seeded_tokens_equal_ours(exported, tok):
    model, _, backend = exported
    for params in (
        SamplingParams(temperature=0, max_new_tokens=24, stop_token_ids=()),
        SamplingParams(temperature=0.8, top_p=0.9, seed=7, max_new_tokens=24, stop_token_ids=()),
        SamplingParams(temperature=0, max_new_tokens=16, repetition_penalty=1.3, stop_token_ids=()),
    ):
        # one prompt a call: the rows of one generate() call share a generator (drawing in
        # turn), while llama.cpp's rows run one after another
        ours = [generate(model, tok, [p], params)[0] for p in prompts(tok)]
        theirs = [backend.generate(tok, [p], params)[0] for p in prompts(tok)]
        for a, b in zip(ours, theirs):
            assert b.token_ids == a.token_ids and b.text == a.text and b.finish_reason == a.finish_reason
        assert len(set(ours[0].token_ids)) > 6  # a real continuation, not one token repeated


def test_the_stream_and_the_next_turn_reuse_the_cache(exported, tok):
    model, _, backend = exported
    params = SamplingParams(temperature=0, max_new_tokens=12, stop_token_ids=())
    first = prompts(tok)[0]
    s = backend.stream(tok, first, params)
    text = "".join(s)
    assert text == s.completion.text == "".join(stream(model, tok, first, params))
    # the next turn starts with the whole previous exchange: only the new part runs
    follow = first + s.completion.token_ids + tok.encode("\nmore")
    assert backend.generate(tok, [follow], params)[0].token_ids == generate(model, tok, [follow], params)[0].token_ids


def test_without_a_gguf_or_with_a_wrong_one_the_error_says_what_to_do(exported, tmp_path):
    from minimind.infer.llamacpp import LlamaCppModel

    _, model_dir, _ = exported
    with pytest.raises(MiniMindError, match="--gguf"):
        LlamaCppModel.from_model_dir(model_dir)
    with pytest.raises(MiniMindError, match="GGUF file not found"):
        LlamaCppModel.from_model_dir(model_dir, gguf=tmp_path / "none.gguf")


def test_serve_with_the_llama_cpp_backend_answers_the_openai_client(exported, tok, tmp_path):
    openai = pytest.importorskip("openai")
    model, model_dir, _ = exported
    proc, url = start_server(model_dir, tmp_path / "server.log", "--backend", "llama.cpp", "--gguf-dtype", "f32")
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
        messages = [{"role": "user", "content": "What is 2 + 3?"}]
        want = generate(model, tok, [prompts(tok)[1]], SamplingParams(temperature=0, max_new_tokens=16))[0]
        reply = client.chat.completions.create(model="m", messages=messages, temperature=0, max_tokens=16)
        assert reply.choices[0].message.content == want.text
        assert reply.usage.completion_tokens == want.completion_tokens
        pieces = client.chat.completions.create(model="m", messages=messages, temperature=0, max_tokens=16, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in pieces if c.choices) == want.text
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert "exported" in (tmp_path / "server.log").read_text()  # no --gguf: one was made for it
