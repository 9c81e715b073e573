"""The `minimind eval` verb: run one evaluation task on a model, print it, save it as JSON next to the model.

    minimind eval --model DIR --task ceval --data DATA/ceval [--shots 5] [--template chat|raw]
    minimind eval --model DIR --task ppl   --data FILE.txt|FILE.jsonl [--window 512 --stride 256]
    minimind eval --model DIR --task gsm8k --data FILE.jsonl [--think] [--max-new-tokens 512]
    minimind eval --model DIR --task toolcall --data FILE.jsonl [--max-turns 3]
    minimind eval --model VLM_DIR --task vqa --data FILE.jsonl|FILE.parquet [--blank-images]

Input is read and checked before the model is loaded, so a bad data path costs nothing.
Progress and notes go to stderr; the result (a table, or JSON with --json) to stdout.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ..errors import MiniMindError
from ..files import read_json
from .lm_eval_cli import register as register_lm_eval
from .report import register as register_report
from .results import write_result

# The task modules, checkpoint and device import torch: they are imported inside the functions
# that use them, so that building the CLI's parsers (which imports this module) stays instant.

TASKS = {
    "ceval": "choice",
    "cmmlu": "choice",
    "mmlu": "choice",
    "ppl": "perplexity",
    "gsm8k": "exact_match",
    "toolcall": "toolcall",
    "vqa": "vqa",
}


def log(*args, **kwargs) -> None:
    """Notes and progress go to stderr (looked up per call: tests and callers may swap it)."""
    print(*args, file=sys.stderr, **kwargs)


def show_progress(done: int, total: int) -> None:
    """A one-line counter on a terminal (rewritten in place, erased at the end); nothing in a log file."""
    if sys.stderr.isatty():
        log(f"\r  {done}/{total}" if done < total else "\r" + " " * 30 + "\r", end="", flush=True)


def load_task_data(args):
    """Read and check the task's data (no model needed yet)."""
    kind = TASKS[args.task]
    if args.limit is not None and args.limit < 1:
        raise MiniMindError(f"--limit {args.limit}: must be at least 1")
    if args.batch_size < 1:
        raise MiniMindError(f"--batch-size {args.batch_size}: must be at least 1")
    if args.shots < 0:
        raise MiniMindError(f"--shots {args.shots}: must be 0 or more")
    if args.shots and kind != "choice":
        raise MiniMindError(f"--shots applies to multiple-choice tasks (ceval, cmmlu, mmlu), not {args.task}")
    if getattr(args, "blank_images", False) and kind != "vqa":
        raise MiniMindError(f"--blank-images applies to --task vqa, not {args.task}")
    if kind == "choice":
        from .choice import load_exam

        return load_exam(args.data, args.task, args.split, args.shots, args.limit)
    if kind == "perplexity":
        from .perplexity import read_documents

        return read_documents(args.data, args.limit)
    if kind == "toolcall":
        from .toolcall import read_toolcall_prompts

        if args.max_turns < 1:
            raise MiniMindError(f"--max-turns {args.max_turns}: must be at least 1")
        return read_toolcall_prompts(args.data, args.limit)
    if kind == "vqa":
        from .vqa import read_vqa

        return read_vqa(args.data, args.limit)
    from .exact_match import read_problems

    return read_problems(args.data, args.limit)


def run_task(args, model, tokenizer, data) -> dict:
    """The task-specific part of the result."""
    kind = TASKS[args.task]
    if kind == "choice":
        from .choice import evaluate_choice

        template = args.template
        if template == "auto":
            template = "chat" if tokenizer.chat_template else "raw"
        result = evaluate_choice(model, tokenizer, data, template, args.batch_size, log=log, progress=show_progress)
        return {"split": data.split, "shots": data.shots, **result}
    if kind == "perplexity":
        from .perplexity import evaluate_perplexity

        return evaluate_perplexity(model, tokenizer, data, args.window, args.stride, args.batch_size)
    if kind == "toolcall":  # agentic rollouts with the built-in tools (evaluate/toolcall.py)
        from .toolcall import evaluate_toolcall

        result = evaluate_toolcall(
            model,
            tokenizer,
            data,
            max_turns=args.max_turns,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            batch_size=args.batch_size,
            thinking=args.think,
        )
        return {"thinking": args.think, **result}
    if kind == "vqa":  # image questions for a vision-language model (evaluate/vqa.py)
        from .vqa import evaluate_vqa

        result = evaluate_vqa(
            model,
            tokenizer,
            data,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            batch_size=args.batch_size,
            thinking=args.think,
            blank=args.blank_images,
            progress=show_progress,
        )
        # the blank-image control is saved beside the real score (eval/vqa_blank.json), not over it
        return {"thinking": args.think, **result, **({"task": "vqa_blank"} if args.blank_images else {})}
    from .exact_match import evaluate_exact_match

    result = evaluate_exact_match(
        model,
        tokenizer,
        data,
        thinking=args.think,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        batch_size=args.batch_size,
        log=log,
        progress=show_progress,
    )
    return {"thinking": args.think, **result}


