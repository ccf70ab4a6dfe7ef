"""The GPU run (issue 37): everything after staging, in one process, each step under its own time budget.

benchmarks/gpu_run.sh runs this (and says which environment variables set the paths and sizes);
benchmarks/gpu_stage.sh stages the models and data first. Steps, in order:

  1 facts        nvidia-smi; torch, transformers, sentence-transformers versions; the settings
  2 correctness  a 20-step smoke train (bf16 autocast, fused AdamW, the STS callback); the same run
                 killed (SIGKILL) part-way and continued with `distill train --resume`, whose best
                 score must be the uninterrupted run's
  3 offline      benchmarks/offline_sts.py in growing rounds: infonce and ibkd seed by seed, then mse,
                 cosine, crd, hpd one by one, then all-minilm-l6-v2 with infonce; a round that the
                 time left cannot hold (judged by the last round's time per run) is skipped, with a row
  4 speed        training sentences/s and peak GPU memory of the runs above; the teacher cache against
                 SentenceTransformer.encode (benchmarks/cache_speed.py); the exported L3 student
                 against the teacher (benchmarks/encode_speed.py); the static student's epoch
  5 decoder      the tiny decoder-teacher smoke run, when configs/smoke-decoder-teacher.yaml exists
  6 summary      the issue's targets against what the rows measured

Every result is a row of $OUT/rows.jsonl, written and flushed as soon as it is measured:
{"step", "name", "status": ok | fail | skipped | stopped, "utc", "elapsed_s", "seconds", ...}.
A step runs under an alarm (gpu_harness.py): past its budget it is stopped, a "stopped" row says so,
and the next step runs. A step that kills the process (a CUDA fault) is recorded by gpu_run.sh, which
starts this again with --from-step at the next step. GPU_DRY=1 runs every step on CPU at tiny sizes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_harness import (  # noqa: E402
    BUDGETS,
    L3,
    L6,
    REPO,
    STEPS,
    Rows,
    Settings,
    StepTimeout,
    budget_for,
    guarded,
    say,
    settings_from_env,
)

SMOKE_RECIPE = REPO / "configs" / "smoke.yaml"
OFFLINE_RECIPE = REPO / "configs" / "mpnet-to-minilm-l3-ibkd.yaml"
STATIC_RECIPE = REPO / "configs" / "static-minilm-256.yaml"
# The targets (Part B), checked by the summary step.
TARGETS = {"ibkd_l3_avg": 75.5, "l3_train_sentences_per_s": 25_000, "cache_over_st": 1.5, "exported_l3_over_teacher": 5.0}


# ----------------------------------------------------------------------------- helpers


def on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def sets_args(sets: list[str]) -> list[str]:
    return [a for x in sets for a in ("--set", x)]


def run_rows(results: dict) -> dict:
    """The fields of a training run's row, from its results.json."""
    best = results.get("best") or {}
    return {"best_dev": results.get("best_dev"), "best_step": results.get("best_step"), "steps": results.get("steps"),
            "avg": best.get("Avg"), "tasks": {k: v for k, v in best.items() if k != "Avg" and not k.startswith("retrieval")},
            "train_sentences_per_s": results.get("train_sentences_per_s"), "peak_gpu_mem_gib": results.get("peak_gpu_memory_gib"),
            "device": results.get("device")}


# ----------------------------------------------------------------------------- preparation


