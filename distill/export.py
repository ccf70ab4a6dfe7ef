"""`distill export`: a trained student -> a sentence-transformers folder with a model card.

The folder loads with plain `SentenceTransformer(DIR)` and its transformer with `AutoModel`:
Transformer -> Pooling (or, for a static student, StaticEmbedding) [-> Dense (the loss's embedding head, e.g. HPD's K-d tanh head, which is
part of the embedding)] [-> Dense (with --keep-projection, the loss's training-only student-side
head, its `export_head()`; or with --pca N, the PCA of the student's vectors of its training
sentences)] -> Normalize (cosine is unchanged by it; dot product then
equals cosine, as with the teachers). Written to a temp folder and renamed at the end.

Smaller vectors: `dims=N` (--dims) writes sentence-transformers' `truncate_dim` into
config_sentence_transformers.json, so that `SentenceTransformer(DIR)` returns the first N
dimensions (sentence-transformers truncates after the Normalize: cosine is what the truncated
vector is for; `distill eval/encode/similarity --model DIR` serve it at N too, re-normalized).
Meant for a student trained with loss.matryoshka_dims. `pca=N` (--pca) fits a PCA on the
student's own vectors of (a sample of) the run's training sentences, its teacher cache's
sentences.txt, and appends it as a Dense(d -> N) layer, W = the top N principal directions, b =
-W mean: the usual way to shrink a student that was not trained for prefixes. Its coordinates are
in order of variance, so --pca 384 --dims N and --pca N serve the same vectors.

An export never deletes what this tool did not create: every export folder carries a marker
(EXPORT_MARKER: tool, version, source run, time), and an existing --out is replaced only when
it holds that marker and --overwrite is given (old folder renamed aside, new one renamed in,
old one deleted). Any other non-empty folder, a file, the run folder or a folder inside it is
refused.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from distill.errors import DistillError
from distill.io import atomic_dir, check_writable, replace_dir, write_errors
from distill.report import RunLabels, retrieval_rows, sts_rows
from distill.saved_student import META, load_saved_student
from distill.st_format import st_module_classes

POOLING_MODES = {"mean": "mean", "cls_before_pooler": "cls"}  # what an exported Encoder's Pooling can be
EXPORT_MARKER = ".distill-export.json"
PCA_SAMPLE = 65_536  # training sentences the export's PCA is fitted on at most (a seeded random sample)


def check_out(run_dir: Path, out: Path, overwrite: bool) -> None:
    """Refuse an --out whose contents this tool did not write (see the module docstring)."""
    run, target = run_dir.resolve(), out.resolve()
    if target == run or run in target.parents:
        raise DistillError(f"--out {out}: it is the run folder {run_dir} or inside it; choose a folder outside the run")
    if target in run.parents:
        raise DistillError(f"--out {out}: the run folder {run_dir} is inside it; choose another folder")
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise DistillError(f"--out {out}: an existing file or link, not a folder; choose a new folder name")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not (out / EXPORT_MARKER).is_file():
        raise DistillError(f"--out {out}: a non-empty folder that is not a distill export (no {EXPORT_MARKER}); "
                           "choose a new or empty folder, nothing in it is deleted")
    if not overwrite:
        raise DistillError(f"--out {out}: holds a previous export; pass --overwrite to replace it")


def _interrupted_warning(run_dir: Path, student_dir: Path) -> None:
    if not (run_dir / "results.json").is_file() or not (run_dir / "final").is_dir():
        print(f"distill: warning: {run_dir} has no results.json / final/: the run was interrupted or is still running; "
              f"exporting {student_dir.name}/ as it is now", file=sys.stderr)


def _dense_from(module: nn.Module, what: str):
    """A sentence-transformers Dense copying a loss head: nn.Linear, or nn.Sequential(nn.Linear, activation)."""
    models = st_module_classes()

    parts = list(module) if isinstance(module, nn.Sequential) else [module]
    linear, activation = parts[0], (parts[1] if len(parts) == 2 else nn.Identity())
    if not isinstance(linear, nn.Linear) or len(parts) > 2 or isinstance(activation, nn.Linear):
        raise DistillError(f"{what}: a {type(module).__name__} head has no sentence-transformers Dense equivalent")
    dense = models.Dense(linear.in_features, linear.out_features, bias=linear.bias is not None, activation_function=activation)
    with torch.no_grad():
        dense.linear.weight.copy_(linear.weight)
        if linear.bias is not None:
            dense.linear.bias.copy_(linear.bias)
    return dense


def _saved_loss(meta: dict, dim: int, heads: dict, student_dir: Path):
    """The run's loss with its trained heads, or None when the saved student names no known loss."""
    from distill.losses import LOSSES, load_loss

    spec = meta.get("loss") or {}
    if spec.get("name") not in LOSSES:
        return None
    try:
        return load_loss(spec, dim, heads)
    except DistillError as exc:
        raise DistillError(f"{student_dir}: {exc}") from None


