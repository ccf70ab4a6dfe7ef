"""ONNX export of a sentence-transformers folder: `onnx/model.onnx` (fp32) and `onnx/model_qint8.onnx`.

The graph takes `input_ids` and `attention_mask` (int64, batch x length, both axes dynamic) and
returns `last_hidden_state` (the token vectors, as sentence-transformers' own ONNX files do) and
`sentence_embedding`: the folder's whole pipeline (Pooling, Dense layers, Normalize) inside the
graph, so the runtime (`distill/onnx/runtime.py`) applies nothing itself. `onnx/distill_onnx.json`
records what the runtime needs (truncation length, pad id, dim) and what export measured.

Why a wrapper with eager attention and a hand-made mask: under transformers 5 the model builds its
attention mask with Python branches on the data (e.g. "no padding: no mask at all"). A traced
export freezes the branch taken for the example batch, and the measured result was embeddings off
by up to 0.13 in cosine on padded batches. Here the 4-D additive mask, (1 - mask) * finfo.min, is
computed in the graph from `attention_mask` and handed to the model, which passes a 4-D mask
through as it is; eager attention just adds it. Every export is then checked against the PyTorch
model on padded batches of mixed lengths (one longer than the truncation length) and refused
beyond `FP32_TOLERANCE`.

int8: onnxruntime's dynamic quantization of the MatMul weights, per output channel (per tensor
lost up to 0.08 cosine on MiniLM; per channel keeps it above 0.98), activations quantized per
batch at run time.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

from distill.errors import DistillError
from distill.io import check_writable, temp_folder, write_errors, write_json_atomic

ONNX_DIR = "onnx"
FILES = {"fp32": "model.onnx", "int8": "model_qint8.onnx"}
META = "distill_onnx.json"
INPUTS = ("input_ids", "attention_mask")
OUTPUTS = ("last_hidden_state", "sentence_embedding")
POOLINGS = ("mean", "cls", "max")
ACTIVATIONS = {"Identity", "Tanh"}  # Dense activations sentence-transformers folders of ours use
FP32_TOLERANCE = 1e-4  # max abs difference to PyTorch on the probe batches
OPSET = 17
INSTALL_HINT = "pip install 'distill[onnx]' (or: pip install onnxruntime onnx)"

# Probe sentences for the export check: lengths from 1 token to past any truncation length, so
# every batch is padded and one sentence is truncated.
PROBE = [
    "Hi.",
    "A man is playing a guitar on stage.",
    "Two dogs run through a field of tall grass while a child watches them from the fence.",
    "Stocks fell sharply on Monday after the central bank said it would keep rates high for longer than expected.",
    "Ok",
    "The quick brown fox jumps over the lazy dog, and then it runs away into the dark forest before anyone can catch it again.",
]


def probe_sentences(max_length: int) -> list[str]:
    """PROBE plus one sentence longer than `max_length` tokens (each word is at least one token)."""
    long = " ".join(f"word{i % 50} is here" for i in range(max_length))
    return [*PROBE, long]


def require_onnx():
    """Import onnxruntime (and onnx), or a DistillError saying what to install."""
    try:
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError as exc:
        raise DistillError(f"ONNX export needs onnxruntime and onnx ({exc.name} is missing): {INSTALL_HINT}") from None
    return onnxruntime


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _pooling_mode(module) -> str:
    """'mean', 'cls', 'max', ... from a Pooling module of any sentence-transformers version."""
    mode = getattr(module, "pooling_mode", None)
    if isinstance(mode, str):
        return mode
    return module.get_pooling_mode_str()


def _head_from(st_model, folder: Path):
    """(pooling, [(weight, bias, activation name)], normalize) of a SentenceTransformer's modules after the Transformer."""
    pooling, dense, normalize = None, [], False
    for i, module in enumerate(list(st_model)[1:], 1):
        kind = type(module).__name__
        if kind == "Pooling":
            pooling = _pooling_mode(module)
            if pooling not in POOLINGS:
                raise DistillError(f"{folder}: module {i} pools with {pooling!r}; the ONNX export handles {', '.join(POOLINGS)}")
        elif kind == "Dense":
            if normalize:  # the graph normalizes once, at the end
                raise DistillError(f"{folder}: Dense module {i} comes after a Normalize; the ONNX export normalizes only at the end")
            act = type(module.activation_function).__name__
            if act not in ACTIVATIONS:
                raise DistillError(f"{folder}: Dense module {i} uses activation {act}; the ONNX export handles {', '.join(sorted(ACTIVATIONS))}")
            dense.append((module.linear.weight.detach().clone(), None if module.linear.bias is None else module.linear.bias.detach().clone(), act))
        elif kind == "Normalize":
            normalize = True
        else:
            raise DistillError(f"{folder}: module {i} is a {kind}; the ONNX export handles Transformer, Pooling, Dense, Normalize")
    if pooling is None:
        raise DistillError(f"{folder}: no Pooling module in modules.json")
    return pooling, dense, normalize


