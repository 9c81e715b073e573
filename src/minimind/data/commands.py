"""The `minimind data` verbs: check, download, list."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import MiniMindError

# Each verb imports what it uses when it runs (checking imports numpy, a tokenizer its Rust
# library): the CLI's parsers import this module and must stay instant.


def cmd_check(args) -> None:
    from .check import check_file, format_report

    tokenizer = None
    if args.tokenizer:
        from ..tokenizer import Tokenizer

        tokenizer = Tokenizer.from_dir(args.tokenizer)  # a tokenizer directory or a model directory
    reports = []
    for i, path in enumerate(args.files):
        if not Path(path).is_file():
            raise MiniMindError(f"{path}: file not found")
        report = check_file(
            path,
            args.kind,
            tokenizer,
            stop_at_first=args.on_bad_record == "error",
            limit=args.limit,
            seq_len=args.seq_len,
        )
        reports.append(report)
        if not args.json:
            print(("\n" if i else "") + format_report(report), flush=True)
    if args.json:
        print(json.dumps(reports if len(reports) > 1 else reports[0], indent=1, ensure_ascii=False))
    problems = sum(r["problems"] for r in reports)
    if problems:
        if not args.json:
            print(f"\n{problems:,} problem{'s' if problems != 1 else ''} found")
        raise SystemExit(1)


def cmd_download(args) -> None:
    from .download import download

    for path in download(args.name, out_dir=args.out, source=args.source, force=args.force):
        print(path)


def cmd_list(args) -> None:
    from .download import DATASETS, GROUPS, HF_REPO, MODELSCOPE_REPO

    print(f"Data sets of the original MiniMind (hf: {HF_REPO}, modelscope: {MODELSCOPE_REPO}):\n")
    for name, (_, size, what) in DATASETS.items():
        print(f"  {name:<18} {size:>7}  {what}")
    print()
    for name, members in GROUPS.items():
        print(f"  {name:<18} = {' + '.join(members)}")


def register(verbs) -> None:
    """Add `minimind data ...` to the CLI's subparsers."""
    p = verbs.add_parser("data", help="check and download training data")
    dverbs = p.add_subparsers(dest="data_verb", metavar="ACTION", required=True)

    c = dverbs.add_parser(
        "check",
        help="validate JSONL data files and count their tokens, without training",
        description="Validate every record, report FILE:LINE for each problem, and (with "
        "--tokenizer) count tokens and show their distribution. Exit status 1 if "
        "any problem is found.",
    )
    c.add_argument("files", nargs="+", metavar="FILE", help="JSONL data files")
    c.add_argument(
        "--kind",
        required=True,
        choices=["pretrain", "sft", "dpo", "rl"],
        help="pretrain {text}, sft {conversations}, dpo {chosen, rejected}, rl {conversations, gt}",
    )
    c.add_argument("--tokenizer", help="tokenizer or model directory, to count tokens (without it: validation only)")
    c.add_argument("--seq-len", type=int, help="also count records longer than this")
    c.add_argument(
        "--on-bad-record",
        choices=["error", "skip"],
        default="skip",
        help="skip: list every problem (default); error: stop at the first",
    )
    c.add_argument("--limit", type=int, help="check only the first N records of each file")
    c.add_argument("--json", action="store_true", help="print the report as JSON")
    c.set_defaults(func=cmd_check)

    d = dverbs.add_parser("download", help="download an official MiniMind data set (resumable)")
    d.add_argument(
        "name",
        metavar="NAME",
        help="e.g. quickstart, minimind2, pretrain_t2t_mini, sft_t2t_mini, dpo (see `minimind data list`)",
    )
    d.add_argument("--out", default="dataset", help="directory to write into (default ./dataset)")
    d.add_argument(
        "--source",
        choices=["hf", "modelscope"],
        default="hf",
        help="hf: Hugging Face hub, honours HF_ENDPOINT and HF_TOKEN (default); "
        "modelscope: needs `pip install modelscope`",
    )
    d.add_argument("--force", action="store_true", help="download again even if the file exists")
    d.set_defaults(func=cmd_download)

    ls = dverbs.add_parser("list", help="the data sets `download` knows")
    ls.set_defaults(func=cmd_list)