def format_result(r: dict) -> str:
    """The human-readable table of a result."""
    m, lines = r["metrics"], []
    if r["kind"] == "choice":
        subjects = r["details"]["subjects"]
        width = max(len(s) for s in subjects)
        lines += [f"  {name:<{width}}  {s['accuracy']:6.1%}  (n={s['n']})" for name, s in subjects.items()]
        lines.append(
            f"{r['task']} {r['split'] or ''} {r['shots']}-shot, {r['details']['template']} prompts: accuracy "
            f"{m['accuracy']:.2%} over {m['n']} questions (mean over {len(subjects)} subjects "
            f"{m['accuracy_macro']:.2%}); chance {m['chance']:.0%}; probability on the letters {m['letter_mass']:.2f}"
        )
    elif r["kind"] == "perplexity":
        d = r["details"]
        lines.append(
            f"{r['task']}: perplexity {m['perplexity']:.3f}, {m['bits_per_byte']:.4f} bits per byte "
            f"({m['tokens']:,} tokens, {m['bytes']:,} bytes, {d['documents']} documents; window {d['window']}, "
            f"stride {d['stride']})"
        )
    elif r["kind"] == "toolcall":
        from .toolcall import format_toolcall

        lines.append(format_toolcall(r))
    elif r["kind"] == "vqa":
        from .vqa import format_vqa

        lines.append(format_vqa(r))
    else:
        for e in r["details"]["examples"]:
            lines.append(
                f"  {e['where']}: expected {', '.join(e['expected'])}, got {e['extracted']} "
                f"({'right' if e['correct'] else 'wrong'}): ...{e['reply'][-80:]!r}"
            )
        lines.append(
            f"{r['task']}: accuracy {m['accuracy']:.2%} over {m['n']} problems; explicit answer format "
            f"{m['format_ok']:.0%}; cut off by --max-new-tokens {m['truncated']:.0%}"
            f"{' (thinking on)' if r['thinking'] else ''}"
        )
    lines.append(f"({r['seconds']:.1f} s)")
    return "\n".join(lines)


def check_model_dir(path: str) -> None:
    """A run folder (e.g. the quickstart's, holding pretrain/ and sft/) is not a model: say which are."""
    root = Path(path)
    if root.is_dir() and not (root / "config.json").is_file():
        models = sorted(p.name for p in root.iterdir() if (p / "config.json").is_file())
        if models:
            raise MiniMindError(
                f"{root}: not a model directory (no config.json); it holds the models "
                f"{', '.join(models)}: use e.g. --model {root / models[-1]}"
            )


def cmd_eval(args) -> None:
    from .. import checkpoint
    from ..device import resolve_device, resolve_inference_dtype

    start = time.perf_counter()
    check_model_dir(args.model)
    data = load_task_data(args)
    device = resolve_device(args.device)
    model, tokenizer = checkpoint.load(
        args.model, device=device, dtype=resolve_inference_dtype(args.dtype, device), lora=args.lora
    )
    if args.task == "ppl":  # window problems show before the (long) scoring
        from .perplexity import check_window

        check_window(args.window, args.stride, model.config.max_position_embeddings)
    result = {
        "task": args.task,
        "kind": TASKS[args.task],
        "model": args.model,
        "lora": args.lora,
        "data": args.data,
        "split": None,
        "shots": None,
        "limit": args.limit,
        "thinking": None,
    }
    result.update(run_task(args, model, tokenizer, data))
    result["seconds"] = round(time.perf_counter() - start, 2)
    path = write_result(result, args.model, args.lora)
    if args.json:  # what was written, as written (with its "created" stamp)
        print(json.dumps(read_json(path), ensure_ascii=False, indent=1))
    else:
        print(format_result(result))
    log(f"wrote {path}")