def _wrapper(transformer, pooling: str, dense: list, normalize: bool):
    """token ids + mask -> (token vectors, sentence embedding), the mask built in the graph (see module docstring)."""
    import torch
    from torch import nn

    class SentenceEmbedding(nn.Module):
        def __init__(self):
            super().__init__()
            self.transformer = transformer
            self.dense = nn.ModuleList()
            self.acts = [nn.Tanh() if act == "Tanh" else nn.Identity() for _, _, act in dense]
            for w, b, _ in dense:
                lin = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
                with torch.no_grad():
                    lin.weight.copy_(w)
                    if b is not None:
                        lin.bias.copy_(b)
                self.dense.append(lin)

        def forward(self, input_ids, attention_mask):
            keep = attention_mask.to(torch.float32)
            additive = (1.0 - keep[:, None, None, :]) * torch.finfo(torch.float32).min
            hidden = self.transformer(input_ids=input_ids, attention_mask=additive).last_hidden_state
            m = keep.unsqueeze(-1)
            if pooling == "mean":
                emb = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
            elif pooling == "cls":
                emb = hidden[:, 0]
            else:  # max over real tokens, as sentence-transformers does (padding set to -1e9)
                emb = torch.where(m > 0, hidden, torch.full_like(hidden, -1e9)).max(1).values
            for lin, act in zip(self.dense, self.acts):
                emb = act(lin(emb))
            if normalize:
                emb = nn.functional.normalize(emb, p=2.0, dim=1)
            return hidden, emb

    return SentenceEmbedding().eval()


def _session(path: Path):
    ort = require_onnx()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _run_padded(session, tokenizer, sentences: list[str], max_length: int):
    """sentence_embedding of `sentences` as ONE right-padded batch (the hard case for masking)."""
    import numpy as np

    enc = tokenizer(sentences, padding=True, truncation=True, max_length=max_length, return_tensors="np")
    feeds = {name: np.asarray(enc[name], dtype=np.int64) for name in INPUTS}
    return session.run([OUTPUTS[1]], feeds)[0]


def read_meta(folder: str | Path) -> dict | None:
    path = Path(folder) / ONNX_DIR / META
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DistillError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None


