"""minimind model directories as an lm-evaluation-harness model ("minimind").

    minimind lm-eval --model_args path=out/sft --tasks hellaswag      (see lm_eval_cli.py)

    import lm_eval, minimind.evaluate.lm_eval_adapter                 (registers "minimind")
    lm_eval.simple_evaluate(model="minimind", model_args="path=out/sft", tasks=["hellaswag"])

The three request types the harness makes:
  * loglikelihood(context, continuation): the harness encodes context+continuation jointly
    and splits at the context's length (TemplateLM._encode_pair); we score the continuation
    tokens in one forward pass per batch.
  * loglikelihood_rolling(text): perplexity; the text is cut into windows of max_length
    tokens, each token predicted exactly once with as much context as fits.
  * generate_until(context, {until, max_gen_toks, ...}): batched minimind.infer.generate,
    greedy unless the task asks for sampling, stopping at `until` strings or <|im_end|>.

Every sequence gets MiniMind's bos token `<|im_start|>` in front (pretraining puts it before
every document), unless the text already starts with it (a chat-templated prompt).
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from ..checkpoint import load
from ..device import resolve_device, resolve_inference_dtype
from ..errors import MiniMindError
from ..infer import SamplingParams, generate

try:
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
    from lm_eval.models.utils import normalize_gen_kwargs
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
except ImportError:  # pragma: no cover - depends on the installation
    raise MiniMindError("the lm-evaluation-harness adapter needs lm_eval: pip install 'minimind[lm-eval]'") from None

DEFAULT_BATCH_SIZE = 16  # requests per forward pass; lm_eval's own default is 1


@register_model("minimind")
class MiniMindLM(TemplateLM):
    """A minimind model directory as an lm-evaluation-harness model.

    Model args: path (the model directory, required), lora (a LoRA adapter directory),
    device (auto, cpu, cuda, mps), dtype (auto, fp32, bf16, fp16), batch_size (an integer;
    "auto" means 16), max_length (the longest sequence fed to the model, default the model's
    max_position_embeddings), add_bos_token (default True).
    """

    def __init__(
        self,
        path: str | None = None,
        lora: str | None = None,
        device: str | None = "auto",
        dtype: str = "auto",
        batch_size: int | str = DEFAULT_BATCH_SIZE,
        max_length: int | None = None,
        add_bos_token: bool = True,
        max_batch_size: int | None = None,
    ):
        super().__init__()  # max_batch_size: the harness always passes it; we do not search batch sizes
        if not path:
            raise MiniMindError("lm-eval: say which model to evaluate: --model_args path=MODEL_DIR")
        self.path, self.lora = str(path), str(lora) if lora else None
        self._device = resolve_device(device or "auto")
        self.model, self.tokenizer = load(
            self.path, self._device, resolve_inference_dtype(dtype, self._device), lora=self.lora
        )
        self.batch_size = _batch_size(batch_size)
        self.max_length = int(max_length or self.model.config.max_position_embeddings)
        self.add_bos_token = add_bos_token

    # ------------------------------------------------------------------ tokens
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        """What an empty context becomes, and what precedes rolling windows: the bos token."""
        return self.tokenizer.bos_token_id

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.source

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        ids = self.tokenizer.encode(string)
        if add_special_tokens is not False and self.add_bos_token and ids[:1] != [self.prefix_token_id]:
            ids = [self.prefix_token_id] + ids
        return ids

    def apply_chat_template(self, chat_history: list[dict], add_generation_prompt: bool = True) -> str:
        """--apply_chat_template: the prompt rendered with the model's own chat template."""
        return self.tokenizer.apply_chat_template(chat_history, add_generation_prompt=add_generation_prompt)

    # ------------------------------------------------------------------ scoring
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """requests: [((context, continuation), context_ids, continuation_ids)] ->
        [(sum of log p(continuation token), whether greedy decoding yields the continuation)].

        Longest sequences first, in batches. Rows are right-padded: with causal attention no
        real token sees the padding, so no mask is needed. Only the continuation positions go
        through the vocabulary projection (the context needs none), which saves most of the work
        for multiple choice and bounds memory for long windows.
        """
        order = sorted(range(len(requests)), key=lambda i: -len(requests[i][1]) - len(requests[i][2]))
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        pad = self.tokenizer.pad_token_id or 0
        with torch.inference_mode(), tqdm(total=len(requests), disable=disable_tqdm, desc="loglikelihood") as bar:
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                rows = []
                for i in batch:
                    (_, _), context, continuation = requests[i]
                    if len(continuation) > self.max_length:
                        raise MiniMindError(
                            f"lm-eval: a continuation of {len(continuation)} tokens is longer than "
                            f"max_length {self.max_length}"
                        )
                    # The last max_length+1 tokens; the final one is only ever a target.
                    rows.append(((context + continuation)[-(self.max_length + 1) :][:-1], continuation))
                ids = torch.full((len(rows), max(len(r) for r, _ in rows)), pad, dtype=torch.long)
                for r, (inp, _) in enumerate(rows):
                    ids[r, : len(inp)] = torch.tensor(inp)
                # logits_to_keep=1: we need the hidden states, not logits for every position.
                hidden = self.model(ids.to(self._device), logits_to_keep=1).hidden_states
                for r, (i, (inp, continuation)) in enumerate(zip(batch, rows)):
                    n = len(continuation)
                    logprobs = self.model.lm_head(hidden[r, len(inp) - n : len(inp)]).float().log_softmax(-1)
                    target = torch.tensor(continuation, device=logprobs.device)
                    score = logprobs.gather(-1, target[:, None]).sum().item()
                    greedy = bool((logprobs.argmax(-1) == target).all())
                    results[i] = (score, greedy)
                    if requests[i][0] != (None, None):  # (rolling windows are cached per document)
                        self.cache_hook.add_partial("loglikelihood", requests[i][0], results[i])
                bar.update(len(batch))
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole texts (perplexity tasks), each scored in windows of max_length
        tokens: every token predicted once, with as much preceding context as fits."""
        windows, owner = [], []
        for k, request in enumerate(requests):
            (text,) = request.args
            tokens = self.tok_encode(text, add_special_tokens=False)
            for context, target in map(
                make_disjoint_window,
                get_rolling_token_windows(tokens, self.prefix_token_id, self.max_length, context_len=1),
            ):
                windows.append(((None, None), context, target))
                owner.append(k)
        scores = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)
        totals = [0.0] * len(requests)
        for k, (score, _) in zip(owner, scores):
            totals[k] += score
        for request, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    # ------------------------------------------------------------------ generation
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Batched generation; requests with the same generation settings share batches."""
        groups: dict[str, list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault(repr(sorted(request.args[1].items())), []).append(i)
        out: list[str | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), disable=disable_tqdm, desc="generate_until")
        for members in groups.values():
            kwargs = normalize_gen_kwargs(requests[members[0]].args[1], default_max_gen_toks=256)
            until = kwargs.pop("until") or []
            max_new = kwargs.pop("max_gen_toks")
            if max_new >= self.max_length:
                raise MiniMindError(
                    f"lm-eval: max_gen_toks {max_new} leaves no room for the prompt (max_length {self.max_length})"
                )
            sample = kwargs.get("do_sample") and kwargs.get("temperature", 0) > 0
            params = SamplingParams(
                max_new_tokens=max_new,
                temperature=float(kwargs["temperature"]) if sample else 0.0,
                top_p=float(kwargs.get("top_p", 1.0)) if sample else 1.0,
                stop_strings=tuple(s for s in until if s),
                seed=kwargs.get("seed"),
            )
            prompts = {i: self.tok_encode(requests[i].args[0])[-(self.max_length - max_new) :] for i in members}
            members = sorted(members, key=lambda i: -len(prompts[i]))  # similar lengths: less padding
            for start in range(0, len(members), self.batch_size):
                batch = members[start : start + self.batch_size]
                for i, done in zip(batch, generate(self.model, self.tokenizer, [prompts[i] for i in batch], params)):
                    out[i] = done.text
                    self.cache_hook.add_partial("generate_until", requests[i].args, done.text)
                bar.update(len(batch))
        bar.close()
        return out


def _batch_size(value) -> int:
    if isinstance(value, str) and value.startswith("auto"):
        return DEFAULT_BATCH_SIZE
    try:
        size = int(value)
    except (TypeError, ValueError):
        size = 0
    if size < 1:
        raise MiniMindError(f"lm-eval: batch_size must be a positive integer or auto, got {value!r}")
    return size
