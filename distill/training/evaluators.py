"""Evaluation during training, as callbacks that see the student.

At every evaluation point the trainer calls `evaluate(state)` on each callback that has it and
merges the scores; the evaluator built with `select=True` names the score that picks the best
student (RUN/best). The built-in ones:

    STSEvaluator       STS sets (STS-B dev by default: the selection metric)
    RetrievalEvaluator MRR@10 / nDCG@10 / Recall@k of `evaluate_retrieval` on a small retrieval set
    Baselines          the teacher and the untrained student on the final tasks, once (baselines.json)

and, not callbacks but steps the trainer's `finish()` takes explicitly:

    FinalReport        the best student on the final tasks -> results["best"]
    Baselines.table()  -> results["baselines"]

Any callable `fn(embed) -> dict` passed in `callbacks` (e.g. functools.partial(evaluate_retrieval,
queries=..., corpus=..., qrels=...)) is wrapped as an evaluator: `embed` maps a list of sentences
to an (n, d) array with the student as it is at that step. Its numeric results are logged.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from distill.eval.sts import evaluate_sts
from distill.eval.sts_data import load_sts
from distill.io import write_json_atomic
from distill.tasks import DEV_TASKS, resolve_tasks, selection_task
from distill.training.callbacks import Callback

# How scores are computed (SentEval whitespace, full length, fp32): a baselines.json from an older
# scoring is recomputed rather than mixed into a table.
SCORING = "senteval-text/full-length/fp32"


class Evaluator(Callback):
    """A callback that scores the student; with `select=True` the score named `selection_key`
    (one of the keys its `evaluate` returns) picks the best student."""

    select = False

    def evaluate(self, state, head: bool = True) -> dict[str, float]:
        raise NotImplementedError

    @property
    def selection_key(self) -> str:
        raise NotImplementedError


class STSEvaluator(Evaluator):
    def __init__(self, tasks: Sequence[str] = ("STS-B-dev",), sts_dir=None, data: dict | None = None,
                 batch_size: int = 128, select: bool = True):
        self.tasks = resolve_tasks(tasks)
        self.data = data if data is not None else {t: load_sts(t, sts_dir) for t in self.tasks}
        self.batch_size, self.select = batch_size, select

    def evaluate(self, state, head: bool = True) -> dict[str, float]:
        embed = state.embedder(head)
        return evaluate_sts(lambda s: embed(s, batch_size=self.batch_size), tasks=self.tasks, data=self.data, progress=False)

    @property
    def selection_key(self) -> str:
        return selection_task(self.tasks)  # STS-B-dev, or STS-B-zh-dev for a Chinese recipe


class RetrievalEvaluator(Evaluator):
    """`evaluate_retrieval` on (queries, corpus, qrels) loaded once; scores as fractions, prefixed."""

    def __init__(self, queries, corpus, qrels, k: Sequence[int] = (10,), batch_size: int = 128, select: bool = False,
                 prefix: str = "retrieval/", key: str = "MRR@10"):
        self.queries, self.corpus, self.qrels, self.k = queries, corpus, qrels, tuple(k)
        self.batch_size, self.select, self.prefix, self.key = batch_size, select, prefix, key

    def evaluate(self, state, head: bool = True) -> dict[str, float]:
        from distill.eval.retrieval import evaluate_retrieval

        embed = state.embedder(head)
        r = evaluate_retrieval(lambda s: embed(s, batch_size=self.batch_size), self.queries, self.corpus, self.qrels, k=self.k)
        return {self.prefix + m: float(v) for m, v in r.items() if m.startswith(("MRR@", "nDCG@", "Recall@"))}

    @property
    def selection_key(self) -> str:
        return self.prefix + self.key


class FunctionEvaluator(Evaluator):
    """A plain `fn(embed) -> dict`: its float results (scores; not counts), never the selection metric."""

    def __init__(self, fn: Callable):
        self.fn = fn

    def evaluate(self, state, head: bool = True) -> dict[str, float]:
        out = self.fn(state.embedder(head))
        return {k: float(v) for k, v in out.items() if isinstance(v, float)}  # scores; counts (int) left out


HOOKS = ("on_train_begin", "on_step_end", "evaluate", "on_evaluate", "on_train_end")


def as_callback(cb):
    """A callback (a `Callback`, or any object with the hooks) as it is; a plain function as an evaluator."""
    return cb if isinstance(cb, Callback) or any(hasattr(cb, h) for h in HOOKS) else FunctionEvaluator(cb)


def baseline_scores(teacher: str, student, tasks: Sequence[str], data: dict, batch_size: int, max_length: int | None = None) -> dict:
    """{"key", "teacher": {...}, "init": {...}}, each with name, scores, params, dim, device: the
    teacher and the untrained student on `tasks`. `student`: a name to load, or (name, encoder,
    embed) for the student a run already holds. Shared by training (Baselines) and `distill compare`."""
    from distill.encoder import Encoder
    from distill.student import load_model

    out: dict = {"key": {"teacher": teacher, "tasks": list(tasks), "scoring": SCORING}}
    device = None if isinstance(student, str) else student[1].device  # the run's device, else the best one
    t_enc = Encoder.load(teacher, device=device, role="teacher")
    out["teacher"] = _describe(teacher, t_enc, evaluate_sts(t_enc, tasks=tasks, data=data, batch_size=batch_size, progress=False))
    del t_enc
    if isinstance(student, str):
        name, enc = student, load_model(student, max_length=max_length, role="student", teacher=teacher)
        scores = evaluate_sts(enc, tasks=tasks, data=data, batch_size=batch_size, progress=False)
    else:
        name, enc, embed = student
        scores = evaluate_sts(lambda s: embed(s, batch_size=batch_size), tasks=tasks, data=data, progress=False)
    out["key"]["student"] = name
    out["init"] = _describe(name, enc, scores)
    return out


def _describe(name: str, enc, scores: dict) -> dict:
    import torch

    device = torch.cuda.get_device_name(enc.device) if enc.device.type == "cuda" else "cpu"
    return {"name": name, "scores": scores, "params": enc.num_parameters(), "dim": enc.dim, "device": device}


def table_scores(scores: Mapping[str, float]) -> dict[str, float]:
    """Scores without the selection sets (they are not report columns)."""
    return {k: v for k, v in scores.items() if k not in DEV_TASKS}


class Baselines(Callback):
    """Before training: the teacher and the untrained student (no head: an untrained head only adds
    noise) on the final tasks; RUN/baselines.json, computed once. `table()`: their scores for
    results["baselines"] (the trainer's finish() asks for them)."""

    def __init__(self, run_dir: Path, teacher: str, student_name: str, tasks: Sequence[str], data: dict, batch_size: int):
        self.path, self.teacher, self.student_name = Path(run_dir) / "baselines.json", teacher, student_name
        self.tasks, self.data, self.batch_size = list(tasks), data, batch_size

    def on_train_begin(self, state) -> None:
        if self.path.is_file():
            return
        student = (self.student_name, state.student, state.embedder(head=False))
        write_json_atomic(self.path, baseline_scores(self.teacher, student, self.tasks, self.data, self.batch_size))

    def table(self) -> dict | None:
        """{"teacher": scores, "init": scores} without the selection sets; None before on_train_begin wrote them."""
        if not self.path.is_file():
            return None
        saved = json.loads(self.path.read_text())
        return {role: table_scores(saved[role]["scores"]) for role in ("teacher", "init")}


class FinalReport:
    """The best student (in `state.student` at the end) on the final tasks: results["best"]."""

    def __init__(self, tasks: Sequence[str], data: dict, batch_size: int):
        self.tasks, self.data, self.batch_size = list(tasks), data, batch_size

    def scores(self, state) -> dict[str, float]:
        embed = state.embedder()
        return evaluate_sts(lambda s: embed(s, batch_size=self.batch_size), tasks=self.tasks, data=self.data, progress=False)
