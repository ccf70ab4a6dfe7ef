"""BENCHMARKS.md tables: add a row to a script's own table, creating the section on first use."""

from __future__ import annotations

from pathlib import Path


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
