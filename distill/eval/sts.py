"""STS evaluation the SimCSE / SentEval way: Spearman x100 between cosine similarity and gold.

Every distinct sentence of the requested sets is encoded once (26,173 for the seven sets), then
each set is scored from the shared embedding table. Used by `distill eval` and, in training, by
the evaluator callbacks of training/evaluators.py: STSEvaluator (STS-B dev at every evaluation
point, selecting the best student), Baselines and FinalReport (the final seven-set report).

Models we load are scored as SentEval scores them: in fp32 (no bf16 autocast, also on a GPU)
and without truncation below the model's own limit (`Encoder.max_positions`), whatever length
a student was trained at.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
from scipy.stats import spearmanr

from distill.embedding import embedder, truncate
from distill.errors import DistillError
from distill.eval.sts_data import STSPairs, load_sts
from distill.tasks import DEV_LABELS, DEV_TASK, TEST_TASKS, ZH_DEV_TASK, ZH_TEST_TASK, resolve_tasks, selection_task  # noqa: F401 (re-exported)

# How fast a row's model encoded the STS sentences (a run's report: teacher and student, same sentences).
SPEED_COLUMN = "sentences/s"
# Column order of every table: the English seven, their average, Chinese STS-B, the selection sets, the speed.
TABLE_COLUMNS = (*TEST_TASKS, "Avg", ZH_TEST_TASK, DEV_TASK, ZH_DEV_TASK, SPEED_COLUMN)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    na = np.linalg.norm(a, axis=1).clip(min=1e-12)
    nb = np.linalg.norm(b, axis=1).clip(min=1e-12)
    return (a * b).sum(1) / (na * nb)


def spearman_x100(pred: np.ndarray, gold: np.ndarray) -> float:
    return float(spearmanr(pred, gold).statistic * 100.0)


def evaluate_sts(
    model,
    tasks: Sequence[str] | None = None,
    sts_dir=None,
    batch_size: int = 128,
    progress: bool = True,
    data: dict[str, STSPairs] | None = None,
    *,
    backend: str = "torch",
    onnx_file=None,
    quantized: bool = False,
    dims: int | None = None,
    prefix_dims: Sequence[int] = (),
    timing: dict | None = None,
) -> dict[str, float]:
    """Spearman x100 per task, plus "Avg" over the English test sets evaluated (STS12-16, STS-B,
    SICK-R; the selection sets and Chinese STS-B never enter it, and without an English test set
    there is no "Avg").

    `model`: anything `distill.embedding.Embedder` takes (a model name / folder / preset, an
    `Encoder`, an `OnnxEncoder`, a `SentenceTransformer`, or a callable mapping a list of
    sentences to an (n, d) array), scored with `full_length` (fp32, the model's own length limit). `tasks`: default the seven test sets; add
    "STS-B-dev" for the selection metric. `data`: already loaded pairs (the trainer loads them
    once per run and scores the student with them at every evaluation step: there is no STS
    callback class, see `distill.training.loop`). `backend="onnx"` (`quantized`, `onnx_file`): a folder's onnx/ graph through
    onnxruntime, see `distill.onnx.runtime.OnnxEncoder`. `dims`: score the model served at that
    many dimensions (`distill.embedding.truncate`: the first `dims`, L2-normalized). `prefix_dims`:
    also score each of these widths from the same encoding, as "TASK@k" and "Avg@k" (a width
    equal to the vector's own is the plain "TASK"); what a run's `eval.dims` reports. `timing`: a
    dict that receives "sentences" (the distinct sentences encoded) and "seconds" (the encoding's
    wall time, tokenization included), for a sentences/s measured on exactly these sentences.
    """
    names = resolve_tasks(tasks)
    pairs = data if data is not None else {t: load_sts(t, sts_dir) for t in names}
    missing = [t for t in names if t not in pairs]
    if missing:
        raise DistillError(f"no data for STS tasks {missing}")
    sentences = sorted({s for t in names for s in (*pairs[t].sentences1, *pairs[t].sentences2)})
    embed = embedder(model, batch_size=batch_size, progress=progress, backend=backend, onnx_file=onnx_file, quantized=quantized,
                     full_length=True, desc="STS encode", dims=dims)
    start = time.perf_counter()
    emb = embed(sentences)
    if timing is not None:
        timing.update(sentences=len(sentences), seconds=time.perf_counter() - start)
    if emb.shape[0] != len(sentences):
        raise DistillError(f"the model returned {emb.shape[0]} embeddings for {len(sentences)} sentences")
    row = {s: i for i, s in enumerate(sentences)}
    results = _score(emb, names, pairs, row, "")
    for k in prefix_dims:
        if int(k) != emb.shape[1]:
            results.update(_score(truncate(emb, int(k)), names, pairs, row, f"@{int(k)}"))
    return results


def _score(emb: np.ndarray, names: list[str], pairs: dict, row: dict, suffix: str) -> dict[str, float]:
    results: dict[str, float] = {}
    for t in names:
        p = pairs[t]
        a = emb[[row[s] for s in p.sentences1]]
        b = emb[[row[s] for s in p.sentences2]]
        sims = cosine_rows(a, b)
        if np.ptp(p.scores) == 0 or np.ptp(sims) == 0:  # Spearman is undefined (NaN) when one side is constant
            what = "every gold score is the same" if np.ptp(p.scores) == 0 else "the model gives every pair the same similarity"
            raise DistillError(f"STS task {t}{suffix}: no score can be computed, {what} ({len(p)} pairs)")
        results[t + suffix] = spearman_x100(sims, p.scores)
    tests = [results[t + suffix] for t in names if t in TEST_TASKS]
    if tests:
        results["Avg" + suffix] = float(np.mean(tests))
    return results


def by_width(results: dict[str, float]) -> list[tuple[int, dict[str, float]]]:
    """The "TASK@k" scores of `evaluate_sts(..., prefix_dims=...)`, per width k (widest first), with
    their plain task names: [(128, {"STS12": ..., "Avg": ...}), ...]."""
    widths: dict[int, dict[str, float]] = {}
    for key, value in results.items():
        name, at, k = key.rpartition("@")
        if at and k.isdigit():
            widths.setdefault(int(k), {})[name] = value
    return sorted(widths.items(), reverse=True)


def format_rows(rows: Sequence[tuple[str, dict[str, float]]]) -> str:
    """One markdown table of several rows (title, scores), columns those of the first row (a row
    without one of them shows "–" there)."""
    cols = [c for c in TABLE_COLUMNS if c in rows[0][1]]
    head = "| " + " | ".join(["", *cols]) + " |"
    sep = "|" + "|".join(["---"] * (len(cols) + 1)) + "|"
    return "\n".join([head, sep, *("| " + " | ".join([name, *(_cell(c, scores.get(c)) for c in cols)]) + " |" for name, scores in rows)])


def _cell(column: str, value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:,.0f}" if column == SPEED_COLUMN else f"{value:.2f}"


def format_table(results: dict[str, float], title: str | None = None) -> str:
    """A markdown table, columns in the paper's order; with `title`, a first column naming the row."""
    if title is not None:
        return format_rows([(title, results)])
    cols = [c for c in TABLE_COLUMNS if c in results]
    return "\n".join(["| " + " | ".join(cols) + " |", "|" + "|".join(["---"] * len(cols)) + "|",
                      "| " + " | ".join(_cell(c, results[c]) for c in cols) + " |"])