def export_onnx(folder: str | Path, *, quantize: str | None = None, overwrite: bool = False, log=print) -> dict:
    """Write `onnx/model.onnx` (and with quantize="int8" `onnx/model_qint8.onnx`) into a sentence-transformers folder.

    Each file is written into a temp folder in onnx/ and checked; then the record
    onnx/distill_onnx.json is written, then the files are renamed into place (`_publish`). A file
    there that distill did not write (not listed in the record) is only replaced with
    `overwrite=True`. Returns the metadata written to onnx/distill_onnx.json.
    """
    folder = Path(folder)
    old = _check_folder(folder, quantize, overwrite)
    onnx_dir = folder / ONNX_DIR
    check_writable(onnx_dir / FILES["fp32"], "export-onnx")  # before the ~20 s of loading, tracing and checking
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    from distill.model_files import explain_load_error

    try:
        st = SentenceTransformer(str(folder), device="cpu", trust_remote_code=False)
        # The transformer again, with eager attention (an additive 4-D mask, traceable for any shape).
        transformer = AutoModel.from_pretrained(str(folder), attn_implementation="eager", trust_remote_code=False).eval()
    except Exception as exc:  # a damaged or foreign file: one line naming it
        raise explain_load_error(folder, exc) from None
    pooling, dense, normalize = _head_from(st, folder)
    max_length = int(st.max_seq_length)
    probe = probe_sentences(max_length)
    ref = st.encode(probe, batch_size=len(probe), convert_to_numpy=True, normalize_embeddings=False)
    # A full or read-only disk: one line naming it; the temp folder goes, onnx/'s files stay as they were.
    with write_errors(onnx_dir, "export-onnx", "; nothing in it changed"), \
            temp_folder(onnx_dir / FILES["fp32"]) as work:  # deleted at the end; one a killed export left, at the next start
        files, written = _write_checked(work, onnx_dir, _wrapper(transformer, pooling, dense, normalize), st.tokenizer, probe, ref,
                                        max_length, quantize, dict(old.get("files", {})), log)
        meta = _meta(transformer, folder, st, ref, max_length, pooling, dense, normalize, files)
        _publish(onnx_dir, meta, written)
    return meta


def _meta(transformer, folder: Path, st, ref, max_length: int, pooling: str, dense: list, normalize: bool, files: dict) -> dict:
    import torch
    from transformers import AutoTokenizer

    return {
        "format": 1,
        "inputs": list(INPUTS),
        "output": OUTPUTS[1],
        "max_seq_length": max_length,
        "max_positions": _max_positions(transformer.config, AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False), max_length),
        "pad_token_id": int(st.tokenizer.pad_token_id if st.tokenizer.pad_token_id is not None else 0),
        "dim": int(ref.shape[1]),
        "pooling": pooling,
        "dense": [act for _, _, act in dense],
        "normalize": normalize,
        "files": files,
        "exported_with": {"torch": torch.__version__, "transformers": _version("transformers"), "onnxruntime": _version("onnxruntime")},
    }


def _publish(onnx_dir: Path, meta: dict, written: list[Path]) -> None:
    """The record first, then the files it lists renamed into place (int8 before fp32).

    Killed in between (kill -9, power loss), the record names files that are not all in place yet:
    the next export-onnx takes those names as its own and replaces them, and the runtime refuses a
    file whose size differs from the record's. The other order would leave a complete-looking
    model.onnx that no record names, which the next export-onnx must refuse as another tool's.
    """
    write_json_atomic(onnx_dir / META, meta)
    for tmp in written:
        os.replace(tmp, onnx_dir / tmp.name)


def _check_folder(folder: Path, quantize: str | None, overwrite: bool) -> dict:
    """Refuse what cannot be exported, or files distill did not write (without overwrite), before
    any model loads; returns the folder's previous onnx/distill_onnx.json (or {})."""
    if quantize not in (None, "int8"):
        raise DistillError(f"--quantize {quantize!r}: only int8 is supported")
    if not (folder / "modules.json").is_file():
        raise DistillError(f"{folder}: not a sentence-transformers folder (no modules.json); export a run first with `distill export RUN --out DIR`")
    from distill.st_format import static_folder as is_static_folder

    if is_static_folder(folder):
        raise DistillError(f"{folder}: a static model (a token table and a mean) needs no ONNX graph: it already encodes at table-lookup "
                           "speed in PyTorch (`distill encode --model DIR`, or plain sentence-transformers)")
    if not (folder / "tokenizer.json").is_file():
        raise DistillError(f"{folder}: no tokenizer.json (a fast tokenizer); the ONNX runtime tokenizes with it")
    require_onnx()
    onnx_dir = folder / ONNX_DIR
    old = read_meta(folder) or {}
    ours = set(old.get("files", {}))
    wanted = ["fp32"] + (["int8"] if quantize else [])
    foreign = [FILES[k] for k in wanted if (onnx_dir / FILES[k]).exists() and FILES[k] not in ours]
    if foreign and not overwrite:
        raise DistillError(f"{onnx_dir}: {', '.join(foreign)} exist and were not written by distill; pass --overwrite to replace them")
    return old


