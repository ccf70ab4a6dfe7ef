"""`distill compare`: one recipe, several objectives, one table.

The same teacher cache, student, data and schedule are run under each loss (and seed), each in
OUT/<loss>[-seed<N>]/, then collected into the paper's table:

    OUT/baselines.json   teacher and untrained student on the final tasks (computed once)
    OUT/<loss>/          a normal `distill train` run folder (results.json, best/, log.jsonl...)
    OUT/compare.md       rows: teacher, student init, each loss (mean ± s.d. over seeds)
    OUT/compare.csv      one row per run (teacher and init included)
    OUT/compare.json     the same rows as JSON
    OUT/compare.png      the selection metric (STS-B dev, or eval.retrieval's) against steps,
                         one line per loss/seed

With eval.final_retrieval the table gets the best student's nDCG@10 / MRR@10 / Recall@100 (x100)
on that split, for the baselines too; with eval.retrieval selecting, "best dev" and the plot are
its metric on its split.

A run folder that already holds results.json is reused (an interrupted compare continues where it
stopped); one that holds only a checkpoint is resumed, when it is a run folder distill wrote
(its `.distill-run.json`, distill/training/run_folder.py) with its recipe.yaml. A folder whose recipe
differs from this compare's, one without recipe.yaml, and one that is not distill's are refused,
all before any training, rather than silently mixed into the table or written over.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from distill.config import Recipe, check_loss, loss_defaults, parse_override, saved_recipe_with_defaults
from distill.errors import DistillError
from distill.io import write_json_atomic

# The rendering (the table, CSV, plot) is distill/report.py's; its names stay importable from here.
from distill.report import (  # noqa: F401
    CSV_COLUMNS,
    REPORT_TASKS,
    RETRIEVAL_CSV_COLUMNS,
    dev_label,
    fmt,
    format_compare_table,
    plot_dev_curves,
    write_csv,
    write_outputs,
)

# ----------------------------------------------------------------------------- loss parameters


def default_losses() -> tuple[str, ...]:
    """The losses compared when none are named: every stage-1 loss of the registry, in its order."""
    from distill.losses import comparable_losses

    return comparable_losses()


def parse_losses(text: str | Iterable[str]) -> list[str]:
    """'mse,cosine' (or a list) -> ['mse', 'cosine']; an unknown loss is an error naming it."""
    names = [p.strip() for p in (text.split(",") if isinstance(text, str) else text) for p in str(p).split(",")]
    names = list(dict.fromkeys(n for n in names if n))
    if not names:
        raise DistillError("--losses: name at least one loss (" + ", ".join(default_losses()) + ")")
    for n in names:
        if n not in default_losses():
            raise DistillError(f"--losses: unknown loss {n!r} (known: {', '.join(default_losses())})")
    return names


def parse_loss_overrides(items: Sequence[str] | Mapping[str, Mapping[str, Any]] | None) -> dict[str, dict[str, Any]]:
    """['hpd.k=64', 'crd.tau=0.1'] -> {'hpd': {'k': 64}, 'crd': {'tau': 0.1}}, every name checked."""
    if not items:
        return {}
    if isinstance(items, Mapping):
        pairs = [(f"{loss}.{key}", loss, key, value) for loss, kv in items.items() for key, value in dict(kv).items()]
    else:
        pairs = []
        for text in items:
            dotted, value = parse_override(text)
            loss, _, key = dotted.partition(".")
            if not key:
                raise DistillError(f"--loss-set {text!r}: expected LOSS.KEY=VALUE, e.g. hpd.k=64")
            pairs.append((text, loss, key, value))
    out: dict[str, dict[str, Any]] = {}
    for text, loss, key, value in pairs:
        if loss not in default_losses():
            raise DistillError(f"--loss-set {text}: unknown loss {loss!r} (known: {', '.join(default_losses())})")
        if key == "name":
            raise DistillError(f"--loss-set {text}: the loss name is not a parameter")
        try:
            check_loss({"name": loss, key: value})
        except DistillError as exc:
            raise DistillError(f"--loss-set {text}: {exc}") from None
        out.setdefault(loss, {})[key] = value
    return out


def loss_specs(recipe: Recipe, losses: Sequence[str], overrides: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, dict]:
    """Each loss's full parameter mapping: the recipe's own for its loss, the loss class's defaults
    for the others, then the --loss-set overrides; validated like a recipe's loss section."""
    overrides = overrides or {}
    specs = {}
    for name in losses:
        base = {k: v for k, v in recipe.loss.items() if k != "name"} if recipe.loss["name"] == name else loss_defaults(name)
        try:
            specs[name] = check_loss({"name": name, **base, **dict(overrides.get(name, {}))})
        except DistillError as exc:
            raise DistillError(f"loss {name}: {exc}") from None
    return specs


