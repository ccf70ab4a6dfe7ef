"""The one adapter from a model, however it is given, to `list[str] -> (n, d) float32 array`.

Used by the similarity pipeline, retrieval, STS evaluation and, during training, to score the
student (`StudentEmbedder`, below, is this class with a head).

A model is any of
  - a model folder / preset / hub id / PyPI model key: loaded with `distill.models.load_served`
    (a transformer `Encoder`, or a `StaticStudent` for a static model folder), or with
    backend="onnx" as an `OnnxEncoder` from the folder's onnx/ files (`onnx_file`, `quantized`);
  - an `Encoder` or `StaticStudent` (distill.student.EmbeddingModel), optionally with a `head`
    module applied to its vector (HPD's Dense+tanh...);
  - an `OnnxEncoder`;
  - a `SentenceTransformer`, or anything with a SentenceTransformer-like `.encode`;
  - a callable mapping a list of sentences to an (n, d) array.

`full_length=True` scores as SentEval does (STS evaluation, the training callback): an Encoder
runs in fp32 (no bf16 autocast, also on a GPU) and an Encoder or OnnxEncoder encodes at the
model's own length limit (`max_positions`), not at the (often shorter) length it was trained at.
Otherwise an Encoder encodes at its own `max_length` with its default precision ("auto").

`max_length` sets the truncation length instead (checked against the model's limit):
`max_length=OWN` is the length the model declares for itself (`own_max_length`: what its
sentence-transformers folder says, else its position limit), which retrieval evaluation uses: a
preset's `max_length` is the length it was trained and cached at, not a property of the model.

`dims=N` serves the model at N dimensions (`truncate`): the first N coordinates of each vector,
then L2-normalized, as a Matryoshka-trained student is meant to be served (losses/matryoshka.py).
N is checked against the model's width (1 <= N <= width) before anything is encoded when the
width is known, else on the first output. A folder named by its path that declares
sentence-transformers' `truncate_dim` (config_sentence_transformers.json, what `distill export
--dims N` writes) is served at that width unless `dims` says otherwise, as
`SentenceTransformer(folder)` serves it (its `encode(truncate_dim=...)` overrides it the same
way); a SentenceTransformer object's own `truncate_dim` likewise. Unlike sentence-transformers,
which truncates after the folder's Normalize, the truncated vector is re-normalized (cosine
scores are the same either way; dot products then equal cosines).

A folder named by its path whose sentence-transformers pipeline has modules our Encoder does not
reproduce (a Dense layer: HPD's head, the PCA of `distill export --pca`) is loaded as a
`SentenceTransformer` on the torch backend, so that what is scored is what the folder serves.

Imports neither torch nor sentence-transformers itself: an Encoder or a SentenceTransformer is
recognized only when its module is already loaded, so `--backend onnx` stays torch-free.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from distill.errors import DistillError
from distill.st_format import ST_CONFIG, declared_truncate_dim, read_modules

OWN = "own"  # max_length=OWN: the model's own declared length (own_max_length)


class Embedder:
    """`Embedder(model, ...)(sentences)` -> (n, d) float32 array, row i for sentence i.

    `batch_size` and `progress` given to a call override the ones given here. `max_length`: None
    (the model's default, or `max_positions` with `full_length`), OWN (`own_max_length`) or a
    number of tokens; `self.max_length` is the resolved number (None: the model decides).
    """

    def __init__(self, model, *, head=None, batch_size: int = 128, progress: bool = False, device=None,
                 backend: str = "torch", onnx_file=None, quantized: bool = False, full_length: bool = False,
                 max_length: int | str | None = None, desc: str = "encode", dims: int | None = None, role: str | None = None):
        from distill.onnx.runtime import OnnxEncoder, check_backend

        self.batch_size, self.progress, self.full_length, self.desc, self.head = batch_size, progress, full_length, desc, head
        self.role = check_role(role)
        declared = None  # the width a named folder declares it is served at (truncate_dim)
        if isinstance(model, (str, Path)) and Path(model).expanduser().is_dir():
            declared = declared_truncate_dim(Path(model).expanduser())  # a damaged file: an error naming it
        if check_backend(backend, onnx_file, quantized) == "onnx":
            if isinstance(model, (str, Path)):
                model = OnnxEncoder.load(model, quantized=quantized, onnx_file=onnx_file)
            elif not isinstance(model, OnnxEncoder):
                raise DistillError(f"backend 'onnx' needs a model folder with onnx/ files, not a {type(model).__name__}")
        if isinstance(model, (str, Path)) and Path(model).expanduser().is_dir() and beyond_encoder(model):
            from sentence_transformers import SentenceTransformer  # the folder's own pipeline, Dense layers included

            model = SentenceTransformer(str(Path(model).expanduser()), device=str(device) if device is not None else None)
        if isinstance(model, (str, Path)):
            from distill.models import load_served
            from distill.saved_student import saved_embedding_head

            # a run's best/ or final/: score what the run scored, through its embedding head if it has one
            saved = saved_embedding_head(Path(model).expanduser())
            if saved is not None and head is not None:
                raise DistillError(f"{model}: this saved student has its own embedding head; give no other")
            self.head = head = saved if saved is not None else head
            model = load_served(str(model), device=device)
        self.model = model
        self.kind = _kind(model)
        if self.kind is None:
            raise DistillError(
                f"cannot embed with a {type(model).__name__}: give a model name or folder, an Encoder, "
                "a SentenceTransformer, or a callable from a list of sentences to an (n, d) array"
            )
        if head is not None and self.kind != "encoder":
            raise DistillError(f"a head module is applied to an Encoder's vectors, not to a {type(model).__name__}'s")
        self.max_length = self._length(max_length)
        if self.kind == "sentence-transformers" and declared is None:
            declared = getattr(model, "truncate_dim", None)
        self.width = self._width()  # the full vector's width (None: known only from an output)
        if dims is None and declared is not None and self.width is not None and declared > self.width:
            raise DistillError(f"{self.source}: its truncate_dim {declared} ({ST_CONFIG}) is more than the model's {self.width} dimensions")
        self.dims = check_dims(dims if dims is not None else declared, self.width, self.source)

    def _width(self) -> int | None:
        model = self.model
        if self.kind == "encoder":
            from distill.losses.base import head_out_dim

            return int(model.dim) if self.head is None else head_out_dim(self.head)
        if self.kind == "onnx":
            return int(model.dim)
        if self.kind == "sentence-transformers":
            was = getattr(model, "truncate_dim", None)
            model.truncate_dim = None  # the full width; dims (or the model's own truncate_dim) truncates after
            try:
                width = (getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension)()
            finally:
                model.truncate_dim = was
            return int(width) if width else None
        return None

    def _length(self, max_length) -> int | None:
        """The truncation length asked for, checked against the model's limit; None: the model's default."""
        model = self.model
        if max_length is None:
            return model.max_positions if self.full_length and self.kind in ("encoder", "onnx") else None
        if max_length == OWN:
            return own_max_length(model)
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise DistillError(f"max length {max_length!r}: expected a positive number of tokens")
        limit = model_length_limit(model)
        if self.kind in ("encode", "callable"):
            raise DistillError(f"max length {max_length}: a {type(model).__name__} encodes at its own length; "
                               "give a model name or folder, an Encoder or a SentenceTransformer to set it")
        if limit is not None and max_length > limit:
            raise DistillError(f"max length {max_length}: over the limit of {self.source} ({limit} tokens); "
                               f"use at most {limit}")
        return max_length

    @property
    def source(self):
        return getattr(self.model, "source", self.model)

    def __call__(self, sentences: Sequence[str], batch_size: int | None = None, progress: bool | None = None,
                 role: str | None = None) -> np.ndarray:
        """`role` ("query" / "document"; default the Embedder's own): a model that serves roles (a
        SentenceModel, a SentenceTransformer with prompts or a Router) encodes with that role's
        prompt and route, as `encode_query` / `encode_document` do; any other model ignores it."""
        batch_size = self.batch_size if batch_size is None else batch_size
        progress = self.progress if progress is None else progress
        role = check_role(role) or self.role
        sentences = list(sentences)
        out = self._full(sentences, batch_size, progress, role)
        if self.dims is None:
            return out
        if self.width is None:  # a callable: its width shows only now
            check_dims(self.dims, out.shape[1], self.source)
        return truncate(out, self.dims)

    def _full(self, sentences: list[str], batch_size: int, progress: bool, role: str | None = None) -> np.ndarray:
        """The model's full vectors (for a SentenceTransformer: before its own truncate_dim)."""
        model = self.model
        if self.kind == "encoder":
            return self._encoder(sentences, batch_size, progress, role)
        if self.kind == "onnx":
            length = {"max_length": self.max_length} if self.max_length else {}
            out = model.encode(sentences, batch_size=batch_size, progress=progress, desc=self.desc, **length)
        elif self.kind == "sentence-transformers":
            from distill.st_format import is_routed

            was, was_dims = model.max_seq_length, getattr(model, "truncate_dim", None)
            # a Router's routes keep their own lengths (distill/router.py: student and teacher differ)
            length = self.max_length if self.max_length and not is_routed(model) else None
            if length:
                model.max_seq_length = length
            model.truncate_dim = None  # self.dims holds it (declared or asked for): truncated and re-normalized in __call__
            encode = {"query": getattr(model, "encode_query", None), "document": getattr(model, "encode_document", None)}.get(role)
            try:
                out = (encode or model.encode)(sentences, batch_size=batch_size, show_progress_bar=progress, convert_to_numpy=True)
            finally:
                if length:
                    model.max_seq_length = was
                model.truncate_dim = was_dims
        elif self.kind == "encode":
            out = model.encode(sentences, **_accepted(model.encode, batch_size=batch_size, show_progress_bar=progress))
        else:
            out = model(sentences)
        return np.asarray(out, dtype=np.float32)

    def _encoder(self, sentences: list[str], batch_size: int, progress: bool, role: str | None = None) -> np.ndarray:
        import torch

        enc = self.model
        kwargs = {"precision": "fp32"} if self.full_length else {}
        if role is not None and getattr(enc, "kind", "") == "sentence":  # a SentenceModel serves roles
            kwargs["role"] = role
        if self.max_length:
            kwargs["max_length"] = self.max_length
        with torch.inference_mode():
            emb = enc.encode(sentences, batch_size=batch_size, progress=progress, desc=self.desc, to_numpy=False, **kwargs)
            if self.head is not None:
                was = self.head.training
                self.head.eval()
                p = next(self.head.parameters())
                emb = self.head(emb.to(p.device, p.dtype)).float().cpu()
                self.head.train(was)
        return emb.numpy()

    def __repr__(self) -> str:
        return (f"Embedder({self.source!r}, kind={self.kind!r}{', head' if self.head is not None else ''}"
                f"{f', dims={self.dims}' if self.dims else ''})")


ROLES = ("query", "document")


def check_role(role: str | None) -> str | None:
    if role is not None and role not in ROLES:
        raise DistillError(f"role {role!r}: one of {', '.join(ROLES)}")
    return role


def check_dims(dims, width: int | None, source="the model") -> int | None:
    """`dims` (None: the full vector) checked: a whole number from 1 to the model's `width` (when known)."""
    if dims is None:
        return None
    if isinstance(dims, bool) or not isinstance(dims, int) or dims < 1:
        raise DistillError(f"dims {dims!r}: expected a whole number of dimensions >= 1")
    if width is not None and dims > width:
        raise DistillError(f"dims {dims}: more than the {width} dimensions of {source}; use 1 to {width}")
    return dims


def truncate(emb: np.ndarray, dims: int) -> np.ndarray:
    """The first `dims` coordinates of every row, L2-normalized (a zero row stays zero), float32:
    a vector served at a smaller width. The one implementation of `--dims`."""
    emb = np.asarray(emb)
    check_dims(dims, emb.shape[-1])
    head = emb[..., :dims].astype(np.float32)
    norms = np.linalg.norm(head.astype(np.float64), axis=-1, keepdims=True)
    return (head / np.maximum(norms, 1e-12)).astype(np.float32)


# sentence-transformers modules our Encoder / StaticStudent reproduce from a folder (distill.encoder)
_REPRODUCED = ("Transformer", "Pooling", "Normalize", "StaticEmbedding")


def beyond_encoder(folder) -> list[str]:
    """The module types of a sentence-transformers folder (modules.json) that our Encoder does not
    reproduce, e.g. ["Dense"]; [] for any other folder. A damaged modules.json is an error naming it."""
    return [m.short for m in read_modules(Path(folder).expanduser()) if m.short not in _REPRODUCED]


DIMS_HELP = ("serve the model at N dimensions: the first N of each vector, then L2-normalized (for Matryoshka-trained "
             "students; 1 <= N <= the model's width; default: the folder's truncate_dim, else the full vector)")


def add_dims_arg(parser) -> None:
    """--dims N for the commands that embed."""
    parser.add_argument("--dims", type=int, metavar="N", help=DIMS_HELP)


def own_max_length(model) -> int | None:
    """The length a model declares for itself, whatever length a preset trained or cached it at.

    An Encoder: the max_seq_length its sentence-transformers folder declares (capped by its position
    limit), else its position limit `max_positions` (a plain transformers folder, a trained
    student); an OnnxEncoder: its folder's max_seq_length; a SentenceTransformer: its
    max_seq_length. None for a callable (it encodes however it does).
    """
    from distill.onnx.runtime import OnnxEncoder

    if isinstance(model, OnnxEncoder):
        return min(int(model.meta["max_seq_length"]), model.max_positions)
    student_mod = sys.modules.get("distill.student")  # an Encoder or a StaticStudent (which has no limit)
    if student_mod is not None and isinstance(model, student_mod.EmbeddingModel):
        declared = getattr(model, "declared_max_length", None)
        return min(int(declared), model.max_positions) if declared else model.max_positions
    st_mod = sys.modules.get("sentence_transformers")
    if st_mod is not None and isinstance(model, st_mod.SentenceTransformer):
        length = model.max_seq_length  # a static model's (or a Router's over one) is infinite: no limit
        return int(length) if isinstance(length, (int, float)) and length < float("inf") else None
    return None


def model_length_limit(model) -> int | None:
    """The longest input a model takes (`max_positions`), None when it is not known."""
    limit = getattr(model, "max_positions", None)
    if isinstance(limit, int):
        return limit
    st_mod = sys.modules.get("sentence_transformers")
    if st_mod is not None and isinstance(model, st_mod.SentenceTransformer):
        cfg = getattr(getattr(model[0], "auto_model", None), "config", None)
        positions = getattr(cfg, "max_position_embeddings", None)
        return int(positions) if positions else None
    return None


def _kind(model) -> str | None:
    from distill.onnx.runtime import OnnxEncoder

    if isinstance(model, OnnxEncoder):
        return "onnx"
    student_mod = sys.modules.get("distill.student")  # Encoder and StaticStudent: the Student protocol
    if student_mod is not None and isinstance(model, student_mod.EmbeddingModel):
        return "encoder"
    st_mod = sys.modules.get("sentence_transformers")
    if st_mod is not None and isinstance(model, st_mod.SentenceTransformer):
        return "sentence-transformers"
    if callable(getattr(model, "encode", None)):
        return "encode"
    if callable(model):
        return "callable"
    return None


def _accepted(fn, **kwargs) -> dict:
    """The keyword arguments `fn` names in its signature (a SentenceTransformer-like .encode may take
    batch_size / show_progress_bar, or only the sentences)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return {}
    return {k: v for k, v in kwargs.items() if k in params}


def embedder(model, batch_size: int = 128, progress: bool = False, device=None, *, backend: str = "torch",
             onnx_file=None, quantized: bool = False, head=None, full_length: bool = False,
             max_length: int | str | None = None, desc: str = "encode", dims: int | None = None, role: str | None = None) -> Embedder:
    """A function list[str] -> (n, d) float32 array, rows in input order: an `Embedder`."""
    return Embedder(model, head=head, batch_size=batch_size, progress=progress, device=device, backend=backend,
                    onnx_file=onnx_file, quantized=quantized, full_length=full_length, max_length=max_length, desc=desc, dims=dims,
                    role=role)


class StudentEmbedder(Embedder):
    """What evaluation scores: the pooled vector, or for HPD the pooled vector through its head.

    Scored as SentEval does (`full_length`): fp32, and at the model's own length limit, not the
    (often shorter) length the student was trained at, or at `max_length` when given (a recipe's
    eval.retrieval.max_length). `StudentEmbedder(enc, head)(sentences, batch_size=...)`; the one
    adapter is `distill.embedding.Embedder`.
    """

    def __init__(self, encoder, head=None, max_length: int | None = None):
        super().__init__(encoder, head=head, batch_size=256, full_length=True, max_length=max_length)


def model_digest(embed) -> str | None:
    """What decides an Embedder's vectors, hashed: its encoder's and head's tensors, the length,
    width, pooling and tokenizer; None for a model that is not one of our torch models."""
    if getattr(embed, "kind", None) != "encoder":
        return None
    import hashlib

    from distill.data.tokens import tokenizer_fingerprint

    model = embed.model
    tok = getattr(model, "tokenizer", None)
    h = hashlib.blake2b(digest_size=20)
    # the tokenizer by content: a student reloaded from its best/ folder names another path, same ids
    h.update(repr((type(model).__name__, embed.max_length, embed.dims, embed.full_length, getattr(model, "pooling", None),
                   getattr(model, "normalize", None), str(getattr(model, "device", "")),
                   tokenizer_fingerprint(tok, embed.max_length or 0) if tok is not None else None)).encode())
    for part in (model, embed.head):
        for name, tensor in (part.state_dict().items() if part is not None else ()):
            h.update(name.encode())
            h.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
