"""The `minimind` command: parse arguments, call one function per verb.

The packages' parsers come from light `commands` modules imported at the top; each verb imports
the code that does the work (and torch) inside its function, when it runs, so `minimind --help`
is instant (tested: building the parsers imports no torch). A problem with the user's input
(MiniMindError) is printed as one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import __version__
from .config import add_shape_args
from .data.commands import register as register_data
from .errors import MiniMindError
from .evaluate.commands import register as register_eval
from .export.commands import register as register_export
from .serve.commands import add_backend_args
from .serve.commands import register as register_serve
from .train.commands import add_train_parser, register_lora, register_vlm

# ---------------------------------------------------------------------------- verbs


def cmd_info(args) -> None:
    from .config import ModelConfig, describe_shape, preset, shape_from_args
    from .info import format_info, model_info

    shape = shape_from_args(args)
    if args.model:
        if shape:
            raise MiniMindError(
                f"{describe_shape(shape)}: shape overrides reshape a --preset; "
                f"the model in {args.model} keeps its own shape"
            )
        cfg, name = ModelConfig.load(Path(args.model) / "config.json"), args.model
    else:
        cfg, name = preset(args.preset, shape=shape), " ".join([args.preset, describe_shape(shape)]).strip()
    info = model_info(cfg, args.batch_size, args.seq_len)
    print(json.dumps(info, indent=2) if args.json else format_info(name, info))


def cmd_init(args) -> None:
    from .checkpoint import save_model_dir
    from .config import describe_shape, preset, shape_from_args
    from .model import MiniMindForCausalLM, count_parameters
    from .tokenizer import Tokenizer

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.force:
        raise MiniMindError(f"{out}: directory exists and is not empty (use --force to overwrite)")
    shape = shape_from_args(args)
    preset(args.preset, shape=shape)  # a bad shape fails before the tokenizer is read
    tokenizer = Tokenizer.from_dir(args.tokenizer)
    cfg = preset(args.preset, shape=shape, tokenizer=tokenizer)
    model = MiniMindForCausalLM(cfg).init_weights(args.seed)
    save_model_dir(model, out, tokenizer)
    total, active = count_parameters(cfg)
    print(
        f"wrote {out}: {' '.join([args.preset, describe_shape(shape)]).strip()}, {total / 1e6:.2f}M parameters"
        + (f" ({active / 1e6:.2f}M active)" if active != total else "")
        + f", vocab {cfg.vocab_size}, seed {args.seed}"
    )


def cmd_quickstart(args) -> None:
    if args.vision:  # the vision pipeline (vision_quickstart.py): shapes drawn offline, a model that sees
        from .vision_quickstart import check_args, vision_quickstart

        check_args(args.vision_steps, args.vision_images, None)
        vision_quickstart(
            out=args.out or "out/quickstart-vision",
            steps=args.vision_steps,
            train_images=args.vision_images,
            seed=args.seed,
            device=args.device,
            progress=not args.no_progress,
        )
        return
    from .quickstart import quickstart

    quickstart(
        out=args.out or "out/quickstart",
        data=args.data,
        preset=args.preset,
        seed=args.seed,
        device=args.device,
        pretrain_steps=args.pretrain_steps,
        sft_steps=args.sft_steps,
        progress=not args.no_progress,
        minutes=args.minutes,
    )


def cmd_chat(args) -> None:
    from .infer.repl import chat_main

    gguf_export = None
    if args.backend == "llama.cpp" and args.gguf is None:
        from .export.gguf import export_gguf as gguf_export
    chat_main(args, gguf_export)


def cmd_generate_data(args) -> None:
    from .infer.generate_data import generate_data_main

    generate_data_main(args)


def cmd_tokenizer_train(args) -> None:
    from .tokenizer import train_tokenizer

    report = train_tokenizer(args.data, vocab_size=args.vocab_size, out_dir=args.out, max_lines=args.max_lines)
    print(
        f"wrote {report['out_dir']}: vocab {report['vocab_size']}, trained on {report['train_docs']} documents, "
        f"held out {report['heldout_docs']}"
    )
    line = f"compression on held-out text: {report['chars_per_token']:.2f} characters per token"
    parts = [
        f"{lang} {report[key]:.2f}"
        for lang, key in (("Chinese", "chars_per_token_zh"), ("English", "chars_per_token_en"))
        if report.get(key)
    ]
    print(line + (f" ({', '.join(parts)})" if parts else ""))


# ---------------------------------------------------------------------------- parser


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    """The generation flags of chat and generate-data (read back by SamplingParams.from_flags)."""
    g = p.add_argument_group("generation")
    g.add_argument("--max-new-tokens", type=int, default=1024, help="most tokens per reply (default 1024)")
    g.add_argument("--temperature", type=float, default=0.85, help="0 = greedy (default 0.85, MiniMind's)")
    g.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass (default 0.95)")
    g.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens, 0 = off")
    g.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeats (default 1.0 = off)")
    g.add_argument("--seed", type=int, default=None, help="seed for reproducible sampling")


def add_generate_data_parser(verbs) -> None:
    # Here rather than in infer/generate_data.py: importing anything in minimind.infer imports
    # torch (its __init__ loads the engine), and building the parsers must not.
    p = verbs.add_parser(
        "generate-data",
        help="answer prompts with a teacher model and write SFT data (black-box distillation)",
        description="Answer each prompt with --model and write {conversations} JSONL for `minimind sft`. "
        "Stopped runs continue where they were when run again.",
    )
    p.add_argument("--model", required=True, help="the teacher model directory")
    p.add_argument(
        "--prompts",
        required=True,
        help="a .jsonl of conversations (answered from the last user message) or a text file with one prompt per line",
    )
    p.add_argument("--out", required=True, help="the SFT JSONL file to write")
    p.add_argument("--batch-size", type=int, default=16, help="prompts generated together (default 16)")
    p.add_argument(
        "--think",
        action="store_true",
        help="let the teacher reason first (open_thinking); the reasoning is stored as reasoning_content",
    )
    p.add_argument(
        "--keep-truncated", action="store_true", help="keep answers cut by --max-new-tokens (default: drop them)"
    )
    p.add_argument("--limit", type=int, default=None, help="answer only the first N prompts")
    p.add_argument("--force", action="store_true", help="overwrite --out and ignore a stopped run's progress")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps (default auto)")
    p.add_argument("--dtype", default="auto", help="auto, fp32, bf16, fp16 (default: fp32 on CPU, bf16 on GPU)")
    add_sampling_args(p)
    p.set_defaults(seed=0, func=cmd_generate_data)  # seeded by default: the same command writes the same file


class Parser(argparse.ArgumentParser):
    """No abbreviated flags: `--max-step` must not silently mean `--max-steps` (nor a flag
    added later make an old abbreviation ambiguous)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


