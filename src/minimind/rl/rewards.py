"""Verifiable rewards for RL: plain named functions, weighted together, each part kept for the log.

A reward is any function `(completion_text, record) -> float`:

    completion_text  everything the model wrote for this prompt. When the prompt opened a
                     <think> block (open_thinking), the trainer puts that "<think>" back in
                     front, so a reward always sees the whole reply.
    record           the data row it answers (a dict as read from the JSONL file), with the
                     expected answers in record["gt"] when the file has them.

Built in (name: range, what it measures):

    exact_answer    {0, 1}    the final answer equals one of `gt` (numbers as GSM8K writes them)
    answer_in_text  [0, 1]    share of the `gt` items found in the final text (agent RL's check)
    think_format    {0, 1}    a well-formed <think>...</think> followed by a non-empty answer
    length          [-1, 0]   0 between min_chars and max_chars, falling linearly to -1 outside
    repetition      [-1, 0]   minus the share of word trigrams that repeat an earlier one
    tool_calls      [-1, 1]   agent RL: (valid - invalid calls) / calls of the trajectory, 0 without
    reward_model    (any)     the score of a local sequence-classification model (--reward-model
                              DIR, rl/reward_model.py): not built in, the run supplies it

In agent RL (`minimind agent`) completion_text is every reply of the trajectory, in order, one
a line (tool observations left out), and record["trajectory"] holds its counts: valid_calls,
invalid_calls, turns and finish_reason.

MiniMind scores every rollout with a 1.8B reward model loaded with remote code; these rules
need nothing but the text, so RL runs anywhere, and a rule cannot be fooled the way a learned
scorer can. Your own reward is a function with the same signature, loaded from
"module:function" or "path/to/file.py:function" (the --reward-fn flag) by `load_reward_fn`.

    score = combine({"exact_answer": 1.0, "think_format": 0.2, "repetition": 0.5})
    total, parts = score(text, record)   # parts: each reward unweighted, for the log
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from ..errors import MiniMindError
from ..evaluate.numbers import NUMBER, _boxed, extract_answer, same_number, to_fraction
from ..infer.thinking import check_thinking

RewardFn = Callable[[str, dict], float]


# --------------------------------------------------------------------------- answers ---


def expected_answers(record: dict, reward: str = "this reward") -> list[str]:
    """The accepted answers of a record: `gt` as a list of strings ("72" and ["72", "72.0"] both work)."""
    gt = record.get("gt") if isinstance(record, dict) else None
    if gt is None:
        raise MiniMindError(
            f"{reward} needs the expected answer in the record's 'gt' field, and this record "
            "has none (use a file with gt, e.g. rl_gsm8k_train_gt.jsonl, or another reward)"
        )
    items = gt if isinstance(gt, (list, tuple)) else [gt]
    return [str(g).strip() for g in items if str(g).strip()]


def final_text(completion: str) -> str:
    """The answer part of a reply: after its think block, and after its last tool call; "" when
    a think block was opened and never closed (the reply never got to its answer).

    Stricter than `eval --task gsm8k`, which searches an unfinished think block for a number: a
    policy paid for a number in its reasoning would learn to stop before answering."""
    end = completion.rfind("</think>")
    if end < 0 and "<think>" in completion:
        return ""
    text = completion[end + len("</think>") :] if end >= 0 else completion
    end = text.rfind("</tool_call>")
    return (text[end + len("</tool_call>") :] if end >= 0 else text).strip()


def _normal_text(text: str) -> str:
    """For answers that are not numbers: case, surrounding space and end punctuation do not count."""
    return text.strip().strip(".。!！").strip().casefold()


def exact_answer(completion: str, record: dict) -> float:
    """1.0 when the reply's final answer equals one of the record's `gt` answers, else 0.0.

    The answer is searched in `final_text` (so never in the reasoning) as `minimind eval --task
    gsm8k` finds it (evaluate/numbers.py): the last \\boxed{...}, else "#### N", else "answer is
    N", else the last number; numbers compare by value ("$1,234" = 1234, "72.0" = 72, "3/4" =
    0.75, "-5" = "−5"). An answer that is not a number ("Paris") is compared as text with the
    boxed answer, the "####" line or the whole final text.
    """
    answers = expected_answers(record, "exact_answer")
    text = final_text(completion)
    found, _ = extract_answer(text)
    for want in answers:
        if to_fraction(want) is not None:
            if found is not None and same_number(found, want):
                return 1.0
        elif _normal_text(want) in {_normal_text(c) for c in _text_candidates(text)}:
            return 1.0
    return 0.0


def _text_candidates(text: str) -> list[str]:
    out = [text]
    if (boxed := _boxed(text)) is not None:  # numbers.py's brace-balanced reader (\\boxed{\\frac{3}{4}})
        out.append(boxed)
    if (hashes := text.rfind("####")) >= 0 and text[hashes + 4 :].strip():
        out.append(text[hashes + 4 :].strip().splitlines()[0])
    return out


def answer_in_text(completion: str, record: dict) -> float:
    """The share of `gt` items that appear in the final text (after the think block and the last
    tool call): as a number of equal value, or case-insensitively as text. This is MiniMind's
    agent-RL check: `gt` lists every value the final answer should state. A number must appear
    as a number ("72" is not found in "720"); MiniMind also accepted it as a substring."""
    answers = expected_answers(record, "answer_in_text")
    if not answers:
        return 0.0
    text = final_text(completion)
    numbers = {to_fraction(m.group(0)) for m in NUMBER.finditer(text)}
    found = 0
    for want in answers:
        value = to_fraction(want)
        found += (value in numbers) if value is not None else (want.casefold() in text.casefold())
    return found / len(answers)


# ---------------------------------------------------------------------------- format ---


def think_format(completion: str, record: dict) -> float:
    """1.0 for `<think>reasoning</think>` followed by a non-empty answer, else 0.0 (an unclosed
    or repeated tag, empty reasoning, no answer, or no think block at all)."""
    return float(check_thinking(completion).kind == "think")


def make_length(min_chars: int = 1, max_chars: int = 800) -> RewardFn:
    """A length term over the whole reply, in [-1, 0]: 0 for min_chars <= len <= max_chars, then
    linear, reaching -1 at 0 characters and at 2 * max_chars (and staying there)."""
    if not 0 <= min_chars <= max_chars or max_chars <= 0:
        raise MiniMindError(
            f"length reward: need 0 <= min_chars <= max_chars and max_chars > 0, got {min_chars} and {max_chars}"
        )

    def length(completion: str, record: dict) -> float:
        n = len(completion.strip())
        if n > max_chars:
            return -min(1.0, (n - max_chars) / max_chars)
        if n < min_chars:
            return -(min_chars - n) / min_chars
        return 0.0

    length.__doc__ = f"0 for {min_chars}..{max_chars} characters, down to -1 outside (see make_length)."
    return length


# Words of Latin script and digits count as one token; every other visible character (each CJK
# character, each punctuation mark) is a token of its own, so Chinese text, which has no spaces,
# is measured too (MiniMind's \w+ makes a whole Chinese sentence one "word"). A run of one
# character ("####", "...") is one token, so markup is not mistaken for repetition.
_TOKEN = re.compile(r"[a-z0-9]+|([^\sa-z0-9])\1*")


def make_repetition(n: int = 3) -> RewardFn:
    """A repetition term in [-1, 0]: minus the share of n-grams (of words, see _TOKEN) that
    already occurred earlier in the reply. 0 for text without repeats (or shorter than n
    tokens); -0.5 when half the n-grams are repeats; close to -1 for one phrase looped."""
    if n < 1:
        raise MiniMindError(f"repetition reward: n must be at least 1, got {n}")

    def repetition(completion: str, record: dict) -> float:
        tokens = [m.group(0) for m in _TOKEN.finditer(completion.lower())]
        grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
        return -(len(grams) - len(set(grams))) / len(grams) if grams else 0.0

    repetition.__doc__ = f"Minus the share of repeated {n}-grams, in [-1, 0] (see make_repetition)."
    return repetition


# ---------------------------------------------------------------------------- agent ---


def tool_calls(completion: str, record: dict) -> float:
    """Agent RL: (valid calls - invalid calls) / calls, in [-1, 1], from record["trajectory"]
    (as `minimind agent` fills it); 0.0 for a trajectory without calls. A call is invalid when
    malformed, to a tool its prompt did not offer, with bad arguments, or answered with an error."""
    t = record.get("trajectory") if isinstance(record, dict) else None
    if not isinstance(t, dict):
        raise MiniMindError("tool_calls scores agent trajectories: use it with minimind agent")
    valid, invalid = t.get("valid_calls", 0), t.get("invalid_calls", 0)
    return (valid - invalid) / (valid + invalid) if valid + invalid else 0.0


# -------------------------------------------------------------------------- registry ---

REWARDS: dict[str, RewardFn] = {
    "exact_answer": exact_answer,
    "answer_in_text": answer_in_text,
    "think_format": think_format,
    "length": make_length(),
    "repetition": make_repetition(),
    "tool_calls": tool_calls,
}


def register_reward(name: str, fn: RewardFn) -> RewardFn:
    """Add a reward under a name, so `combine` and the --reward flags find it."""
    if not name or ":" in name or "=" in name or "," in name:
        raise MiniMindError(f"a reward name must be non-empty without ':', '=' or ',', got {name!r}")
    _check_signature(fn, name)
    REWARDS[name] = fn
    return fn


def get_reward(name: str) -> RewardFn:
    """A registered reward by name, or a user's function by "module:function"."""
    if ":" in name:
        return load_reward_fn(name)
    if name == "reward_model" and name not in REWARDS:
        raise MiniMindError("the reward reward_model needs --reward-model DIR (a local sequence-classification model)")
    if name not in REWARDS:
        raise MiniMindError(
            f"unknown reward {name!r}; built in: {', '.join(REWARDS)} (or give your own as module:function)"
        )
    return REWARDS[name]