def register(verbs) -> None:
    """Add `minimind eval` to the CLI's subparsers."""
    p = verbs.add_parser(
        "eval",
        help="evaluate a model: multiple choice (ceval/cmmlu/mmlu), perplexity, GSM8K",
        description="Run one evaluation task, print the result and save it as "
        "MODEL/eval/TASK.json (ADAPTER/eval/TASK.json with --lora).",
    )
    p.add_argument("--model", required=True, help="a model directory")
    p.add_argument("--lora", help="a LoRA adapter directory trained on --model")
    p.add_argument(
        "--task",
        required=True,
        choices=list(TASKS),
        help="ceval, cmmlu, mmlu: multiple choice by letter log-probability; ppl: perplexity and bits "
        "per byte; gsm8k: math answers by exact match of the final number; toolcall: agentic "
        "rollouts with the built-in tools, scored for tool-call validity and final-answer accuracy; "
        "vqa: questions about images (vision-language models), scored by the answer in the reply",
    )
    p.add_argument(
        "--data",
        required=True,
        help="choice: the data set directory (with dev/ and val/ or test/) or "
        "one CSV; ppl: a .txt or {text} .jsonl file; gsm8k: a .jsonl file; toolcall: "
        "an agent-RL .jsonl file (system message with tools, gt); vqa: a .jsonl of {image, question, "
        "answer[, type]} (image paths relative to the file) or a MiniMind-V style .parquet with image_bytes",
    )
    p.add_argument("--limit", type=int, help="only the first N questions (per subject for choice tasks) / documents")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument(
        "--batch-size", type=int, default=16, help="questions / windows / prompts per forward pass (default 16)"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps (default auto)")
    p.add_argument("--dtype", default="auto", help="auto, fp32, bf16, fp16 (default: fp32 on CPU, bf16 on GPU)")
    g = p.add_argument_group("multiple choice (ceval, cmmlu, mmlu)")
    g.add_argument("--split", help="which split to score (default: val for ceval, test for cmmlu and mmlu)")
    g.add_argument(
        "--shots",
        type=int,
        default=0,
        help="solved examples from the dev split before each question "
        "(default 0; dropped where they do not fit the context)",
    )
    g.add_argument(
        "--template",
        choices=["auto", "chat", "raw"],
        default="auto",
        help="chat: the question as a user turn, the letter scored after the assistant prefix (for "
        "SFT models); raw: plain text ending in '答案：' (pretrained models; how MiniMind's "
        "published numbers were taken); auto (default): chat when the tokenizer has a chat template",
    )
    g = p.add_argument_group("perplexity (ppl)")
    g.add_argument("--window", type=int, default=512, help="tokens per forward pass (default 512)")
    g.add_argument(
        "--stride",
        type=int,
        help="tokens the window moves; each scored token sees at least "
        "window - stride tokens of context (default window / 2)",
    )
    g = p.add_argument_group("exact match (gsm8k)")
    g.add_argument("--think", action="store_true", help="let the model reason in a <think> block first")
    g.add_argument("--max-new-tokens", type=int, default=512, help="most tokens per answer (default 512)")
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    g = p.add_argument_group("tool calling (toolcall; also takes --think, --max-new-tokens per reply, --temperature)")
    g.add_argument("--max-turns", type=int, default=3, help="most model replies per conversation (default 3)")
    g = p.add_argument_group("image questions (vqa; also takes --think, --max-new-tokens, --temperature)")
    g.add_argument(
        "--blank-images",
        action="store_true",
        help="replace every image with a plain grey one: the control that shows how much the images earn",
    )
    p.set_defaults(func=cmd_eval)

    # `minimind lm-eval` (lm-evaluation-harness) and `minimind report` (Markdown + plots)
    register_lm_eval(verbs)
    register_report(verbs)
