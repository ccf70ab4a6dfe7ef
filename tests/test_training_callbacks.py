"""Evaluation as callbacks: callbacks see the student; retrieval (or a user's function) can score
and select during training; the baselines and the final report are callbacks too."""

import functools
import json

import numpy as np
from conftest import STS_DIR, recipe_at

from distill.encoder import Encoder
from distill.eval.retrieval import evaluate_retrieval
from distill.eval.sts_data import load_sts
from distill.training.callbacks import Callback
from distill.training.evaluators import RetrievalEvaluator
from distill.training.run import train
from distill.training.student_folder import StudentEmbedder, load_saved_student


def _retrieval_set(n=40):
    """Queries = first sentences of STS-B dev's most similar pairs, their partners the relevant docs."""
    dev = load_sts("STS-B-dev", STS_DIR)
    order = np.argsort(-np.asarray(dev.scores))[:n]
    queries = {f"q{i}": dev.sentences1[j] for i, j in enumerate(order)}
    corpus = {f"d{i}": dev.sentences2[j] for i, j in enumerate(order)}
    corpus.update({f"x{i}": s for i, s in enumerate(dev.sentences2[-60:])})
    qrels = {f"q{i}": {f"d{i}": 1} for i in range(len(order))}
    return queries, corpus, qrels


class Recorder(Callback):
    """Checks, at every evaluation, that the callback sees the student being trained."""

    def __init__(self):
        self.seen = []

    def on_evaluate(self, state, scores):
        assert isinstance(state.student, Encoder)
        emb = state.embedder()(["a short sentence", "another one"])
        self.seen.append((state.step, emb.shape, dict(scores)))

    def on_train_end(self, state, results):
        self.final = results["best"]


def test_retrieval_and_a_plain_function_as_training_evaluators(tmp_path, tiny_home, monkeypatch):
    monkeypatch.setenv("DISTILL_HOME", str(tiny_home))
    queries, corpus, qrels = _retrieval_set()
    rec = Recorder()
    selecting = RetrievalEvaluator(queries, corpus, qrels, k=(10,), select=True)
    fn = functools.partial(evaluate_retrieval, queries=queries, corpus=corpus, qrels=qrels, k=(5,))
    results = train(recipe_at(tmp_path, ["eval.baselines=true"], steps=6, every=3), progress=False, callbacks=[rec, selecting, fn])

    # the selecting evaluator picked the best student; the recipe's STS-B dev was not added
    assert results["dev_task"] == "retrieval/MRR@10"
    evals = results["evals"]
    assert [e["step"] for e in evals] == [3, 6]
    for e in evals:
        assert 0.0 <= e["retrieval/MRR@10"] <= 100.0 and "STS-B-dev" not in e  # x100, as STS
        assert 0.0 <= e["Recall@5"] <= 1.0  # the plain function's numeric results, unprefixed
    best = max(evals, key=lambda e: e["retrieval/MRR@10"])
    assert results["best_step"] == best["step"] and results["best_dev"] == best["retrieval/MRR@10"]
    # the same student, scored independently, gives the logged value
    saved = json.loads((tmp_path / "run" / "best" / "distill_student.json").read_text())
    assert saved["selected_by"] == "retrieval/MRR@10" and saved["step"] == best["step"]
    best_student = StudentEmbedder(load_saved_student(tmp_path / "run" / "best")[0])
    again = evaluate_retrieval(best_student, queries, corpus, qrels, k=(10,))
    assert abs(100 * again["MRR@10"] - best["retrieval/MRR@10"]) < 1e-4  # evaluate_retrieval: fractions

    # the user callback saw the student at each evaluation, and the final report
    assert [s for s, _, _ in rec.seen] == [3, 6]
    assert all(shape == (2, 32) for _, shape, _ in rec.seen)
    assert rec.final == results["best"] and "STS-B" in results["best"]
    # baselines are a callback too: teacher and untrained student on the final tasks
    assert set(results["baselines"]) == {"teacher", "init"} and "STS-B" in results["baselines"]["teacher"]
    base = json.loads((tmp_path / "run" / "baselines.json").read_text())
    assert base["teacher"]["scores"]["STS-B"] == results["baselines"]["teacher"]["STS-B"]
