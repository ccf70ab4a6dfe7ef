"""`distill export-onnx`: add onnx/model.onnx (and onnx/model_qint8.onnx) to any sentence-transformers folder."""

from __future__ import annotations

import sys


def _cmd_export_onnx(args) -> int:
    from distill.onnx.export import export_onnx

    meta = export_onnx(args.folder, quantize=args.quantize, overwrite=args.overwrite, log=lambda m: print(m, file=sys.stderr))
    print(f"{args.folder}/onnx: {', '.join(meta['files'])} (serve with --backend onnx{' --quantized' if args.quantize else ''})")
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "export-onnx",
        help="add ONNX files (fp32, optionally int8) to a sentence-transformers folder for CPU serving",
        description=(
            "Writes FOLDER/onnx/model.onnx (inputs input_ids, attention_mask; outputs last_hidden_state and "
            "sentence_embedding, the folder's pooling / Dense / Normalize inside the graph) and, with --quantize int8, "
            "FOLDER/onnx/model_qint8.onnx, plus onnx/distill_onnx.json. Each file is checked against the PyTorch model "
            "on padded batches of mixed lengths before it is put in place. `distill export RUN --out DIR --onnx` does the same "
            "right after exporting a run."
        ),
    )
    p.add_argument("folder", help="a sentence-transformers folder (e.g. the output of `distill export`)")
    p.add_argument("--quantize", choices=["int8"], help="also write onnx/model_qint8.onnx (dynamic int8, per-channel weights)")
    p.add_argument("--overwrite", action="store_true", help="replace onnx/ files that distill did not write")
    p.set_defaults(func=_cmd_export_onnx)