def export_student(run_dir: str | Path, out: str | Path, *, which: str = "best", keep_projection: bool = False, normalize: bool = True,
                   max_seq_length: int | None = None, overwrite: bool = False, finish: Callable[[Path], None] | None = None,
                   dims: int | None = None, pca: int | None = None) -> Path:
    """Write a run's student as a sentence-transformers folder.

    `max_seq_length` defaults to the model's own limit (`max_positions`), the length the run's
    scores were computed at, not the (often shorter) training length; a static student has none.
    `dims`: the folder's truncate_dim (served at N dimensions); `pca`: a PCA Dense(d -> N) fitted
    on the student's vectors of the run's training sentences (module docstring).
    """
    from sentence_transformers import SentenceTransformer

    models = st_module_classes()
    run_dir, out = Path(run_dir), Path(os.path.abspath(out))  # abspath: "." has no name to put a temp folder beside
    if not run_dir.is_dir():
        raise DistillError(f"{run_dir}: no such run folder")
    check_out(run_dir, out, overwrite)
    check_writable(out, "--out")  # the temp folder is made beside it: a read-only disk fails now, not after the work
    if (run_dir / "stage2" / which / META).is_file():
        run_dir = run_dir / "stage2"  # a two-stage IBKD run ships its stage-2 student
    student_dir = run_dir / which if (run_dir / which / META).is_file() else run_dir
    if not (student_dir / META).is_file():
        raise DistillError(f"{run_dir}: no trained student in it (expected {run_dir / which / META})")
    _interrupted_warning(run_dir, student_dir)
    enc, meta, heads = load_saved_student(student_dir, device="cpu")
    loss_name = meta.get("loss", {}).get("name", "")
    if max_seq_length is not None and not 1 <= max_seq_length <= enc.max_positions:
        raise DistillError(f"--max-seq-length {max_seq_length}: must be between 1 and the model's limit {enc.max_positions}")
    # the student's own input modules: Transformer -> Pooling, or a StaticEmbedding
    modules = enc.st_modules(student_dir, max_seq_length or enc.max_positions)
    loss = _saved_loss(meta, enc.dim, heads, student_dir)
    head = loss.embedding_head() if loss is not None else None
    if head is not None:  # part of the embedding (HPD's K-d tanh output), and scored as such
        modules.append(_dense_from(head, f"{loss_name} embedding head"))
    projection = None
    if dims is not None and keep_projection:
        raise DistillError("--dims and --keep-projection: give one of them (Matryoshka prefixes are of the student's own vector, "
                           "not of its training head's output)")
    if pca is not None and keep_projection:
        raise DistillError("--pca and --keep-projection: give one of them (the PCA reduces the student's own vector, not a head's)")
    if pca is not None:
        modules.append(_pca_dense(enc, head, meta, pca, student_dir))
        projection = f"a PCA to {pca} dimensions (--pca, fitted on the student's vectors of its training sentences)"
    if keep_projection:
        kept = loss.export_head() if loss is not None else None
        if kept is None:
            raise DistillError(f"--keep-projection: the {loss_name or 'unknown'} loss of this run has no student-side head to keep")
        _prefix, module, projection = kept
        modules.append(_dense_from(module, f"--keep-projection: {loss_name}"))
        projection += " (--keep-projection)"
    if normalize:
        modules.append(models.Normalize())
    model = SentenceTransformer(modules=modules, device="cpu")
    if dims is not None:
        _check_dims(dims, model, meta, pca)
        model.truncate_dim = dims  # saved in config_sentence_transformers.json; SentenceTransformer(DIR) reads it back

    kept = "; nothing written" + (" (the previous export is kept)" if out.is_dir() and any(out.iterdir()) else "")
    with write_errors(out, "--out", kept), \
            atomic_dir(out, publish=lambda tmp, target: publish_export(tmp, target, run_dir, overwrite)) as tmp:
        model.save(str(tmp), safe_serialization=True)
        (tmp / "README.md").write_text(model_card(run_dir, meta, model, projection, normalize), encoding="utf-8")
        (tmp / EXPORT_MARKER).write_text(json.dumps({**export_marker(run_dir, which, student_dir), "dims": dims, "pca": pca}, indent=2) + "\n")
        if finish is not None:  # e.g. the ONNX files: written before the rename, so the export appears complete or not at all
            finish(tmp)
    return out


