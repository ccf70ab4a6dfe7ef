"""Exact (brute-force) search in chunks with a running top-k: the score matrix is never held whole.

Ties are broken by corpus order inside and across chunks (see the package docstring).
"""

from __future__ import annotations

import math

import numpy as np

from distill.errors import DistillError

# Passages per matrix product: the corpus block evaluate_retrieval embeds at once (ENCODE_BLOCK),
# so that a corpus of up to that size is one chunk. Memory does not grow with it: the scores held
# at once are bounded by _BLOCK_ELEMENTS (fewer queries per block for a larger chunk). Smaller
# chunks cost time on CPU, each one a top-k of its own (BENCHMARKS.md, "Exact retrieval search":
# 10,000 x 100,000, k 1000: 1.37x the full score matrix + torch.topk in chunks of 50,000, 1.07x
# in one).
DEFAULT_CHUNK_SIZE = 131_072
# Score-matrix elements per query block: bounds the scratch memory of one top-k merge (128 MiB).
_BLOCK_ELEMENTS = 1 << 25


def _best_k(scores, k: int, index=None, start: int = 0):
    """Best k entries per row of `scores`, ties to the lower corpus index: (scores, index, sorted).

    `index`: the corpus positions of the columns, or None for start, start + 1, ... (not built
    unless needed). Fast path: one sorted torch.topk of k + 1; when the k-th value is above the
    (k+1)-th in every row, its first k are exactly the best k, whatever topk did with ties, and
    come best first (sorted=True). Otherwise (equal scores straddle the cut: a duplicate passage at
    rank k, say) a masked selection in index order keeps everything above the k-th score and the
    lowest-index ties, in index order (sorted=False).
    """
    import torch

    rows, n = scores.shape
    if n <= k:
        return scores, (index if index is not None else torch.arange(start, start + n, device=scores.device).expand(rows, -1)), False
    vals, pos = torch.topk(scores, k + 1, dim=1, sorted=True)
    if bool((vals[:, k - 1] > vals[:, k]).all()):
        pos = pos[:, :k]
        return vals[:, :k], (torch.gather(index, 1, pos) if index is not None else pos + start), True
    if index is None:
        index = torch.arange(start, start + n, device=scores.device).expand(rows, -1)
    else:  # "earlier in the row" must mean "lower index" for the cumulative count of ties below
        order = torch.argsort(index, dim=1)
        scores, index = torch.gather(scores, 1, order), torch.gather(index, 1, order)
    kth = vals[:, k - 1 : k]
    above = scores > kth
    tied = scores == kth
    need = k - above.sum(1, keepdim=True)
    keep = above | (tied & (torch.cumsum(tied, 1, dtype=torch.int32) <= need))
    return scores[keep].view(rows, k), index[keep].view(rows, k), False


def _merge_topk(top_s, top_i, new_s, start: int, k: int):
    """Best k of (running top-k, new chunk) per row, ties to the lower corpus index: the chunk's
    own best k first (no copy of the chunk's scores), then the best k of the 2k candidates.
    `new_s`: the scores of passages start, start + 1, ... (every running index is below `start`).
    Returns (scores, index, sorted): sorted when they come best first.
    """
    import torch

    c_s, c_i, ordered = _best_k(new_s, k, start=start)
    if top_s.shape[1] == 0:
        return c_s, c_i, ordered
    return _best_k(torch.cat([top_s, c_s], 1), k, index=torch.cat([top_i, c_i], 1))


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
        self.ordered = True  # the running top-k comes best first (result() then needs no sort)
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
            d_sq = (d * d).sum(1) if self.metric == "l2" else None
            parts_s, parts_i, ordered = [], [], True
            for q0 in range(0, self.queries.shape[0], self.query_block):
                q = self.queries[q0 : q0 + self.query_block]
                s = q @ d.T
                if self.metric == "l2":  # minus squared distance, up to the per-query |q|^2
                    s = 2 * s - d_sq
                s = s.nan_to_num_(nan=-math.inf)
                top_s, top_i, block_sorted = _merge_topk(self.scores[q0 : q0 + self.query_block], self.index[q0 : q0 + self.query_block], s, self.seen, self.k)
                parts_s.append(top_s)
                parts_i.append(top_i)
                ordered = ordered and block_sorted
            self.scores, self.index = (parts_s[0], parts_i[0]) if len(parts_s) == 1 else (torch.cat(parts_s), torch.cat(parts_i))
            self.seen += d.shape[0]
            self.ordered = ordered

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(scores, corpus positions), each (queries, min(k, passages seen)), best first."""
        import torch

        if self.ordered:
            scores, index = self.scores.clone(), self.index.clone()
        else:
            scores, order = torch.sort(self.scores, dim=1, descending=True)
            index = torch.gather(self.index, 1, order)
        tied = (scores[:, 1:] == scores[:, :-1]).any(1).nonzero().flatten()
        if len(tied):  # rows with equal scores: corpus order among them (by index, then a stable sort)
            by_index = torch.argsort(index[tied], dim=1)
            t_s, t_i = torch.gather(scores[tied], 1, by_index), torch.gather(index[tied], 1, by_index)
            order = torch.sort(t_s, dim=1, descending=True, stable=True).indices
            scores[tied], index[tied] = torch.gather(t_s, 1, order), torch.gather(t_i, 1, order)
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
