"""Retrieval metrics (distill/eval/retrieval/metrics.py) on given rankings, computed by hand."""

from __future__ import annotations

from math import log2

import pytest

from distill.errors import DistillError
from distill.eval.retrieval import (
    compute_metrics,
    mrr_at_k,
    ndcg_at_k,
    parse_k,
    recall_at_k,
)


def test_single_query_metrics_by_hand():
    judged = {"d1": 2, "d3": 1, "d9": 0}
    ranking = ["d2", "d1", "d5", "d3", "d9"]
    assert mrr_at_k(ranking, judged, 10) == 0.5  # first relevant (d1) at rank 2
    assert mrr_at_k(ranking, judged, 1) == 0.0
    assert mrr_at_k(["d9", "d2"], judged, 10) == 0.0  # grade 0 is not relevant
    assert recall_at_k(ranking, judged, 1) == 0.0
    assert recall_at_k(ranking, judged, 2) == 0.5  # d1 of {d1, d3}
    assert recall_at_k(ranking, judged, 4) == 1.0
    dcg = 2 / log2(3) + 1 / log2(5)  # linear gain: d1 (2) at rank 2, d3 (1) at rank 4
    idcg = 2 / log2(2) + 1 / log2(3)
    assert ndcg_at_k(ranking, judged, 10) == pytest.approx(dcg / idcg)
    assert ndcg_at_k(ranking, judged, 3) == pytest.approx((2 / log2(3)) / idcg)
    assert ndcg_at_k(["d1", "d3"], judged, 10) == pytest.approx(1.0)
    assert ndcg_at_k(["d3", "d1"], judged, 10) == pytest.approx((1 + 2 / log2(3)) / idcg)


def test_compute_metrics_averages_over_queries_with_a_relevant_doc():
    qrels = {
        "q1": {"d1": 2, "d3": 1},
        "q2": {"d4": 1},
        "q3": {"d7": 0},  # nothing relevant: left out of every average
        "q4": {"d8": 1},  # not in the run: an empty ranking
    }
    run = {"q1": ["d3", "d2", "d1"], "q2": ["d5", "d6", "d4"], "q3": ["d7"]}
    m = compute_metrics(run, qrels, k=(1, 3))
    assert m["queries"] == 3
    assert m["MRR@10"] == pytest.approx((1 + 1 / 3 + 0) / 3)
    assert m["Recall@1"] == pytest.approx((0.5 + 0 + 0) / 3)
    assert m["Recall@3"] == pytest.approx((1 + 1 + 0) / 3)
    ndcg_q1 = (1 / log2(2) + 2 / log2(4)) / (2 / log2(2) + 1 / log2(3))
    ndcg_q2 = (1 / log2(4)) / 1
    assert m["nDCG@10"] == pytest.approx((ndcg_q1 + ndcg_q2 + 0) / 3)


def test_parse_k():
    assert parse_k("100,10, 1000") == [10, 100, 1000]
    with pytest.raises(DistillError, match="positive integers"):
        parse_k("10,x")
    with pytest.raises(DistillError, match="positive integers"):
        parse_k("0")