def _check_dims(dims: int, model, meta: dict, pca: int | None) -> None:
    """--dims: 1..the exported width; a note when the student was not trained for prefixes."""
    width = (getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension)()
    if isinstance(dims, bool) or not isinstance(dims, int) or not 1 <= dims <= width:
        raise DistillError(f"--dims {dims}: must be between 1 and the exported width {width}")
    trained = (meta.get("loss") or {}).get("matryoshka_dims")
    if pca is None and not trained and dims < width:
        print(f"distill: note: --dims {dims}: this student was not trained with loss.matryoshka_dims, so its first {dims} "
              f"dimensions were not trained to stand alone (--pca {dims} is the usual way to shrink it)", file=sys.stderr)


def _pca_dense(enc, head, meta: dict, k: int, student_dir: Path):
    """A sentence-transformers Dense(d -> k): the PCA of the student's vectors (through its embedding
    head, if any) of at most PCA_SAMPLE of the run's training sentences (its cache's sentences.txt).
    W = the top k principal directions (rows), b = -W mean, so the layer centers and projects."""
    import numpy as np

    from distill.data.cache import TeacherCache
    from distill.embedding import StudentEmbedder

    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise DistillError(f"--pca {k!r}: expected a whole number of dimensions >= 1")
    cache = meta.get("cache")
    if not cache or not (Path(cache) / "sentences.txt").is_file():
        raise DistillError(f"--pca: the run's training sentences are not at {cache!r} (its teacher cache, recorded in "
                           f"{student_dir / META}); run the export from the folder the run was trained in")
    sentences = TeacherCache.open(cache).sentences()
    rows = np.sort(np.random.default_rng(0).choice(len(sentences), size=min(PCA_SAMPLE, len(sentences)), replace=False))
    emb = StudentEmbedder(enc, head)(sentences.take(rows), batch_size=256).astype(np.float64)
    d = emb.shape[1]
    if k > min(d, len(rows)):
        raise DistillError(f"--pca {k}: must be at most the student's width {d} (and the {len(rows)} sentences it is fitted on)")
    mean = emb.mean(0)
    _, _, vt = np.linalg.svd(emb - mean, full_matrices=False)
    weight = vt[:k]
    dense = st_module_classes().Dense(d, k, bias=True, activation_function=nn.Identity())
    with torch.no_grad():
        dense.linear.weight.copy_(torch.from_numpy(weight))
        dense.linear.bias.copy_(torch.from_numpy(-weight @ mean))
    return dense