# ----------------------------------------------------------------------------- runs


@dataclasses.dataclass
class Run:
    loss: str
    seed: int
    dir: Path
    recipe: Recipe


def plan_runs(recipe: Recipe, losses: Sequence[str], out_dir: str | Path, loss_overrides=None,
              seeds: Sequence[int] | None = None, seed_losses: Sequence[str] | None = None) -> list[Run]:
    """One Run per (loss, seed). With `seeds`, the losses in `seed_losses` (default: all) run once
    per seed in OUT/<loss>-seed<N>; every other run uses the recipe's seed in OUT/<loss>."""
    losses = parse_losses(losses)
    specs = loss_specs(recipe, losses, parse_loss_overrides(loss_overrides))
    seeded = set(losses if seed_losses is None else parse_losses(seed_losses)) if seeds else set()
    out_dir = Path(out_dir)
    runs = []
    for name in losses:
        for seed in (list(dict.fromkeys(int(s) for s in seeds)) if name in seeded else [None]):
            folder = out_dir / (name if seed is None else f"{name}-seed{seed}")
            run = copy.deepcopy(recipe)
            run.loss = specs[name]
            run.train = dataclasses.replace(run.train, seed=recipe.train.seed if seed is None else seed)
            run.output = dataclasses.replace(run.output, dir=str(folder))
            run.eval = dataclasses.replace(run.eval, baselines=False)  # compare scores them once itself
            runs.append(Run(name, run.train.seed, folder, run))
    return runs


def _comparable(d: dict) -> dict:
    d = copy.deepcopy(d)
    d.pop("output", None)  # where the folder lives / wandb do not change what was trained
    d.get("eval", {}).pop("baselines", None)
    return d


def _check_run_folder(run: Run) -> None:
    """Refuse a per-loss folder compare may not reuse, resume or write into: a run there (results.json
    or checkpoint.pt) needs its recipe.yaml, matching; one to resume, distill's marker; an empty or
    missing folder is trained in. What `train` itself refuses (a user's files) is refused here too,
    before the first run starts."""
    from distill.training.run_folder import RUN_MARKER, check_run_folder, is_run_folder

    done, ckpt, recipe = ((run.dir / name).is_file() for name in ("results.json", "checkpoint.pt", "recipe.yaml"))
    if not done and not ckpt:
        check_run_folder(run.dir, resume=False)
    elif not recipe:
        raise DistillError(f"{run.dir}: holds {'results.json' if done else 'checkpoint.pt'} but no recipe.yaml, so it is not "
                           "a run this compare wrote: move it away or choose another --out (nothing in it was read or changed)")
    elif not done and not is_run_folder(run.dir):
        raise DistillError(f"{run.dir}: holds checkpoint.pt but no {RUN_MARKER}, so compare did not write it and does not "
                           f"resume it: move it away or choose another --out (a run of an older distill: "
                           f"`distill train {run.dir / 'recipe.yaml'} --resume` finishes it, then compare reuses it)")
    if recipe:
        _check_same_recipe(run)


def _check_same_recipe(run: Run) -> None:
    saved_file = run.dir / "recipe.yaml"
    # keys added since the folder was written (a loss parameter, a section key) count as their defaults
    saved = _comparable(saved_recipe_with_defaults(yaml.safe_load(saved_file.read_text(encoding="utf-8")) or {}))
    want = _comparable(run.recipe.to_dict())
    if saved != want:
        diff = sorted(k for k in set(saved) | set(want) if saved.get(k) != want.get(k))
        raise DistillError(
            f"{run.dir} holds a run of another recipe ({', '.join(diff)} differ): "
            f"choose another --out, or delete that folder to retrain it"
        )


