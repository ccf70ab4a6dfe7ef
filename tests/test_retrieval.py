"""Retrieval evaluation: metric definitions, exact chunked search, loaders, and `distill eval-retrieval`."""

from __future__ import annotations

import gzip
import json
from math import log2

import numpy as np
import pytest

from distill.cli import main
from distill.errors import DistillError
from distill.eval.retrieval import (
    compute_metrics,
    evaluate_retrieval,
    exact_search,
    load_beir,
    load_hub,
    load_qrels,
    load_retrieval_data,
    load_texts,
    mrr_at_k,
    ndcg_at_k,
    parse_k,
    recall_at_k,
)

# --- metric functions on given rankings (hand-computed) ---------------------------------------


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


# --- exact search: a given score matrix, ties, chunking ---------------------------------------


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


# --- end to end with the packaged MiniLM ------------------------------------------------------

QUERIES = {
    "q1": "How tall is Mount Everest?",
    "q2": "What do pandas eat?",
    "q3": "How do I bake sourdough bread?",
    "q4": "When did the Berlin Wall fall?",
    "q6": "What is the capital of France?",
    "q7": "Who wrote Hamlet?",
}
CORPUS = {
    "d1": "Mount Everest is 8,849 metres tall, the highest mountain on Earth.",
    "d2": "Climbers reach the summit of Everest in the Himalayas mostly in May.",
    "d3": "Giant pandas eat almost nothing but bamboo, up to 38 kg a day.",
    "d4": "Pandas live in the mountain forests of central China.",
    "d5": "Sourdough bread is baked from a starter of wild yeast and flour.",
    "d6": "The Berlin Wall fell on 9 November 1989.",
    "d7": "The stock market closed higher on Friday.",
    "d8": "A guitar has six strings.",
}
# Graded on purpose against the model's obvious order, so the values are not all 1.
QRELS = {
    "q1": {"d2": 2, "d1": 1},  # the model ranks d1 (grade 1) first, d2 (grade 2) second
    "q2": {"d4": 1},  # the model ranks d3 first, d4 second
    "q3": {"d5": 1, "d99": 1},  # d99 is not in the corpus: never retrieved
    "q4": {"d6": 1},
    "q5": {"d1": 1},  # not among the queries: dropped with a warning
    "q6": {"d7": 0},  # nothing relevant: not evaluated
}
EXPECTED_TOP2 = {"q1": ["d1", "d2"], "q2": ["d3", "d4"], "q3": ["d5"], "q4": ["d6"]}
NDCG = {
    "q1": (1 / log2(2) + 2 / log2(3)) / (2 / log2(2) + 1 / log2(3)),
    "q2": (1 / log2(3)) / 1,
    "q3": 1 / (1 + 1 / log2(3)),
    "q4": 1.0,
}
EXPECTED = {
    "MRR@10": (1 + 1 / 2 + 1 + 1) / 4,
    "Recall@1": (1 / 2 + 0 + 1 / 2 + 1) / 4,
    "Recall@2": (1 + 1 + 1 / 2 + 1) / 4,
    "Recall@10": (1 + 1 + 1 / 2 + 1) / 4,
    "nDCG@10": sum(NDCG.values()) / 4,
    "queries": 4,
}


@pytest.fixture(scope="module")
def enc():
    from distill.encoder import Encoder

    return Encoder.load("all-minilm-l6-v2", device="cpu")


@pytest.fixture(scope="module")
def results(enc):
    return evaluate_retrieval(enc, QUERIES, CORPUS, QRELS, k=(1, 2, 10), return_run=True)


def test_evaluate_retrieval_against_hand_computed_values(results):
    for q, top in EXPECTED_TOP2.items():
        assert results["run"][q][: len(top)] == top, q  # the model's ranking the values rest on
    assert set(results["run"]) == {"q1", "q2", "q3", "q4"}  # only evaluable queries are searched
    for key, value in EXPECTED.items():
        assert results[key] == pytest.approx(value), key
    assert results["corpus"] == 8 and results["metric"] == "cosine"
    warnings = " ".join(results["warnings"])
    assert "1 of 6 qrels query ids are not among the queries" in warnings
    assert "1 of 6 relevant doc ids in the qrels are not in the corpus" in warnings and "'d99'" in warnings
    assert "1 queries have no relevant doc" in warnings


