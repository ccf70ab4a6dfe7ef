"""`distill eval`: STS evaluation of any model."""

from __future__ import annotations

import sys

from distill.embedding import add_dims_arg
from distill.onnx.runtime import add_backend_args


def _cmd_eval(args) -> int:
    from distill.eval.sts import evaluate_sts, format_table
    from distill.io import check_new_file, write_errors, write_json_atomic
    from distill.onnx.runtime import backend_kwargs

    if args.json:
        check_new_file(args.json, "--json", args.overwrite)  # before the model loads: not after the evaluation
    results = evaluate_sts(
        args.model, tasks=args.tasks, sts_dir=args.sts_dir, batch_size=args.batch_size, progress=not args.quiet,
        dims=args.dims, **backend_kwargs(args),
    )
    print(format_table(results, title=args.model if args.dims is None else f"{args.model} @{args.dims}"))
    if args.json:
        with write_errors(args.json, "--json", "; not written, the scores are in the table above"):
            write_json_atomic(args.json, {"model": args.model, "sts_dir": args.sts_dir, "dims": args.dims, "scores": results})
        print(f"wrote {args.json}", file=sys.stderr)
    return 0



def register(sub) -> None:
    ev = sub.add_parser("eval", help="STS evaluation: STS12-16, STS-B, SICK-R and their average")
    ev.add_argument("--model", required=True, help="model folder, preset name, hub id or PyPI model key")
    ev.add_argument("--sts-dir", help="folder laid out like ../shared/data/sts, or ../shared/data/sts-zh for the Chinese tasks (default: the hub)")
    ev.add_argument("--tasks", nargs="+", help="subset of STS12 STS13 STS14 STS15 STS16 STS-B SICK-R STS-B-dev, or Chinese STS-B-zh STS-B-zh-dev (default: the seven English test sets)")
    ev.add_argument("--json", help="also write the scores to this JSON file (an existing file needs --overwrite)")
    ev.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    ev.add_argument("--batch-size", type=int, default=128)
    ev.add_argument("--quiet", action="store_true", help="no progress bar")
    add_dims_arg(ev)
    add_backend_args(ev)
    ev.set_defaults(func=_cmd_eval)