def _baselines(recipe: Recipe, out_dir: Path, log: Callable[[str], None]) -> dict:
    """Teacher and untrained student on the final (and dev) tasks, and on the retrieval splits
    (eval.final_retrieval; eval.retrieval when it selects); OUT/baselines.json, reused. The same
    computation (and JSON shape) as a training run's baselines.json."""
    from distill.eval.sts_data import load_sts
    from distill.tasks import recipe_tasks
    from distill.training.evaluators import SCORING, RetrievalEvaluator, RetrievalSet, baseline_scores, retrieval_key

    ev = recipe.eval
    tasks = list(dict.fromkeys(recipe_tasks(ev.final_tasks) + recipe_tasks(ev.tasks)))
    fr = ev.final_retrieval
    final_ret = RetrievalSet.load(fr.beir, fr.split, batch_size=fr.batch_size or ev.batch_size, max_length=fr.max_length) if fr.beir else None
    dev_ret = RetrievalEvaluator.from_recipe(ev.retrieval, ev.batch_size) if ev.retrieval.beir and ev.retrieval.select else None
    path = out_dir / "baselines.json"
    # a baselines.json from another teacher, student, task list, folder, retrieval split or scoring
    # is recomputed rather than mixed into the table
    key = {"teacher": recipe.teacher, "tasks": tasks, "scoring": SCORING, **retrieval_key(final_ret, dev_ret),
           "student": recipe.student, "sts_dir": ev.sts_dir}
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("key") == key:
            log(f"[compare] baselines: reused {path}")
            return saved
    log(f"[compare] baselines: teacher {recipe.teacher_name}, untrained {recipe.student_name}")
    sts = {t: load_sts(t, ev.sts_dir) for t in tasks}
    out = baseline_scores(recipe.teacher, recipe.student, tasks, sts, ev.batch_size, max_length=recipe.data.max_length,
                          retrieval=final_ret, dev_retrieval=dev_ret)
    out["key"] = key
    write_json_atomic(path, out)
    return out


def _free_memory() -> None:
    """Drop the finished run's student, optimizer and targets before the next run allocates its own."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _dev_task(recipe: Recipe) -> str:
    """The selection key a run of `recipe` records: eval.retrieval's prefixed metric when it
    selects (e.g. retrieval/nDCG@10), else the STS selection set."""
    from distill.eval.retrieval import metric_key
    from distill.tasks import resolve_tasks, selection_task

    if recipe.eval.retrieval.beir and recipe.eval.retrieval.select:
        return "retrieval/" + metric_key(recipe.eval.retrieval.metric)[0]
    return selection_task(resolve_tasks(recipe.eval.tasks))


def _retrieval_cells(scores: Mapping | None, split: str | None) -> dict:
    """A row's eval.final_retrieval part: {"retrieval": {metric: x100}, "retrieval_split"} or Nones."""
    from distill.eval.retrieval import REPORT_METRICS

    if not scores:
        return {"retrieval": None, "retrieval_split": None}
    return {"retrieval": {m: scores.get(m) for m in REPORT_METRICS}, "retrieval_split": split}


def _baseline_row(role: str, base: dict, recipe: Recipe) -> dict:
    scores = base["scores"]
    dev = _dev_task(recipe)
    return {
        "loss": role, "student": recipe.student_name if role == "init" else None, "teacher": recipe.teacher_name, "seed": None,
        "tasks": {t: scores[t] for t in REPORT_TASKS if t in scores}, "avg": scores.get("Avg"),
        "train_sentences_per_s": None, "params": base["params"], "dim": base["dim"],
        "best_dev": scores.get(dev), "dev_task": dev, "device": base.get("device"), "model": base["name"],
        **_retrieval_cells(base.get("retrieval"), recipe.eval.final_retrieval.split if recipe.eval.final_retrieval.beir else None),
    }