def test_chunk_size_does_not_change_results(enc):
    # Each text embedded once and reused: what is under test is the search, and two CPU encodings of
    # one text can differ in the last bit when the BLAS library picks its threads by the load. The
    # scores themselves may differ in the last float32 bit with the matrix product's shape (module
    # docstring): rankings and metrics must be equal, the scores equal to float32 rounding.
    texts = list(QUERIES.values()) + list(CORPUS.values())
    vectors = dict(zip(texts, enc.encode(texts, progress=False)))

    def embed(batch):
        return np.stack([vectors[t] for t in batch])

    results = evaluate_retrieval(embed, QUERIES, CORPUS, QRELS, k=(1, 2, 10), return_run=True)
    for chunk in (2, 3):
        other = evaluate_retrieval(embed, QUERIES, CORPUS, QRELS, k=(1, 2, 10), chunk_size=chunk, return_run=True)
        scores, want = other.pop("run_scores"), results["run_scores"]
        assert other == {k: v for k, v in results.items() if k != "run_scores"}
        assert scores.keys() == want.keys()
        for q in want:
            np.testing.assert_allclose(scores[q], want[q], rtol=0, atol=1e-6)


def test_other_input_shapes_and_metrics(enc, results):
    beir_corpus = {d: {"title": "", "text": t} for d, t in CORPUS.items()}  # BEIR's corpus dict
    pairs = list(QUERIES.items())  # (id, text) pairs
    dot = evaluate_retrieval(enc, pairs, beir_corpus, QRELS, k=(1, 2, 10), metric="dot", return_run=True)
    assert dot["metric"] == "dot"
    assert dot["run"] == results["run"]  # the model normalizes: dot ranks like cosine
    for key in EXPECTED:
        assert dot[key] == pytest.approx(results[key]), key


def test_unmatched_ids_are_errors(enc):
    with pytest.raises(DistillError, match="none of the 1 qrels query ids occurs in the queries"):
        evaluate_retrieval(enc, QUERIES, CORPUS, {"Q1": {"d1": 1}})
    with pytest.raises(DistillError, match="none of the 1 relevant doc ids in the qrels occurs in the corpus"):
        evaluate_retrieval(enc, QUERIES, CORPUS, {"q1": {"D1": 1}})
    with pytest.raises(DistillError, match="no doc relevant"):
        evaluate_retrieval(enc, QUERIES, CORPUS, {"q1": {"d1": 0}})


# --- files and loaders ------------------------------------------------------------------------


def _write_tsv_set(folder):
    (folder / "queries.tsv").write_text("".join(f"{q}\t{t}\n" for q, t in QUERIES.items()), encoding="utf-8")
    (folder / "corpus.tsv").write_text("id\ttext\n" + "".join(f"{d}\t{t}\n" for d, t in CORPUS.items()), encoding="utf-8")
    # TREC format: query id, iteration, doc id, relevance
    (folder / "qrels.trec").write_text("".join(f"{q} 0 {d} {g}\n" for q, j in QRELS.items() for d, g in j.items()))
    return folder / "queries.tsv", folder / "corpus.tsv", folder / "qrels.trec"


def _write_jsonl_set(folder):
    with gzip.open(folder / "corpus.jsonl.gz", "wt", encoding="utf-8") as f:
        for d, t in CORPUS.items():
            f.write(json.dumps({"id": d, "contents": t}) + "\n")
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in QUERIES.items()))
    (folder / "qrels.tsv").write_text("".join(f"{q}\t{d}\t{g}\n" for q, j in QRELS.items() for d, g in j.items()))
    return folder / "queries.jsonl", folder / "corpus.jsonl.gz", folder / "qrels.tsv"


def _write_beir(folder):
    folder.mkdir()
    (folder / "qrels").mkdir()
    (folder / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": d, "title": "", "text": t, "metadata": {}}) + "\n" for d, t in CORPUS.items())
    )
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t, "metadata": {}}) + "\n" for q, t in QUERIES.items()))
    (folder / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{g}\n" for q, j in QRELS.items() for d, g in j.items())
    )
    return folder


def test_loaders_read_every_format_alike(tmp_path):
    tsv = load_retrieval_data(*_write_tsv_set(tmp_path))
    jsonl = load_retrieval_data(*_write_jsonl_set(tmp_path))
    beir = load_beir(_write_beir(tmp_path / "beir"))
    for data in (tsv, jsonl, beir):
        assert data.queries == QUERIES and data.corpus == CORPUS and data.qrels == QRELS


