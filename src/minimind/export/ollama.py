"""Export a model directory for Ollama: a GGUF file plus a Modelfile.

    minimind export ollama --model out/sft --out ollama/ [--name minimind] [--dtype q8_0]
    ollama create minimind -f ollama/Modelfile && ollama run minimind

Ollama does not run Jinja chat templates: its TEMPLATE is a Go text/template that receives
`.Messages` (each with .Role, .Content, .Thinking, .ToolCalls), `.Tools`, `.Think` and
`.IsThinkSet`. `go_template` rewrites MiniMind's chat templates (minimind-3 and MiniMind2)
in that language. tests/test_export_ollama.py renders it with Go's own text/template and
compares with our Jinja rendering for the shared conversations.

What Go templates cannot reproduce byte for byte (Ollama's limits, not ours):
  * JSON: Ollama prints tools and tool-call arguments with Go's json.Marshal: compact
    (`{"a":1}`, not `{"a": 1}`), its own key order, `<`,`>`,`&` escaped as \\u003c... The
    JSON means the same; the spacing the model saw in training differs.
  * no string functions: reasoning is not stripped of surrounding newlines and a `<think>`
    block written inline in an assistant's content is not split out (send it as `thinking`).
  * Ollama merges consecutive messages of the same role (except tool) with a blank line.
"""

from __future__ import annotations

from pathlib import Path

from ..config import ModelConfig
from ..errors import MiniMindError
from ..tokenizer import Tokenizer
from .common import prepare_out_dir
from .gguf import export_gguf

# --- pieces shared by both templates ---------------------------------------------------
# Go text/template. There are no {{- trim markers and no layout whitespace: every character
# outside {{ }} (including each "\n") is output exactly as MiniMind's Jinja template writes it.

_TOOLS_HEADER = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
    "{{ range .Tools }}\n{{ json . }}{{ end }}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
)
_FIRST_IS_SYSTEM = '(and .Messages (eq (index .Messages 0).Role "system"))'


def _header(default_system: str | None) -> str:
    """With tools: one system turn holding the system prompt (if any) and the tool list.
    Without: the first system message as is (MiniMind2 falls back to a default one)."""
    first = "{{ (index .Messages 0).Content }}"
    text = (
        "{{ if .Tools }}<|im_start|>system\n{{ if "
        + _FIRST_IS_SYSTEM
        + " }}"
        + first
        + "\n\n{{ end }}"
        + _TOOLS_HEADER
        + "{{ else if "
        + _FIRST_IS_SYSTEM
        + " }}<|im_start|>system\n"
        + first
        + "<|im_end|>\n"
    )
    if default_system is not None:
        text += "{{ else }}<|im_start|>system\n" + default_system + "<|im_end|>\n"
    return text + "{{ end }}"


def _turns(think_blocks: bool) -> str:
    """The conversation. Consecutive tool results share one user turn: it is opened by the
    first and closed (<|im_end|>) by whatever message follows the last, or at the end."""
    close_tools = '{{ if eq $prev "tool" }}<|im_end|>\n{{ end }}'
    assistant = "<|im_start|>assistant\n"
    if think_blocks:  # minimind-3 writes a (possibly empty) <think> block in every answer
        assistant += "<think>\n{{ $m.Thinking }}\n</think>\n\n"
    return (
        '{{ $prev := "" }}'
        "{{ range $i, $m := .Messages }}"
        '{{ if and (eq $i 0) (eq $m.Role "system") }}'  # already written by the header
        '{{ else if or (eq $m.Role "user") (eq $m.Role "system") }}'
        + close_tools
        + "<|im_start|>{{ $m.Role }}\n{{ $m.Content }}<|im_end|>\n"
        '{{ else if eq $m.Role "assistant" }}' + close_tools + assistant + "{{ $m.Content }}"
        "{{ range $j, $tc := $m.ToolCalls }}{{ if or $j $m.Content }}\n{{ end }}"
        '<tool_call>\n{"name": "{{ $tc.Function.Name }}", "arguments": {{ json $tc.Function.Arguments }}}\n</tool_call>'
        "{{ end }}<|im_end|>\n"
        '{{ else if eq $m.Role "tool" }}{{ if ne $prev "tool" }}<|im_start|>user{{ end }}'
        "\n<tool_response>\n{{ $m.Content }}\n</tool_response>"
        "{{ end }}"
        "{{ $prev = $m.Role }}"
        "{{ end }}" + close_tools
    )


