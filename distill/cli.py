"""The `distill` command. Each subcommand lives in distill/commands/<name>.py with a register()
function; heavy dependencies are imported inside the command, so --help stays instant."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from distill.errors import DistillError

# Order = order in --help. Add a module here to add a subcommand.
COMMANDS = ("eval", "models", "config", "cache", "train", "export", "export_onnx", "similarity", "encode", "retrieval", "compare")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distill", description="Distill sentence-embedding models (IBKD and baselines).")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"distill.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # transformers' per-load reports (e.g. the unused pooler of a mean-pooled model) drown the
    # tables users came for; a user who wants them sets TRANSFORMERS_VERBOSITY themselves.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    args = build_parser().parse_args(argv)
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
