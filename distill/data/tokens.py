"""The cache's sentences tokenized once, stored next to the cache.

Tokenizing on the fly is what holds the generic sentence-transformers trainer to ~2,000
sentences/s on an H100, so the student's tokenizer runs once over the corpus (fast tokenizer,
batched) and the ids are stored next to the teacher cache as a flat int32 array + offsets:
CACHE/tokens/<tokenizer fingerprint>/ids.npy (int32) and offsets.npy (int64, N + 1), written
chunk by chunk as the tokenizer goes (memory does not grow with the corpus) and opened
memory-mapped; a batch reads only its rows' ids. The offsets are written last: a pair whose
offsets are missing or do not match the ids is recomputed. (The ids were one .npz file before
2026-12; such a file is ignored and the ids made again: they are derived data.)
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from distill.data.npy_append import NpyAppender
from distill.data.padding import pad_slices

CHUNK = 8192  # sentences per tokenizer call
IDS, OFFSETS = "ids.npy", "offsets.npy"


@dataclass
class TokenizedCorpus:
    ids: np.ndarray  # int32, all sentences' token ids back to back (a read-only memory map when stored)
    offsets: np.ndarray  # int64, N + 1
    pad_id: int
    path: Path | None = None  # the folder holding ids.npy and offsets.npy; None: in memory

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def collate(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask) for these rows, right-padded to the longest (distill.data.padding)."""
        ids, mask = pad_slices(self.ids, self.offsets, rows, self.pad_id)
        return torch.from_numpy(ids), torch.from_numpy(mask)


def tokenizer_fingerprint(tokenizer, max_length: int) -> str:
    """A name for the token ids `tokenize_corpus` makes: the same for every tokenizer that makes
    the same ids, whatever state it is in.

    Hashed: the fast tokenizer's definition (tokenizer.json: normalizer, pre-tokenizer, model and
    vocabulary, post-processor, added tokens) or a slow one's vocabulary; `max_length`; the
    truncation side; the pad id stored with the ids. Not hashed: the backend's current
    truncation and padding settings, which the transformers wrapper rewrites at every call
    (`tokenize_corpus` passes its own), so they named one tokenizer differently before and after
    any call that truncates or pads.
    """
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        definition = json.loads(backend.to_str())
        definition.pop("truncation", None)
        definition.pop("padding", None)
        h.update(json.dumps(definition, sort_keys=True).encode())
    else:
        h.update(repr(sorted(tokenizer.get_vocab().items())).encode())
    h.update(f"|{max_length}|{getattr(tokenizer, 'truncation_side', 'right')}|{tokenizer.pad_token_id}".encode())
    return h.hexdigest()[:16]


def tokenize_corpus(tokenizer, sentences: Sequence[str], max_length: int, cache_dir: Path | None = None,
                    progress: bool = True) -> TokenizedCorpus:
    """Tokenize once (truncating to max_length); reuse the stored result when the tokenizer matches.

    `sentences`: anything sliceable with len() (a list, a `SentenceStore`), read CHUNK rows at a
    time. With `cache_dir` the ids go to CACHE_DIR/tokens/<fingerprint>/ as they are made and come
    back memory-mapped; without it they are kept in memory (small inputs: tests, a few thousand rows).
    """
    pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    n = len(sentences)
    chunks = _token_chunks(tokenizer, sentences, max_length, progress)
    if cache_dir is None:
        ids, lengths = zip(*chunks) if n else ((), ())
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.concatenate(lengths) if n else [], out=offsets[1:])
        return TokenizedCorpus(np.concatenate(ids) if n else np.zeros(0, dtype=np.int32), offsets, pad_id)
    folder = Path(cache_dir) / "tokens" / tokenizer_fingerprint(tokenizer, max_length)
    stored = open_tokens(folder, n, pad_id)
    if stored is not None:
        return stored
    folder.mkdir(parents=True, exist_ok=True)
    (folder / OFFSETS).unlink(missing_ok=True)  # written last again: until then the folder is incomplete
    ids_out, offsets_out = NpyAppender(folder / IDS, np.int32), NpyAppender(folder / OFFSETS, np.int64)
    try:
        offsets_out.append([0])
        end = 0
        for ids, lengths in chunks:
            ids_out.append(ids)
            ends = np.cumsum(lengths) + end
            offsets_out.append(ends)
            end = int(ends[-1]) if len(ends) else end
        ids_out.close()
        offsets_out.close()
    except BaseException:
        ids_out.abort()
        offsets_out.abort()
        raise
    stored = open_tokens(folder, n, pad_id)
    if stored is None:
        raise RuntimeError(f"{folder}: the token ids just written do not read back")  # a bug, not bad input
    return stored


def _token_chunks(tokenizer, sentences: Sequence[str], max_length: int, progress: bool) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ids int32, lengths int64) of CHUNK sentences at a time, in order."""
    for start in tqdm(range(0, len(sentences), CHUNK), desc="tokenize", unit="chunk", disable=not progress, leave=False):
        enc = tokenizer(list(sentences[start : start + CHUNK]), truncation=True, max_length=max_length, padding=False)["input_ids"]
        lengths = np.fromiter(map(len, enc), dtype=np.int64, count=len(enc))
        yield np.fromiter(itertools.chain.from_iterable(enc), dtype=np.int32, count=int(lengths.sum())), lengths


def open_tokens(folder: Path, count: int, pad_id: int) -> TokenizedCorpus | None:
    """The stored ids of `count` sentences in `folder`, memory-mapped; None when missing, damaged or of another corpus size."""
    try:
        offsets = np.load(folder / OFFSETS, mmap_mode="r")
        ids = np.load(folder / IDS, mmap_mode="r")
    except (ValueError, OSError, EOFError):
        return None  # a damaged or half-written copy of what we can recompute: made again
    if offsets.shape != (count + 1,) or ids.ndim != 1 or ids.dtype != np.int32 or int(offsets[0]) != 0 or int(offsets[-1]) != len(ids):
        return None
    return TokenizedCorpus(ids, offsets, pad_id, folder)