def load_reward_fn(spec: str) -> RewardFn:
    """Import a user's reward: "my_rewards:brevity" (a module on the path or in the current
    directory) or "path/to/my_rewards.py:brevity". Every mistake is a one-line MiniMindError."""
    module_name, sep, fn_name = spec.rpartition(":")
    if not sep or not module_name or not fn_name.isidentifier():
        raise MiniMindError(
            f"--reward-fn expects MODULE:FUNCTION (e.g. my_rewards:brevity or rewards.py:brevity), got {spec!r}"
        )
    module = _import_file(module_name, spec) if module_name.endswith(".py") else _import_module(module_name, spec)
    fn = getattr(module, fn_name, None)
    if fn is None:
        raise MiniMindError(f"--reward-fn {spec}: {module_name} has no function {fn_name!r}")
    if not callable(fn):
        raise MiniMindError(f"--reward-fn {spec}: {fn_name} is a {type(fn).__name__}, not a function")
    _check_signature(fn, spec)
    return fn


def _import_module(name: str, spec: str, flag: str = "--reward-fn"):
    # A console script does not put the current directory on sys.path, but "my_rewards:f" most
    # often means ./my_rewards.py: look there too, for this import only.
    added = "" not in sys.path and str(Path.cwd()) not in sys.path
    if added:
        sys.path.insert(0, str(Path.cwd()))
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name and (name == e.name or name.startswith(e.name + ".")):  # the module (or its package)
            raise MiniMindError(
                f"{flag} {spec}: no module named {name!r} (not installed, not in "
                "the current directory; or give a file: path/to/file.py:function)"
            ) from None
        raise MiniMindError(f"{flag} {spec}: importing {name} failed: {e}") from None
    except Exception as e:  # the user's module raised while importing: say so, in one line
        raise MiniMindError(f"{flag} {spec}: importing {name} failed: {type(e).__name__}: {e}") from None
    finally:
        if added:
            sys.path.remove(str(Path.cwd()))


