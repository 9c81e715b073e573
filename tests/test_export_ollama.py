"""`minimind export ollama`: the Modelfile, and its Go template rendered by Go itself.

There is no Ollama here, but its template engine is Go's standard text/template. The test
compiles a small Go program (when a `go` toolchain is installed; .ci/run installs Debian's
golang-go) that renders the TEMPLATE the way Ollama's template.Execute does (same data keys,
`missingkey=zero`, the `json` function, consecutive messages of one role merged), and
compares it with our Jinja chat template for generated conversations (and MiniMind's own, where
../shared/data is there).

JSON inside <tools> and <tool_call> is compared as JSON, not as text: Ollama prints it with
Go's json.Marshal (compact, its own key order), which no Go template can change. Everything
else must match character for character.
"""

import json
import re
import shutil
import subprocess

import pytest

from helpers import chat_records
from minimind.checkpoint import save_model_dir
from minimind.cli import main
from minimind.config import preset
from minimind.export.ollama import go_template, modelfile
from minimind.model import MiniMindForCausalLM

GO_RENDERER = r"""
package main

import (
	"encoding/json"
	"os"
	"strings"
	"text/template"
)

// Tool-call arguments print as JSON, as Ollama's templateArgs type does.
type templateArgs map[string]any

func (t templateArgs) String() string { b, _ := json.Marshal(map[string]any(t)); return string(b) }

type ToolCallFunction struct {
	Name      string       `json:"name"`
	Arguments templateArgs `json:"arguments"`
}
type ToolCall struct {
	Function ToolCallFunction `json:"function"`
}
type Message struct {
	Role      string     `json:"role"`
	Content   string     `json:"content"`
	Thinking  string     `json:"thinking"`
	ToolCalls []ToolCall `json:"tool_calls"`
}
type Case struct {
	Messages   []Message        `json:"messages"`
	Tools      []map[string]any `json:"tools"`
	Think      bool             `json:"think"`
	IsThinkSet bool             `json:"is_think_set"`
}

// collate as Ollama's: system messages are also joined into .System, and consecutive
// messages of the same role (tool results excepted) are merged with a blank line.
func collate(msgs []Message) (string, []*Message) {
	var system []string
	var out []*Message
	for i := range msgs {
		if msgs[i].Role == "system" {
			system = append(system, msgs[i].Content)
		}
		if len(out) > 0 && out[len(out)-1].Role == msgs[i].Role && msgs[i].Role != "tool" {
			out[len(out)-1].Content += "\n\n" + msgs[i].Content
		} else {
			out = append(out, &msgs[i])
		}
	}
	return strings.Join(system, "\n\n"), out
}

func main() {
	var in struct {
		Template string `json:"template"`
		Cases    []Case `json:"cases"`
	}
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		panic(err)
	}
	funcs := template.FuncMap{"json": func(v any) string { b, _ := json.Marshal(v); return string(b) }}
	tmpl := template.Must(template.New("").Option("missingkey=zero").Funcs(funcs).Parse(in.Template))
	var out []string
	for _, c := range in.Cases {
		system, msgs := collate(c.Messages)
		var b strings.Builder
		err := tmpl.Execute(&b, map[string]any{"System": system, "Messages": msgs, "Tools": c.Tools,
			"Response": "", "Think": c.Think, "IsThinkSet": c.IsThinkSet})
		if err != nil {
			out = append(out, "TEMPLATE ERROR: "+err.Error())
		} else {
			out = append(out, b.String())
		}
	}
	json.NewEncoder(os.Stdout).Encode(out)
}
"""


