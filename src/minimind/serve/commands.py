"""The `minimind serve` verb (argparse wiring; the app is in app.py).

minimind serve --model DIR [--lora DIR] [--host 127.0.0.1] [--port 8998] [--api-key KEY]
               [--max-tokens-default N] [--max-tokens-limit N] [--max-body-mb MB] [--max-messages N]
               [--allow-origin ORIGIN ...] [--allow-local-images DIR] [--max-images N] [--max-image-pixels N]
               [--backend torch|llama.cpp] [--gguf FILE] [--gguf-dtype q8_0|f32|f16|bf16] [--threads N]
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import MiniMindError


def cmd_serve(args) -> None:
    # Everything is imported here, when the server starts: fastapi and uvicorn are optional
    # (the serve extra), the model needs torch, and the CLI's parsers import this module.
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        raise MiniMindError('serving needs fastapi and uvicorn: pip install "minimind[serve]"') from None
    if not 0 <= args.port <= 65535:
        raise MiniMindError(f"--port must be in 0..65535, got {args.port}")
    if args.max_batch < 1 or args.max_queue < 1:
        raise MiniMindError("--max-batch and --max-queue must be at least 1")
    if args.max_tokens_default < 1 or args.max_tokens_limit < 0:
        raise MiniMindError("--max-tokens-default must be at least 1, --max-tokens-limit at least 0 (0 = the context)")
    if args.max_tokens_limit and args.max_tokens_default > args.max_tokens_limit:
        raise MiniMindError(
            f"--max-tokens-default {args.max_tokens_default} is above --max-tokens-limit {args.max_tokens_limit}"
        )
    if not 0 < args.max_body_mb <= 4096 or args.max_messages < 1:
        raise MiniMindError("--max-body-mb must be in (0, 4096] and --max-messages at least 1")
    if args.max_images < 1 or args.max_image_pixels < 1:
        raise MiniMindError("--max-images and --max-image-pixels must be at least 1")
    local_images = None
    if args.allow_local_images is not None:
        local_images = Path(args.allow_local_images).expanduser()
        if not local_images.is_dir():
            raise MiniMindError(f"--allow-local-images {args.allow_local_images}: not a directory")
    from .app import check_origin, create_app
    from .images import ImageLimits

    origins = tuple(check_origin(o) for o in args.allow_origin or ())
    api_key = args.api_key if args.api_key is not None else os.environ.get("MINIMIND_API_KEY")
    if api_key is not None and not api_key.strip():
        raise MiniMindError("--api-key is empty")

    from ..infer.llamacpp import load_for_inference

    gguf_export = None
    if args.backend == "llama.cpp" and args.gguf is None:
        from ..export.gguf import export_gguf as gguf_export
    model, tokenizer = load_for_inference(args, export=gguf_export)
    name = args.name or Path(args.model).resolve().name
    app = create_app(
        model,
        tokenizer,
        name=name,
        api_key=api_key,
        max_batch=args.max_batch,
        max_queue=args.max_queue,
        max_tokens_default=args.max_tokens_default,
        max_tokens_limit=args.max_tokens_limit,
        max_body=int(args.max_body_mb * 2**20),
        max_messages=args.max_messages,
        host=args.host,
        allow_origins=origins,
        image_limits=ImageLimits(local_dir=local_images, max_pixels=args.max_image_pixels, max_images=args.max_images),
    )
    if api_key is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: listening on {args.host} without --api-key: anyone who can reach this port can use the model")
    print(
        f"serving {name} on http://{args.host}:{args.port} (OpenAI API at /v1, chat page at /)"
        + (", API key required" if api_key else ""),
        flush=True,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)


def register(verbs) -> None:
    p = verbs.add_parser("serve", help="an OpenAI-compatible API server and web chat page for a model")
    p.add_argument("--model", required=True, help="a model directory")
    p.add_argument("--lora", help="a LoRA adapter directory to apply to the model")
    p.add_argument("--name", help="the model id clients use (default: the model directory's name)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 = everyone)",
    )
    p.add_argument("--port", type=int, default=8998, help="port (default 8998, MiniMind's)")
    p.add_argument(
        "--api-key",
        help="require 'Authorization: Bearer KEY' on every route but /health and the page "
        "(default: $MINIMIND_API_KEY if set, else no key)",
    )
    p.add_argument("--max-batch", type=int, default=32, help="sequences decoded together at most (default 32)")
    p.add_argument(
        "--max-queue", type=int, default=64, help="sequences allowed to wait for a free row; more get 429 (default 64)"
    )
    p.add_argument(
        "--max-tokens-default",
        type=int,
        default=2048,
        help="max_tokens of a chat request that gives none (default 2048; /v1/completions: OpenAI's 16)",
    )
    p.add_argument(
        "--max-tokens-limit",
        type=int,
        default=0,
        help="the most max_tokens a request may ask for; more is a 400 (default 0: the model's context)",
    )
    p.add_argument(
        "--max-body-mb", type=float, default=4, help="the largest request body in MiB; larger gets 413 (default 4)"
    )
    p.add_argument(
        "--max-messages", type=int, default=1024, help="the most messages a chat request may hold (default 1024)"
    )
    p.add_argument(
        "--allow-origin",
        action="append",
        metavar="ORIGIN",
        help="let web pages from ORIGIN (e.g. http://localhost:3000; * for any) call the API from a "
        "browser (CORS). Without --api-key the server otherwise answers only requests addressed "
        "to its own address, from its own page, with JSON bodies. Repeatable",
    )
    g = p.add_argument_group("images (vision-language models)")
    g.add_argument(
        "--allow-local-images",
        metavar="DIR",
        help="also accept image_url parts that name a file (a path or file:// URL) inside DIR; "
        "default: data: URLs only (http(s) URLs are always refused: the server fetches nothing)",
    )
    g.add_argument("--max-images", type=int, default=16, help="images in one request at most (default 16)")
    g.add_argument(
        "--max-image-pixels",
        type=int,
        default=4096 * 4096,
        help="width x height of one image at most, checked before decoding (default 4096 x 4096)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps (default auto)")
    p.add_argument("--dtype", default="auto", help="auto, fp32, bf16, fp16 (default: fp32 on CPU, bf16 on GPU)")
    add_backend_args(p)
    p.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="uvicorn's log level (default info)",
    )
    p.set_defaults(func=cmd_serve)


def add_backend_args(p) -> None:
    """--backend, --gguf, --gguf-dtype and --threads, shared by `minimind serve` and `minimind
    chat` (read by infer.llamacpp.load_for_inference). Here, not there: parsers stay light."""
    g = p.add_argument_group("backend")
    g.add_argument(
        "--backend",
        choices=("torch", "llama.cpp"),
        default="torch",
        help="torch (default: our PyTorch engine) or llama.cpp: the fastest CPU decoding, one request "
        "at a time, through llama-cpp-python (pip install llama-cpp-python)",
    )
    g.add_argument("--gguf", metavar="FILE", help="llama.cpp: the model's GGUF file (default: export one now)")
    g.add_argument(
        "--gguf-dtype",
        choices=("q8_0", "f32", "f16", "bf16"),
        default="q8_0",
        help="llama.cpp: the precision of the GGUF exported when --gguf is not given (default q8_0)",
    )
    g.add_argument("--threads", type=int, help="CPU threads for decoding (default: PyTorch's or llama.cpp's choice)")
    g.add_argument(
        "--compile",
        action="store_true",
        help="torch backend: decode one sequence at a time through torch.compile (the first reply waits "
        "while it compiles, 5-15 s on a CPU; faster after)",
    )
