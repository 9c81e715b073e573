"""`minimind chat`: talk to a model in the terminal.

A REPL with multi-turn history, streamed replies and tokens/s, or one answer with
`--prompt`. Commands inside the REPL: /image PATH, /reset, /think [on|off], /help, /exit.

A vision-language model also takes images: `--image PATH` (repeatable) or `/image PATH`
attaches them to the next user turn, each as an `<image>` placeholder on its own line before
the text (unless the text places its `<image>`s itself). The history keeps every turn's
images, so later questions can still refer to them.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ..config import ModelConfig
from ..data.formats import BadRecord
from ..data.vision import IMAGE, count_images, open_image
from ..errors import MiniMindError
from .generate import SamplingParams, chat_prompt, stream
from .llamacpp import LlamaCppModel, load_for_inference

HELP = """commands:
  /image PATH    attach an image to your next message (vision-language models; repeatable)
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
        out=None,
        status=None,
    ):
        self.model, self.tokenizer, self.params = model, tokenizer, params
        self.system, self.think, self.raw = system, think, raw
        # None: the process's stdout / stderr when the session starts (not when this module was imported)
        self.out, self.status = out or sys.stdout, status or sys.stderr
        # Each turn: {"role", "content"} and, for a user turn with images, "images" (PIL images,
        # one per <image> in its content, in order).
        self.history: list[dict] = []
        self.pending: list = []  # images attached to the next user turn
        self.vision = getattr(model, "vision_config", None)

    def reset(self) -> None:
        self.history, self.pending = [], []

    def attach(self, path) -> None:
        """Attach the image file at `path` to the next user turn (MiniMindError if it cannot be)."""
        if self.vision is None:
            raise MiniMindError("this model reads text only: images need a vision-language model (minimind vlm init)")
        if self.raw:
            raise MiniMindError("--raw continues plain text: it takes no images")
        self.pending.append(read_image(path))

    def user_turn(self, user_text: str) -> dict:
        """The next user message, with the attached images (their <image>s first, on lines of their own)."""
        images, placed = self.pending, user_text.count(IMAGE) if self.vision is not None else 0
        if placed and placed != len(images):
            raise MiniMindError(
                f"the message has {placed} {IMAGE} but {len(images)} image(s) are attached (/image PATH attaches one)"
            )
        if not images:
            return {"role": "user", "content": user_text}
        text = user_text if placed else (IMAGE + "\n") * len(images) + user_text
        return {"role": "user", "content": text, "images": list(images)}

    def prompt_ids(self, user_text: str) -> list[int]:
        return self.prompt(user_text)[0]

    def prompt(self, user_text: str) -> tuple[list[int], list]:
        """The token ids to generate from and the images they hold (in order): the chat
        template over the history, or in raw mode (pretrained-only models) just <bos> + the
        text to continue."""
        if self.raw:
            return [self.tokenizer.bos_token_id] + self.tokenizer.encode(user_text), []
        messages = self.history + [self.user_turn(user_text)]
        budget = self.model.config.max_position_embeddings - self.params.max_new_tokens
        while True:
            system = [{"role": "system", "content": self.system}] if self.system else []
            turns = system + [{k: v for k, v in m.items() if k != "images"} for m in messages]
            images = [image for m in messages for image in m.get("images", ())]
            if self.vision is not None and count_images(turns) != len(images):
                raise MiniMindError(
                    f"the conversation holds {count_images(turns)} {IMAGE} for {len(images)} image(s) "
                    f"(a reply that wrote {IMAGE}? /reset starts afresh)"
                )
            tokens = self.vision.image_tokens if self.vision is not None else 0
            ids = chat_prompt(self.tokenizer, turns, open_thinking=self.think, image_tokens=tokens)
            if len(ids) <= budget or len(messages) <= 1:
                return ids, images
            messages = messages[2:]  # drop the oldest exchange (and its images) to fit the context window
            self.history = self.history[2:]
            print("(oldest turn dropped to fit the context window)", file=self.status)

    def reply(self, user_text: str) -> str:
        """Stream the model's answer to `out`, remember the exchange, print speed to `status`."""
        ids, images = self.prompt(user_text)
        pixels = self.model.preprocess(images) if images else None
        turn, self.pending = self.user_turn(user_text), []
        started = time.perf_counter()
        if isinstance(self.model, LlamaCppModel):  # --backend llama.cpp
            pieces = self.model.stream(self.tokenizer, ids, self.params)
        else:
            pieces = stream(self.model, self.tokenizer, ids, self.params, images=pixels)
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
            self.history += [turn, {"role": "assistant", "content": text}]
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
            if cmd == "/image":
                try:
                    if not arg.strip():
                        raise MiniMindError("/image needs a file: /image PATH")
                    session.attach(arg.strip())
                    n = len(session.pending)
                    print(f"(image attached to your next message: {n} waiting)", file=session.status)
                except MiniMindError as e:
                    print(f"error: {e}", file=session.status)
            elif cmd == "/reset":
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
        try:
            session.reply(line)
        except MiniMindError as e:  # a message the model cannot take: say why, keep the conversation
            print(f"error: {e}", file=session.status)


def read_image(path):
    """An image file as a PIL image, or a MiniMindError naming it."""
    try:
        return open_image(Path(path).expanduser(), str(path))
    except BadRecord as e:
        raise MiniMindError(str(e)) from None


def check_images(args, images: list) -> None:
    """--image before the (slow) load: a text-only model, --raw, a missing or unreadable file."""
    config = Path(args.model) / "config.json"
    if config.is_file() and "vision" not in ModelConfig.load(config).extra:
        raise MiniMindError(
            f"--image: {args.model} is a text-only model; images need a vision-language model "
            f"(minimind vlm init --lm {args.model} --encoder patch --out DIR, then train it)"
        )
    if args.raw:
        raise MiniMindError("--image: --raw continues plain text and takes no images")
    for path in images:
        read_image(path)


def chat_main(args, gguf_export=None) -> None:
    """Entry point of `minimind chat` (arguments from cli.py; `gguf_export` makes the GGUF
    file for --backend llama.cpp when --gguf is not given)."""
    images = getattr(args, "image", None) or []
    if images:
        check_images(args, images)
    model, tokenizer = load_for_inference(args, export=gguf_export)
    params = SamplingParams.from_flags(args)
    session = ChatSession(model, tokenizer, params, system=args.system, think=args.think, raw=args.raw)
    for path in images:
        session.attach(path)
    if args.prompt is not None:
        session.reply(args.prompt)
    else:
        repl(session)