def prepare(s: Settings) -> dict[str, Path]:
    """DISTILL_HOME pointing the presets at the staged model folders (a dry run links this machine's
    all-MiniLM-L6-v2); a dry run's STS folder holds the first 16 pairs of STS-B dev and test."""
    from offline_sts import stage_home

    s.work.mkdir(parents=True, exist_ok=True)
    if s.models_dir is None:
        from distill.resolve import resolve_model

        s.models_dir = s.work / "models"
        link = s.models_dir / "all-MiniLM-L6-v2"
        if not link.exists():
            s.models_dir.mkdir(parents=True, exist_ok=True)
            link.symlink_to(resolve_model(L6).resolve(), target_is_directory=True)
    matched = stage_home(s.models_dir, s.work / "home")
    os.environ["DISTILL_HOME"] = str((s.work / "home").resolve())
    if s.dry:
        # the static student's table from the teacher's vector of each of 29,525 tokens takes minutes on a
        # CPU (a second on the GPU): a dry run starts it at random (init is tested in test_static_student.py)
        static = s.work / "home" / "students" / "static-256.yaml"
        static.write_text(static.read_text(encoding="utf-8").replace("init: distill", "init: random"), encoding="utf-8")
        small = s.work / "sts" / "stsb"
        small.mkdir(parents=True, exist_ok=True)
        for name in ("sts-dev.csv", "sts-test.csv"):
            lines = (s.sts_dir / "stsb" / name).read_text(encoding="utf-8").splitlines()[:16]
            (small / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
        s.sts_dir = small.parent
    return matched


def data_sets(s: Settings, cache: str, corpus: list[Path] | None = None) -> list[str]:
    """The overrides that point a recipe at the staged corpus, STS folder and a cache under the work folder."""
    files = ", ".join(str(p) for p in (corpus or s.corpus))
    return [f"data.corpus=[{files}]", f"data.cache_dir={s.work / 'cache' / cache}", f"eval.sts_dir={s.sts_dir}"]


# ----------------------------------------------------------------------------- step 1: facts


def step_facts(s: Settings, rows: Rows, matched: dict) -> None:
    from importlib.metadata import PackageNotFoundError, version

    import torch

    def installed(dist: str) -> str:  # read, not imported: sentence-transformers alone imports in 10 s on a busy CPU
        try:
            return version(dist)
        except PackageNotFoundError:
            return "not installed"

    try:
        smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30)
        query = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,power.limit",
                                "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
        (s.out / "nvidia-smi.txt").write_text(smi.stdout + smi.stderr, encoding="utf-8")
        rows.add(1, "facts/nvidia-smi", "ok" if smi.returncode == 0 else "fail", gpu=query.stdout.strip(), rc=smi.returncode)
    except (OSError, subprocess.SubprocessError) as exc:
        rows.add(1, "facts/nvidia-smi", "skipped", why=f"not on a GPU: nvidia-smi did not run ({type(exc).__name__}: {exc})")
    cuda = torch.cuda.is_available()
    from bench_md import git_commit

    rows.add(1, "facts/versions", "ok", torch=torch.__version__, torch_cuda=torch.version.cuda, transformers=installed("transformers"),
             sentence_transformers=installed("sentence-transformers"), python=sys.version.split()[0], cuda_available=cuda,
             device=torch.cuda.get_device_name(0) if cuda else "cpu", bf16=cuda and torch.cuda.is_bf16_supported(),
             cpu_count=os.cpu_count(), commit=git_commit())
    wanted = {s.teacher, L6, L3}
    missing = sorted(wanted - set(matched))
    rows.add(1, "facts/settings", "fail" if missing else "ok", dry=s.dry, models_dir=s.models_dir, corpus_dir=s.corpus_dir,
             sts_dir=s.sts_dir, work=s.work, seeds=s.seeds, seed_losses=s.seed_losses, other_losses=s.other_losses, extra=s.extra,
             staged_models={k: str(v) for k, v in matched.items()}, missing_models=missing,
             corpus_missing=[str(p) for p in s.corpus if not p.is_file()], budgets=BUDGETS, budget_scale=s.budget_scale,
             total_left_s=round(s.deadline - time.time()))


# ----------------------------------------------------------------------------- step 2: correctness


def smoke_sets(s: Settings, name: str) -> list[str]:
    m = s.smoke
    return [*data_sets(s, "smoke", s.corpus[:1]), f"data.max_sentences={m['sentences']}", f"data.max_length={m['max_length']}",
            f"train.max_steps={m['steps']}", f"train.batch_size={m['batch']}", "train.precision=bf16", f"eval.every_steps={m['every']}",
            "eval.final_tasks=[STS-B]", "eval.baselines=false", f"output.dir={s.work / 'runs' / name}"]


