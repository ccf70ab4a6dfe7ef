"""CPU serving without torch: onnxruntime + the fast (Rust) tokenizer over an exported folder's `onnx/`.

`OnnxEncoder.load(folder)` reads `onnx/model.onnx` (or `model_qint8.onnx` with quantized=True)
and `onnx/distill_onnx.json` written by `distill export-onnx` (distill/onnx/export.py); the graph
returns the finished sentence embedding (pooling, Dense, Normalize inside), so this module only
feeds it batches from the routine `Encoder.encode` uses (distill/data/padding.py): sentences
sorted by token length so a batch carries almost no padding, rows returned in input order.
onnxruntime uses every core this process may run on (`threads`), not its default of the
physical cores it detects.

Imports nothing from torch: `--backend onnx` in encode / similarity / eval / eval-retrieval and
`pipeline(model, backend="onnx")` run on a machine with only onnxruntime, tokenizers and numpy.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from distill.data.padding import check_sentences, token_batches
from distill.errors import DistillError
from distill.onnx.export import FILES, INPUTS, INSTALL_HINT, ONNX_DIR, read_meta

BACKENDS = ("torch", "onnx")
# Sentences per Rust tokenizer call, every chunk the same size: no tokenizer thread runs ahead of
# onnxruntime here, so a small first chunk (Encoder.encode's) would gain nothing.
_CHUNK = 8192


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def session_options(threads: int | None = None):
    """onnxruntime options for serving: `threads` intra-op threads (default: every core this process
    may use), one inter-op thread, every graph optimization, warnings only."""
    import onnxruntime as ort

    threads = available_cores() if threads is None else int(threads)
    if threads < 1:
        raise DistillError(f"threads must be at least 1, got {threads}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return opts


def _check_recorded_size(file: Path, meta: dict, folder: Path) -> None:
    """The file is the one the record describes (its size, recorded since distill_onnx.json lists
    it before the file is renamed into place): else an export-onnx was interrupted, or the file
    was replaced since."""
    if file.parent.resolve() != (folder / ONNX_DIR).resolve():
        return  # a file given by path elsewhere: the record is not about it
    recorded = (meta.get("files") or {}).get(file.name, {})
    size = recorded.get("bytes") if isinstance(recorded, dict) else None
    if isinstance(size, int) and file.is_file() and file.stat().st_size != size:
        raise DistillError(f"{file}: {file.stat().st_size} bytes, not the {size} that {folder / ONNX_DIR / 'distill_onnx.json'} records "
                           f"(an export-onnx was interrupted, or the file was replaced since): run `distill export-onnx {folder}` again")


class OnnxEncoder:
    """Sentences -> (n, d) float32 embeddings with onnxruntime; `encode` mirrors `Encoder.encode`."""

    device = "cpu"

    def __init__(self, folder: Path, file: Path, session, tokenizer, meta: dict, max_length: int):
        self.folder, self.file, self.session, self.meta = folder, file, session, meta
        self._tokenizer = tokenizer
        self.max_length = int(max_length)
        self.max_positions = int(meta.get("max_positions", max_length))
        self.dim = int(meta["dim"])
        self.normalize = bool(meta.get("normalize", False))
        self.pooling = meta.get("pooling", "?")
        self.pad_id = int(meta.get("pad_token_id", 0))
        self.output = meta["output"]
        self.inputs = [i.name for i in session.get_inputs()]
        self.source = str(folder)

    @classmethod
    def load(cls, name: str | Path, *, quantized: bool = False, onnx_file: str | Path | None = None,
             threads: int | None = None, max_length: int | None = None) -> OnnxEncoder:
        """Load a folder (or preset / model name that resolves to one) that holds `onnx/`.

        `onnx_file`: a file name inside the folder's onnx/ or a path (default onnx/model.onnx, or
        onnx/model_qint8.onnx with `quantized`). `threads`: onnxruntime intra-op threads (default:
        all cores). `max_length`: truncation (default: the folder's max_seq_length).
        """
        try:
            import onnxruntime as ort
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise DistillError(f"the onnx backend needs onnxruntime and tokenizers ({exc.name} is missing): {INSTALL_HINT}") from None
        folder = Path(name).expanduser()
        if not folder.is_dir():
            from distill.resolve import resolve_model

            folder = resolve_model(str(name))
        file = _pick_file(folder, quantized, onnx_file)
        meta = read_meta(folder)
        if meta is None:
            raise DistillError(f"{folder / ONNX_DIR}: no {'distill_onnx.json'} (the ONNX files were not written by distill); "
                               f"run `distill export-onnx {folder}` (add --overwrite to replace files another tool wrote)")
        for key in ("output", "dim", "max_seq_length"):
            if key not in meta:
                raise DistillError(f"{folder / ONNX_DIR / 'distill_onnx.json'}: no {key!r} key; re-run `distill export-onnx {folder}`")
        _check_recorded_size(file, meta, folder)
        tok_file = folder / "tokenizer.json"
        if not tok_file.is_file():
            raise DistillError(f"{folder}: no tokenizer.json; the onnx backend needs the fast tokenizer's file beside the model")
        opts = session_options(threads)
        try:
            session = ort.InferenceSession(str(file), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 (onnxruntime raises its own exception types)
            raise DistillError(f"{file}: onnxruntime cannot load it ({str(exc).splitlines()[0][:200]})") from None
        outputs = [o.name for o in session.get_outputs()]
        if meta["output"] not in outputs:
            raise DistillError(f"{file}: no {meta['output']!r} output (outputs: {', '.join(outputs)}); re-run `distill export-onnx {folder}`")
        unknown = [i.name for i in session.get_inputs() if i.name not in INPUTS]
        if unknown:
            raise DistillError(f"{file}: inputs {unknown} are not ones distill feeds ({', '.join(INPUTS)})")
        max_length = _check_length(max_length or meta["max_seq_length"], meta)
        try:
            tokenizer = Tokenizer.from_file(str(tok_file))
        except Exception as exc:  # noqa: BLE001 (the Rust tokenizer raises a plain Exception): one line naming the file
            from distill.model_files import explain_load_error

            raise explain_load_error(folder, exc) from None
        return cls(folder, file, session, tokenizer, meta, max_length)

    def _batches(self, sentences: list[str], batch_size: int, max_length: int):
        """What `encode` feeds the session: (input positions, input_ids, attention_mask) numpy
        arrays from the shared `distill.data.padding.token_batches`, `batch_size` rows each."""
        return token_batches(self._tokenizer, sentences, max_length, batch_size, pad_id=self.pad_id, first_chunk=_CHUNK, chunk=_CHUNK)

    def encode(self, sentences: Sequence[str], batch_size: int = 128, progress: bool = False, desc: str = "encode",
               max_length: int | None = None, **_ignored) -> np.ndarray:
        """Embed sentences; row i is sentence i. Tokenization is included (it is part of serving)."""
        sentences = list(sentences)
        check_sentences(sentences, batch_size)
        out = np.empty((len(sentences), self.dim), dtype=np.float32)
        if not sentences:
            return out
        max_length = _check_length(max_length or self.max_length, self.meta)
        bar = _bar(len(sentences), desc, progress)
        for idx, input_ids, attention_mask in self._batches(sentences, batch_size, max_length):
            feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
            out[idx] = self.session.run([self.output], {k: v for k, v in feeds.items() if k in self.inputs})[0]
            if bar is not None:
                bar.update(len(idx))
        if bar is not None:
            bar.close()
        return out

    def __call__(self, sentences: Sequence[str]) -> np.ndarray:
        return self.encode(sentences)

    def __repr__(self) -> str:
        return f"OnnxEncoder({str(self.file)!r}, dim={self.dim}, max_length={self.max_length})"


def _check_length(max_length, meta: dict) -> int:
    limit = int(meta.get("max_positions", meta["max_seq_length"]))
    if not 1 <= int(max_length) <= limit:
        raise DistillError(f"max_length {max_length}: must be between 1 and the model's limit {limit}")
    return int(max_length)


def _pick_file(folder: Path, quantized: bool, onnx_file) -> Path:
    if onnx_file is not None and quantized:
        raise DistillError("give --onnx-file or --quantized, not both")
    if onnx_file is not None:
        given = Path(onnx_file).expanduser()
        file = given if given.is_file() else folder / ONNX_DIR / given
    else:
        file = folder / ONNX_DIR / FILES["int8" if quantized else "fp32"]
    if not file.is_file():
        how = f"distill export-onnx {folder}" + (" --quantize int8" if quantized or "qint8" in file.name else "")
        raise DistillError(f"{file}: no such ONNX file; write it with `{how}` (or `distill export RUN --out DIR --onnx`)")
    return file


def _bar(total: int, desc: str, progress: bool):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="sent", leave=False)


def check_backend(backend: str, onnx_file=None, quantized: bool = False) -> str:
    """The backend name, checked; --onnx-file / --quantized only make sense with onnx."""
    if backend not in BACKENDS:
        raise DistillError(f"unknown backend {backend!r} (known: {', '.join(BACKENDS)})")
    if backend != "onnx" and (onnx_file is not None or quantized):
        raise DistillError("--onnx-file / --quantized choose an ONNX file: they need --backend onnx")
    return backend


def add_backend_args(parser) -> None:
    """--backend, --onnx-file, --quantized for the commands that embed."""
    parser.add_argument("--backend", choices=BACKENDS, default="torch",
                        help="torch (default) or onnx: onnxruntime on CPU over the folder's onnx/ (see `distill export-onnx`)")
    parser.add_argument("--quantized", action="store_true", help="with --backend onnx: use onnx/model_qint8.onnx (int8)")
    parser.add_argument("--onnx-file", metavar="FILE", help="with --backend onnx: an ONNX file in the folder's onnx/ or a path")


def backend_kwargs(args) -> dict:
    check_backend(args.backend, args.onnx_file, args.quantized)
    return {"backend": args.backend, "onnx_file": args.onnx_file, "quantized": args.quantized}
