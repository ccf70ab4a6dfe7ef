"""Evaluation during training, as callbacks that see the student.

At every evaluation point the trainer calls `evaluate(state)` on each callback that has it and
merges the scores; the evaluator built with `select=True` names the score that picks the best
student (RUN/best). The built-in ones:

    STSEvaluator       STS sets (STS-B dev by default: the selection metric)
    RetrievalEvaluator MRR@10 / nDCG@10 / Recall@k of `evaluate_retrieval` on a retrieval set
                       (a recipe's eval.retrieval; with select, its metric picks RUN/best)
    Baselines          the teacher and the untrained student on the final tasks (and the final
                       retrieval split), once (baselines.json)

and, not callbacks but steps the trainer's `finish()` takes explicitly:

    FinalReport        the best student on the final tasks -> results["best"], and on
                       eval.final_retrieval -> results["retrieval"]
    Baselines.table()  -> results["baselines"]; Baselines.retrieval_table() -> results["retrieval_baselines"]

Units: every score a run records is x100 (STS: Spearman x100; retrieval: nDCG@10, MRR@10 and
Recall@k x100), in log.jsonl, results.json/.md, baselines.json and the compare tables alike;
`evaluate_retrieval` itself returns fractions.

Any callable `fn(embed) -> dict` passed in `callbacks` (e.g. functools.partial(evaluate_retrieval,
queries=..., corpus=..., qrels=...)) is wrapped as an evaluator: `embed` maps a list of sentences
to an (n, d) array with the student as it is at that step. Its numeric results are logged.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from distill.embedding import model_digest  # noqa: F401 (callers import it from here too)
from distill.errors import DistillError
from distill.eval.sts import evaluate_sts
from distill.eval.sts_data import load_sts
from distill.io import write_json_atomic
from distill.tasks import DEV_TASKS, recipe_tasks, selection_task
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
    """STS sets scored on the student (STS-B dev by default: the selection metric).

    `dims` (a recipe's eval.dims): also score the vector truncated to each of these widths and
    re-normalized, from the same encoding, as "STS-B-dev@128"...; the width equal to the
    embedding's own (`width`) keeps the plain name. The first of `dims` selects.
    """

    def __init__(self, tasks: Sequence[str] = ("STS-B-dev",), sts_dir=None, data: dict | None = None,
                 batch_size: int = 128, select: bool = True, dims: Sequence[int] = (), width: int | None = None):
        self.tasks = recipe_tasks(tasks)
        self.data = data if data is not None else {t: load_sts(t, sts_dir) for t in self.tasks}
        self.batch_size, self.select = batch_size, select
        self.dims, self.width = [int(k) for k in dims], width
        wider = [k for k in self.dims if width is not None and k > width]
        if wider:
            raise DistillError(f"eval.dims {self.dims}: {wider[0]} is more than the {width} dimensions of the student's embedding")

    def evaluate(self, state, head: bool = True) -> dict[str, float]:
        embed = state.embedder(head)
        return evaluate_sts(lambda s: embed(s, batch_size=self.batch_size), tasks=self.tasks, data=self.data, progress=False,
                            prefix_dims=self.dims)

    @property
    def selection_key(self) -> str:
        task = selection_task(self.tasks)  # STS-B-dev, or STS-B-zh-dev for a Chinese recipe
        return task if not self.dims or self.dims[0] == self.width else f"{task}@{self.dims[0]}"


# Corpus vectors of the models scored last, by (model content digest, corpus digest): the dev and the
# test split of a BEIR set share their corpus, and a run scores the selected student's state twice
# (dev when it is evaluated, test at the end) and each baseline on both splits. Bounded in bytes;
# least recently used first out. Only our torch models are digested (their state_dict, head, length,
# width, pooling): a callable, an ONNX or a SentenceTransformer model is embedded every time.
CORPUS_MEMO_BYTES = 256 * 2**20
_corpus_memo: OrderedDict = OrderedDict()
memo_stats = {"hits": 0, "misses": 0}


def corpus_digest(corpus: Mapping) -> str:
    h = hashlib.blake2b(digest_size=20)
    for doc_id, text in corpus.items():
        h.update(repr((doc_id, text)).encode())
    return h.hexdigest()


class RetrievalSet:
    """One retrieval split loaded once per run (queries, corpus, qrels: `load_retrieval_data`), scored
    with any model: `score(model)` -> {nDCG@10, MRR@10, Recall@k...: x100, "queries", "corpus",
    "max_length"}. Only the queries with a relevant doc are encoded; the corpus is encoded unless
    the same model (by content, `model_digest`) embedded the same corpus before (`_corpus_memo`):
    a run's test report of its selected student reuses that state's dev-evaluation corpus vectors.

    Length: `max_length` for every model, or by default each model's own (`own_max_length`): a
    teacher's declared max_seq_length, a student's position limit (what `distill export` declares
    for it). Precision: fp32 (`full_length`), as the STS scores.
    """

    def __init__(self, data, k: Sequence[int] = (100,), batch_size: int = 128, max_length: int | None = None,
                 beir: str | None = None, split: str | None = None, doc_model=None):
        self.data, self.k, self.batch_size, self.max_length = data, tuple(k), batch_size, max_length
        self.beir, self.split = beir, split
        # asymmetric (eval/retrieval/asymmetric.py): passages by this fixed model, once per run, queries by the one scored
        self.doc_model, self._doc_embed = doc_model, None
        self._corpus_digest: str | None = None  # computed once, when a model first asks for the memo

    @classmethod
    def load(cls, beir: str, split: str, **kwargs) -> RetrievalSet:
        from distill.eval.retrieval import load_retrieval_data

        return cls(load_retrieval_data(beir=beir, split=split), beir=str(beir), split=split, **kwargs)

    def score(self, model) -> dict:
        """`model`: an Embedder (a student's: built with this set's max_length) or an Encoder / name."""
        from distill.embedding import OWN, Embedder
        from distill.eval.retrieval import evaluate_retrieval

        embed = model if isinstance(model, Embedder) else Embedder(model, full_length=True, max_length=self.max_length or OWN)
        d = self.data
        if self.doc_model is not None:
            return self._score_asymmetric(embed)
        digest = model_digest(embed)
        if digest is not None and self._corpus_digest is None:
            self._corpus_digest = corpus_digest(d.corpus)
        key = (digest, self._corpus_digest)
        cached = _corpus_memo.get(key) if digest is not None else None
        if digest is not None:
            memo_stats["hits" if cached is not None else "misses"] += 1
        r = evaluate_retrieval(lambda s: embed(s, batch_size=self.batch_size), d.queries, d.corpus, d.qrels, k=self.k,
                               corpus_embeddings=cached, keep_corpus_embeddings=digest is not None and cached is None)
        if cached is not None:
            _corpus_memo.move_to_end(key)
        elif digest is not None:
            _remember(key, r.pop("corpus_embeddings"))
        out = {m: 100.0 * float(v) for m, v in r.items() if m.startswith(("MRR@", "nDCG@", "Recall@"))}
        return {**out, "queries": r["queries"], "corpus": r["corpus"], "max_length": embed.max_length}

    def _score_asymmetric(self, embed) -> dict:
        """Queries by `embed`, passages by the fixed doc_model (their vectors computed once: asymmetric.doc_vectors)."""
        from distill.eval.retrieval import evaluate_retrieval
        from distill.eval.retrieval.asymmetric import check_widths, doc_embedder, doc_vectors

        d = self.data
        if self._doc_embed is None:  # the fixed model, loaded once
            self._doc_embed = doc_embedder(self.doc_model, batch_size=self.batch_size, max_length=self.max_length)
        check_widths(embed.dims or embed.width, self._doc_embed.dims or self._doc_embed.width, embed.source, self._doc_embed.source)
        docs = doc_vectors(self._doc_embed, d.corpus, self.beir, self.batch_size)
        r = evaluate_retrieval(lambda s: embed(s, batch_size=self.batch_size), d.queries, d.corpus, d.qrels, k=self.k,
                               batch_size=self.batch_size, corpus_embeddings=docs)
        out = {m: 100.0 * float(v) for m, v in r.items() if m.startswith(("MRR@", "nDCG@", "Recall@"))}
        return {**out, "queries": r["queries"], "corpus": r["corpus"], "max_length": embed.max_length,
                "doc_model": str(self._doc_embed.source), "doc_max_length": self._doc_embed.max_length}

    def describe(self) -> dict:
        return {"data": self.beir, "split": self.split, **({"doc_model": str(self.doc_model)} if self.doc_model is not None else {})}


def _remember(key: tuple, vectors) -> None:
    """Keep a model's corpus vectors in the memo within CORPUS_MEMO_BYTES (a corpus over it: not kept)."""
    if vectors.nbytes > CORPUS_MEMO_BYTES:
        return
    _corpus_memo[key] = vectors  # shared by later scores: TopK.add reads it, never writes (a read-only array makes torch warn)
    while sum(v.nbytes for v in _corpus_memo.values()) > CORPUS_MEMO_BYTES:
        _corpus_memo.popitem(last=False)


class RetrievalEvaluator(Evaluator):
    """`evaluate_retrieval` on (queries, corpus, qrels) loaded once; scores x100 (as STS), prefixed.

    `key`: the metric that selects with `select=True` (any case: "nDCG@10", "mrr@10", "recall@100";
    a Recall cutoff it names is added to `k`). `max_length`: tokens per query and passage (default:
    the student's own length, its position limit). `from_recipe`: a recipe's eval.retrieval.
    """

    def __init__(self, queries, corpus, qrels, k: Sequence[int] = (10,), batch_size: int = 128, select: bool = False,
                 prefix: str = "retrieval/", key: str = "MRR@10", max_length: int | None = None, doc_model=None):
        from distill.eval.retrieval import RetrievalData, metric_key

        self.key, cut = metric_key(key)
        k = tuple(sorted(set(k) | ({cut} if cut else set())))
        self.set = RetrievalSet(RetrievalData(queries, corpus, qrels), k=k, batch_size=batch_size, max_length=max_length,
                                doc_model=doc_model)
        self.select, self.prefix = select, prefix

    @classmethod
    def from_recipe(cls, cfg, batch_size: int, teacher: str | None = None) -> RetrievalEvaluator:
        """eval.retrieval (a RetrievalEvalConfig): its BEIR split, logged as retrieval/nDCG@10,
        retrieval/MRR@10, retrieval/Recall@100 (and the Recall@K its metric names). With doc_model
        (teacher: the recipe's `teacher`), passages by that model, queries by the student."""
        from distill.eval.retrieval import load_retrieval_data
        from distill.eval.retrieval.asymmetric import resolve_doc_model

        data = load_retrieval_data(beir=cfg.beir, split=cfg.split)
        ev = cls(data.queries, data.corpus, data.qrels, k=(100,), batch_size=cfg.batch_size or batch_size, select=cfg.select,
                 key=cfg.metric, max_length=cfg.max_length, doc_model=resolve_doc_model(getattr(cfg, "doc_model", None), teacher))
        ev.set.beir, ev.set.split = str(cfg.beir), cfg.split
        return ev

    def evaluate(self, state, head: bool = True) -> dict[str, float]:
        return self.score_model(state.embedder(head, max_length=self.set.max_length))

    def score_model(self, model) -> dict[str, float]:
        """The prefixed scores of any model `RetrievalSet.score` takes (a baseline: the teacher)."""
        r = self.set.score(model)
        return {self.prefix + m: v for m, v in r.items() if m.startswith(("MRR@", "nDCG@", "Recall@"))}

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


def baseline_scores(teacher: str, student, tasks: Sequence[str], data: dict, batch_size: int, max_length: int | None = None,
                    retrieval: RetrievalSet | None = None, dev_retrieval: RetrievalEvaluator | None = None) -> dict:
    """{"key", "teacher": {...}, "init": {...}}, each with name, scores, params, dim, device: the
    teacher and the untrained student on `tasks` (none: empty scores); with `retrieval` (a
    RetrievalSet: eval.final_retrieval) their scores there too ("retrieval"), and with
    `dev_retrieval` (the recipe's selecting RetrievalEvaluator) its prefixed scores among "scores",
    as a run logs them. `student`: a name to load, or (name, encoder, embed) for the student a run
    already holds. Shared by training (Baselines) and `distill compare`."""
    from distill.embedding import StudentEmbedder
    from distill.models import load_student, load_teacher
    from distill.presets import model_name

    out: dict = {"key": {"teacher": teacher, "tasks": list(tasks), "scoring": SCORING, **retrieval_key(retrieval, dev_retrieval)}}
    named = isinstance(student, (str, dict))
    device = None if named else student[1].device  # the run's device, else the best one
    t_enc = load_teacher(teacher, device=device)
    timing: dict = {}
    scores = evaluate_sts(t_enc, tasks=tasks, data=data, batch_size=batch_size, progress=False, timing=timing) if tasks else {}
    if dev_retrieval is not None:
        scores.update(dev_retrieval.score_model(t_enc))
    out["teacher"] = _describe(model_name(teacher), t_enc, scores, timing)
    if retrieval is not None:
        out["teacher"]["retrieval"] = retrieval.score(t_enc)
    del t_enc
    timing = {}
    if named:
        name, enc = model_name(student), load_student(student, max_length=max_length, teacher=teacher)
        scores = evaluate_sts(enc, tasks=tasks, data=data, batch_size=batch_size, progress=False, timing=timing) if tasks else {}
    else:
        name, enc, embed = student
        scores = evaluate_sts(lambda s: embed(s, batch_size=batch_size), tasks=tasks, data=data, progress=False, timing=timing) if tasks else {}
    # retrieval without a head, as the run scores its untrained student, at the student's own length
    if dev_retrieval is not None:
        scores.update(dev_retrieval.score_model(StudentEmbedder(enc, max_length=dev_retrieval.set.max_length)))
    out["key"]["student"] = name
    out["init"] = _describe(name, enc, scores, timing)
    if retrieval is not None:
        out["init"]["retrieval"] = retrieval.score(StudentEmbedder(enc, max_length=retrieval.max_length))
    return out


def retrieval_key(retrieval: RetrievalSet | None, dev_retrieval: RetrievalEvaluator | None = None) -> dict:
    """What a saved baselines.json must match to be reused: the retrieval splits and lengths (none: {})."""
    out = {}
    if retrieval is not None:
        out["retrieval"] = {**retrieval.describe(), "max_length": retrieval.max_length}
    if dev_retrieval is not None:
        out["dev_retrieval"] = {**dev_retrieval.set.describe(), "max_length": dev_retrieval.set.max_length, "key": dev_retrieval.selection_key}
    return out


def _describe(name: str, enc, scores: dict, timing: dict) -> dict:
    import torch

    device = torch.cuda.get_device_name(enc.device) if enc.device.type == "cuda" else "cpu"
    return {"name": name, "scores": scores, "params": enc.num_parameters(), "dim": enc.dim, "device": device,
            "sts_sentences_per_s": sentences_per_s(timing)}


def sentences_per_s(timing: dict) -> float | None:
    """evaluate_sts's `timing` as sentences/s (None when nothing was timed)."""
    return timing["sentences"] / timing["seconds"] if timing.get("seconds") else None


def table_scores(scores: Mapping[str, float]) -> dict[str, float]:
    """Scores without the selection sets (they are not report columns): STS dev, retrieval dev."""
    return {k: v for k, v in scores.items() if k not in DEV_TASKS and "/" not in k}


class Baselines(Callback):
    """Before training: the teacher and the untrained student (no head: an untrained head only adds
    noise) on the final tasks; RUN/baselines.json, computed once. `table()`: their scores for
    results["baselines"] (the trainer's finish() asks for them)."""

    def __init__(self, run_dir: Path, teacher: str, student_name: str, tasks: Sequence[str], data: dict, batch_size: int,
                 retrieval: RetrievalSet | None = None):
        from distill.presets import model_name

        self.path, self.teacher, self.student_name = Path(run_dir) / "baselines.json", teacher, model_name(student_name)
        self.tasks, self.data, self.batch_size, self.retrieval = list(tasks), data, batch_size, retrieval

    def on_train_begin(self, state) -> None:
        from distill.presets import model_name

        if self.path.is_file():
            return
        # minutes on a CPU with no bar of its own (the scores print at the end): say what runs
        print(f"[distill] baselines: the teacher {model_name(self.teacher)} and the untrained {self.student_name} on {', '.join(self.tasks)} "
              f"(once per run folder: {self.path.name})", flush=True)
        student = (self.student_name, state.student, state.embedder(head=False))
        write_json_atomic(self.path, baseline_scores(self.teacher, student, self.tasks, self.data, self.batch_size, retrieval=self.retrieval))

    def _saved(self) -> dict | None:
        return json.loads(self.path.read_text()) if self.path.is_file() else None

    def table(self) -> dict | None:
        """{"teacher": scores, "init": scores} without the selection sets; None before on_train_begin wrote them."""
        saved = self._saved()
        if saved is None:
            return None
        return {role: table_scores(saved[role]["scores"]) for role in ("teacher", "init")}

    def retrieval_table(self) -> dict | None:
        """{"teacher": scores, "init": scores} on the final retrieval split; None without one."""
        saved = self._saved()
        if saved is None or self.retrieval is None or "retrieval" not in saved["teacher"]:
            return None
        return {role: saved[role]["retrieval"] for role in ("teacher", "init")}

    def speeds(self) -> dict:
        """{"teacher": sentences/s, "init": sentences/s} on the final tasks' sentences (those timed:
        a baselines.json of an earlier version has none)."""
        saved = self._saved() or {}
        return {role: saved[role]["sts_sentences_per_s"] for role in ("teacher", "init") if saved.get(role, {}).get("sts_sentences_per_s")}


class FinalReport:
    """The best student (in `state.student` at the end) on the final tasks: results["best"] ({}
    without any; with `dims`, eval.dims, also "TASK@k" and "Avg@k" per width, from the same
    encoding), and on the final retrieval split: results["retrieval"]."""

    def __init__(self, tasks: Sequence[str], data: dict, batch_size: int, retrieval: RetrievalSet | None = None,
                 dims: Sequence[int] = ()):
        self.tasks, self.data, self.batch_size, self.retrieval, self.dims = list(tasks), data, batch_size, retrieval, list(dims)
        self.sentences_per_s: float | None = None  # how fast scores() encoded the final tasks' sentences

    def scores(self, state) -> dict[str, float]:
        if not self.tasks:
            return {}
        embed = state.embedder()
        timing: dict = {}
        scores = evaluate_sts(lambda s: embed(s, batch_size=self.batch_size), tasks=self.tasks, data=self.data, progress=False,
                              prefix_dims=self.dims, timing=timing)
        self.sentences_per_s = sentences_per_s(timing)
        return scores

    def retrieval_scores(self, state) -> dict | None:
        """{"data", "split", nDCG@10, MRR@10, Recall@100 (x100), "queries", "corpus", "max_length"}; None without a split."""
        if self.retrieval is None:
            return None
        return {**self.retrieval.describe(), **self.retrieval.score(state.embedder(max_length=self.retrieval.max_length))}
