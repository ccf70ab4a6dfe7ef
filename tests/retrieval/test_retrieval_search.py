"""Exact chunked search (distill/eval/retrieval/search.py): a given score matrix, ties, chunking."""

from __future__ import annotations

import numpy as np
import pytest

from distill.eval.retrieval import (
    exact_search,
)


def test_search_on_a_given_score_matrix_breaks_ties_by_corpus_order():
    # queries = unit vectors, so query i . doc j = S[i, j]: the search ranks the rows of S.
    S = np.array(
        [
            [0.1, 0.9, 0.5, 0.9, 0.2, 0.9],
            [3.0, -1.0, 3.0, 2.0, 3.0, 0.0],
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        ],
        dtype=np.float32,
    )
    expected_index = [[1, 3, 5, 2], [0, 2, 4, 3], [0, 1, 2, 3]]
    for chunk in (1, 2, 4, 5, 6, 100):
        scores, index = exact_search(np.eye(3, dtype=np.float32), S.T, 4, metric="dot", chunk_size=chunk)
        assert index.tolist() == expected_index, chunk
        np.testing.assert_array_equal(scores, np.take_along_axis(S, np.array(expected_index), 1))
    scores, index = exact_search(np.eye(3, dtype=np.float32), S.T, 50, metric="dot", chunk_size=4)
    assert index.shape == (3, 6)  # k above the corpus size: every passage, ranked


@pytest.mark.parametrize("metric", ["cosine", "dot", "l2"])
def test_chunked_search_equals_one_chunk_and_brute_force(metric):
    rng = np.random.default_rng(0)
    q = rng.normal(size=(23, 16)).astype(np.float32)
    d = rng.normal(size=(501, 16)).astype(np.float32)
    ref_scores, ref_index = exact_search(q, d, 40, metric=metric, chunk_size=10_000)
    for chunk in (1, 7, 64, 500):
        scores, index = exact_search(q, d, 40, metric=metric, chunk_size=chunk)
        np.testing.assert_array_equal(index, ref_index)
        np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
    qq, dd = q.astype(np.float64), d.astype(np.float64)
    if metric == "cosine":
        full = (qq / np.linalg.norm(qq, axis=1, keepdims=True)) @ (dd / np.linalg.norm(dd, axis=1, keepdims=True)).T
    elif metric == "dot":
        full = qq @ dd.T
    else:
        full = -np.linalg.norm(qq[:, None] - dd[None], axis=2)
    brute = np.argsort(-full, axis=1, kind="stable")[:, :40]
    np.testing.assert_array_equal(ref_index, brute)
    np.testing.assert_allclose(np.abs(ref_scores), np.abs(np.take_along_axis(full, brute, 1)), atol=1e-5)


def test_integer_scores_ties_are_chunk_independent():
    """Small integer embeddings give exact float32 scores and many exact ties: every chunking
    ranks them like a stable sort (earlier passage first)."""
    rng = np.random.default_rng(1)
    q = rng.integers(-2, 3, size=(15, 4)).astype(np.float32)
    d = rng.integers(-2, 3, size=(200, 4)).astype(np.float32)  # exact products, many ties
    brute = np.argsort(-(q @ d.T), axis=1, kind="stable")[:, :30]
    for chunk in (1, 3, 29, 200):
        np.testing.assert_array_equal(exact_search(q, d, 30, metric="dot", chunk_size=chunk)[1], brute)


def test_rows_with_and_without_ties_in_one_search():
    """Some queries tie (integer rows: equal scores inside the top k and across the cut), others
    do not (real-valued rows): the fast path of the merge, its fallback and the final tie fix meet
    in one search, and every row ranks like a stable sort."""
    rng = np.random.default_rng(2)
    d = rng.integers(-2, 3, size=(300, 4)).astype(np.float32)
    q = np.concatenate([rng.integers(-2, 3, size=(6, 4)), rng.normal(size=(6, 4))]).astype(np.float32)[rng.permutation(12)]
    full = q.astype(np.float64) @ d.T.astype(np.float64)
    brute = np.argsort(-full, axis=1, kind="stable")[:, :25]
    for chunk in (1, 13, 64, 300):
        scores, index = exact_search(q, d, 25, metric="dot", chunk_size=chunk)
        np.testing.assert_array_equal(index, brute, err_msg=f"chunk {chunk}")
        np.testing.assert_allclose(scores, np.take_along_axis(full, brute, 1), atol=1e-5)
