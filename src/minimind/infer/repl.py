"""`minimind chat`: talk to a model in the terminal.

A REPL with multi-turn history, streamed replies and tokens/s, or one answer with
`--prompt`. Commands inside the REPL: /reset, /think [on|off], /help, /exit.
"""

from __future__ import annotations

import sys
import time

from ..checkpoint import load
from ..device import resolve_device, resolve_inference_dtype
from .generate import SamplingParams, stream

HELP = """commands:
  /reset         forget the conversation so far
  /think [on|off] let the model reason in a <think> block before answering (toggle)
  /help          this text
  /exit          leave (Ctrl-D works too; Ctrl-C stops a reply)"""


class ChatSession:
    """One conversation: its history and settings; `reply()` streams an answer to `out`."""

    def __init__(
        self,
        model,
        tokenizer,
        params: SamplingParams,
        system: str | None = None,
        think: bool = False,
        raw: bool = False,
        out=sys.stdout,
        status=sys.stderr,
    ):
        self.model, self.tokenizer, self.params = model, tokenizer, params
        self.system, self.think, self.raw = system, think, raw
        self.out, self.status = out, status
        self.history: list[dict] = []

    def reset(self) -> None:
        self.history = []

    def prompt_ids(self, user_text: str) -> list[int]:
        """The token ids to generate from: the chat template over the history, or in raw
        mode (pretrained-only models) just <bos> + the text to continue."""
        if self.raw:
            return [self.tokenizer.bos_token_id] + self.tokenizer.encode(user_text)
        messages = self.history + [{"role": "user", "content": user_text}]
        budget = self.model.config.max_position_embeddings - self.params.max_new_tokens
        while True:
            system = [{"role": "system", "content": self.system}] if self.system else []
            ids = self.tokenizer.encode_chat(system + messages, add_generation_prompt=True, open_thinking=self.think)
            if len(ids) <= budget or len(messages) <= 1:
                return ids
            messages = messages[2:]  # drop the oldest exchange to fit the context window
            self.history = self.history[2:]
            print("(oldest turn dropped to fit the context window)", file=self.status)

    def reply(self, user_text: str) -> str:
        """Stream the model's answer to `out`, remember the exchange, print speed to `status`."""
        ids = self.prompt_ids(user_text)
        started = time.perf_counter()
        pieces = stream(self.model, self.tokenizer, ids, self.params)
        if self.think and not self.raw:
            self._write("<think>\n")  # the template opened the block; show it
        text = ""
        try:
            for piece in pieces:
                text += piece
                self._write(piece)
        except KeyboardInterrupt:
            pieces.close()
            self._write("\n[stopped]")
        self._write("\n")
        elapsed = time.perf_counter() - started
        done = pieces.completion
        if done is not None:
            rate = done.completion_tokens / elapsed if elapsed > 0 else 0.0
            print(f"[{done.completion_tokens} tokens, {rate:.1f} tokens/s, {done.finish_reason}]", file=self.status)
        if not self.raw:
            # The template recovers the reasoning from the text before </think>.
            self.history += [{"role": "user", "content": user_text}, {"role": "assistant", "content": text}]
        return text

    def _write(self, s: str) -> None:
        self.out.write(s)
        self.out.flush()


def repl(session: ChatSession, read=input) -> None:
    """Read a line, answer it, repeat, until /exit or end of input."""
    mode = "raw continuation" if session.raw else f"thinking {'on' if session.think else 'off'}"
    print(f"minimind chat ({mode}); /help for commands", file=session.status)
    while True:
        try:
            line = read(">>> ").strip()
        except EOFError:
            print(file=session.status)
            return
        except KeyboardInterrupt:
            print(file=session.status)
            continue
        if not line:
            continue
        if line.startswith("/"):
            cmd, _, arg = line.partition(" ")
            if cmd in ("/exit", "/quit"):
                return
            if cmd == "/reset":
                session.reset()
                print("(conversation cleared)", file=session.status)
            elif cmd == "/think":
                session.think = {"on": True, "off": False}.get(arg.strip(), not session.think)
                print(f"(thinking {'on' if session.think else 'off'})", file=session.status)
            elif cmd == "/help":
                print(HELP, file=session.status)
            else:
                print(f"unknown command {cmd}; /help lists them", file=session.status)
            continue
        session.reply(line)


def chat_main(args) -> None:
    """Entry point of `minimind chat` (arguments from cli.py)."""
    device = resolve_device(args.device)
    model, tokenizer = load(
        args.model, device=device, dtype=resolve_inference_dtype(args.dtype, device), lora=args.lora
    )
    params = SamplingParams.from_flags(args)
    session = ChatSession(model, tokenizer, params, system=args.system, think=args.think, raw=args.raw)
    if args.prompt is not None:
        session.reply(args.prompt)
    else:
        repl(session)
