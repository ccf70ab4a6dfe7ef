"""`distill export`: write a trained student as a sentence-transformers folder."""

from __future__ import annotations


def _cmd_export(args) -> int:
    from ..export import export_student

    out = export_student(args.run_dir, args.out, which=args.which, keep_projection=args.keep_projection, normalize=not args.no_normalize)
    print(out)
    return 0


def register(sub) -> None:
    p = sub.add_parser("export", help="write a trained student as a sentence-transformers folder (+ model card)")
    p.add_argument("run_dir", help="a run folder of `distill train`")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--which", choices=["best", "final"], default="best", help="best by STS-B dev (default) or the last step")
    p.add_argument("--keep-projection", action="store_true", help="append the loss's student->teacher projection (teacher-dim output)")
    p.add_argument("--no-normalize", action="store_true", help="do not append a Normalize module")
    p.set_defaults(func=_cmd_export)
