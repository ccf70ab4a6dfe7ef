"""Ranking metrics per query (MRR@k, Recall@k, nDCG@k) and their mean over judged queries; the
definitions are in the package docstring.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from distill.errors import DistillError

DEFAULT_K = (10, 100, 1000)
MRR_CUTOFF = 10
NDCG_CUTOFF = 10


def _relevant(judged: Mapping[str, int]) -> set[str]:
    return {d for d, g in judged.items() if g > 0}


def mrr_at_k(ranking: Sequence[str], judged: Mapping[str, int], k: int = MRR_CUTOFF) -> float:
    """1 / rank of the first relevant doc (grade > 0) in the top k, else 0."""
    for r, doc in enumerate(ranking[:k], 1):
        if judged.get(doc, 0) > 0:
            return 1.0 / r
    return 0.0


def recall_at_k(ranking: Sequence[str], judged: Mapping[str, int], k: int) -> float:
    """Fraction of the relevant docs (grade > 0) in the top k; 0 when there is none to find."""
    relevant = _relevant(judged)
    if not relevant:
        return 0.0
    return len(relevant.intersection(ranking[:k])) / len(relevant)


def ndcg_at_k(ranking: Sequence[str], judged: Mapping[str, int], k: int = NDCG_CUTOFF) -> float:
    """DCG@k / IDCG@k, gain = grade (linear, negative grades as 0), discount log2(rank + 1)."""
    dcg = sum(max(judged.get(doc, 0), 0) / math.log2(r + 1) for r, doc in enumerate(ranking[:k], 1))
    ideal = sorted((max(g, 0) for g in judged.values()), reverse=True)[:k]
    idcg = sum(g / math.log2(r + 1) for r, g in enumerate(ideal, 1))
    return dcg / idcg if idcg > 0 else 0.0


def compute_metrics(
    run: Mapping[str, Sequence[str]], qrels: Mapping[str, Mapping[str, int]], k: Sequence[int] = DEFAULT_K
) -> dict[str, float]:
    """MRR@10, nDCG@10 and Recall@k averaged over the qrels' queries with a relevant doc.

    `run`: query id -> doc ids ranked best first (a query missing from it counts as an empty
    ranking). Returns {"MRR@10", "nDCG@10", "Recall@<k>" for each k, "queries": how many were
    averaged}.
    """
    ks = check_k(k)
    evaluated = [q for q, judged in qrels.items() if _relevant(judged)]
    out: dict[str, float] = {f"MRR@{MRR_CUTOFF}": 0.0, f"nDCG@{NDCG_CUTOFF}": 0.0, **{f"Recall@{c}": 0.0 for c in ks}}
    for q in evaluated:
        ranking = list(run.get(q, ()))
        judged = qrels[q]
        out[f"MRR@{MRR_CUTOFF}"] += mrr_at_k(ranking, judged, MRR_CUTOFF)
        out[f"nDCG@{NDCG_CUTOFF}"] += ndcg_at_k(ranking, judged, NDCG_CUTOFF)
        for c in ks:
            out[f"Recall@{c}"] += recall_at_k(ranking, judged, c)
    n = len(evaluated)
    out = {key: (value / n if n else 0.0) for key, value in out.items()}
    out["queries"] = n
    return out


def check_k(k) -> list[int]:
    if isinstance(k, int):
        k = [k]
    ks = sorted({int(c) for c in k})
    if not ks or ks[0] < 1:
        raise DistillError(f"k must be positive cutoffs, got {list(k)!r}")
    return ks


# The metrics a recipe may select on (eval.retrieval.metric), as written there (any case).
SELECTABLE = ("ndcg@10", "mrr@10", "recall@K")


def metric_key(name: str) -> tuple[str, int | None]:
    """A metric name as a recipe writes it (any case: "ndcg@10", "MRR@10", "recall@100") -> the key
    `compute_metrics` returns ("nDCG@10", "MRR@10", "Recall@100") and the Recall cutoff it needs
    (None for the others). Unknown names are a DistillError listing SELECTABLE."""
    text = str(name).strip().lower()
    if text == f"ndcg@{NDCG_CUTOFF}":
        return f"nDCG@{NDCG_CUTOFF}", None
    if text == f"mrr@{MRR_CUTOFF}":
        return f"MRR@{MRR_CUTOFF}", None
    head, _, cut = text.partition("@")
    if head == "recall" and cut.isdigit() and int(cut) >= 1:
        return f"Recall@{int(cut)}", int(cut)
    raise DistillError(f"unknown retrieval metric {name!r} (known: {', '.join(SELECTABLE)}, K a positive number)")


def parse_k(text: str) -> list[int]:
    """"10,100,1000" (or spaces) -> [10, 100, 1000]."""
    parts = [p for p in str(text).replace(",", " ").split() if p]
    try:
        ks = [int(p) for p in parts]
    except ValueError:
        raise DistillError(f"--k {text!r}: expected comma-separated positive integers, e.g. 10,100,1000") from None
    if not ks or min(ks) < 1:
        raise DistillError(f"--k {text!r}: expected comma-separated positive integers, e.g. 10,100,1000")
    return sorted(set(ks))


# ---------------------------------------------------------------------------------------------
# Exact search with a running top-k