def fresh(folder: Path) -> Path:
    """A run folder of this script's, emptied (a rerun starts over rather than resuming by accident)."""
    shutil.rmtree(folder, ignore_errors=True)
    return folder


def step_correctness(s: Settings, rows: Rows) -> None:
    import torch

    from distill.cli import main as distill_main
    from distill.config import load_recipe
    from distill.training import checkpoint as ckpt_io
    from distill.training.loop import fused_adamw
    from distill.training.run import train

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    t = time.time()
    fresh(s.work / "runs" / "smoke")
    whole = train(load_recipe(SMOKE_RECIPE, smoke_sets(s, "smoke")), progress=False)
    ok = whole["steps"] == s.smoke["steps"] and len(whole["evals"]) >= s.smoke["steps"] // s.smoke["every"] and math.isfinite(whole["best_dev"])
    rows.add(2, "correctness/smoke", "ok" if ok else "fail", seconds=round(time.time() - t, 1), **run_rows(whole),
             precision="bf16", autocast=("bfloat16" if torch.cuda.is_bf16_supported() else "float16") if cuda else "none: CPU runs fp32",
             fused_adamw=fused_adamw(device), sts_evaluations=len(whole["evals"]))

    t = time.time()
    killed_dir = fresh(s.work / "runs" / "smoke-killed")
    proc = subprocess.run([s.python, __file__, "killed-run", "--kill-at", str(s.smoke["kill_at"]), *sets_args(smoke_sets(s, "smoke-killed"))],
                          cwd=REPO, capture_output=True, text=True)
    ckpt = killed_dir / ckpt_io.NAME
    at = ckpt_io.load_checkpoint(ckpt)["state"]["step"] if ckpt.is_file() else None
    killed = proc.returncode == -signal.SIGKILL and at is not None and not (killed_dir / "results.json").is_file()
    rows.add(2, "correctness/killed", "ok" if killed else "fail", seconds=round(time.time() - t, 1), rc=proc.returncode,
             killed_at_step=s.smoke["kill_at"], checkpoint_step=at, stderr_tail=None if killed else proc.stderr[-1500:])
    if not killed:
        return

    t = time.time()
    rc = distill_main(["train", str(SMOKE_RECIPE), *sets_args(smoke_sets(s, "smoke-killed")), "--resume", "--quiet"])
    resumed = json.loads((killed_dir / "results.json").read_text()) if rc == 0 else {}
    a, b = whole["best_dev"], resumed.get("best_dev")
    same = b is not None and abs(a - b) <= s.resume_tol and resumed.get("steps") == whole["steps"]
    rows.add(2, "correctness/resume", "ok" if same else "fail", seconds=round(time.time() - t, 1), rc=rc,
             uninterrupted_best_dev=a, resumed_best_dev=b, difference=None if b is None else b - a, tolerance=s.resume_tol,
             exact=a == b, uninterrupted_sts_b=whole["best"].get("STS-B"), resumed_sts_b=(resumed.get("best") or {}).get("STS-B"),
             resumed_from_step=at, steps=resumed.get("steps"))


def killed_run(kill_at: int, sets: list[str]) -> None:
    """The child of step 2: the smoke recipe, SIGKILLed by itself at the end of step `kill_at`."""
    from distill.config import load_recipe
    from distill.training.callbacks import Callback
    from distill.training.run import train

    class KillAt(Callback):
        def on_step_end(self, state, metrics):
            if state.step >= kill_at:
                os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no atexit: as a crash or the OOM killer ends it

    train(load_recipe(SMOKE_RECIPE, sets), progress=False, callbacks=[KillAt()])


# ----------------------------------------------------------------------------- step 3: offline benchmark


@dataclass
class Round:
    label: str
    student: str
    losses: list[str]
    seeds: list[int]
    json: str  # file name under the work folder: one per student
    weight: float = 1.0  # time per run against an L3 run


