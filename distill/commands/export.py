"""`distill export`: write a trained student as a sentence-transformers folder."""

from __future__ import annotations

import sys


def _onnx_step(args):
    """With --onnx: write onnx/ into the export's temp folder, so it is published with the rest, atomically.
    A missing onnxruntime is refused here, before the export starts."""
    if not (args.onnx or args.quantize):
        return None
    from distill.onnx.export import export_onnx, require_onnx

    require_onnx()
    return lambda folder: export_onnx(folder, quantize=args.quantize, log=lambda m: print(m, file=sys.stderr))


def _cmd_export(args) -> int:
    from distill.export import export_student

    if args.asymmetric:
        return _cmd_asymmetric(args)
    onnx_step = _onnx_step(args)  # before the export: a missing onnxruntime fails first
    out = export_student(args.run_dir, args.out, which=args.which, keep_projection=args.keep_projection, normalize=not args.no_normalize,
                         max_seq_length=args.max_seq_length, overwrite=args.overwrite, finish=onnx_step, dims=args.dims, pca=args.pca)
    print(out)
    return 0


def _cmd_asymmetric(args) -> int:
    """--asymmetric: the student as the query route, its teacher as the document route (distill/router.py)."""
    from distill.errors import DistillError
    from distill.router import export_asymmetric

    given = [flag for flag, on in (("--keep-projection", args.keep_projection), ("--max-seq-length", args.max_seq_length),
                                   ("--dims", args.dims), ("--pca", args.pca), ("--no-normalize", args.no_normalize),
                                   ("--onnx", args.onnx), ("--quantize", args.quantize)) if on]
    if given:
        raise DistillError(f"--asymmetric with {', '.join(given)}: the query route is the student as trained, into the teacher's "
                           "space; give none of them")
    print(export_asymmetric(args.run_dir, args.out, which=args.which, overwrite=args.overwrite, teacher=args.teacher))
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
    p.add_argument("--dims", type=int, metavar="N",
                   help="serve at N dimensions: writes sentence-transformers' truncate_dim, so SentenceTransformer(OUT) returns the "
                        "first N (for a student trained with loss.matryoshka_dims)")
    p.add_argument("--pca", type=int, metavar="N",
                   help="append a PCA to N dimensions (a Dense layer) fitted on the student's vectors of the run's training sentences "
                        "(the teacher cache's sentences.txt; at most 65,536 of them)")
    p.add_argument("--asymmetric", action="store_true",
                   help="one sentence-transformers folder with a Router: query -> this student, document -> its recipe's teacher "
                        "(for a student trained into the teacher's space; docs/keep-your-index.md)")
    p.add_argument("--teacher", metavar="MODEL", help="with --asymmetric: the document model (default: the run's teacher)")
    p.add_argument("--no-normalize", action="store_true", help="do not append a Normalize module")
    p.add_argument("--overwrite", action="store_true", help="replace a previous export in --out (only a folder this tool exported)")
    p.add_argument("--onnx", action="store_true", help="also write onnx/model.onnx for CPU serving (`--backend onnx`); needs distill[onnx]")
    p.add_argument("--quantize", choices=["int8"], help="with --onnx: also write onnx/model_qint8.onnx (dynamic int8)")
    p.set_defaults(func=_cmd_export)
