"""`minimind export gguf`: the file's contents, and llama.cpp itself as the other side.

The llama.cpp tests run the real engine through llama-cpp-python (built from source by
.ci/run). They load our GGUF, tokenize prompts exactly as our tokenizer does, reproduce our
logits, and continue a prompt greedily for 32 tokens exactly as `minimind.infer.generate`
does, for all four architectures we write: qwen3 (minimind-3), llama (MiniMind2),
qwen3moe (minimind-3-moe) and bailingmoe (MiniMind2-MoE).

Random tiny models have nearly flat next-token distributions, where float noise between two
engines flips the argmax and a mismatch says nothing. `peaked_model` therefore scales the
initialisation up, as training does: a tied embedding with std 0.5 gives next-token logits with
std ~5 (a trained model's confident distribution), and larger attention/MLP weights make the
continuation depend on the whole context, not only on the last token (with a dominant tied
embedding, a model just repeats its input token). The test also checks the
smallest top-1/top-2 margin along our greedy path is far above the engines' logit difference,
so agreement is meaningful and not luck.
"""

import json

import numpy as np
import pytest
import torch

from helpers import chat_records
from minimind.checkpoint import save_model_dir
from minimind.cli import main
from minimind.config import preset
from minimind.errors import MiniMindError
from minimind.export.common import to_interleaved
from minimind.model import MiniMindForCausalLM

gguf = pytest.importorskip("gguf", reason="the gguf package is not installed (pip install 'minimind[export]')")

MM2 = dict(
    hidden_size=128,
    num_hidden_layers=2,
    num_attention_heads=8,
    num_key_value_heads=2,
    head_dim=16,
    intermediate_size=256,
    moe_intermediate_size=128,
)
ARCHS = {  # GGUF architecture: (preset, overrides)
    "qwen3": ("nano", {}),
    "llama": ("minimind2-small", MM2),
    "qwen3moe": ("nano", dict(use_moe=True, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64)),
    "bailingmoe": ("minimind2-moe", MM2),
    "llama-moe": ("minimind2-moe", dict(MM2, n_shared_experts=0)),  # no shared expert: llama with experts
}


