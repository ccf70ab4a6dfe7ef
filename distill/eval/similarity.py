"""The sentence-similarity call of published sentence-embedding model cards, for any model.

CoROM, GTE and MiniLM-IBKD (ModelScope) all document one call::

    from distill import pipeline
    p = pipeline("all-minilm-l6-v2")                      # name, folder, preset, Encoder or SentenceTransformer
    out = p({"source_sentence": ["how long is the great wall"],
             "sentences_to_compare": ["The Great Wall is 21,196 km long.", "Paris is in France."]})
    out["text_embedding"]   # (1 + m, d) array: the source sentence, then each candidate
    out["scores"]           # m floats: the source sentence against each candidate

The same call in Chinese, with the CoROM medical card's own example (any Chinese model: the
m3e-small teacher or a student distilled from it; tests/test_chinese.py runs both)::

    p = pipeline("m3e-small")
    p({"source_sentence": ["上消化道出血手术大约多久"],
       "sentences_to_compare": ["上消化道出血手术大约要2-3个小时左右。...", "胃出血一般住院30-60天。..."]})["scores"]
    # the first candidate (it answers the question) scores above the one about hospital stays

Without "sentences_to_compare", the k source sentences are all embedded and the scores are the
first against the other k - 1. With candidates, only the first source sentence is used (as on the
model cards); any further ones are ignored, with a warning and an "ignored_source_sentences"
count and a "note" in the result.

Text goes to the model's tokenizer exactly as given: no lower-casing, stripping, or assumptions
about the language (what the tokenizer's vocabulary does not cover becomes its unknown token).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from distill.embedding import embedder
from distill.errors import DistillError

__all__ = ["SimilarityPipeline", "embedder", "pipeline", "similarity", "rank", "normalize_metric", "higher_is_closer", "parse_inputs"]

SOURCE_KEY = "source_sentence"
COMPARE_KEY = "sentences_to_compare"

# canonical name -> accepted spellings
METRICS = {
    "cosine": ("cosine", "cos"),
    "dot": ("dot", "dot_product", "dot-product", "ip", "inner_product"),
    "l2": ("l2", "euclidean"),
}


def normalize_metric(metric: str) -> str:
    """'cosine', 'dot' or 'l2' for any accepted spelling; a DistillError otherwise."""
    key = str(metric).strip().lower()
    for name, spellings in METRICS.items():
        if key in spellings:
            return name
    raise DistillError(f"unknown metric {metric!r} (known: cosine, dot, l2)")


def higher_is_closer(metric: str) -> bool:
    """False for l2 (a distance: smaller means closer), True for cosine and dot."""
    return normalize_metric(metric) != "l2"


def similarity(query: np.ndarray, candidates: np.ndarray, metric: str = "cosine") -> np.ndarray:
    """Scores of one query vector (d,) against candidate rows (m, d), in float64.

    cosine: q.c / (|q| |c|) (a zero vector scores 0); dot: q.c; l2: |q - c| (a distance).
    """
    metric = normalize_metric(metric)
    q = np.asarray(query, dtype=np.float64).reshape(-1)
    c = np.asarray(candidates, dtype=np.float64).reshape(-1, q.shape[0])
    if metric == "l2":
        return np.linalg.norm(c - q, axis=1)
    dots = c @ q
    if metric == "dot":
        return dots
    return dots / np.maximum(np.linalg.norm(c, axis=1) * np.linalg.norm(q), 1e-12)


def _sentence_list(inputs: Mapping, key: str) -> list[str]:
    value = inputs[key]
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, Sequence) or isinstance(value, (bytes, bytearray)):
        raise DistillError(f"{key!r} must be a list of strings, got a {type(value).__name__}: {value!r:.80}")
    value = list(value)
    if not value:
        raise DistillError(f"{key!r} is an empty list: give at least one sentence")
    for i, s in enumerate(value):
        if not isinstance(s, str):
            raise DistillError(f"{key!r} item {i} is a {type(s).__name__}, not a string: {s!r:.80}")
    return value


def parse_inputs(inputs) -> tuple[list[str], list[str] | None]:
    """(source sentences, candidates or None) from the model-card input mapping, checked.

    A bare string is taken as a one-sentence list; an unknown key is an error (a misspelt
    "sentences_to_compare" would otherwise be silently ignored); `"sentences_to_compare": None`
    is the same as leaving it out.
    """
    if not isinstance(inputs, Mapping):
        raise DistillError(
            f"pipeline input must be a mapping like {{{SOURCE_KEY!r}: [...], {COMPARE_KEY!r}: [...]}}, "
            f"got a {type(inputs).__name__}"
        )
    unknown = [k for k in inputs if k not in (SOURCE_KEY, COMPARE_KEY)]
    if unknown:
        raise DistillError(f"unknown input key(s) {', '.join(map(repr, unknown))} (known: {SOURCE_KEY!r}, {COMPARE_KEY!r})")
    if SOURCE_KEY not in inputs or inputs[SOURCE_KEY] is None:
        raise DistillError(f"pipeline input has no {SOURCE_KEY!r}: give a list of at least one sentence")
    source = _sentence_list(inputs, SOURCE_KEY)
    compare = _sentence_list(inputs, COMPARE_KEY) if inputs.get(COMPARE_KEY) is not None else None
    return source, compare


class SimilarityPipeline:
    """Callable returned by `pipeline()`; see the module docstring for the input and output."""

    def __init__(self, model, metric: str = "cosine", batch_size: int = 128, progress: bool = False, device=None, *,
                 backend: str = "torch", onnx_file=None, quantized: bool = False, dims: int | None = None):
        self.metric = normalize_metric(metric)
        self.model = model
        self._embed = embedder(model, batch_size=batch_size, progress=progress, device=device,
                               backend=backend, onnx_file=onnx_file, quantized=quantized, dims=dims)
        from distill.st_format import is_router_folder

        # a query encoder's folder (`distill export --asymmetric`): the source is a query, the candidates documents
        self.routed = isinstance(model, (str, Path)) and is_router_folder(model)

    def _as_role(self, role: str, sentences: list[str]) -> np.ndarray:
        return np.asarray(self._embed(sentences, role=role), dtype=np.float32)

    def __call__(self, input: Mapping, metric: str | None = None) -> dict:
        """`{"source_sentence": [...], "sentences_to_compare": [...]}` -> text_embedding and scores.

        Result keys: "text_embedding" (float32 array, one row per sentence used: the first source
        sentence then the candidates, or all source sentences), "scores" (list of floats, one per
        candidate or per further source sentence), "metric", "higher_is_closer" (False for l2:
        the scores are distances), and, when further source sentences were ignored,
        "ignored_source_sentences" (their number) and "note".
        """
        metric = self.metric if metric is None else normalize_metric(metric)
        source, compare = parse_inputs(input)
        ignored = 0
        if compare is not None:
            ignored = len(source) - 1
            sentences = [source[0], *compare]
        else:
            sentences = source
        if self.routed and compare is not None:
            emb = np.concatenate([self._as_role("query", sentences[:1]), self._as_role("document", sentences[1:])])
        else:
            emb = np.asarray(self._embed(sentences), dtype=np.float32)
        if emb.ndim != 2 or emb.shape[0] != len(sentences):
            raise DistillError(f"the model returned an array of shape {emb.shape} for {len(sentences)} sentences")
        scores = similarity(emb[0], emb[1:], metric) if len(sentences) > 1 else np.zeros(0)
        out = {
            "text_embedding": emb,
            "scores": [float(s) for s in scores],
            "metric": metric,
            "higher_is_closer": metric != "l2",
        }
        if ignored:
            note = (
                f"{ignored} further source sentence(s) ignored: with {COMPARE_KEY!r}, only the first "
                f"source sentence is compared (as the model cards do); call once per source sentence"
            )
            warnings.warn(note, UserWarning, stacklevel=2)
            out["ignored_source_sentences"] = ignored
            out["note"] = note
        return out

    def __repr__(self) -> str:
        return f"SimilarityPipeline(model={getattr(self.model, 'source', self.model)!r}, metric={self.metric!r})"


def pipeline(model, metric: str = "cosine", *, batch_size: int = 128, progress: bool = False, device=None,
             backend: str = "torch", onnx_file=None, quantized: bool = False, dims: int | None = None) -> SimilarityPipeline:
    """A sentence-similarity pipeline over `model` (name / folder / preset, Encoder, SentenceTransformer).

    `backend="onnx"`: onnxruntime on CPU over the folder's onnx/model.onnx (`quantized=True`:
    onnx/model_qint8.onnx; `onnx_file`: another file), written by `distill export-onnx`; no torch.

    `metric`: "cosine" (default), "dot" (inner product of the model's own embeddings: equal to
    cosine for models that normalize) or "l2" (Euclidean distance: smaller is closer; the result
    says so with "higher_is_closer": False). It can also be given per call.

    `dims=N`: serve the model at N dimensions, the first N of each vector then L2-normalized (a
    Matryoshka-trained student; `distill.embedding.truncate`); default: a named folder's
    truncate_dim, else the full vector. "text_embedding" then has N columns.
    """
    return SimilarityPipeline(model, metric=metric, batch_size=batch_size, progress=progress, device=device,
                              backend=backend, onnx_file=onnx_file, quantized=quantized, dims=dims)


def rank(scores: Sequence[float], metric: str = "cosine") -> list[int]:
    """Candidate positions from closest to farthest (ties keep input order)."""
    keys = np.asarray(scores, dtype=np.float64)
    return [int(i) for i in np.argsort(-keys if higher_is_closer(metric) else keys, kind="stable")]
