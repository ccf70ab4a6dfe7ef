"""`distill export`: write a trained student as a sentence-transformers folder."""

from __future__ import annotations


def _cmd_export(args) -> int:
    from ..export import export_student

    out = export_student(args.run_dir, args.out, which=args.which, keep_projection=args.keep_projection, normalize=not args.no_normalize,
                         max_seq_length=args.max_seq_length, overwrite=args.overwrite)
    print(out)
    return 0


def register(sub) -> None:
    p = sub.add_parser("export", help="write a trained student as a sentence-transformers folder (+ model card)")
    p.add_argument("run_dir", help="a run folder of `distill train`")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--which", choices=["best", "final"], default="best", help="best by STS-B dev (default) or the last step")
    p.add_argument("--keep-projection", action="store_true",
                   help="append the loss's student-side head: the decoder/projection into the teacher's space (ibkd, infonce, mse, cosine) "
                        "or CRD's head into its proj_dim contrastive space")
    p.add_argument("--max-seq-length", type=int, help="truncation length of the exported model (default: the model's own limit, which the run was scored at)")
    p.add_argument("--no-normalize", action="store_true", help="do not append a Normalize module")
    p.add_argument("--overwrite", action="store_true", help="replace a previous export in --out (only a folder this tool exported)")
    p.set_defaults(func=_cmd_export)