class VerbParser(Parser):
    """A verb's parser (and its actions' parsers, which inherit the class): a flag it does not
    know is its own error, with its own usage. (argparse would hand the flag back to the top
    parser, which prints `usage: minimind [-h] [--version] COMMAND ...`: no help to anyone.)"""

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="minimind", description="Train and run small language models from scratch.")
    parser.add_argument("--version", action="version", version=f"minimind {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="COMMAND", parser_class=VerbParser)

    p = verbs.add_parser("quickstart", help="the whole pipeline offline on a CPU: tokenizer, pretrain, SFT, exam")
    p.add_argument(
        "--out",
        default=None,
        help="where everything goes (default out/quickstart, with --vision out/quickstart-vision)",
    )
    p.add_argument("--data", default="demo", help="demo (generated, offline; default) or minimind (downloaded)")
    p.add_argument("--preset", default="tiny", help="model size (default tiny)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--pretrain-steps", type=int, default=None, help="override the number of pretraining steps")
    p.add_argument("--sft-steps", type=int, default=None, help="override the number of SFT steps")
    p.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="size both training stages to finish in about N minutes on this machine (measured "
        "from a few probe steps): a faster machine trains longer (default: fixed lengths, under 10 min)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    v = p.add_argument_group("vision (--vision: coloured shapes drawn offline, a model that sees)")
    v.add_argument("--vision", action="store_true", help="train and test a small vision-language model instead")
    v.add_argument("--vision-steps", type=int, default=None, help="training steps (default 2000)")
    v.add_argument("--vision-images", type=int, default=None, help="training pictures to draw (default 3000)")
    p.set_defaults(func=cmd_quickstart)

    p = verbs.add_parser("info", help="parameters and memory of a preset or model directory")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--preset",
        help="a preset name (minimind3, minimind3-moe, minimind2-small, minimind2, minimind2-moe, "
        "tiny, nano, tiny-moe)",
    )
    src.add_argument("--model", help="a model directory")
    p.add_argument("--batch-size", type=int, default=8, help="batch for the memory estimate (default 8)")
    p.add_argument("--seq-len", type=int, default=512, help="tokens per sequence for the memory estimate (default 512)")
    p.add_argument("--json", action="store_true", help="print JSON (keys params_total, params_active, memory, config)")
    add_shape_args(p)
    p.set_defaults(func=cmd_info)

    p = verbs.add_parser("init", help="write a randomly initialised model directory")
    p.add_argument("--preset", required=True, help="model size, e.g. tiny or minimind3")
    p.add_argument("--tokenizer", required=True, help="directory with tokenizer.json and tokenizer_config.json")
    p.add_argument("--out", required=True, help="the model directory to create")
    p.add_argument("--seed", type=int, default=42, help="initialisation seed (default 42)")
    p.add_argument("--force", action="store_true", help="overwrite a non-empty --out")
    add_shape_args(p)
    p.set_defaults(func=cmd_init)

    p = verbs.add_parser("chat", help="talk to a model (a REPL, or one answer with --prompt)")
    p.add_argument("--model", required=True, help="a model directory")
    p.add_argument("--lora", help="a LoRA adapter directory trained on --model, applied on top of it")
    p.add_argument("--prompt", help="answer this once and exit")
    p.add_argument("--system", help="a system prompt")
    p.add_argument(
        "--image",
        action="append",
        metavar="PATH",
        help="an image for the first message (vision-language models; repeatable; /image PATH in the REPL)",
    )
    p.add_argument("--think", action="store_true", help="let the model reason in a <think> block first (open_thinking)")
    p.add_argument(
        "--raw", action="store_true", help="no chat template: continue the text (for pretrained-only models)"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps (default auto)")
    p.add_argument("--dtype", default="auto", help="auto, fp32, bf16, fp16 (default: fp32 on CPU, bf16 on GPU)")
    add_backend_args(p)
    add_sampling_args(p)
    p.set_defaults(func=cmd_chat)

    p = verbs.add_parser("tokenizer", help="train a tokenizer")
    tverbs = p.add_subparsers(dest="tokenizer_verb", metavar="ACTION", required=True)
    t = tverbs.add_parser("train", help="train a byte-level BPE tokenizer with MiniMind's special tokens")
    t.add_argument(
        "--data",
        nargs="+",
        required=True,
        help=".txt, .jsonl ({text} or {conversations}) or chinese-poetry .json files",
    )
    t.add_argument("--vocab-size", type=int, default=6400, help="vocabulary size (default 6400, MiniMind's)")
    t.add_argument("--out", required=True, help="directory for tokenizer.json and tokenizer_config.json")
    t.add_argument("--max-lines", type=int, default=None, help="read at most this many documents per file")
    t.set_defaults(func=cmd_tokenizer_train)

    add_train_parser(verbs, "pretrain")
    add_train_parser(verbs, "sft")
    add_train_parser(verbs, "reason")
    add_train_parser(verbs, "distill")
    add_generate_data_parser(verbs)
    add_train_parser(verbs, "dpo")
    add_train_parser(verbs, "grpo")
    add_train_parser(verbs, "agent")
    add_train_parser(verbs, "ppo")
    register_lora(verbs)  # `minimind lora` (a training stage) and `minimind lora merge`
    register_vlm(verbs)  # `minimind vlm init | pretrain | sft`
    register_data(verbs)
    register_export(verbs)
    register_eval(verbs)
    register_serve(verbs)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    args._argv = argv  # the command as typed, for messages that say how to run it again
    try:
        args.func(args)
    except MiniMindError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # (a training run stopped by SIGTERM says so: 128 + 15)
        print(file=sys.stderr)
        return 128 + getattr(e, "signum", 2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
