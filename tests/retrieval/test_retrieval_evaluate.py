"""evaluate_retrieval (distill/eval/retrieval/) with the packaged MiniLM against hand-computed values, and
`distill eval-retrieval` (distill/commands/retrieval.py) on every file format."""

from __future__ import annotations

import json

import numpy as np
import pytest
from retrieval_sets import CORPUS, EXPECTED, EXPECTED_TOP2, QRELS, QUERIES, write_beir, write_jsonl_set, write_tsv_set

from distill.cli import main
from distill.errors import DistillError
from distill.eval.retrieval import (
    evaluate_retrieval,
)


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


def _cli(args, tmp_path, name):
    out = tmp_path / f"{name}.json"
    rc = main(["eval-retrieval", "--model", "all-minilm-l6-v2", "--k", "1,2,10", "--json", str(out), "--quiet", *args])
    assert rc == 0
    return json.loads(out.read_text())


def test_cli_tsv_jsonl_and_beir(tmp_path, capsys):
    q, c, r = write_tsv_set(tmp_path)
    from_tsv = _cli(["--queries", str(q), "--corpus", str(c), "--qrels", str(r)], tmp_path, "tsv")
    printed = capsys.readouterr()
    assert "| all-minilm-l6-v2 |" in printed.out and "MRR@10" in printed.out
    assert "warning: 1 of 6 qrels query ids" in printed.err
    q, c, r = write_jsonl_set(tmp_path)
    from_jsonl = _cli(["--queries", str(q), "--corpus", str(c), "--qrels", str(r)], tmp_path, "jsonl")
    beir = write_beir(tmp_path / "beir")
    from_beir = _cli(["--beir", str(beir)], tmp_path, "beir")
    for res in (from_tsv, from_jsonl, from_beir):
        for key, value in EXPECTED.items():
            assert res[key] == pytest.approx(value), key
        assert res["model"] == "all-minilm-l6-v2" and res["k"] == [1, 2, 10]


def test_cli_malformed_line(tmp_path, capsys):
    q, c, r = write_tsv_set(tmp_path)
    c.write_text("id\ttext\nd1\tfine\nd2 has no tab\n")
    rc = main(["eval-retrieval", "--model", "all-minilm-l6-v2", "--queries", str(q), "--corpus", str(c), "--qrels", str(r)])
    assert rc == 2
    assert f"{c}:3: expected 2 tab-separated fields (id, text), got 1" in capsys.readouterr().err
    rc = main(["eval-retrieval", "--model", "all-minilm-l6-v2", "--queries", str(q)])
    assert rc == 2 and "missing corpus, qrels" in capsys.readouterr().err


def test_cli_outputs_are_never_replaced_silently_and_are_checked_before_the_work(tmp_path, tiny_bert_dir, capsys):
    """Issue 38, failures 4 and 5: an existing --json or --save-run file was overwritten silently,
    and a folder that cannot be written (or a full disk) crashed with an OSError after the whole
    evaluation. Now an existing file needs --overwrite and a folder that cannot be written is
    refused, both before the data loads or the model is looked at; a disk that fills up is named."""
    from conftest import file_size_limit, unwritable_folders

    q, c, r = write_tsv_set(tmp_path)
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
