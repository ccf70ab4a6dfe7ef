"""Retrieval from a recipe: eval.retrieval selects the best student on a dev split, eval.final_retrieval
reports its test scores (results.json/.md, `distill train`'s printout, the model card), with the
baselines; STS-free recipes; selecting on test is refused. A tiny BEIR folder of real SciFact text."""

import json

import pytest
from conftest import tiny_recipe_text

from distill.cli import main
from distill.config import load_recipe
from distill.errors import DistillError
from distill.eval.retrieval import evaluate_retrieval, load_retrieval_data
from distill.training.student_folder import StudentEmbedder, load_saved_student

METRICS = {"retrieval/nDCG@10", "retrieval/MRR@10", "retrieval/Recall@100"}


def _retrieval_sets(beir) -> list[str]:
    return [f"eval.retrieval={{beir: {beir}, split: dev, metric: NDCG@10}}", f"eval.final_retrieval={{beir: {beir}, split: test}}"]


def test_recipe_selects_on_retrieval_and_reports_test_scores(tmp_path, tiny_home, tiny_beir, monkeypatch, capsys):
    from distill.training import evaluators

    monkeypatch.setenv("DISTILL_HOME", str(tiny_home))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(tiny_recipe_text(tmp_path, loss="name: mse", steps=6, every=2))
    sets = ["eval.tasks=[]", "eval.final_tasks=[]", "eval.baselines=true", *_retrieval_sets(tiny_beir)]  # no STS at all
    evaluators._corpus_memo.clear()
    before = dict(evaluators.memo_stats)
    assert main(["train", str(recipe), "--quiet", *[a for s in sets for a in ("--set", s)]]) == 0
    # the corpus (shared by dev and test) is embedded once per model state: the untrained student's dev
    # vectors serve its test baseline, and the selected student's dev vectors its test report
    assert evaluators.memo_stats["hits"] - before["hits"] == 2
    printed = capsys.readouterr().out
    run = tmp_path / "run"
    results = json.loads((run / "results.json").read_text())

    # selection: on the dev split's nDCG@10 (x100), STS never scored
    assert results["dev_task"] == "retrieval/nDCG@10" and results["best"] == {}
    evals = results["evals"]
    assert [e["step"] for e in evals] == [2, 4, 6]
    assert all(set(e) == {"step", "epoch", *METRICS} for e in evals)
    best = max(evals, key=lambda e: e["retrieval/nDCG@10"])  # the first of equal maxima, as the trainer keeps it
    assert results["best_step"] == best["step"] and results["best_dev"] == best["retrieval/nDCG@10"]
    saved = json.loads((run / "best" / "distill_student.json").read_text())
    assert saved["selected_by"] == "retrieval/nDCG@10" and saved["step"] == best["step"]

    # the selected student, scored independently, gives the logged dev value and the reported test values
    student = StudentEmbedder(load_saved_student(run / "best", device="cpu")[0])
    dev, test = (load_retrieval_data(beir=tiny_beir, split=s) for s in ("dev", "test"))
    again = evaluate_retrieval(student, dev.queries, dev.corpus, dev.qrels, k=(100,))
    assert 100 * again["nDCG@10"] == pytest.approx(best["retrieval/nDCG@10"], abs=1e-4)
    reported = evaluate_retrieval(student, test.queries, test.corpus, test.qrels, k=(100,))
    ret = results["retrieval"]
    assert ret["split"] == "test" and ret["data"] == str(tiny_beir) and ret["queries"] == 16
    for m in ("nDCG@10", "MRR@10", "Recall@100"):
        assert ret[m] == pytest.approx(100 * reported[m], abs=1e-4), m
    # at the student's own length (its position limit, what `distill export` declares), not the preset's 32
    assert ret["max_length"] == 128 == student.max_length

    # baselines: teacher and untrained student on the test split too
    base = results["retrieval_baselines"]
    assert set(base) == {"teacher", "init"} and all(0 <= base[r]["nDCG@10"] <= 100 for r in base)
    assert results["baselines"] == {"teacher": {}, "init": {}}

    # results.md, the printout and the model card carry the test table
    md = (run / "results.md").read_text()
    assert "Retrieval: " in md and " test (16 queries" in md and f"| {ret['nDCG@10']:.2f} | {ret['MRR@10']:.2f} | {ret['Recall@100']:.2f} |" in md
    assert "| teacher |" in md and "| student before |" in md
    assert "Retrieval: " in printed and f"{ret['nDCG@10']:.2f}" in printed and "best dev" not in printed
    assert f"best retrieval/nDCG@10 {results['best_dev']:.2f} at step {results['best_step']}" in printed
    assert main(["export", str(run), "--out", str(tmp_path / "export")]) == 0
    card = (tmp_path / "export" / "README.md").read_text()
    assert "## Retrieval (x100)" in card and "`tiny-beir" in card and "truncated at 128 tokens" in card
    assert f"| this model | {ret['nDCG@10']:.2f} | {ret['MRR@10']:.2f} | {ret['Recall@100']:.2f} |" in card
    assert "(no STS sets in this run's eval.final_tasks)" in card


