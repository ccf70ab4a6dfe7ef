"""The offline STS benchmark: every objective, same teacher cache, students and schedule.

Teacher all-mpnet-base-v2; students all-minilm-l3-v2 (first three layers of all-MiniLM-L6-v2)
and all-minilm-l6-v2; corpus = the three files of ../shared/data/corpus (164,834 distinct
sentences); 2 epochs at batch 256 for every objective; the student kept is the best on STS-B dev
(the only selection signal); losses mse, cosine, crd, hpd, infonce, ibkd, with three seeds for
infonce and ibkd. Everything but the student comes from the recipe
(configs/mpnet-to-minilm-l3-ibkd.yaml), whose ibkd parameters IBKD keeps; the other losses run
with their defaults (each loss class's `defaults()`) unless --loss-set says otherwise.

    python benchmarks/offline_sts.py                                  # the full benchmark (GPU)
    python benchmarks/offline_sts.py --set train.max_steps=50 --out runs/offline-sts-quick
    python benchmarks/offline_sts.py --models-dir /tmp/stage/files    # models staged as folders

For each student it runs `distill.compare.compare` into OUT/<student>/ (run folders, compare.md /
.csv / .json / .png; finished runs are reused, so an interrupted benchmark continues), then
writes --json (one row per run plus the teacher's and each untrained student's rows, loss
"teacher" / "init"), appends a dated section to --bench-md (date, device, exact command, git
commit, the table) and prints the table last.

--models-dir: where the models were copied as plain folders (no hub, no PyPI). The script writes
a DISTILL_HOME (OUT/home) holding a copy of every teacher/student preset, with hub_id / base
pointing at the matching folder under --models-dir and offline_source cleared. A folder matches a
preset when its path under --models-dir is, or ends with, the preset's hub id (owner/name), the
hub id's last part, its offline source key or that PyPI package's inner folder, or the preset's
name (case-insensitive; a folder is a model when it has config.json or modules.json). E.g.
DIR/all-mpnet-base-v2/ and DIR/sentence-transformers/all-MiniLM-L6-v2/ serve the teacher and both
students. The teacher cache records the teacher's folder, so keep the staging path stable
between runs that share a cache.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DEFAULT_RECIPE = "configs/mpnet-to-minilm-l3-ibkd.yaml"
DEFAULT_STUDENTS = "all-minilm-l3-v2,all-minilm-l6-v2"
DEFAULT_LOSSES = "mse,cosine,crd,hpd,infonce,ibkd"
SECTION_TITLE = "## Offline STS distillation (benchmarks/offline_sts.py)"
JSON_KEYS = ("loss", "student", "seed", "tasks", "avg", "train_sentences_per_s", "peak_gpu_mem_gib", "device", "commit")


def git_commit() -> tuple[str, bool]:
    """(`git rev-parse --short HEAD`, whether the working tree has uncommitted changes); $DISTILL_COMMIT
    wins (a copy without .git, as on the GPU machine, is told its commit)."""
    if os.environ.get("DISTILL_COMMIT"):
        return os.environ["DISTILL_COMMIT"], False
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown", False
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=REPO, capture_output=True, check=False).returncode != 0
    return rev, dirty


# ----------------------------------------------------------------------------- staged models


def _model_folders(root: Path, max_depth: int = 5) -> list[tuple[str, Path]]:
    """(path under root, lowercased, '/'-separated; folder) for every model folder under root."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        rel = Path(dirpath).relative_to(root)
        if len(rel.parts) >= max_depth:
            dirnames[:] = []
        if "config.json" in filenames or "modules.json" in filenames:
            found.append(("/".join(rel.parts).lower(), Path(dirpath)))
        dirnames.sort()
    return found


def _candidates(model_id: str, offline_source: str | None, name: str) -> list[str]:
    from distill.resolve import PYPI_MODELS

    names = [model_id, model_id.rstrip("/").split("/")[-1]]
    if offline_source:
        names.append(offline_source)
        if offline_source in PYPI_MODELS:
            names.append(PYPI_MODELS[offline_source].inner)
    names.append(name)
    return [n.lower().strip("/") for n in dict.fromkeys(names) if n]


