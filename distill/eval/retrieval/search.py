"""Exact (brute-force) search in chunks with a running top-k: the score matrix is never held whole.

Ties are broken by corpus order inside and across chunks (see the package docstring).
"""

from __future__ import annotations

import math

import numpy as np

from distill.errors import DistillError

DEFAULT_CHUNK_SIZE = 50_000
# Score-matrix elements per query block: bounds the scratch memory of one top-k merge.
_BLOCK_ELEMENTS = 1 << 25


def _merge_topk(top_s, top_i, new_s, new_i, k: int):
    """Best k of (running top-k, new chunk) per row, ties to the lower index.

    Invariant: each row's entries are in increasing index order, and every running index is below
    every new one; the result keeps that order (it is a masked selection, not a sort).
    """
    import torch

    scores = torch.cat([top_s, new_s], 1)
    index = torch.cat([top_i, new_i.expand(new_s.shape[0], -1)], 1)
    if scores.shape[1] <= k:
        return scores, index
    kth = torch.topk(scores, k, dim=1, sorted=True).values[:, -1:]
    above = scores > kth
    tied = scores == kth
    need = k - above.sum(1, keepdim=True)
    keep = above | (tied & (torch.cumsum(tied, 1, dtype=torch.int32) <= need))
    rows = scores.shape[0]
    return scores[keep].view(rows, k), index[keep].view(rows, k)


class TopK:
    """Running top-k over a corpus fed in chunks (in corpus order), for all queries at once.

    Scores are "higher is closer" similarities (for l2: minus the squared distance); `result()`
    converts them back to the metric's values.
    """

    def __init__(self, queries, k: int, metric: str = "cosine", chunk_size: int = DEFAULT_CHUNK_SIZE, device=None):
        import torch

        from distill.eval.similarity import normalize_metric

        if chunk_size < 1:
            raise DistillError(f"chunk_size must be at least 1, got {chunk_size}")
        self.metric = normalize_metric(metric)
        self.k = int(k)
        self.chunk_size = int(chunk_size)
        self.device = torch.device(device) if device is not None else _default_device()
        q = torch.as_tensor(np.asarray(queries, dtype=np.float32)).to(self.device)
        if q.ndim != 2:
            raise DistillError(f"query embeddings must be 2-d, got shape {tuple(q.shape)}")
        self.queries = self._prepare(q)
        n = q.shape[0]
        self.scores = torch.empty(n, 0, device=self.device)
        self.index = torch.empty(n, 0, dtype=torch.long, device=self.device)
        self.seen = 0
        self.query_block = max(1, _BLOCK_ELEMENTS // (self.k + self.chunk_size))

    def _prepare(self, x):
        import torch

        return torch.nn.functional.normalize(x, dim=1) if self.metric == "cosine" else x

    def add(self, docs) -> None:
        """Score the next passages (rows of `docs`, continuing the corpus order) and merge."""
        import torch

        d_all = torch.as_tensor(np.asarray(docs, dtype=np.float32) if not isinstance(docs, torch.Tensor) else docs)
        if d_all.ndim != 2 or d_all.shape[1] != self.queries.shape[1]:
            raise DistillError(f"passage embeddings of shape {tuple(d_all.shape)} do not match queries of dim {self.queries.shape[1]}")
        for start in range(0, d_all.shape[0], self.chunk_size):
            d = self._prepare(d_all[start : start + self.chunk_size].to(self.device, torch.float32))
            ids = torch.arange(self.seen, self.seen + d.shape[0], device=self.device).unsqueeze(0)
            d_sq = (d * d).sum(1) if self.metric == "l2" else None
            parts_s, parts_i = [], []
            for q0 in range(0, self.queries.shape[0], self.query_block):
                q = self.queries[q0 : q0 + self.query_block]
                s = q @ d.T
                if self.metric == "l2":  # minus squared distance, up to the per-query |q|^2
                    s = 2 * s - d_sq
                s = torch.nan_to_num(s, nan=-math.inf)
                top_s, top_i = _merge_topk(self.scores[q0 : q0 + self.query_block], self.index[q0 : q0 + self.query_block], s, ids, self.k)
                parts_s.append(top_s)
                parts_i.append(top_i)
            self.scores, self.index = torch.cat(parts_s), torch.cat(parts_i)
            self.seen += d.shape[0]

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(scores, corpus positions), each (queries, min(k, passages seen)), best first."""
        import torch

        order = torch.sort(self.scores, dim=1, descending=True, stable=True).indices
        scores = torch.gather(self.scores, 1, order)
        index = torch.gather(self.index, 1, order)
        if self.metric == "l2":
            q_sq = (self.queries * self.queries).sum(1, keepdim=True)
            scores = torch.sqrt(torch.clamp(q_sq - scores, min=0))
        return scores.cpu().numpy().astype(np.float32), index.cpu().numpy()


def _default_device():
    import torch

    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def exact_search(
    query_emb, doc_emb, k: int, *, metric: str = "cosine", chunk_size: int = DEFAULT_CHUNK_SIZE, device=None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k passages per query by exhaustive search over embeddings, in chunks of `chunk_size`.

    Returns (scores, indices), both (queries, min(k, passages)), closest first: cosine or dot
    similarities (descending), or l2 distances (ascending). Equal scores rank the lower passage
    index first, whatever the chunk size (see the module docstring on float rounding).
    """
    top = TopK(query_emb, k, metric=metric, chunk_size=chunk_size, device=device)
    top.add(doc_emb)
    return top.result()


# ---------------------------------------------------------------------------------------------
# End to end
