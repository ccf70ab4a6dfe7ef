"""Our retrieval metrics against an independent implementation, pytrec_eval (trec_eval's code),
on real rankings: a real model's exact search over a small real SciFact set, binary and graded
judgments, and runs with exact score ties.

pytrec_eval ranks a run by score, ties by doc id in descending order (trec_eval's rule), and its
recip_rank is not cut at 10: it gets our top-10 for MRR@10. Where our ranking is not in question
(binary and graded cases) it gets rank-derived scores, so that it sees exactly our order; in the
ties case it gets the raw (tied) scores, with doc ids that descend in corpus order, so that its
tie rule and ours (corpus order) must give the same ranking.
"""

import numpy as np
import pytest
from conftest import scifact_subset

from distill.encoder import Encoder
from distill.eval.retrieval import compute_metrics, evaluate_retrieval, exact_search

pytrec_eval = pytest.importorskip("pytrec_eval")  # test extra: pytrec-eval-terrier

K = (10, 100)


def _pytrec(qrels, run_scores: dict[str, dict[str, float]], top10: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per query: nDCG@10, MRR@10 (recip_rank of the top 10), Recall@10, Recall@100."""
    full = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut_10", "recall_10", "recall_100"}).evaluate(run_scores)
    cut = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top10)
    return {q: {"nDCG@10": m["ndcg_cut_10"], "MRR@10": cut[q]["recip_rank"], "Recall@10": m["recall_10"],
                "Recall@100": m["recall_100"]} for q, m in full.items()}


def _by_rank(run: dict[str, list[str]], cut: int | None = None) -> dict[str, dict[str, float]]:
    """A ranking as pytrec_eval scores that keep its order exactly (distinct, decreasing)."""
    return {q: {d: float(len(docs) - r) for r, d in enumerate(docs[:cut])} for q, docs in run.items()}


def _ours_per_query(run, qrels) -> dict[str, dict[str, float]]:
    return {q: {k: v for k, v in compute_metrics({q: run[q]}, {q: qrels[q]}, K).items() if k != "queries"} for q in qrels}


def _assert_same(ours_mean: dict, ours_per_query: dict, theirs: dict) -> None:
    assert set(theirs) == set(ours_per_query)
    for q, metrics in theirs.items():
        for m, v in metrics.items():
            assert ours_per_query[q][m] == pytest.approx(v, abs=1e-6), (q, m)
    for m in ("nDCG@10", "MRR@10", "Recall@10", "Recall@100"):
        assert ours_mean[m] == pytest.approx(np.mean([t[m] for t in theirs.values()]), abs=1e-6), m


class Recording:
    """all-MiniLM-L6-v2 cut to 32 tokens (for speed) as evaluate_retrieval's model, keeping what it
    embedded (text -> row) for the ties case."""

    def __init__(self, path):
        self.enc = Encoder.load(str(path), device="cpu")
        self.seen: dict[str, np.ndarray] = {}

    def __call__(self, sentences):
        emb = self.enc.encode(sentences, max_length=32, progress=False)
        self.seen.update(zip(sentences, emb))
        return emb


@pytest.fixture(scope="module")
def real_run(scifact_dir, minilm_path):
    """A real model's exact search of 60 SciFact test claims over their relevant abstracts and 200
    others: our metrics, its ranking (top 100) and the embeddings."""
    queries, corpus, qrels = scifact_subset(scifact_dir, "test", 60, 200)
    model = Recording(minilm_path)
    results = evaluate_retrieval(model, queries, corpus, qrels, k=K, return_run=True)
    assert results["queries"] == 60 and results["corpus"] == len(corpus) > 200
    return queries, corpus, qrels, results, model.seen


def test_binary_judgments_match_pytrec_eval(real_run):
    _, _, qrels, results, _ = real_run
    run = results["run"]
    assert 0.3 < results["nDCG@10"] < 1.0  # a real ranking: hits and misses both
    theirs = _pytrec(qrels, _by_rank(run), _by_rank(run, 10))
    _assert_same(results, _ours_per_query(run, qrels), theirs)


def test_graded_judgments_match_pytrec_eval(real_run):
    """The same real ranking judged in grades: the relevant abstract 3, the run's 2nd and 5th
    passages 1 and 2 where not relevant, its 1st judged 0 (non-relevant, but judged)."""
    _, _, qrels, results, _ = real_run
    run = results["run"]
    graded = {}
    for q, judged in qrels.items():
        g = {d: 3 for d in judged}
        for rank, grade in ((1, 1), (4, 2), (0, 0)):
            g.setdefault(run[q][rank], grade)
        graded[q] = g
    assert any(set(g.values()) >= {0, 1, 2, 3} for g in graded.values())
    ours = compute_metrics(run, graded, K)
    theirs = _pytrec(graded, _by_rank(run), _by_rank(run, 10))
    _assert_same(ours, _ours_per_query(run, graded), theirs)


@pytest.mark.parametrize("chunk_size", [37, 100_000])
def test_tied_scores_rank_as_trec_eval_ranks_them(real_run, chunk_size):
    """Exact ties, from real embeddings: the real run's passage and query embeddings times 2, rounded
    to a grid of 1/4 (dot products of such vectors are exact in float32: no rounding decides a tie), with every
    5th passage's embedding repeated under another id. Doc ids descend in corpus order, so
    trec_eval's tie rule (descending doc id) is our corpus order; pytrec_eval gets the raw scores."""
    queries, corpus, qrels, _, seen = real_run
    qids, texts = list(qrels), list(corpus.values())
    old_ids = list(corpus)
    q_emb = np.round(np.stack([seen[queries[q]] for q in qids]) * 8) / 4
    d_emb = np.round(np.stack([seen[t] for t in texts]) * 8) / 4
    rows = [i for i in range(len(texts)) for _ in range(2 if i % 5 == 0 else 1)]  # duplicates sit next to their original
    d_emb = d_emb[rows]
    n = len(rows)
    ids = [f"d{n - j:05d}" for j in range(n)]  # descending: corpus order == trec_eval's tie order
    # a judged passage's id is the first of its copies; its duplicate is an unjudged twin
    first = {}
    for j, i in enumerate(rows):
        first.setdefault(i, j)
    new_id = {old_ids[i]: ids[j] for i, j in first.items()}
    judged = {q: {new_id[d]: g for d, g in qrels[q].items()} for q in qids}

    scores, index = exact_search(q_emb, d_emb, k=100, metric="dot", chunk_size=chunk_size)
    ties = sum(int((s[:-1] == s[1:]).sum()) for s in scores)
    assert ties > 100  # the case is really about ties
    run = {q: [ids[j] for j in row] for q, row in zip(qids, index)}
    raw = {q: {ids[j]: float(s) for j, s in zip(row, srow)} for q, row, srow in zip(qids, index, scores)}
    top10 = {q: {ids[j]: float(s) for j, s in zip(row[:10], srow[:10])} for q, row, srow in zip(qids, index, scores)}
    ours = compute_metrics(run, judged, K)
    _assert_same(ours, _ours_per_query(run, judged), _pytrec(judged, raw, top10))
