"""The `distill` command. Each subcommand lives in distill/commands/<name>.py with a register()
function; heavy dependencies are imported inside the command, so --help stays instant."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from distill.errors import DistillError

# Order = order in --help. Add a module here to add a subcommand.
COMMANDS = ("eval", "models", "config", "cache", "train", "export", "export_onnx", "similarity", "encode", "retrieval", "mine", "compare")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distill", description="Distill sentence-embedding models (IBKD and baselines).")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"distill.commands.{name}").register(sub)
    for command in sub.choices.values():  # every subcommand takes it, after its own arguments
        command.add_argument("--verbose", action="store_true",
                             help="also show the progress bars and load reports of transformers and huggingface_hub")
    return parser


def quiet_third_party() -> None:
    """Silence transformers' and huggingface_hub's own progress bars ("Loading weights", "Writing
    model shards", downloads) and load reports (an unused pooler, ...): several per run, they fall
    between our own lines (loss, lr, sent/s, scores). Ours stay. An environment variable the user
    set wins; `--verbose` skips this. The variables reach subprocesses too; a transformers that is
    already imported (distill used from Python, then main()) is told directly."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules and os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1":
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.verbose:
        quiet_third_party()
    try:
        return args.func(args)
    except DistillError as exc:
        print(f"distill: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("distill: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