def _write_checked(work: Path, onnx_dir: Path, model, tokenizer, probe: list[str], ref, max_length: int, quantize: str | None,
                   files: dict, log) -> tuple[dict, list[Path]]:
    """Trace `model` to WORK/model.onnx (and quantize it to WORK/model_qint8.onnx), check each file
    on the padded probe batch; returns the updated "files" record (with each file's sha256 and
    size) and the checked files, in the order they are to be renamed into `onnx_dir` (int8 first)."""
    import numpy as np
    import torch

    fp32 = work / FILES["fp32"]
    example = tokenizer(probe[:3], padding=True, return_tensors="pt")
    axes = {"input_ids": {0: "batch", 1: "length"}, "attention_mask": {0: "batch", 1: "length"},
            "last_hidden_state": {0: "batch", 1: "length"}, "sentence_embedding": {0: "batch"}}
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(model, (example["input_ids"], example["attention_mask"]), str(fp32),
                          input_names=list(INPUTS), output_names=list(OUTPUTS), dynamic_axes=axes,
                          opset_version=OPSET, do_constant_folding=True, dynamo=False)
    got = _run_padded(_session(fp32), tokenizer, probe, max_length)
    diff = float(np.abs(got - ref).max())
    if not diff <= FP32_TOLERANCE:
        raise DistillError(f"{onnx_dir.parent}: the ONNX graph differs from PyTorch by {diff:.2e} (max abs) on padded batches, "
                           f"over the {FP32_TOLERANCE:g} allowed; not written")
    files[FILES["fp32"]] = {"precision": "fp32", "max_abs_diff_vs_torch": diff}
    log(f"{onnx_dir / FILES['fp32']}: max abs difference to PyTorch {diff:.2e} on {len(probe)} padded sentences")
    written = [fp32]
    if quantize:
        int8 = work / FILES["int8"]
        quantize_int8(fp32, int8)
        cos = _cosines(_run_padded(_session(int8), tokenizer, probe, max_length), got)
        files[FILES["int8"]] = {"precision": "int8 (dynamic, per-channel MatMul weights)", "min_cosine_vs_fp32": float(cos.min())}
        log(f"{onnx_dir / FILES['int8']}: cosine to fp32 min {cos.min():.4f} on {len(probe)} padded sentences")
        written.insert(0, int8)
    for path in written:
        files[path.name].update(sha256=_sha256(path), bytes=path.stat().st_size)
    return files, written


def quantize_int8(src: str | Path, dst: str | Path) -> None:
    """Dynamic int8 quantization of the MatMul weights, per output channel (see module docstring)."""
    require_onnx()
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # its "consider pre-processing" note: measured, no gain here
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul"])
    finally:
        logging.getLogger().setLevel(quiet)


def _cosines(a, b):
    import numpy as np

    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def _max_positions(cfg, tokenizer, fallback: int) -> int:
    """The model's own length limit, computed as `Encoder.max_positions` does (STS evaluation encodes at it)."""
    limits = []
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and 0 < tok_max < 1_000_000:
        limits.append(tok_max)
    positions = getattr(cfg, "max_position_embeddings", None)
    if positions:
        reserved = (cfg.pad_token_id or 0) + 1 if cfg.model_type in ("roberta", "xlm-roberta", "camembert", "mpnet") else 0
        limits.append(int(positions) - reserved)
    return min(limits) if limits else fallback


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None
