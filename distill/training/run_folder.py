"""Which folder `distill train` may write into: a new or empty one, or a run folder it made.

A run writes recipe.yaml, checkpoint.pt, best/, final/, results.json and log.jsonl into
output.dir, replacing what is there. So before anything is written, `check_run_folder` refuses:
  - `/`, the home folder and the current working directory (never a run folder of their own);
  - a file, or a non-empty folder without RUN_MARKER (a user's folder: nothing in it is touched).
Under the folder's lock, training/run.py then refuses a --resume without checkpoint.pt and a new run
into a folder with one.
RUN_MARKER (`.distill-run.json`: tool, version, command, time) is written by `mark_run_folder`
when a run starts in the folder, so it travels with a copied run (the benchmarks' stage-1 copies).
A run made before the marker existed has none: `--resume` accepts it when it holds checkpoint.pt
and recipe.yaml (what every run of distill wrote first), and marks it. `.distill.lock`
(distill/lock.py) alone does not make a folder someone else's.
"""

from __future__ import annotations

import datetime as _dt
import json
import sys
from pathlib import Path

from distill.errors import DistillError
from distill.io import write_json_atomic
from distill.lock import LOCK_NAME
from distill.training.checkpoint import NAME as CHECKPOINT

RUN_MARKER = ".distill-run.json"


def is_run_folder(run_dir: Path) -> bool:
    """Whether `run_dir` holds this tool's run marker."""
    try:
        marker = json.loads((Path(run_dir) / RUN_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("tool") == "distill"


def check_run_folder(run_dir: Path, resume: bool) -> None:
    """Refuse an output.dir `train` may not write into (see the module docstring); writes nothing."""
    run_dir = Path(run_dir)
    where = run_dir.resolve()
    special = {Path("/"): "the root folder", Path.cwd().resolve(): "the current folder"}
    try:
        special[Path.home().resolve()] = "your home folder"
    except RuntimeError:  # no HOME and no passwd entry: no home folder to protect
        pass
    if where in special:
        raise DistillError(f"output.dir {run_dir}: it is {special[where]} ({where}); a run writes recipe.yaml, best/, final/ "
                           "and results.json into output.dir: give it a folder of its own, e.g. runs/NAME")
    if run_dir.exists() and not run_dir.is_dir():
        raise DistillError(f"output.dir {run_dir}: an existing file, not a folder; choose a new folder")
    others = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_NAME) if run_dir.is_dir() else []
    if not others or is_run_folder(run_dir):
        return
    if resume and (run_dir / CHECKPOINT).is_file() and (run_dir / "recipe.yaml").is_file():
        return  # a run made before RUN_MARKER: checkpoint.pt and recipe.yaml; marked when it resumes
    shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
    raise DistillError(f"output.dir {run_dir}: a folder distill did not make (no {RUN_MARKER}; it holds {shown}); train writes "
                       "only into a new or empty folder, or a run folder of its own: nothing in it was changed, choose another output.dir")


def mark_run_folder(run_dir: Path) -> None:
    """Write RUN_MARKER into the run folder unless it is there (kept as the run's first record)."""
    from distill import __version__

    if is_run_folder(run_dir):
        return
    write_json_atomic(Path(run_dir) / RUN_MARKER, {
        "tool": "distill", "version": __version__, "command": " ".join(["distill", *sys.argv[1:]])[:300],
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})
