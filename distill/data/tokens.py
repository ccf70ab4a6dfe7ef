"""The cache's sentences tokenized once, stored next to the cache.

Tokenizing on the fly is what holds the generic sentence-transformers trainer to ~2,000
sentences/s on an H100, so the student's tokenizer runs once over the corpus (fast tokenizer,
batched) and the ids are stored next to the teacher cache as a flat int32 array + offsets.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from distill.data.padding import pad_slices
from distill.io import atomic_path


@dataclass
class TokenizedCorpus:
    ids: np.ndarray  # int32, all sentences' token ids back to back
    offsets: np.ndarray  # int64, N + 1
    pad_id: int

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


def tokenize_corpus(tokenizer, sentences: list[str], max_length: int, cache_dir: Path | None = None, progress: bool = True) -> TokenizedCorpus:
    """Tokenize once (truncating to max_length); reuse the stored result when the tokenizer matches."""
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / "tokens" / f"{tokenizer_fingerprint(tokenizer, max_length)}.npz"
        if path.is_file():
            try:
                data = np.load(path)
                if len(data["offsets"]) - 1 == len(sentences):
                    return TokenizedCorpus(data["ids"], data["offsets"], int(data["pad_id"]))
            except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile):
                pass  # a damaged copy of what we can recompute: tokenized again and replaced below
    pieces, lengths = [], []
    chunk = 8192
    for start in tqdm(range(0, len(sentences), chunk), desc="tokenize", unit="chunk", disable=not progress, leave=False):
        enc = tokenizer(sentences[start : start + chunk], truncation=True, max_length=max_length, padding=False)["input_ids"]
        for ids in enc:
            pieces.append(np.asarray(ids, dtype=np.int32))
            lengths.append(len(ids))
    offsets = np.zeros(len(sentences) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int32)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = TokenizedCorpus(ids, offsets, int(pad_id))
    if path is not None:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, ids=ids, offsets=offsets, pad_id=np.int64(pad_id))
    return out
