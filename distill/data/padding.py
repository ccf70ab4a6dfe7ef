"""Token ids -> right-padded (input_ids, attention_mask) int64 numpy arrays: the one tokenize / pad /
length-sort routine of the package.

Its three users: `Encoder.encode` (turns the arrays into torch tensors and runs the model),
`OnnxEncoder.encode` (feeds them to onnxruntime) and the training collate
`TokenizedCorpus.collate` (pads rows of the pre-tokenized corpus). Not to be confused with
`distill.data.batches`, which decides WHICH corpus rows form each training batch of an epoch;
this module decides nothing about training batches: it pads whatever rows it is given, and for
inference it tokenizes raw sentences in length order and cuts them into batches.

Inference batching (`token_batches`), built so the host keeps a small model's GPU busy
(tokenization, not the GPU, sets the pace of `SentenceTransformer.encode` for a 3-layer MiniLM):
sentences are ordered by character length, then tokenized in large chunks with one call of the
Rust tokenizer (`encode_batch`, parallel, releases the GIL); each chunk is re-sorted by exact
token length, so batches carry almost no padding. With a token budget (on GPU) a batch holds as
many rows as fit `budget` tokens: short sentences go in bigger batches, never more memory than
one full-length batch. `Prefetch` runs the batching in a background thread while the model runs.
A slow (Python) tokenizer works too, only slower.

Imports no torch: the onnx backend runs with only onnxruntime, tokenizers and numpy.
"""

from __future__ import annotations

import copy
import itertools
import queue
import threading
import weakref

import numpy as np

from distill.errors import DistillError

# Sentences per tokenizer call: the first chunk is small so the model starts early, later ones
# big so the Rust tokenizer's threads have enough to share. Read at call time (tests shrink them).
FIRST_CHUNK = 4096
CHUNK = 32768
MAX_ROWS_FACTOR = 16  # a token-budget batch holds at most this many times batch_size rows


def check_sentences(sentences: list, batch_size: int) -> None:
    """The checks every encode path makes before it tokenizes anything."""
    for i, s in enumerate(sentences):
        if not isinstance(s, str):
            raise DistillError(f"sentence {i} is a {type(s).__name__}, not a string: {s!r:.80}")
    if batch_size < 1:
        raise DistillError(f"batch_size must be at least 1, got {batch_size}")