def go_template(chat_template: str) -> str:
    """The Ollama TEMPLATE for one of MiniMind's chat templates (recognised by content)."""
    if "open_thinking" in chat_template and "reasoning_content" in chat_template:  # minimind-3
        prompt = (
            '{{ if ne $prev "assistant" }}<|im_start|>assistant\n'
            "{{ if $.Think }}<think>\n{{ else }}<think>\n\n</think>\n\n{{ end }}{{ end }}"
        )
        return _header(None) + _turns(think_blocks=True) + prompt
    if "You are a helpful assistant" in chat_template and "enable_thinking" in chat_template:  # MiniMind2
        # MiniMind2 adds the empty think block only when thinking was explicitly turned off.
        prompt = (
            '{{ if ne $prev "assistant" }}<|im_start|>assistant\n'
            "{{ if and $.IsThinkSet (not $.Think) }}<think>\n\n</think>\n\n{{ end }}{{ end }}"
        )
        return _header("You are a helpful assistant") + _turns(think_blocks=False) + prompt
    raise MiniMindError(
        "the model's chat template is not one of MiniMind's (minimind-3 or MiniMind2); "
        "write an Ollama Go template for it and pass it with --template FILE"
    )


def modelfile(
    gguf_name: str,
    template: str,
    num_ctx: int,
    system: str | None = None,
    temperature: float = 0.85,
    top_p: float = 0.95,
) -> str:
    """The Modelfile text: FROM, TEMPLATE, stop tokens and sampling defaults."""
    if '"""' in template:
        raise MiniMindError('the Go template contains """, which a Modelfile cannot quote')
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{template}"""']
    if system:
        lines.append(f'SYSTEM """{system}"""')
    lines += [
        'PARAMETER stop "<|im_start|>"',
        'PARAMETER stop "<|im_end|>"',
        'PARAMETER stop "<|endoftext|>"',
        f"PARAMETER temperature {temperature}",  # `minimind chat`'s defaults (MiniMind's eval_llm)
        f"PARAMETER top_p {top_p}",
        "PARAMETER repeat_penalty 1",
        f"PARAMETER num_ctx {num_ctx}",
    ]
    return "\n".join(lines) + "\n"


def export_ollama(
    model_dir: str | Path,
    out: str | Path,
    name: str = "minimind",
    dtype: str = "q8_0",
    system: str | None = None,
    template_file: str | Path | None = None,
    force: bool = False,
) -> dict:
    """Write OUT/model.gguf and OUT/Modelfile. Returns a summary with the `ollama create`
    command to run."""
    model_dir = Path(model_dir)
    tok = Tokenizer.from_dir(model_dir)
    if template_file is not None:
        if not Path(template_file).is_file():
            raise MiniMindError(f"{template_file}: file not found")
        template = Path(template_file).read_text(encoding="utf-8")
    elif not tok.chat_template:
        raise MiniMindError(f"{model_dir}/tokenizer_config.json: no chat_template to translate for Ollama")
    else:
        template = go_template(tok.chat_template)
    out = prepare_out_dir(out, force)
    summary = export_gguf(model_dir, out / "model.gguf", dtype=dtype, force=True, name=name)
    num_ctx = min(ModelConfig.load(model_dir / "config.json").max_position_embeddings, 8192)
    text = modelfile("model.gguf", template, num_ctx, system)
    (out / "Modelfile").write_text(text, encoding="utf-8")
    summary.update(
        modelfile=str(out / "Modelfile"), command=f"ollama create {name} -f {out / 'Modelfile'} && ollama run {name}"
    )
    return summary
