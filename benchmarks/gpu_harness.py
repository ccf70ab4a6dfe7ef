"""The GPU run's machinery (benchmarks/gpu_run.py holds its steps): settings from the environment,
the rows of $OUT/rows.jsonl, the time-stamped log, and the budgets each step runs under.

A step runs inside `guarded`: under an alarm (`deadline`) that stops it past its budget, with a row
that says so ("stopped"), or why it failed ("fail"), or why it did not start ("skipped"), and the next
step runs either way. `budget_for` gives each step its own seconds and the offline benchmark the rest.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import json
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STEPS = ("facts", "correctness", "offline", "speed", "decoder", "summary")
CORPUS_FILES = ("sts-family-train.txt.gz", "wordnet-examples.txt.gz", "wordnet-glosses.txt.gz")
DECODER_RECIPE = REPO / "configs" / "smoke-decoder-teacher.yaml"
L3, L6 = "all-minilm-l3-v2", "all-minilm-l6-v2"
# Seconds each step may take on the H100 (the offline benchmark gets what the others leave); BENCHMARKS.md says why.
BUDGETS = {"facts": 20, "correctness": 90, "offline": None, "speed": 110, "decoder": 45, "summary": 5}
MARGIN_S = 10  # kept back from the total for the shell's last words and the return of $OUT
MIN_STEP_S = 3  # a step with less than this left is skipped, not started


@dataclass
class Settings:
    """Paths and sizes; GPU_DRY=1 swaps the sizes for tiny ones and the teacher for all-MiniLM-L6-v2."""

    dry: bool
    out: Path
    work: Path
    models_dir: Path | None  # None in a dry run: linked from this machine's models
    corpus_dir: Path
    sts_dir: Path
    deadline: float  # time.time() by which everything must be done
    t0: float  # time.time() when gpu_run.sh started
    seeds: list[int]
    seed_losses: list[str]
    other_losses: list[str]
    extra: tuple[str, str] | None  # (student, loss) run last, if time remains
    decoder_recipe: Path
    resume_tol: float
    budget_scale: float = 1.0  # x10 in a dry run: a CPU is slow, and a dry run checks code paths, not times
    python: str = sys.executable
    teacher: str = "all-mpnet-base-v2"
    smoke: dict = field(default_factory=dict)
    offline_sets: list[str] = field(default_factory=list)
    static_sets: list[str] = field(default_factory=list)
    speed: dict = field(default_factory=dict)

    @property
    def corpus(self) -> list[Path]:
        return [self.corpus_dir / f for f in CORPUS_FILES]


def _list(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def settings_from_env() -> Settings:
    env = os.environ
    dry = env.get("GPU_DRY", "0") not in ("", "0")
    now = time.time()
    extra = env.get("GPU_EXTRA", f"{L6}:infonce")
    s = Settings(
        dry=dry,
        out=Path(env.get("OUT") or REPO / "runs" / "gpu-run-out"),
        work=Path(env.get("GPU_WORK") or "/tmp/gpu-run"),
        models_dir=Path(env["GPU_MODELS_DIR"]) if env.get("GPU_MODELS_DIR") else None,
        corpus_dir=Path(env.get("GPU_CORPUS_DIR") or REPO.parent / "shared" / "data" / "corpus"),
        sts_dir=Path(env.get("GPU_STS_DIR") or REPO.parent / "shared" / "data" / "sts"),
        deadline=float(env.get("GPU_DEADLINE") or now + float(env.get("GPU_TOTAL_S", 3600 if dry else 540))),
        t0=float(env.get("GPU_T0") or now),
        seeds=[int(x) for x in _list(env.get("GPU_SEEDS", "42" if dry else "42,43,44"))],
        seed_losses=_list(env.get("GPU_SEED_LOSSES", "infonce,ibkd")),
        other_losses=_list(env.get("GPU_OTHER_LOSSES", "mse" if dry else "mse,cosine,crd,hpd")),
        extra=tuple(extra.split(":", 1)) if ":" in extra else None,
        decoder_recipe=Path(env.get("GPU_DECODER_RECIPE") or DECODER_RECIPE),
        resume_tol=float(env.get("GPU_RESUME_TOL", 0.0 if dry else 0.1)),
    )
    if dry:  # CPU, tiny: a few steps, a few dozen sentences, all-MiniLM-L6-v2 as every teacher, STS-B only
        s.teacher, s.budget_scale = env.get("GPU_TEACHER") or L6, 10.0  # GPU_TEACHER=all-mpnet-base-v2: the staged teacher, on CPU
        s.smoke = {"sentences": 32, "batch": 8, "steps": 4, "every": 2, "kill_at": 3, "max_length": 16}
        tiny = ["data.max_sentences=32", "data.max_length=16", "train.max_steps=2", "train.batch_size=8", "eval.final_tasks=[STS-B]"]
        s.offline_sets = [f"teacher={s.teacher}", *tiny]
        s.static_sets = tiny
        s.speed = {"cache_n": 32, "cache_batches": "32", "cache_batch": 32, "encode_n": 32, "encode_batch": 32}
    else:  # the sizes: the recipes as they are (2 epochs of batch 256 over the whole corpus)
        s.smoke = {"sentences": 1280, "batch": 64, "steps": 20, "every": 5, "kill_at": 13, "max_length": 48}
        # 30,000 glosses: each SentenceTransformer pass takes ~3.5 s at the 8,500/s seen on an H100 (cache_speed.py)
        s.speed = {"cache_n": 30_000, "cache_batches": "256,512,1024", "cache_batch": 512, "encode_n": 30_000, "encode_batch": 256}
    return s


class Rows:
    """$OUT/rows.jsonl: one JSON object a line, appended, flushed and synced at once (a timeout keeps it)."""

    def __init__(self, path: Path, t0: float):
        self.path, self.t0 = path, t0
        path.parent.mkdir(parents=True, exist_ok=True)

    def add(self, step: int, name: str, status: str, **fields) -> dict:
        row = {"step": step, "name": name, "status": status, "utc": dt.datetime.now(dt.timezone.utc).strftime("%H:%M:%S"),
               "elapsed_s": round(time.time() - self.t0, 1), **fields}
        line = json.dumps(row, default=str)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
        print(f"[row] {line}", flush=True)
        return row

    def read(self) -> list[dict]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]


def say(s: Settings, text: str) -> None:
    """A time-stamped line of the log: wall clock and seconds since gpu_run.sh started."""
    print(f"[gpu_run {dt.datetime.now(dt.timezone.utc):%H:%M:%S} +{time.time() - s.t0:.0f}s] {text}", flush=True)


class StepTimeout(BaseException):
    """Raised by the alarm of `deadline`: a BaseException, so no library `except Exception` swallows it."""


@contextlib.contextmanager
def deadline(seconds: float):
    """Raise StepTimeout in this (main) thread once `seconds` have passed. Python code is interrupted
    between bytecodes: a long C call (one tokenizer batch, one kernel wait) finishes first, and gpu_run.sh's
    outer `timeout` covers a call that never returns. Nested (a part of a step): the inner alarm never
    outlasts the enclosing one, which is armed again on the way out with what it has left."""

    def alarm(_signum, _frame):
        raise StepTimeout(f"over its budget of {seconds:.0f} s")

    outer_left = signal.getitimer(signal.ITIMER_REAL)[0]  # 0.0: no enclosing deadline
    start = time.monotonic()
    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, max(min(seconds, outer_left) if outer_left else seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        if outer_left:
            signal.setitimer(signal.ITIMER_REAL, max(outer_left - (time.monotonic() - start), 0.01))


def free_device() -> None:
    """Drop what a finished or stopped step left on the GPU before the next one allocates (on a CPU
    there is nothing to hand back, and a full collection costs half a second there)."""
    import torch

    if torch.cuda.is_available():
        gc.collect()
        torch.cuda.empty_cache()


def guarded(s: Settings, rows: Rows, step: int, name: str, seconds: float, fn: Callable[..., None], *args) -> None:
    """Run fn(s, rows, *args) under an alarm of `seconds`; a row says why when it stops, fails or cannot start."""
    if seconds < MIN_STEP_S:
        rows.add(step, name, "skipped", why=f"no time left: {seconds:.0f} s of the total remain for it")
        return
    say(s, f"{name}: start (budget {seconds:.0f} s)")
    t = time.time()
    try:
        with deadline(seconds):
            fn(s, rows, *args)
    except StepTimeout as exc:
        rows.add(step, name, "stopped", why=str(exc), seconds=round(time.time() - t, 1))
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - one step's failure is a row; the next step runs
        traceback.print_exc()
        rows.add(step, name, "fail", why=f"{type(exc).__name__}: {str(exc)[:1500]}", seconds=round(time.time() - t, 1))
    finally:
        free_device()
    say(s, f"{name}: done in {time.time() - t:.0f} s")


def own_budget(s: Settings, name: str) -> float | None:
    """A step's own seconds (None: the offline benchmark, which gets the rest); the decoder step without its
    recipe only writes a row."""
    if name == "decoder" and not s.decoder_recipe.is_file():
        return MIN_STEP_S + 1
    return None if BUDGETS[name] is None else BUDGETS[name] * s.budget_scale


def budget_for(s: Settings, i: int) -> float:
    """Step i's seconds: its own budget, or (the offline benchmark) what the total leaves after the later
    steps' budgets; never more than the total leaves once the later steps' budgets are kept back."""
    later = sum(own_budget(s, n) or 0 for n in STEPS[i + 1:])
    left = s.deadline - time.time() - MARGIN_S - later
    own = own_budget(s, STEPS[i])
    return left if own is None else min(own, left)