def offline_rounds(s: Settings) -> list[Round]:
    """infonce+ibkd seed by seed, then the other losses one by one (each round trains the runs it adds;
    the earlier ones are reused), then the extra student."""
    rounds = [Round(f"{'+'.join(s.seed_losses)} seeds {','.join(map(str, s.seeds[:i + 1]))}", L3, list(s.seed_losses), s.seeds[:i + 1], "l3.json")
              for i in range(len(s.seeds))]
    for i, loss in enumerate(s.other_losses):
        rounds.append(Round(f"+{loss}", L3, [*s.seed_losses, *s.other_losses[: i + 1]], list(s.seeds), "l3.json"))
    if s.extra:
        student, loss = s.extra
        rounds.append(Round(f"{student} {loss} seed {s.seeds[0]}", student, [loss], s.seeds[:1], "extra.json", weight=2.0))
    return rounds


def offline_argv(s: Settings, r: Round) -> list[str]:
    md = s.work / "offline" / r.json.replace(".json", ".md")
    md.unlink(missing_ok=True)  # each round writes its own complete section; the last one is copied to $OUT
    return ["--recipe", str(OFFLINE_RECIPE), "--students", r.student, "--losses", ",".join(r.losses), "--seeds", ",".join(map(str, r.seeds)),
            "--seed-losses", ",".join(x for x in r.losses if x in s.seed_losses) or ",".join(r.losses),
            *sets_args([*data_sets(s, f"offline-{s.teacher}"), *s.offline_sets]), "--out", str(s.work / "offline" / "runs"),
            "--json", str(s.work / "offline" / r.json), "--bench-md", str(md), "--quiet"]


def pending_runs(s: Settings, r: Round, argv: list[str]) -> list:
    """The runs of round `r` without a results.json yet (the ones it will train)."""
    from distill.compare import plan_runs
    from distill.config import load_recipe

    recipe = load_recipe(OFFLINE_RECIPE, [*data_sets(s, f"offline-{s.teacher}"), *s.offline_sets, f"student={r.student}"])
    seed_losses = argv[argv.index("--seed-losses") + 1].split(",")
    runs = plan_runs(recipe, r.losses, s.work / "offline" / "runs" / r.student, seeds=r.seeds, seed_losses=seed_losses)
    return [run for run in runs if not (run.dir / "results.json").is_file()]


def publish_offline(s: Settings) -> list[dict]:
    """$OUT/offline-sts.json: the L3 rows, then the extra student's rows (its teacher row dropped:
    the same teacher); $OUT/offline-sts.md: the sections of both."""
    from distill.io import write_json_atomic, write_text_atomic

    rows, md = [], []
    for i, name in enumerate(("l3", "extra")):
        f = s.work / "offline" / f"{name}.json"
        if f.is_file():
            rows += [r for r in json.loads(f.read_text()) if not (i and r["loss"] == "teacher")]
        m = s.work / "offline" / f"{name}.md"
        if m.is_file():
            md.append(m.read_text(encoding="utf-8"))
    if rows:
        write_json_atomic(s.out / "offline-sts.json", rows)
        write_text_atomic(s.out / "offline-sts.md", "\n".join(md))
    return rows