def export_marker(run_dir: Path, which: str, student_dir: Path) -> dict:
    """.distill-export.json's fields: what made the folder (ours to replace later) and from which run."""
    from distill import __version__

    return {"tool": "distill", "version": __version__, "source_run": str(run_dir.resolve()), "which": which,
            "student": str(student_dir.resolve()), "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def publish_export(tmp: Path, out: Path, run_dir: Path, overwrite: bool) -> None:
    """Rename the finished temp folder into place; replace only a previous export of ours."""
    check_out(run_dir, out, overwrite)  # again: the folder may have changed while the model was written
    replace_dir(tmp, out)  # a previous export (checked by its marker) aside, the new one in, the old one deleted


def model_card(run_dir: Path, meta: dict, model, projection: str | None, normalize: bool) -> str:
    results_file = run_dir / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    scores = results.get("best", {})
    recipe = meta.get("recipe", {})
    dim = (getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension)()
    lines = [
        "---",
        "library_name: sentence-transformers",
        "pipeline_tag: sentence-similarity",
        "tags: [sentence-transformers, feature-extraction, sentence-similarity, knowledge-distillation]",
        "---",
        f"# {Path(run_dir).name}",
        "",
        f"A {dim}-d sentence embedder distilled from **{meta.get('teacher')}** into **{meta.get('student')}** "
        f"with the **{meta.get('loss', {}).get('name')}** objective, by the `distill` toolkit.",
        "",
        "```python",
        "from sentence_transformers import SentenceTransformer",
        "model = SentenceTransformer('PATH_TO_THIS_FOLDER')",
        "embeddings = model.encode(['A man is playing a guitar.', 'Someone plays the guitar.'])",
        "```",
        "",
        "## Training",
        f"- Teacher: `{meta.get('teacher')}`; student: `{meta.get('student')}` ({sum(p.numel() for p in model.parameters()):,} parameters exported)",
        f"- Objective: `{json.dumps(meta.get('loss', {}))}`",
        f"- Data: {meta.get('cache_count', '?'):,} distinct sentences from {', '.join(recipe.get('data', {}).get('corpus', []) or [meta.get('cache', '?')])}" if isinstance(meta.get('cache_count'), int) else f"- Data: {meta.get('cache', '?')}",
        f"- Schedule: `{json.dumps(recipe.get('train', {}))}`",
        f"- Checkpoint: step {meta.get('step')} (selected by {meta.get('selected_by', 'the last step')}"
        + (f" = {meta['score']:.2f})" if "score" in meta else ")"),
        f"- Output: {f'the student embedding through {projection}' if projection else 'the student embedding'}"
        + (", L2-normalized" if normalize else "")
        + (f"; served at its first {model.truncate_dim} dimensions (truncate_dim)" if getattr(model, "truncate_dim", None) else ""),
        "",
        "## STS (Spearman x100 of cosine similarity)",
        "",
    ]
    served = getattr(model, "truncate_dim", None)
    if scores and served:  # the run's own scores at the served width (eval.dims), else say they are the full vector's
        at = {k.removesuffix(f"@{served}"): v for k, v in scores.items() if k.endswith(f"@{served}")}
        lines.append(f"At the {served} dimensions this folder serves (the run's eval.dims):" if at else
                     f"Of the full vector (the run did not score {served} dimensions: add {served} to eval.dims); this folder serves its first {served}:")
        lines.append("")
        scores = at or scores
    labels = RunLabels(after="this model", teacher=f"teacher {meta.get('teacher')}", before=f"{meta.get('student')} before training")
    # at a served width only this model's row: the baselines were scored at their full width
    rows = sts_rows({**results, "baselines": None} if served else results, labels, best=scores, widths=False)
    if rows:
        from distill.eval.sts import format_rows

        lines.append(format_rows(rows))
    elif results:
        lines.append("(no STS sets in this run's eval.final_tasks)")
    else:
        lines.append("(no results.json in the run folder)")
    rows = retrieval_rows(results, labels)
    if rows:
        from distill.eval.retrieval import format_report

        ret = results["retrieval"]
        lines += ["", "## Retrieval (x100)", "",
                  f"`{Path(str(ret.get('data'))).name}` {ret['split']} split: {ret['queries']} queries, {ret['corpus']} passages, "
                  f"exact cosine search, queries and passages truncated at {ret.get('max_length')} tokens.", "",
                  format_report(rows)]
    return "\n".join(lines) + "\n"