def _import_file(path: str, spec: str, flag: str = "--reward-fn"):
    file = Path(path)
    if not file.is_file():
        raise MiniMindError(f"{flag} {spec}: file not found: {file}")
    module_spec = importlib.util.spec_from_file_location(f"minimind_user_reward_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:
        raise MiniMindError(f"{flag} {spec}: running {file} failed: {type(e).__name__}: {e}") from None
    return module


def _check_signature(fn, where: str) -> None:
    try:
        inspect.signature(fn).bind("completion text", {})
    except ValueError:  # some builtins have no signature to read: let them through
        return
    except TypeError:
        raise MiniMindError(
            f"reward {where} must take (completion_text, record), but its signature is {inspect.signature(fn)}"
        ) from None


# -------------------------------------------------------------------------- weights ---


def parse_weights(text: str) -> dict[str, float]:
    """ "exact_answer=1,think_format=0.2" (the command line's form) -> {"exact_answer": 1.0, ...}.
    A name alone has weight 1; a user's reward may be named as module:function."""
    weights = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        try:
            weights[name.strip()] = float(value) if sep else 1.0
        except ValueError:
            raise MiniMindError(f"reward weights: {item!r} is not NAME=NUMBER") from None
    if not weights:
        raise MiniMindError(f"reward weights: no rewards in {text!r} (e.g. exact_answer=1,think_format=0.2)")
    return weights


class Combined:
    """Several rewards with weights, called like one reward: returns (weighted sum, parts),
    where parts holds each reward's own value (unweighted), so every component can be logged.

    given: rewards the caller built, by name (the run's reward model), used before the registry.
    A reward with a `batch(completions, records) -> values` method is scored in one call by
    `batch` (a model scores many replies at once)."""

    def __init__(self, weights: Mapping[str, float], given: Mapping[str, RewardFn] | None = None):
        self.weights = {}
        self.fns: dict[str, RewardFn] = {}
        for name, weight in weights.items():
            if not isinstance(weight, (int, float)) or isinstance(weight, bool) or not math.isfinite(weight):
                raise MiniMindError(f"reward weight of {name!r} must be a finite number, got {weight!r}")
            self.fns[name] = given[name] if given and name in given else get_reward(name)
            self.weights[name] = float(weight)
        if not self.fns:
            raise MiniMindError("combine: no rewards given")

    def __call__(self, completion: str, record: dict) -> tuple[float, dict[str, float]]:
        parts = {name: _checked(name, fn(completion, record)) for name, fn in self.fns.items()}
        return sum(self.weights[n] * v for n, v in parts.items()), parts

    def batch(self, completions: list[str], records: list[dict]) -> tuple[list[float], dict[str, list[float]]]:
        """Score many replies: (totals, {name: values}), in order."""
        parts = {}
        for name, fn in self.fns.items():
            scorer = getattr(fn, "batch", None)
            values = (
                scorer(completions, records)
                if callable(scorer)
                else [fn(c, r) for c, r in zip(completions, records, strict=True)]
            )
            parts[name] = [_checked(name, v) for v in values]
        totals = [sum(self.weights[n] * parts[n][i] for n in parts) for i in range(len(completions))]
        return totals, parts


def _checked(name: str, value) -> float:
    # A NaN or a string would silently poison every advantage of the batch: stop here.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise MiniMindError(f"reward {name} returned {value!r}; a reward must return a finite number")
    return float(value)


def combine(weights: Mapping[str, float] | str, given: Mapping[str, RewardFn] | None = None) -> Combined:
    """The weighted sum of named rewards: combine({"exact_answer": 1, "repetition": 0.5}) or
    combine("exact_answer=1,repetition=0.5"). Names are registered rewards or module:function,
    or rewards in `given` (see Combined)."""
    return Combined(parse_weights(weights) if isinstance(weights, str) else weights, given)