def step_offline(s: Settings, rows: Rows, budget_end: float) -> None:
    import offline_sts

    per_run: float | None = None  # seconds per L3 run, from the last round (the first also builds the cache: an over-estimate)
    seen: set[tuple] = set()
    for i, r in enumerate(rounds := offline_rounds(s)):
        argv = offline_argv(s, r)
        todo = pending_runs(s, r, argv)
        left = budget_end - time.time()
        need = None if per_run is None else len(todo) * per_run * r.weight * 1.1
        if need is not None and need > left:
            for later in rounds[i:]:
                rows.add(3, f"offline/round {later.label}", "skipped", why=f"not enough time: the round '{r.label}' needs about {need:.0f} s "
                         f"({len(todo)} runs at {per_run:.0f} s, x{r.weight:g} for the student), {left:.0f} s left")
            return
        say(s, f"offline round '{r.label}': {len(todo)} runs to train, {left:.0f} s left")
        t = time.time()
        try:
            rc = offline_sts.main(argv)  # under the step's alarm (guarded)
        except StepTimeout:
            for run in todo:  # the runs this round finished before the alarm: rows from their results.json
                if (run.dir / "results.json").is_file():
                    rows.add(3, "offline/run", "ok", loss=run.loss, student=r.student, seed=run.seed,
                             **run_rows(json.loads((run.dir / "results.json").read_text())), note="not in offline-sts.json: its round was stopped")
            raise
        if rc != 0:
            rows.add(3, f"offline/round {r.label}", "fail", rc=rc, seconds=round(time.time() - t, 1))
            return
        if todo:
            per_run = (time.time() - t) / len(todo) / r.weight
        published = publish_offline(s)
        for row in published:
            key = (row["student"], row["loss"], row["seed"])
            if row["loss"] in ("teacher", "init") and key in seen:
                continue
            if key not in seen:
                seen.add(key)
                fields = {k: row.get(k) for k in ("loss", "student", "seed", "avg", "tasks", "train_sentences_per_s", "peak_gpu_mem_gib",
                                                   "best_dev", "steps", "device", "reused")}
                rows.add(3, "offline/run" if row["loss"] not in ("teacher", "init") else f"offline/{row['loss']}", "ok", **fields)
        rows.add(3, f"offline/round {r.label}", "ok", seconds=round(time.time() - t, 1), trained=len(todo),
                 seconds_per_run=None if per_run is None else round(per_run * r.weight, 1))


# ----------------------------------------------------------------------------- step 4: speed


