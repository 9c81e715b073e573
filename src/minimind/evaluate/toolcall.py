"""Tool calling (`minimind eval --task toolcall`): agentic rollouts on held-out agent-RL prompts,
scored for tool-call validity and final-answer accuracy (MiniMind's eval_toolcall.py job).

Data: MiniMind's agent-RL format (JSONL, read and checked by minimind.rl.read_rl_prompts):

  {"conversations": [{"role": "system", "content": "...", "tools": "[{\\"type\\": \\"function\\", ...}]"},
                     {"role": "user", "content": "北京今天多少度？"},
                     {"role": "assistant", "content": ""}],          # placeholder, dropped
   "gt": ["28"]}

The system message offers tools by MiniMind's built-in names (calculate_math, unit_converter,
get_current_weather, get_current_time, get_exchange_rate, translate_text), which run in the
sandbox of minimind.rl.tools. Each prompt is rolled out (minimind.rl.rollout, all in one batch
on the engine, greedy by default) for at most --max-turns replies.

Metrics: validity = valid calls / all calls (a call is invalid when malformed, to a tool not
offered, with bad arguments, or when the tool answered with an error); invalid_share = share of
trajectories with at least one invalid call; accuracy = share whose final answer states every
`gt` value (rewards.answer_in_text = 1); answer_score = mean answer_in_text.
"""

from __future__ import annotations

from ..errors import MiniMindError
from ..infer import SamplingParams
from ..rl.data import RLPrompt, read_rl_prompts
from ..rl.rewards import answer_in_text
from ..rl.rollout import agent_rollouts
from ..rl.tools import ToolBox


def read_toolcall_prompts(path, limit: int | None = None) -> list[RLPrompt]:
    """The first `limit` prompts of an agent-RL file; each needs a `gt` to score its answer."""
    prompts = []
    for p in read_rl_prompts(path):
        if limit is not None and len(prompts) >= limit:
            break
        if not p.gt:
            raise MiniMindError(f"{p.where}: no 'gt' (the values the final answer should state)")
        prompts.append(p)
    if not prompts:
        raise MiniMindError(f"{path}: no prompts")
    return prompts


def evaluate_toolcall(
    model,
    tokenizer,
    prompts: list[RLPrompt],
    max_turns: int = 3,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    batch_size: int = 16,
    thinking: bool = False,
    examples: int = 3,
) -> dict:
    """Roll out every prompt with the built-in tools and score it; the metrics/details of a result."""
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=0)
    trajectories = agent_rollouts(
        model,
        tokenizer,
        [p.messages for p in prompts],
        ToolBox(),
        params,
        max_turns=max_turns,
        thinking=thinking,
        max_batch=batch_size,
    )
    valid = calls = with_invalid = correct = 0
    score = 0.0
    shown = []
    for p, t in zip(prompts, trajectories):
        s = answer_in_text(t.answer, p.record)
        valid, calls, with_invalid = valid + t.valid_calls, calls + t.calls, with_invalid + (t.invalid_calls > 0)
        correct, score = correct + (s == 1.0), score + s
        if len(shown) < examples:
            shown.append(
                {
                    "where": p.where,
                    "expected": p.gt,
                    "correct": s == 1.0,
                    "turns": t.turns,
                    "valid_calls": t.valid_calls,
                    "invalid_calls": t.invalid_calls,
                    "finish_reason": t.finish_reason,
                    "answer": t.answer[-300:],
                }
            )
    n = len(prompts)
    return {
        "metrics": {
            "accuracy": correct / n,
            "answer_score": score / n,
            "validity": valid / calls if calls else 0.0,
            "invalid_share": with_invalid / n,
            "calls_per_prompt": calls / n,
            "n": n,
        },
        "primary": "accuracy",
        "details": {
            "max_turns": max_turns,
            "max_new_tokens": max_new_tokens,
            "temperature": temperature,
            "finish_reasons": {
                r: sum(t.finish_reason == r for t in trajectories)
                for r in sorted({t.finish_reason for t in trajectories})
            },
            "examples": shown,
        },
    }


def format_toolcall(r: dict) -> str:
    """The printed table of a toolcall result (without the timing line)."""
    m, lines = r["metrics"], []
    for e in r["details"]["examples"]:
        lines.append(
            f"  {e['where']}: expected {', '.join(e['expected'])} ({'right' if e['correct'] else 'wrong'}); "
            f"{e['turns']} turns, {e['valid_calls']} valid / {e['invalid_calls']} invalid calls, "
            f"{e['finish_reason']}: ...{e['answer'][-80:]!r}"
        )
    lines.append(
        f"{r['task']}: answer accuracy {m['accuracy']:.2%} over {m['n']} prompts (mean answer score "
        f"{m['answer_score']:.2f}); tool-call validity {m['validity']:.2%} ({m['calls_per_prompt']:.2f} calls "
        f"per prompt); prompts with an invalid call {m['invalid_share']:.0%}"
    )
    return "\n".join(lines)