def pad_rows(flat: np.ndarray, lengths: np.ndarray, pad_id: int, min_width: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rows given back to back (`flat`, row i `lengths[i]` long) -> right-padded (input_ids,
    attention_mask), both int64, as wide as the longest row (at least `min_width`)."""
    width = max(int(lengths.max()) if len(lengths) else 0, min_width)
    mask = np.arange(width) < lengths[:, None]
    input_ids = np.full(mask.shape, pad_id, dtype=np.int64)
    input_ids[mask] = flat  # row-major: row 0's ids, then row 1's, ...
    return input_ids, mask.astype(np.int64)


def pad_slices(ids: np.ndarray, offsets: np.ndarray, rows: np.ndarray, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """`pad_rows` for rows of a flat store (row r is ids[offsets[r]:offsets[r + 1]]), gathered
    with one index array instead of a Python loop per row."""
    starts = offsets[rows]
    lengths = offsets[rows + 1] - starts
    # Position k of the gathered ids lies in output row j: ids index = starts[j] + (k - first k of row j).
    shift = starts - (np.cumsum(lengths) - lengths)
    gather = np.arange(int(lengths.sum())) + np.repeat(shift, lengths)
    return pad_rows(ids[gather], lengths, pad_id)


_COPIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> {max_length: private copy}


def rust_tokenizer(tokenizer, max_length: int):
    """A private copy of a fast tokenizer's Rust backend, truncating to max_length, not padding.

    `tokenizer`: a transformers tokenizer (its backend is copied; its truncation side and
    split_special_tokens carry over) or a `tokenizers.Tokenizer` (truncates on the right).
    A copy, because the transformers wrapper re-sets truncation/padding on its backend at every
    call: sharing it with a background thread would race. None for a slow tokenizer.
    """
    from tokenizers import Tokenizer

    if isinstance(tokenizer, Tokenizer):
        backend, side, split_special = tokenizer, "right", False
    elif getattr(tokenizer, "is_fast", False) and getattr(tokenizer, "backend_tokenizer", None) is not None:
        backend = tokenizer.backend_tokenizer
        side = getattr(tokenizer, "truncation_side", "right")
        split_special = bool(getattr(tokenizer, "split_special_tokens", False))
    else:
        return None
    try:
        by_length = _COPIES.setdefault(tokenizer, {})
    except TypeError:  # not weak-referenceable / hashable: no cache
        by_length = {}
    if max_length not in by_length:
        rust = copy.deepcopy(backend)
        rust.no_padding()
        rust.enable_truncation(max_length, direction=side)
        rust.encode_special_tokens = split_special
        by_length[max_length] = rust
    return by_length[max_length]


def plan_batches(lengths_desc: np.ndarray, batch_size: int, token_budget: int = 0) -> list[tuple[int, int]]:
    """[lo, hi) row ranges over token lengths sorted longest first.

    token_budget 0: batch_size rows each. Otherwise each batch takes as many rows as fit the
    budget at its first (longest) row's length, at least batch_size, at most
    MAX_ROWS_FACTOR * batch_size.
    """
    n = len(lengths_desc)
    if token_budget <= 0:
        return [(lo, min(lo + batch_size, n)) for lo in range(0, n, batch_size)]
    out, lo = [], 0
    while lo < n:
        rows = token_budget // max(int(lengths_desc[lo]), 1)
        rows = min(max(rows, batch_size), MAX_ROWS_FACTOR * batch_size)
        out.append((lo, min(lo + rows, n)))
        lo += rows
    return out


def token_batches(tokenizer, sentences: list[str], max_length: int, batch_size: int, *, pad_id: int | None = None,
                  token_budget: int = 0, first_chunk: int | None = None, chunk: int | None = None):
    """Yield (input positions, input_ids, attention_mask), right-padded, longest batches first.

    `tokenizer`: a transformers tokenizer (fast or slow) or a `tokenizers.Tokenizer`. `pad_id`:
    default the tokenizer's pad token id, else 0. `token_budget` 0: `batch_size` rows per batch
    (see `plan_batches`). `first_chunk` / `chunk`: sentences per tokenizer call (default
    FIRST_CHUNK, then CHUNK). A batch of empty rows is one column wide, all padding.
    """
    n = len(sentences)
    if pad_id is None:
        pad_id = getattr(tokenizer, "pad_token_id", None)
        pad_id = 0 if pad_id is None else pad_id
    first_chunk, chunk = first_chunk or FIRST_CHUNK, chunk or CHUNK
    order = np.argsort(-np.fromiter(map(len, sentences), dtype=np.int64, count=n), kind="stable")
    rust = rust_tokenizer(tokenizer, max_length)
    start, size = 0, first_chunk
    while start < n:
        part = order[start : start + size]
        start, size = start + len(part), chunk
        texts = [sentences[i] for i in part]
        if rust is not None:
            ids = [e.ids for e in rust.encode_batch(texts)]
        else:
            ids = tokenizer(texts, truncation=True, max_length=max_length, padding=False)["input_ids"]
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        by_len = np.argsort(-lengths, kind="stable")
        for lo, hi in plan_batches(lengths[by_len], batch_size, token_budget):
            rows = by_len[lo:hi]
            lens = lengths[rows]
            flat = np.fromiter(itertools.chain.from_iterable(ids[r] for r in rows), dtype=np.int64, count=int(lens.sum()))
            yield (part[rows], *pad_rows(flat, lens, pad_id, min_width=1))


class Prefetch:
    """Run an iterator in a daemon thread, up to `depth` items ahead; its exceptions re-raise here."""

    _DONE = object()

    def __init__(self, iterator, depth: int):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(iterator,), daemon=True, name="distill-tokenize")
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, iterator) -> None:
        try:
            for item in iterator:
                if not self._put(item):
                    return
            self._put(self._DONE)
        except BaseException as exc:  # noqa: BLE001 (handed to the consumer thread, raised there)
            self._put(_Failure(exc))

    def __iter__(self):
        while True:
            item = self._queue.get()
            if item is self._DONE:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc
