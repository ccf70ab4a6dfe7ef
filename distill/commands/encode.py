"""`distill encode`: embed a file of sentences into .npy or .safetensors (row i = sentence i)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from distill.embedding import add_dims_arg
from distill.errors import DistillError
from distill.onnx.runtime import add_backend_args, backend_kwargs

FORMATS = (".npy", ".safetensors")
TENSOR_NAME = "embeddings"


def output_format(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise DistillError(f"--out {path}: unknown format {suffix or '(no extension)'!r}; use a .npy or .safetensors file")
    if Path(path).is_dir():
        raise DistillError(f"--out {path}: an existing folder; name a .npy or .safetensors file")
    return suffix


def check_out(path: str | Path, overwrite: bool) -> None:
    """Before the model loads: a known format, no file there unless --overwrite (an .npy carries
    no mark of who wrote it, so any existing file may be the user's), and a folder it can be
    written in."""
    from distill.io import check_new_file

    output_format(path)
    check_new_file(path, "--out", overwrite)


def check_device(device: str | None) -> None:
    """A device the machine has, checked before the model loads."""
    if device is None:
        return
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError:
        raise DistillError(f"--device {device!r}: not a device name (cpu, cuda, cuda:1, mps ...)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DistillError(f"--device {device}: this machine has no CUDA GPU that torch can use (torch {torch.__version__}); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DistillError(f"--device {device}: there are {torch.cuda.device_count()} GPUs (cuda:0..cuda:{torch.cuda.device_count() - 1})")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise DistillError(f"--device {device}: MPS is not available here; use --device cpu")


def _stdin_sentences() -> list[str]:
    """Lines of stdin, decoded as UTF-8 line by line (a bad byte names its line)."""
    from distill.data.readers import check_text

    out = []
    stream = getattr(sys.stdin, "buffer", sys.stdin)  # a text stream stands in for stdin in tests
    for lineno, raw in enumerate(stream, 1):
        try:
            line = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        except UnicodeDecodeError as exc:
            raise DistillError(f"stdin:{lineno}: not UTF-8 text ({exc.reason} at byte {exc.start} of the line)") from None
        out.append(check_text(line.rstrip("\n").removesuffix("\r"), f"stdin:{lineno}"))
    return out


def save_embeddings(path: str | Path, emb, metadata: dict[str, str] | None = None) -> None:
    """Write (n, d) embeddings atomically: .npy (numpy.save) or .safetensors (tensor "embeddings")."""
    import io

    import numpy as np

    from distill.io import write_bytes_atomic

    fmt = output_format(path)
    emb = np.ascontiguousarray(emb)
    if fmt == ".npy":
        buf = io.BytesIO()
        np.save(buf, emb, allow_pickle=False)
        data = buf.getvalue()
    else:
        from safetensors.numpy import save

        data = save({TENSOR_NAME: emb}, metadata={k: str(v) for k, v in (metadata or {}).items()})
    write_bytes_atomic(path, data)


def _cmd_encode(args) -> int:
    import numpy as np

    from distill.data.readers import read_sentences
    from distill.io import write_errors

    check_out(args.out, args.overwrite)  # fail before the input is read and the model loads
    if backend_kwargs(args)["backend"] == "onnx":  # onnxruntime on CPU, no torch: checked first, torch stays unimported
        if args.device not in (None, "cpu"):
            raise DistillError(f"--device {args.device}: the onnx backend runs on the CPU")
    else:
        check_device(args.device)
    if args.batch_size < 1:
        raise DistillError(f"--batch-size {args.batch_size}: must be at least 1")
    if args.max_length is not None and args.max_length < 3:
        raise DistillError(f"--max-length {args.max_length}: must be at least 3 (two special tokens and one word piece)")
    if args.input == "-":
        sentences = _stdin_sentences()
        source = "stdin"
    else:
        sentences = read_sentences(args.input, column=args.column)
        source = args.input
    if not sentences:
        raise DistillError(f"{source}: no sentences in it")
    empty = sum(1 for s in sentences if not s.strip())
    if empty:
        print(f"distill: warning: {empty} empty sentence(s) in {source}; encoded as they are, so row i stays line i", file=sys.stderr)
    from distill.embedding import Embedder

    # onnx: onnxruntime on CPU, no torch (distill/onnx/runtime.py); torch: the model's own
    # precision and length; a folder with a Dense layer through sentence-transformers (embedding.py)
    embed = Embedder(args.model, batch_size=args.batch_size, progress=not args.quiet, device=args.device, desc="encode",
                     max_length=args.max_length, dims=args.dims, role=args.role, **backend_kwargs(args))
    enc = embed.model
    start = time.perf_counter()
    emb = embed(sentences)
    seconds = time.perf_counter() - start
    if args.dtype == "float16":
        emb = emb.astype(np.float16)
    with write_errors(args.out, "--out", "; nothing written (an existing file is left as it was)"):
        save_embeddings(
            args.out, emb,
            metadata={"model": args.model, "input": source, "rows": len(sentences), "dim": emb.shape[1],
                      "pooling": getattr(enc, "pooling", "(the folder's modules)"),
                      "normalize": True if embed.dims else getattr(enc, "normalize", "(the folder's modules)"),
                      "max_length": embed.max_length or getattr(enc, "max_length", None) or getattr(enc, "max_seq_length", None),
                      **({"dims": embed.dims, "full_dim": embed.width} if embed.dims else {})},
        )
    print(
        f"wrote {args.out}: {emb.shape[0]} x {emb.shape[1]} {emb.dtype} "
        f"({len(sentences) / max(seconds, 1e-9):,.0f} sentences/s on {getattr(enc, 'device', 'cpu')})",
        file=sys.stderr,
    )
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "encode",
        help="embed a file of sentences into .npy / .safetensors (row i = sentence i)",
        description=(
            "Bulk embedding. Input: a text file with one sentence per line (.gz allowed; every line is a row, "
            "empty lines too), or JSONL (.jsonl / .ndjson, or any file with --column) taking the --column field "
            "of each object; - reads lines from stdin. Sentences run sorted by length, on the GPU with "
            "bf16/fp16 autocast when there is one; the output keeps the input order and is written atomically; "
            "an existing --out file is replaced only with --overwrite."
        ),
    )
    p.add_argument("--model", required=True, help="model folder, preset name, hub id or PyPI model key")
    p.add_argument("--input", required=True, metavar="FILE", help="sentences: text (one per line, .gz ok) or JSONL; - for stdin")
    p.add_argument("--out", required=True, metavar="FILE", help="output .npy or .safetensors (tensor 'embeddings'); an existing file needs --overwrite")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--column", help="JSONL field holding the sentence (default: text)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--max-length", type=int, help="truncate to this many tokens (default: the model's)")
    p.add_argument("--role", choices=["query", "document"],
                   help="encode as queries or documents: the model's prompt for that role (and its Router route), as "
                        "sentence-transformers' encode_query / encode_document; a model without roles ignores it")
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32", help="stored dtype (default float32)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: the GPU when there is one)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_dims_arg(p)
    add_backend_args(p)
    p.set_defaults(func=_cmd_encode)