def stage_home(models_dir: Path, home: Path) -> dict[str, Path]:
    """Write a DISTILL_HOME at `home` whose presets point at the folders under `models_dir`.

    Returns {preset name: folder} for the presets that found their folder (the others are copied
    unchanged)."""
    import yaml

    from distill.errors import DistillError
    from distill.io import write_text_atomic
    from distill.presets import list_presets, repo_root

    if not models_dir.is_dir():
        raise DistillError(f"--models-dir {models_dir}: not a folder")
    folders = _model_folders(models_dir)
    if not folders:
        raise DistillError(f"--models-dir {models_dir}: no model folder (config.json or modules.json) inside")
    source_root = repo_root()
    matched: dict[str, Path] = {}
    for kind in ("teachers", "students"):
        for name in list_presets(kind):
            src = source_root / kind / f"{name}.yaml"
            data = yaml.safe_load(src.read_text(encoding="utf-8"))
            # the model's key: hub_id (a student's legacy name for it is base); a static student names none
            field = next((k for k in ("hub_id", "base") if data.get(k)), None)
            for cand in _candidates(str(data[field]), data.get("offline_source"), name) if field else ():
                hit = next((p for rel, p in folders if rel == cand or rel.endswith("/" + cand)), None)
                if hit is not None:
                    data[field], data["offline_source"] = str(hit.resolve()), None
                    matched[name] = hit
                    break
            header = f"# staged by benchmarks/offline_sts.py from {src}\n"
            write_text_atomic(home / kind / f"{name}.yaml", header + yaml.safe_dump(data, sort_keys=False))
    return matched


# ----------------------------------------------------------------------------- report


def benchmark_rows(per_student: list[tuple[str, list[dict]]], commit: str) -> list[dict]:
    """Teacher row once, then each student's init row and runs; every row gets the commit."""
    rows = []
    for i, (_student, rows_s) in enumerate(per_student):
        for r in rows_s:
            if r["loss"] == "teacher" and i > 0:
                continue
            row = {k: r.get(k) for k in JSON_KEYS if k != "commit"}
            if r["loss"] == "teacher":
                row["student"] = None
            row.update({"teacher": r.get("teacher"), "model": r.get("model"), "params": r.get("params"), "dim": r.get("dim"),
                        "best_dev": r.get("best_dev"), "steps": r.get("steps"), "sentences": r.get("sentences"), "reused": r.get("reused"), "commit": commit})
            rows.append(row)
    return rows


def section(rows: list[dict], table: str, recipe, args, argv: list[str], commit: str, dirty: bool, loss_params: dict) -> str:
    """The dated markdown section appended to BENCHMARKS.md."""
    import torch
    import transformers

    now = dt.datetime.now(dt.timezone.utc)
    runs = [r for r in rows if r["loss"] not in ("teacher", "init")]
    devices = sorted({str(r["device"]) for r in (runs or rows) if r.get("device")})
    reused = sum(1 for r in runs if r.get("reused"))
    sentences = next((r["sentences"] for r in runs if r.get("sentences")), None)
    steps = sorted({r["steps"] for r in runs if r.get("steps") is not None})
    seeds = sorted({r["seed"] for r in runs if r.get("seed") is not None})
    t = recipe.train
    schedule = f"max_steps {t.max_steps}" if t.max_steps else f"{t.epochs:g} epochs"
    schedule += f" ({', '.join(map(str, steps))} optimizer steps)" if steps else ""
    corpus = (f"corpus {sentences:,} distinct sentences" if sentences else "corpus") + " from " + ", ".join(recipe.data.corpus)
    multi = [n for n in loss_params if len({r['seed'] for r in runs if r['loss'] == n}) > 1]
    params = "; ".join(f"{n}: " + (", ".join(f"{k}={v}" for k, v in p.items() if k != "name") or "-") for n, p in loss_params.items())
    versions = f"torch {torch.__version__}, transformers {transformers.__version__}, Python {platform.python_version()}"
    train = f"batch {t.batch_size}, lr {t.lr:g}, precision {t.precision}; the student is selected on {', '.join(recipe.eval.tasks)} only"
    lines = [
        "", f"{SECTION_TITLE}, {now:%Y-%m-%d}", "",
        f"- date: {now:%Y-%m-%d %H:%M} UTC",
        f"- device: {', '.join(devices) or 'unknown'} ({versions})",
        f"- command: `python {shlex.join(argv)}`",
        f"- commit: {commit}" + (" (the working tree had uncommitted changes)" if dirty else ""),
        f"- recipe: {args.recipe}: teacher {recipe.teacher}; students {', '.join(args.students)}; {corpus}; {schedule}, {train}",
        f"- seeds: {', '.join(map(str, seeds))}" + (f" ({', '.join(multi)}: mean ± sample s.d. over them; the others one run)" if multi else ""),
        f"- loss parameters: {params}",
        f"- runs: {args.out}" + (f" ({reused} of {len(runs)} runs reused from an earlier invocation: their sentences/s were measured then)" if reused else ""),
        "", table, "",
    ]
    return "\n".join(lines)


