"""Reading retrieval data (distill/data/beir.py): TSV, JSONL, TREC, BEIR folders, the hub; malformed
lines name their file and line."""

from __future__ import annotations

import pytest
from retrieval_sets import CORPUS, QRELS, QUERIES, write_beir, write_jsonl_set, write_tsv_set

from distill.errors import DistillError
from distill.eval.retrieval import (
    load_beir,
    load_hub,
    load_qrels,
    load_retrieval_data,
    load_texts,
)


def test_loaders_read_every_format_alike(tmp_path):
    tsv = load_retrieval_data(*write_tsv_set(tmp_path))
    jsonl = load_retrieval_data(*write_jsonl_set(tmp_path))
    beir = load_beir(write_beir(tmp_path / "beir"))
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
        load_beir(write_beir(tmp_path / "b"), split="dev")
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