def test_recipe_retrieval_keys_are_checked(tmp_path, tiny_home, tiny_beir, monkeypatch):
    monkeypatch.setenv("DISTILL_HOME", str(tiny_home))
    path = tmp_path / "recipe.yaml"
    path.write_text(tiny_recipe_text(tmp_path))
    ok = load_recipe(path, _retrieval_sets(tiny_beir))
    assert ok.eval.retrieval.beir == str(tiny_beir) and ok.eval.retrieval.select and ok.eval.final_retrieval.split == "test"
    assert load_recipe(path).eval.retrieval.beir is None  # absent: off, and the recipe as before
    assert load_recipe(path, ["eval.retrieval=null"]).eval.retrieval.beir is None
    assert load_recipe(path, ["eval.tasks=[]", _retrieval_sets(tiny_beir)[0]]).eval.tasks == []
    bad = {
        # never select on test
        f"eval.retrieval={{beir: {tiny_beir}, split: test}}": r"eval.retrieval.split: test with select: true would pick the best "
                                                               r"student on the test set",
        f"eval.retrieval={{beir: {tiny_beir}, split: dev, metric: ndcg@5}}": r"eval.retrieval.metric: unknown retrieval metric 'ndcg@5'",
        f"eval.retrieval={{beir: {tiny_beir}, split: train}}": r"eval.retrieval.beir: .* has no qrels/train.tsv \(splits there: dev, test\)",
        f"eval.retrieval={{beir: {tmp_path / 'nowhere'}}}": r"eval.retrieval.beir: .*nowhere: no such folder",
        "eval.retrieval={metric: mrr@10}": r"eval.retrieval.beir: missing .*eval.retrieval.metric given without it",
        f"eval.final_retrieval={{beir: {tiny_beir}, max_length: 2}}": r"eval.final_retrieval.max_length: must be unset",
        f"eval.retrieval={{beir: {tiny_beir}, colour: red}}": r"unknown key eval.retrieval.colour",
        "eval.tasks=[]": r"eval.tasks: must be a list of STS task names \(or \[\] when eval.retrieval selects\)",
        "eval.final_tasks=[]": r"eval.final_tasks: must be a list of STS task names \(or \[\] when eval.final_retrieval reports\)",
    }
    for override, message in bad.items():
        with pytest.raises(DistillError, match=message):
            load_recipe(path, [override])
    # a split named test may be logged, just not selected on
    assert not load_recipe(path, [f"eval.retrieval={{beir: {tiny_beir}, split: test, select: false}}"]).eval.retrieval.select
    with pytest.raises(DistillError, match=r"eval.tasks: must be"):  # logging retrieval does not replace STS selection
        load_recipe(path, ["eval.tasks=[]", f"eval.retrieval={{beir: {tiny_beir}, select: false}}"])