def append_section(path: Path, text: str) -> None:
    from distill.io import write_text_atomic

    old = path.read_text(encoding="utf-8") if path.is_file() else "# Benchmarks\n"
    write_text_atomic(path, old.rstrip("\n") + "\n" + text)


# ----------------------------------------------------------------------------- main


def _list(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else [sys.argv[0], *argv])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default=DEFAULT_RECIPE, help=f"recipe YAML (default {DEFAULT_RECIPE}); its student is replaced by each of --students")
    ap.add_argument("--students", type=_list, default=_list(DEFAULT_STUDENTS), help=f"comma-separated student presets (default {DEFAULT_STUDENTS})")
    ap.add_argument("--losses", default=DEFAULT_LOSSES, help=f"comma-separated losses (default {DEFAULT_LOSSES})")
    ap.add_argument("--seeds", default="42,43,44", help="comma-separated seeds for --seed-losses (default 42,43,44; '' = the recipe's seed only)")
    ap.add_argument("--seed-losses", type=_list, default=_list("infonce,ibkd"), help="losses run once per seed (default infonce,ibkd); the others once with the recipe's seed")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override passed through, e.g. train.max_steps=50")
    ap.add_argument("--loss-set", action="append", default=[], metavar="LOSS.KEY=VALUE", help="a loss's parameter, e.g. hpd.k=64")
    ap.add_argument("--out", default="runs/offline-sts", help="folder of the runs (OUT/<student>/<loss>[-seed<N>]), default runs/offline-sts")
    ap.add_argument("--models-dir", type=Path, help="models staged as folders: presets are pointed at them (see the module docstring)")
    ap.add_argument("--bench-md", type=Path, default=REPO / "BENCHMARKS.md", help="markdown file the dated section is appended to")
    ap.add_argument("--json", type=Path, default=REPO / "benchmarks" / "offline-sts.json", help="rows of this benchmark as JSON")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args(argv[1:])
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

    from distill.errors import DistillError

    try:
        return _run(args, argv)
    except DistillError as exc:
        print(f"offline_sts: error: {exc}", file=sys.stderr)
        return 2


def _run(args, argv: list[str]) -> int:
    from distill.errors import DistillError

    if args.models_dir is not None:
        home = Path(args.out) / "home"
        matched = stage_home(args.models_dir, home)
        os.environ["DISTILL_HOME"] = str(home.resolve())
        print("[offline-sts] staged models: " + (", ".join(f"{n} -> {p}" for n, p in matched.items()) or "none matched"), flush=True)

    from distill.compare import (
        compare,
        format_compare_table,
        loss_specs,
        parse_loss_overrides,
        parse_losses,
    )
    from distill.config import load_recipe
    from distill.io import write_json_atomic

    losses = parse_losses(args.losses)
    seed_losses = [s for s in parse_losses(args.seed_losses) if s in losses] if args.seed_losses else []
    try:
        seeds = [int(s) for s in _list(args.seeds)] or None
    except ValueError:
        raise DistillError(f"--seeds {args.seeds!r}: expected integers separated by commas") from None
    overrides = parse_loss_overrides(args.loss_set)
    if not args.students:
        raise DistillError("--students: name at least one student preset")
    recipes = [load_recipe(args.recipe, [*args.set, f"student={s}"]) for s in args.students]  # all checked up front
    if args.models_dir is not None:
        missing = [n for n in (recipes[0].teacher, *args.students) if n not in matched and not Path(n).is_dir()]
        if missing:
            raise DistillError(f"--models-dir {args.models_dir}: no model folder found for {', '.join(missing)}")

    commit, dirty = git_commit()
    per_student = []
    for recipe in recipes:
        print(f"[offline-sts] {recipe.student}: {', '.join(losses)}", flush=True)
        rows = compare(recipe, losses, Path(args.out) / Path(recipe.student).name, overrides,
                       seeds=seeds if seed_losses else None, progress=not args.quiet, seed_losses=seed_losses or None)
        per_student.append((recipe.student, rows))

    rows = benchmark_rows(per_student, commit)
    table = format_compare_table(rows)
    write_json_atomic(args.json, rows)
    text = section(rows, table, recipes[0], args, argv, commit, dirty, loss_specs(recipes[0], losses, overrides))
    append_section(args.bench_md, text)
    print(f"\nwrote {args.json} and a section of {args.bench_md}; runs in {args.out}\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