def test_loader_details(tmp_path):
    c = tmp_path / "dpr.tsv"
    c.write_text("id\ttext\ttitle\n1\tBorn in 1564.\tShakespeare\n2\tNo title here.\t\n")
    assert load_texts(c) == {"1": "Shakespeare Born in 1564.", "2": "No title here."}
    j = tmp_path / "c.jsonl"
    j.write_text('{"_id": 7, "title": "Paris", "text": "Capital of France."}\n\n')
    assert load_texts(j) == {"7": "Paris Capital of France."}
    r = tmp_path / "r.tsv"
    r.write_text("q1\td1\t1.0\nq1\td2\t-1\r\nq2\tdoc with space\t2\n")
    assert load_qrels(r) == {"q1": {"d1": 1, "d2": -1}, "q2": {"doc with space": 2}}
    with pytest.raises(DistillError, match="no qrels/dev.tsv"):
        load_beir(_write_beir(tmp_path / "b"), split="dev")
    with pytest.raises(DistillError, match="missing corpus, qrels"):
        load_retrieval_data(queries=r)


@pytest.mark.parametrize(
    ("name", "content", "loader", "message"),
    [
        ("c.tsv", "d1\tfine\nd2 no tab here\n", load_texts, ":2: expected 'id<TAB>text'"),
        ("c.tsv", "d1\tfine\n\nd1\tagain\n", load_texts, ":3: duplicate id 'd1' (first at line 1)"),
        ("c.tsv", "id\ttext\ttitle\nd1\tonly two\n", load_texts, ":2: expected 3 tab-separated fields"),
        ("c.jsonl", '{"_id": "d1", "text": "ok"}\n{"_id": "d2", "text": "broken"\n', load_texts, ":2: not valid JSON"),
        ("c.jsonl", '{"_id": "d1", "body_text": "x"}\n', load_texts, ":1: no text key"),
        ("c.jsonl", '["a list"]\n', load_texts, ":1: expected a JSON object"),
        ("r.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\n", load_qrels, ":3: expected 3 fields"),
        ("r.tsv", "q1\td1\t1\nq1\td2\thigh\n", load_qrels, ":2: relevance 'high' is not a number"),
        ("r.tsv", "q1\td1\t0.5\n", load_qrels, ":1: relevance '0.5' is not an integer"),
        ("r.trec", "q1 0 d1 1\nq1 0 d2 1 extra\n", load_qrels, ":2: expected 3 fields"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path, name, content, loader, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DistillError) as err:
        loader(path)
    assert f"{path}{message}" in str(err.value)


def test_bad_utf8_names_its_line(tmp_path):
    path = tmp_path / "c.tsv"
    path.write_bytes(b"d1\tok\nd2\tbad \xff byte\n")
    with pytest.raises(DistillError, match=":2: not UTF-8"):
        load_texts(path)


def test_hub_unreachable_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DistillError, match="hub dataset 'mteb/scifact'"):
        load_hub("mteb/scifact")


# --- CLI --------------------------------------------------------------------------------------


def _cli(args, tmp_path, name):
    out = tmp_path / f"{name}.json"
    rc = main(["eval-retrieval", "--model", "all-minilm-l6-v2", "--k", "1,2,10", "--json", str(out), "--quiet", *args])
    assert rc == 0
    return json.loads(out.read_text())


def test_cli_tsv_jsonl_and_beir(tmp_path, capsys):
    q, c, r = _write_tsv_set(tmp_path)
    from_tsv = _cli(["--queries", str(q), "--corpus", str(c), "--qrels", str(r)], tmp_path, "tsv")
    printed = capsys.readouterr()
    assert "| all-minilm-l6-v2 |" in printed.out and "MRR@10" in printed.out
    assert "warning: 1 of 6 qrels query ids" in printed.err
    q, c, r = _write_jsonl_set(tmp_path)
    from_jsonl = _cli(["--queries", str(q), "--corpus", str(c), "--qrels", str(r)], tmp_path, "jsonl")
    beir = _write_beir(tmp_path / "beir")
    from_beir = _cli(["--beir", str(beir)], tmp_path, "beir")
    for res in (from_tsv, from_jsonl, from_beir):
        for key, value in EXPECTED.items():
            assert res[key] == pytest.approx(value), key
        assert res["model"] == "all-minilm-l6-v2" and res["k"] == [1, 2, 10]


def test_cli_malformed_line(tmp_path, capsys):
    q, c, r = _write_tsv_set(tmp_path)
    c.write_text("id\ttext\nd1\tfine\nd2 has no tab\n")
    rc = main(["eval-retrieval", "--model", "all-minilm-l6-v2", "--queries", str(q), "--corpus", str(c), "--qrels", str(r)])
    assert rc == 2
    assert f"{c}:3: expected 2 tab-separated fields (id, text), got 1" in capsys.readouterr().err
    rc = main(["eval-retrieval", "--model", "all-minilm-l6-v2", "--queries", str(q)])
    assert rc == 2 and "missing corpus, qrels" in capsys.readouterr().err


def test_search_benchmark_script_records_a_row(tmp_path):
    """benchmarks/retrieval_search.py on a small size: all three methods agree, one row appended."""
    import sys

    from conftest import REPO

    sys.path.insert(0, str(REPO / "benchmarks"))
    import retrieval_search

    md = tmp_path / "BENCHMARKS.md"
    assert retrieval_search.main(["--sizes", "40x700", "--k", "50", "--repeats", "1", "--md", str(md), "--chunk-size", "128"]) == 0
    rows = [line for line in md.read_text().splitlines() if line.startswith("| 20")]
    assert len(rows) == 1 and "| 40 x 700 | 384 | 50 | 128 |" in rows[0]
    assert "--md DIR/BENCHMARKS.md" in rows[0]  # the recorded command names no machine's folder


def test_cli_outputs_are_never_replaced_silently_and_are_checked_before_the_work(tmp_path, tiny_bert_dir, capsys):
    """Issue 38, failures 4 and 5: an existing --json or --save-run file was overwritten silently,
    and a folder that cannot be written (or a full disk) crashed with an OSError after the whole
    evaluation. Now an existing file needs --overwrite and a folder that cannot be written is
    refused, both before the data loads or the model is looked at; a disk that fills up is named."""
    from conftest import file_size_limit, unwritable_folders

    q, c, r = _write_tsv_set(tmp_path)
    missing = ["--model", "no-such-model", "--queries", str(tmp_path / "missing.tsv"), "--corpus", str(c), "--qrels", str(r)]
    for flag in ("--json", "--save-run"):
        users = tmp_path / f"users{flag}"
        users.write_text("the user's own file")
        assert main(["eval-retrieval", *missing, flag, str(users)]) == 2
        assert f"{flag} {users}: the file exists; pass --overwrite to replace it" in capsys.readouterr().err
        assert users.read_text() == "the user's own file"
        for folder in unwritable_folders(tmp_path):
            out = folder / "out"
            assert main(["eval-retrieval", *missing, flag, str(out)]) == 2
            err = capsys.readouterr().err
            assert f"{flag} {out}: " in err and ("is not a folder" in err or "Permission denied" in err or "Read-only" in err), err
    both = ["--json", str(tmp_path / "same"), "--save-run", str(tmp_path / "same")]
    assert main(["eval-retrieval", *missing, *both]) == 2 and "name the same file" in capsys.readouterr().err
    files = ["--model", str(tiny_bert_dir), "--queries", str(q), "--corpus", str(c), "--qrels", str(r), "--k", "1,2", "--quiet"]
    js, run = tmp_path / "users--json", tmp_path / "users--save-run"
    assert main(["eval-retrieval", *files, "--json", str(js), "--save-run", str(run), "--overwrite"]) == 0
    assert json.loads(js.read_text())["queries"] == 4 and run.read_text().split()[1] == "Q0"
    full = tmp_path / "full"
    full.mkdir()
    with file_size_limit(50):  # a real EFBIG from the kernel, as a full disk gives ENOSPC
        code = main(["eval-retrieval", *files, "--json", str(full / "r.json"), "--save-run", str(full / "r.trec")])
    captured = capsys.readouterr()
    assert code == 2 and f"--json {full / 'r.json'}: File too large (EFBIG)" in captured.err, captured.err
    assert "the scores are in the table above" in captured.err and "MRR@10" in captured.out and list(full.iterdir()) == []