def peaked_model(arch, seed=1, **extra):
    base, overrides = ARCHS[arch]
    model = MiniMindForCausalLM(preset(base, **overrides, **extra)).init_weights(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "model.embed_tokens.weight":
                p.mul_(25)  # std 0.02 -> 0.5: confident next-token logits (std ~5)
            elif p.dim() == 2:
                p.mul_(10)  # context matters: attention and MLP outputs outweigh the embedding
    return model.eval()


@pytest.fixture(scope="module")
def tokenizer(tok):
    """conftest's project-made tokenizer: MiniMind's layout (6400 tokens, 36 added, 6108 merges)."""
    return tok


def plain_chats(n):
    """Generated conversations without tools (which the template takes as an argument, not a message)."""
    return [
        r["conversations"]
        for r in chat_records(n)
        if not any("tools" in m or "tool_calls" in m or m["role"] == "tool" for m in r["conversations"])
    ]


@pytest.fixture(scope="module")
def exported(tokenizer, tmp_path_factory):
    """arch -> (our model, its directory, its f32 GGUF path), built once for the module."""
    from minimind.export import export_gguf

    out = {}
    for arch in ARCHS:
        d = tmp_path_factory.mktemp(arch)
        model = peaked_model(arch)
        save_model_dir(model, d / "model", tokenizer)
        export_gguf(d / "model", d / "model-f32.gguf", dtype="f32")
        out[arch] = (model, d / "model", d / "model-f32.gguf")
    return out


def fields(path):
    reader = gguf.GGUFReader(str(path))
    return reader, {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


# ------------------------------------------------------------------ the file itself


@pytest.mark.parametrize("arch", list(ARCHS))
def test_metadata_and_tensor_layout(arch, exported, tokenizer):
    model, _, path = exported[arch]
    reader, f = fields(path)
    c = model.config
    arch = arch.split("-")[0]  # llama-moe is the llama architecture with experts
    assert f["general.architecture"] == arch
    assert (f[f"{arch}.block_count"], f[f"{arch}.embedding_length"]) == (c.num_hidden_layers, c.hidden_size)
    heads = (f[f"{arch}.attention.head_count"], f[f"{arch}.attention.head_count_kv"])
    assert heads == (c.num_attention_heads, c.num_key_value_heads)
    assert (f[f"{arch}.attention.key_length"], f[f"{arch}.rope.freq_base"]) == (c.head_dim, c.rope_theta)
    assert f[f"{arch}.attention.layer_norm_rms_epsilon"] == pytest.approx(c.rms_norm_eps)
    if c.use_moe:
        assert (f[f"{arch}.expert_count"], f[f"{arch}.expert_used_count"]) == (c.num_experts, c.num_experts_per_tok)
        assert f[f"{arch}.expert_weights_norm"] is True
    assert (f["tokenizer.ggml.model"], f["tokenizer.ggml.pre"]) == ("gpt2", "gpt-2")
    assert f["tokenizer.ggml.tokens"][:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    types = f["tokenizer.ggml.token_type"]
    assert types[1] == gguf.TokenType.CONTROL and types[25] == gguf.TokenType.USER_DEFINED  # <think> stays visible
    assert types[100] == gguf.TokenType.NORMAL and len(f["tokenizer.ggml.merges"]) == 6108
    assert [f[f"tokenizer.ggml.{k}_token_id"] for k in ("bos", "eos", "padding")] == [1, 2, 0]
    assert f["tokenizer.ggml.add_bos_token"] is False and f["tokenizer.chat_template"] == tokenizer.chat_template
    tensors = {t.name: t for t in reader.tensors}
    assert "output.weight" not in tensors or arch == "bailingmoe"  # tied: llama.cpp reuses token_embd
    q = torch.from_numpy(np.array(tensors["blk.0.attn_q.weight"].data))
    ours = model.state_dict()["model.layers.0.self_attn.q_proj.weight"]
    # llama and bailingmoe rotate interleaved pairs, so their q/k rows are reordered; qwen3 rotates halves
    expected = to_interleaved(ours, c.num_attention_heads) if arch in ("llama", "bailingmoe") else ours
    assert torch.equal(q, expected)


def test_dtypes_store_the_weights_at_that_precision(exported, tmp_path):
    from minimind.export import export_gguf

    model, model_dir, _ = exported["qwen3moe"]
    ours = model.state_dict()["model.layers.0.self_attn.q_proj.weight"]
    for dtype, kind in (("f16", "F16"), ("bf16", "BF16"), ("q8_0", "Q8_0")):
        export_gguf(model_dir, tmp_path / f"{dtype}.gguf", dtype=dtype)
        reader, _ = fields(tmp_path / f"{dtype}.gguf")
        t = {t.name: t for t in reader.tensors}
        assert (
            t["blk.0.attn_q.weight"].tensor_type.name == kind
            and t["blk.0.ffn_gate_exps.weight"].tensor_type.name == kind
        )
        # norms and the router stay f32, as llama.cpp's converter keeps them
        assert {t[n].tensor_type.name for n in ("blk.0.attn_norm.weight", "blk.0.ffn_gate_inp.weight")} == {"F32"}
        q = t["blk.0.attn_q.weight"]
        stored = torch.from_numpy(gguf.quants.dequantize(q.data, q.tensor_type).copy()).reshape(ours.shape)
        if dtype == "q8_0":  # blocks of 32 values share one (f16) scale: error about half a step
            step = ours.reshape(-1, 32).abs().amax(-1, keepdim=True) / 127
            assert ((stored - ours).reshape(-1, 32).abs() <= 0.6 * step).all()
        else:  # rounded exactly as torch rounds (to nearest even)
            assert torch.equal(stored, ours.to({"f16": torch.float16, "bf16": torch.bfloat16}[dtype]).float())


@pytest.mark.parametrize(
    "overrides, message",
    [
        (("nano", dict(use_moe=True, n_shared_experts=1)), "q/k norm with a shared expert"),
        (("nano", dict(use_moe=True, norm_topk_prob=False, num_experts_per_tok=2)), "norm_topk_prob is false"),
        (("nano", dict(rope_scaling={"type": "yarn", "factor": 4.0})), "rope_scaling (YaRN) is not exported"),
    ],
)
def test_layouts_llama_cpp_cannot_compute_exactly_are_refused(overrides, message, tmp_path, capsys):
    name, kw = overrides
    save_model_dir(MiniMindForCausalLM(preset(name, **kw)), tmp_path / "m")
    assert main(["export", "gguf", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "m.gguf")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "m.gguf").exists()


def test_missing_tokenizer_is_a_clear_error(tmp_path):
    from minimind.export import export_gguf

    save_model_dir(MiniMindForCausalLM(preset("nano")), tmp_path / "m")
    with pytest.raises(MiniMindError, match="tokenizer.json: file not found"):
        export_gguf(tmp_path / "m", tmp_path / "m.gguf")


# ------------------------------------------------------------------ llama.cpp


@pytest.fixture(scope="module")
def llama_cpp():
    return pytest.importorskip(
        "llama_cpp",
        reason="llama-cpp-python is not installed (scripts/install-test-peers.sh builds it: it compiles llama.cpp)",
    )


def _load(llama_cpp, path, **kw):
    """llama.cpp keeps its KV cache in f16 by default; f32 (type 0) makes it an f32 engine
    like ours, so the comparison measures the conversion, not the cache's rounding. One
    thread: llama.cpp's worker threads spin while waiting, which on a shared 2-core machine
    makes these tiny models 100x slower."""
    return llama_cpp.Llama(
        model_path=str(path), n_ctx=512, n_threads=1, n_threads_batch=1, verbose=False, type_k=0, type_v=0, **kw
    )


def _prompts(tokenizer, shared_data=None):
    """Chinese, English, digits, whitespace, emoji, special and tool tokens, and chats: generated,
    or MiniMind's own when shared_data is given."""
    texts = [
        "你好，世界！今天是2024年10月1日。",
        "Hello world, it's 3.14159 -- don't panic!",
        "  two  spaces\n\n\ttab\r\n",
        "emoji 😀👍 ÀÉÎ русский",
        "<|im_start|>user\n讲个笑话<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
        '<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call><|endoftext|>',
    ]
    if shared_data is None:
        texts += [tokenizer.apply_chat_template(r["conversations"]) for r in chat_records(6)]
    for name in ("sft_toolcall_glaive_demo_zh_en.jsonl", "sft_sharegpt_zh_1k.jsonl") if shared_data else ():
        with open(shared_data / "minimind_format" / name, encoding="utf-8") as f:
            for line, _ in zip(f, range(3)):
                texts.append(tokenizer.apply_chat_template(json.loads(line)["conversations"]))
    return texts


@pytest.mark.parametrize("generation", ["project-made", "minimind3", "minimind2"])
def test_llama_cpp_tokenizes_and_detokenizes_like_us(generation, llama_cpp, tok, tmp_path, request):
    from minimind.export import export_gguf
    from minimind.tokenizer import Tokenizer

    shared_data = None
    if generation != "project-made":
        shared_data = request.getfixturevalue("shared_data")
        tok = Tokenizer.from_dir(shared_data / "tokenizer" / generation)
    save_model_dir(MiniMindForCausalLM(preset("nano")), tmp_path / "m", tok)
    export_gguf(tmp_path / "m", tmp_path / "m.gguf", dtype="f16")
    llm = _load(llama_cpp, tmp_path / "m.gguf", vocab_only=True)
    for text in _prompts(tok, shared_data):
        ids = tok.encode(text)
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids, text[:60]
        assert llm.detokenize(ids, special=True).decode() == tok.decode(ids)


def test_chat_template_in_the_file_renders_like_ours(llama_cpp, exported, tokenizer):
    """llama-cpp-python's create_chat_completion renders the template stored in the GGUF."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    llm = _load(llama_cpp, exported["qwen3"][2], vocab_only=True)
    template = llm.metadata["tokenizer.chat_template"]
    formatter = Jinja2ChatFormatter(template, eos_token="<|im_end|>", bos_token="<|im_start|>")
    chats = plain_chats(12)
    assert len(chats) >= 5
    for conversation in chats:
        messages = conversation[:-1]  # end on a user turn
        assert formatter(messages=messages).prompt == tokenizer.apply_chat_template(
            messages, add_generation_prompt=True
        )


@pytest.mark.parametrize("arch", list(ARCHS))
def test_llama_cpp_greedy_continuation_and_logits_equal_ours(arch, llama_cpp, exported, tokenizer):
    from minimind.infer import SamplingParams, generate

    model, _, path = exported[arch]
    prompt = tokenizer.encode_chat(
        [{"role": "user", "content": "用一句话介绍你自己。Introduce yourself."}], add_generation_prompt=True
    )
    # greedy, 32 tokens, no stop token: ours through the generation engine, theirs step by step
    [done] = generate(model, tokenizer, [prompt], SamplingParams(temperature=0, max_new_tokens=32, stop_token_ids=()))
    llm = _load(llama_cpp, path, logits_all=True)
    llm.eval(prompt)
    greedy = []
    for _ in range(32):
        greedy.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval([greedy[-1]])
    assert greedy == done.token_ids
    assert len(set(greedy)) > 8  # a real continuation, not one token repeated

    # the logits of every position (prompt and continuation) agree to f32 summation noise
    theirs = np.array(llm.scores[: llm.n_tokens])
    with torch.no_grad():
        ours = model(torch.tensor([prompt + greedy])).logits[0].numpy()
    diff = float(np.abs(theirs - ours).max())
    assert diff < 1e-3, diff
    # and no greedy step was a near tie, so the agreement is not luck
    top2 = torch.from_numpy(ours[len(prompt) - 1 : -1]).topk(2, dim=-1).values
    assert (top2[:, 0] - top2[:, 1]).min() > 20 * diff


def test_llama_cpp_runs_half_and_8_bit_exports(llama_cpp, exported, tokenizer, tmp_path):
    """f16/bf16/q8_0 files load in llama.cpp and stay close to the f32 logits (llama.cpp also
    rounds the activations to the weights' type, so this is a sanity bound, not equality)."""
    from minimind.export import export_gguf

    model, model_dir, _ = exported["llama"]
    prompt = tokenizer.encode("MiniMind 是一个小型语言模型。It is small.")
    with torch.no_grad():
        ours = model(torch.tensor([prompt])).logits[0].numpy()
    for dtype, tol in (("f16", 0.01), ("bf16", 0.04), ("q8_0", 0.1)):  # about 2x what we measured
        export_gguf(model_dir, tmp_path / f"{dtype}.gguf", dtype=dtype)
        llm = _load(llama_cpp, tmp_path / f"{dtype}.gguf", logits_all=True)
        llm.eval(prompt)
        theirs = np.array(llm.scores[: len(prompt)])
        assert np.abs(theirs - ours).max() < tol * np.abs(ours).max(), dtype
        assert (theirs.argmax(-1) == ours.argmax(-1)).mean() >= 0.75, dtype