def train_speed_rows(s: Settings, rows: Rows) -> None:
    """Training sentences/s (mean over the runs) and peak GPU memory (the largest), per student and loss."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows.read():
        if row["name"] in ("offline/run", "correctness/smoke") and row.get("train_sentences_per_s"):
            groups.setdefault((row.get("student") or f"smoke {L3}", row.get("loss") or "ibkd"), []).append(row)
    for (student, loss), group in groups.items():
        speeds = [g["train_sentences_per_s"] for g in group]
        peaks = [g["peak_gpu_mem_gib"] for g in group if g.get("peak_gpu_mem_gib") is not None]
        rows.add(4, "speed/train", "ok", student=student, loss=loss, runs=len(group), train_sentences_per_s=statistics.mean(speeds),
                 peak_gpu_mem_gib=max(peaks) if peaks else None, **({} if peaks else {"peak_note": "not on a GPU"}))


def best_l3_run(s: Settings) -> Path | None:
    """The L3 run to export: ibkd at the first seed when it finished, else any finished L3 run."""
    runs = s.work / "offline" / "runs" / L3
    first = runs / f"ibkd-seed{s.seeds[0]}"
    if (first / "results.json").is_file():
        return first
    return next((p.parent for p in sorted(runs.glob("*/results.json"))), None)


def speed_cache(s: Settings, rows: Rows) -> None:
    import cache_speed

    sp = s.speed
    res = cache_speed.measure(["--teacher", s.teacher, "--n", str(sp["cache_n"]), "--corpus", str(s.corpus[2]), "--batch-sizes", sp["cache_batches"],
                               "--cache-batch-size", str(sp["cache_batch"]), "--label", "GPU run (issue 37)" if not s.dry else "GPU_DRY=1 (CPU, tiny)",
                               "--bench-md", str(s.out / "speed.md")])
    rows.add(4, "speed/cache", "ok", **res, target=f">= {TARGETS['cache_over_st']}x")


def speed_encode(s: Settings, rows: Rows) -> None:
    import encode_speed

    from distill.export import export_student

    run = best_l3_run(s)
    if run is None:
        rows.add(4, "speed/encode", "skipped", why="no finished L3 run of step 3 to export")
        return
    folder = export_student(run, s.work / "export" / run.name, overwrite=True)
    res = encode_speed.run(["--teacher", s.teacher, "--student", str(folder), "--n", str(s.speed["encode_n"]), "--corpus", str(s.corpus[2]),
                            "--batch-size", str(s.speed["encode_batch"]), "--label", f"exported L3 ({run.name}) vs teacher",
                            "--record", str(s.out / "speed.md")])
    rows.add(4, "speed/encode", "ok", exported=run.name, **res, target=f">= {TARGETS['exported_l3_over_teacher']}x (ours student / ours teacher)")


def speed_static(s: Settings, rows: Rows) -> None:
    from distill.config import load_recipe
    from distill.training.run import train

    t = time.time()
    out = fresh(s.work / "runs" / "static")
    recipe = load_recipe(STATIC_RECIPE, [*data_sets(s, "static-l6"), *s.static_sets, f"output.dir={out}"])
    results = train(recipe, progress=False)
    rate = results["train_sentences_per_s"]
    rows.add(4, "speed/static", "ok", **run_rows(results), wall_s=round(time.time() - t, 1), init="random (dry run)" if s.dry else "distill",
             epoch_train_s=results["sentences"] / rate if rate else None, steps_per_epoch=results["sentences"] // recipe.train.batch_size,
             note="wall_s includes the teacher cache of the corpus, the table's init over the vocabulary and the evaluations")


def step_speed(s: Settings, rows: Rows, budget_end: float) -> None:
    train_speed_rows(s, rows)
    parts: list[tuple[str, float, Callable]] = [("cache", 0.35, speed_cache), ("encode", 0.3, speed_encode), ("static", 0.35, speed_static)]
    for i, (name, share, fn) in enumerate(parts):
        left = budget_end - time.time()
        mine = left * share / sum(p[1] for p in parts[i:])  # what an earlier part left unused goes to the later ones
        guarded(s, rows, 4, f"speed/{name}", mine, fn)


# ----------------------------------------------------------------------------- step 5: decoder teacher, step 6: summary


def step_decoder(s: Settings, rows: Rows) -> None:
    if not s.decoder_recipe.is_file():
        rows.add(5, "decoder/smoke", "skipped", why=f"{s.decoder_recipe.relative_to(REPO) if s.decoder_recipe.is_relative_to(REPO) else s.decoder_recipe} "
                 "does not exist yet: the any-teacher issue adds the tiny decoder-teacher recipe (bf16, sdpa attention)")
        return
    from distill.config import load_recipe
    from distill.training.run import train

    # The teacher is built here, not downloaded (the GPU machine has no hub): tests/tiny_models.py's
    # real Qwen3 classes, small config, random weights, MiniLM's tokenizer padding on the left.
    sys.path.insert(0, str(REPO / "tests"))
    from tiny_models import QUERY_INSTRUCTION, decoder_dir, st_folder

    t = time.time()
    base = decoder_dir(fresh(s.work / "tiny-decoder-base"), s.models_dir / "all-MiniLM-L6-v2")
    teacher = st_folder(fresh(s.work / "tiny-decoder-teacher"), base, pooling="lasttoken", normalize=True,
                        prompts={"query": QUERY_INSTRUCTION, "document": ""}, max_seq_length=48)
    out = fresh(s.work / "runs" / "decoder-smoke")
    recipe = load_recipe(s.decoder_recipe, [*data_sets(s, "decoder", s.corpus[:1]), f"teacher.model={teacher}", "train.precision=bf16",
                                            f"output.dir={out}"])
    results = train(recipe, progress=False)
    manifest = json.loads((s.work / "cache" / "decoder" / "manifest.json").read_text())
    rows.add(5, "decoder/smoke", "ok", recipe=str(s.decoder_recipe), seconds=round(time.time() - t, 1),
             teacher_pooling=manifest.get("pooling"), teacher_dtype=manifest.get("teacher_dtype"), **run_rows(results))


def _beats(a: list[float], b: list[float]) -> dict:
    """The IB rule of the CPU ablation: a beats b by more than 2 sd (the larger seed sd) and by at least 0.5."""
    if len(a) < 2 or len(b) < 2:
        return {"verdict": "not decided: fewer than 2 finished seeds on a side"}
    diff, sd = statistics.mean(a) - statistics.mean(b), max(statistics.stdev(a), statistics.stdev(b))
    won = diff > 2 * sd and diff >= 0.5
    return {"ibkd_minus_infonce": diff, "sd": sd, "ib_wins": won,
            "verdict": f"the IB term {'wins' if won else 'does not win'}: {diff:+.2f} avg (rule: > 2 sd = {2 * sd:.2f} and >= 0.5)"}


def step_summary(s: Settings, rows: Rows) -> None:
    got = rows.read()
    runs = [r for r in got if r["name"] == "offline/run" and r.get("student") == L3]
    avg = {loss: [r["avg"] for r in runs if r["loss"] == loss and r.get("avg") is not None] for loss in ("ibkd", "infonce")}
    speeds = [r["train_sentences_per_s"] for r in runs if r.get("train_sentences_per_s")]
    cache = next((r for r in got if r["name"] == "speed/cache" and r["status"] == "ok"), None)
    enc = next((r for r in got if r["name"] == "speed/encode" and r["status"] == "ok"), None)
    measured = {
        "ibkd_l3_avg": statistics.mean(avg["ibkd"]) if avg["ibkd"] else None,
        "l3_train_sentences_per_s": statistics.mean(speeds) if speeds else None,
        "cache_over_st": cache["cache_over_st"] if cache else None,
        "exported_l3_over_teacher": enc["student_over_teacher_ours"] if enc else None,
    }
    gpu = on_gpu()
    met = {k: (v >= TARGETS[k] if v is not None else None) if gpu else None for k, v in measured.items()}
    rows.add(6, "summary/targets", "ok" if gpu else "skipped", measured=measured, targets=TARGETS, met=met,
             ib_decision=_beats(avg["ibkd"], avg["infonce"]),
             **({} if gpu else {"why": "not on a GPU: the targets are H100 targets; the numbers above are a CPU dry run's"}))


# ----------------------------------------------------------------------------- driver


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("command", nargs="?", default="run", choices=["run", "killed-run"])
    ap.add_argument("--from-step", type=int, default=1, help="start at this step (gpu_run.sh restarts after a step killed the process)")
    ap.add_argument("--kill-at", type=int, help="killed-run: the step at whose end the run kills itself")
    ap.add_argument("--set", action="append", default=[], dest="sets", metavar="KEY=VALUE", help="killed-run: a recipe override")
    args = ap.parse_args(argv)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from distill.cli import quiet_third_party

    quiet_third_party()
    if args.command == "killed-run":
        killed_run(args.kill_at, args.sets)
        return 1  # not reached: the run kills itself
    s = settings_from_env()
    s.out.mkdir(parents=True, exist_ok=True)
    rows = Rows(s.out / "rows.jsonl", s.t0)
    try:
        matched = prepare(s)
    except Exception as exc:  # noqa: BLE001 - said in a row; gpu_run.sh then stops (every step needs this)
        rows.add(0, "setup", "fail", why=f"{type(exc).__name__}: {str(exc)[:1500]}", models_dir=s.models_dir)
        return 2
    for i, name in enumerate(STEPS):
        if i + 1 < args.from_step:
            continue
        (s.work / "current-step").write_text(f"{i + 1} {name}\n")
        seconds = budget_for(s, i)
        end = time.time() + seconds
        fn = {"facts": step_facts, "correctness": step_correctness, "offline": step_offline, "speed": step_speed,
              "decoder": step_decoder, "summary": step_summary}[name]
        guarded(s, rows, i + 1, name, seconds, fn, *{"facts": (matched,), "offline": (end,), "speed": (end,)}.get(name, ()))
    (s.work / "current-step").write_text("done\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