def _run_row(run: Run, results: dict, reused: bool) -> dict:
    best = results["best"]
    ret = results.get("retrieval")
    return {
        "loss": run.loss, "student": run.recipe.student_name, "teacher": run.recipe.teacher_name, "seed": run.seed,
        "tasks": {t: best[t] for t in REPORT_TASKS if t in best}, "avg": best.get("Avg"),
        "train_sentences_per_s": results.get("train_sentences_per_s"), "params": results.get("params"),
        "dim": results.get("embedding_dim"), "best_dev": results.get("best_dev"), "dev_task": results.get("dev_task", _dev_task(run.recipe)),
        "device": results.get("device"), "peak_gpu_mem_gib": results.get("peak_gpu_memory_gib"),
        "steps": results.get("steps"), "best_step": results.get("best_step"), "sentences": results.get("sentences"),
        "run_dir": str(run.dir), "reused": reused, **_retrieval_cells(ret, ret.get("split") if ret else None),
    }


def compare(
    recipe: Recipe,
    losses: Sequence[str] | str | None = None,
    out_dir: str | Path = "runs/compare",
    loss_overrides: Sequence[str] | Mapping[str, Mapping[str, Any]] | None = None,
    seeds: Sequence[int] | None = None,
    progress: bool = True,
    *,
    seed_losses: Sequence[str] | None = None,
    log: Callable[[str], None] | None = print,
) -> list[dict]:
    """Train `recipe` under each loss (and seed), then write OUT/compare.{md,csv,json,png}.

    Returns the rows of compare.json: the teacher, the untrained student ("init"), then one per run:
    {"loss", "student", "teacher", "seed", "tasks": {STS12..SICK-R}, "avg", "train_sentences_per_s",
    "params", "dim", "best_dev", "device", ...}. `loss_overrides`: ["hpd.k=64", ...] or
    {"hpd": {"k": 64}}. `seeds`: run the losses of `seed_losses` (default all) once per seed.
    `losses` None: `default_losses()`.
    """
    from distill.training.run import train

    log = log or (lambda _msg: None)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise DistillError("compare runs its trainings one after another in one process: run it without torchrun")
    out_dir = Path(out_dir)
    runs = plan_runs(recipe, default_losses() if losses is None else losses, out_dir, loss_overrides, seeds, seed_losses)
    for run in runs:  # refuse a mismatched or foreign folder before spending any time
        _check_run_folder(run)
    out_dir.mkdir(parents=True, exist_ok=True)
    base = _baselines(recipe, out_dir, log)
    rows = [_baseline_row("teacher", base["teacher"], recipe), _baseline_row("init", base["init"], recipe)]
    curves = []
    for i, run in enumerate(runs, start=1):
        tag = f"{run.loss} seed {run.seed}"
        results_file = run.dir / "results.json"
        if results_file.is_file():
            results = json.loads(results_file.read_text())
            log(f"[compare] {i}/{len(runs)} {tag}: reused {results_file} (not retrained)")
            reused = True
        else:
            _check_run_folder(run)  # again: an earlier run of this loop may have taken hours
            resume = (run.dir / "checkpoint.pt").is_file()
            log(f"[compare] {i}/{len(runs)} {tag}: {'resuming' if resume else 'training'} in {run.dir}")
            results = train(run.recipe, resume=resume, progress=progress)
            reused = False
            _free_memory()
        row = _run_row(run, results, reused)
        rows.append(row)
        curves.append((run, results.get("evals", [])))
        shown = f"Avg {fmt(row['avg'])}" if row["avg"] is not None else ", ".join(f"{t} {fmt(v)}" for t, v in row["tasks"].items())
        if row["retrieval"]:
            shown = ", ".join(filter(None, [shown, f"{row['retrieval_split']} nDCG@10 {fmt(row['retrieval']['nDCG@10'])}"]))
        log(f"[compare] {tag}: {shown}, best dev {fmt(row['best_dev'])}")

    write_outputs(rows, out_dir, curves=curves, title=f"{recipe.student_name} distilled from {recipe.teacher_name}", dev=_dev_task(recipe))
    return rows
