"""BENCHMARKS.md records: the commit, a portable command line, a row added to a script's own table
(creating the section on first use)."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


COMMIT_ENV = "DISTILL_COMMIT"


def git_commit() -> str:
    """The checkout's short commit, "+dirty" when tracked files differ from it (read before a run starts).
    $DISTILL_COMMIT wins: a copy without .git (the GPU machine's) is told which commit it is."""
    if os.environ.get(COMMIT_ENV):
        return os.environ[COMMIT_ENV]
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=REPO, capture_output=True, check=False).returncode != 0
    return rev + ("+dirty" if dirty else "")


def portable_arg(arg: str) -> str:
    """An argument as another checkout can run it: a path inside the repository relative to it,
    the shared data folder beside it as ../shared, any other absolute path (also inside KEY=VALUE)
    as the placeholder DIR/<name>. Recorded commands must not name one machine's folders."""
    key, eq, value = arg.partition("=") if "=" in arg and not arg.startswith("/") else ("", "", arg)
    if not value.startswith("/"):
        return arg
    path = Path(value).resolve()
    for root, shown in ((REPO, None), (REPO.parent / "shared", "../shared")):
        try:
            rel = path.relative_to(root.resolve())
        except ValueError:
            continue
        text = str(rel) if shown is None else f"{shown}/{rel}"
        return f"{key}{eq}{text}"
    return f"{key}{eq}DIR/{path.name}"


def command_line(script: str, argv: list[str]) -> str:
    """`python benchmarks/SCRIPT args...` with every path made portable (see `portable_arg`)."""
    return shlex.join(["python", f"benchmarks/{script}", *(portable_arg(a) for a in argv)])


def add_row(path: Path, section: str, intro: str, columns: list[str], row: dict) -> None:
    """Insert `row` at the end of the table under `section` (wherever the section sits), atomically."""
    from distill.io import write_text_atomic

    cells = "| " + " | ".join(str(row[c]).replace("|", "\\|") for c in columns) + " |"
    lines = path.read_text(encoding="utf-8").rstrip("\n").split("\n") if path.is_file() else ["# Benchmarks"]
    if section not in lines:
        lines += ["", section, "", intro, "", "| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    end = lines.index(section) + 1
    while end < len(lines) and not lines[end].startswith("|"):
        end += 1
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    lines.insert(end, cells)
    write_text_atomic(path, "\n".join(lines) + "\n")