@pytest.fixture(scope="module")
def render_go(tmp_path_factory):
    """render_go(template, cases) -> rendered strings, by Go's text/template."""
    go = shutil.which("go")
    if go is None:
        pytest.skip(
            "no Go toolchain (apt-get install golang-go, or scripts/install-test-peers.sh): "
            "the Ollama template cannot be rendered"
        )
    d = tmp_path_factory.mktemp("go")
    (d / "main.go").write_text(GO_RENDERER)
    subprocess.run(
        [go, "build", "-o", str(d / "render"), str(d / "main.go")], check=True, cwd=d, timeout=300, capture_output=True
    )

    def render(template, cases):
        res = subprocess.run(
            [str(d / "render")],
            input=json.dumps({"template": template, "cases": cases}),
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        return json.loads(res.stdout)

    return render


def to_ollama(messages):
    """MiniMind's message format -> what Ollama's API receives (tools go separately)."""
    tools, out = None, []
    for m in messages:
        if m["role"] == "system" and m.get("tools"):
            tools = json.loads(m["tools"]) if isinstance(m["tools"], str) else m["tools"]
        calls = m.get("tool_calls")
        calls = json.loads(calls) if isinstance(calls, str) else calls or []
        calls = [c.get("function", c) for c in calls]
        out.append(
            {
                "role": m["role"],
                "content": m.get("content") or "",
                "thinking": m.get("reasoning_content", ""),
                "tool_calls": [{"function": {"name": c["name"], "arguments": c["arguments"]}} for c in calls],
            }
        )
    return out, tools


def _canon(value):
    if isinstance(value, float) and value.is_integer():
        return int(value)  # Go prints 1.0 as 1
    if isinstance(value, dict):
        return {k: _canon(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canon(v) for v in value]
    return value


def json_as_json(text):
    """Rewrite the JSON in <tools> lines and <tool_call> blocks canonically (sorted keys)."""

    def canon(s):
        try:
            return json.dumps(_canon(json.loads(s)), sort_keys=True, ensure_ascii=False)
        except ValueError:  # the header's `{"name": <function-name>, ...}` placeholder
            return s

    text = re.sub(
        r"(<tools>\n)(.*?)(\n</tools>)",
        lambda m: m[1] + "\n".join(canon(x) for x in m[2].split("\n")) + m[3],
        text,
        flags=re.S,
    )
    return re.sub(r"(<tool_call>\n)(.*?)(\n</tool_call>)", lambda m: m[1] + canon(m[2]) + m[3], text, flags=re.S)


def carried_by_ollama(conv):
    """What Ollama's API can carry (see export/ollama.py): no <think> block inside content,
    reasoning without surrounding newlines, call arguments as objects."""
    for m in conv:
        reasoning, calls = m.get("reasoning_content") or "", m.get("tool_calls") or []
        calls = json.loads(calls) if isinstance(calls, str) else calls
        if (
            "<think>" in (m.get("content") or "")
            or reasoning != reasoning.strip("\n")
            or any(isinstance(c.get("arguments"), str) for c in calls)
        ):
            return False
    return True


def conversations(shared_data=None):
    """MiniMind's own conversations (when shared_data is given) or generated ones, plus hand-made cases."""
    convs = []
    if shared_data is None:
        convs = [r["conversations"] for r in chat_records(120) if carried_by_ollama(r["conversations"])]
    files = (("sft_toolcall_glaive_demo_zh_en.jsonl", 60), ("sft_sharegpt_zh_1k.jsonl", 20), ("tiny/tiny_sft.jsonl", 3))
    for name, n in files if shared_data is not None else ():
        with open(shared_data / "minimind_format" / name, encoding="utf-8") as f:
            convs += [json.loads(line)["conversations"] for line, _ in zip(f, range(n))]
    call = {"name": "get_weather", "arguments": {"city": "北京", "days": 2}}
    call_schema = {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
    convs += [  # what the files lack: reasoning, content + calls, parallel calls and results
        [
            {"role": "user", "content": "1+1?"},
            {"role": "assistant", "content": "2", "reasoning_content": "easy: 1+1=2"},
            {"role": "user", "content": "2+2?"},
        ],
        [
            {
                "role": "system",
                "content": "你是助手",
                "tools": json.dumps([{"type": "function", "function": call_schema}]),
            },
            {"role": "user", "content": "天气?"},
            {"role": "assistant", "content": "我查一下。", "tool_calls": json.dumps([call, call])},
            {"role": "tool", "content": "晴"},
            {"role": "tool", "content": "雨"},
        ],
        [{"role": "user", "content": "hi"}],
    ]
    return convs


def _compare(render_go, tok, convs, think_modes):
    template = go_template(tok.chat_template)
    cases, expected = [], []
    for conv in convs:
        if any(a["role"] == b["role"] != "tool" for a, b in zip(conv, conv[1:])):
            continue  # Ollama merges such messages; MiniMind's data has none
        messages, tools = to_ollama(conv)
        for go_flags, jinja_flags in think_modes:
            cases.append({"messages": messages, "tools": tools, **go_flags})
            expected.append(
                tok.apply_chat_template(conv, add_generation_prompt=conv[-1]["role"] != "assistant", **jinja_flags)
            )
    rendered = render_go(template, cases)
    assert len(rendered) == len(expected) > 80
    for case, got, want in zip(cases, rendered, expected):
        if case["tools"]:
            got, want = json_as_json(got), json_as_json(want)
        assert got == want


@pytest.mark.parametrize("source", ["generated", "shared"])
def test_go_template_renders_like_the_minimind3_chat_template(render_go, tok, source, request):
    convs = conversations(request.getfixturevalue("shared_data") if source == "shared" else None)
    _compare(
        render_go,
        tok,
        convs,  # the project-made tokenizer carries the minimind3 template
        [({"think": False}, {}), ({"think": True, "is_think_set": True}, {"open_thinking": True})],
    )


def test_go_template_renders_like_the_minimind2_chat_template(render_go, shared_data):
    from minimind.tokenizer import Tokenizer

    tok = Tokenizer.from_dir(shared_data / "tokenizer" / "minimind2")
    convs = [[m for m in c if "reasoning_content" not in m] for c in conversations(shared_data)]
    _compare(render_go, tok, convs, [({}, {}), ({"think": False, "is_think_set": True}, {"enable_thinking": False})])


def test_tool_json_is_the_only_difference(render_go, tok):
    """Shows what the JSON normalisation hides: spacing/key order, never anything else."""
    conv = conversations()[-2]
    messages, tools = to_ollama(conv)
    [got] = render_go(go_template(tok.chat_template), [{"messages": messages, "tools": tools}])
    want = tok.apply_chat_template(conv, add_generation_prompt=True)
    assert got != want and json_as_json(got) == json_as_json(want)
    assert '"arguments": {"city":"北京","days":2}' in got  # Go's compact JSON


def test_export_writes_gguf_and_modelfile(tmp_path, tok, capsys):
    pytest.importorskip("gguf", reason="the gguf package is not installed (pip install 'minimind[export]')")
    save_model_dir(MiniMindForCausalLM(preset("nano")).init_weights(0), tmp_path / "m", tok)
    code = main(
        [
            "export",
            "ollama",
            "--model",
            str(tmp_path / "m"),
            "--out",
            str(tmp_path / "ollama"),
            "--name",
            "mini",
            "--system",
            "你是 MiniMind。",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and f"ollama create mini -f {tmp_path / 'ollama' / 'Modelfile'}" in out
    assert {p.name for p in (tmp_path / "ollama").iterdir()} == {"model.gguf", "Modelfile"}
    text = (tmp_path / "ollama" / "Modelfile").read_text()
    assert text.startswith('FROM ./model.gguf\nTEMPLATE """') and go_template(tok.chat_template) in text
    for line in (
        'SYSTEM """你是 MiniMind。"""',
        'PARAMETER stop "<|im_start|>"',
        'PARAMETER stop "<|im_end|>"',
        "PARAMETER temperature 0.85",
        "PARAMETER top_p 0.95",
        "PARAMETER num_ctx 8192",
    ):
        assert line in text.splitlines()


def test_unknown_chat_template_is_a_clear_error():
    with pytest.raises(Exception, match="not one of MiniMind's"):
        go_template("{% for m in messages %}{{ m.content }}{% endfor %}")
    with pytest.raises(Exception, match='contains """'):
        modelfile("m.gguf", 'x"""y', 2048)
