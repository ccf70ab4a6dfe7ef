"""Small readers for sentence / passage files: plain text (one item a line), TSV and JSONL, gzip or not.

Every problem is a `DistillError` naming the file and the 1-based line. Lines end at "\\n" (a
"\\r\\n" ending is taken off whole), never at the other characters `str.splitlines` breaks at, so
line numbers agree with `wc -l`, editors and `sed -n Np`.
"""

from __future__ import annotations

import gzip
import json
import re
import zlib
from collections.abc import Iterator
from pathlib import Path

from distill.errors import DistillError

_SURROGATE = re.compile("[\ud800-\udfff]")


def check_text(text: str, where: str) -> str:
    """Refuse a lone surrogate (a JSON "\\ud800" escape, or stdin read with surrogateescape):
    it is not text any tokenizer or UTF-8 file can hold."""
    m = _SURROGATE.search(text)
    if m:
        raise DistillError(f"{where}: a lone surrogate {m.group()!a} at character {m.start() + 1} is not valid Unicode text; "
                           "fix or drop that line")
    return text


def join_title(title, text: str) -> str:
    """A passage with a title as "title text" (BEIR's convention); the text alone without one."""
    title = "" if title is None else str(title)
    return f"{title} {text}".strip() if title.strip() else text


def open_binary(path: str | Path):
    """A binary stream for a file, gunzipped when its name ends in .gz."""
    path = Path(path)
    if not path.is_file():
        raise DistillError(f"{path}: no such file" + (" (it is a folder)" if path.is_dir() else ""))
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def iter_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """(line number from 1, line without its "\\n" or "\\r\\n") for every line, empty ones included.

    Decoded line by line as UTF-8, so a bad byte is reported at its own line. A byte-order mark
    at the start of the file is dropped.
    """
    lineno = 0
    try:
        with open_binary(path) as f:
            for lineno, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise DistillError(f"{path}:{lineno}: not UTF-8 text ({exc.reason} at byte {exc.start} of the line)") from None
                if lineno == 1 and line.startswith("\ufeff"):
                    line = line[1:]
                yield lineno, line.rstrip("\n").removesuffix("\r")
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError; truncated: EOFError; bad data: zlib.error
        what = "a damaged gzip file" if isinstance(exc, (EOFError, zlib.error, gzip.BadGzipFile)) else "cannot read it"
        raise DistillError(f"{path}:{lineno + 1}: {what} ({type(exc).__name__}: {exc})") from None


def is_jsonl(path: str | Path) -> bool:
    name = Path(path).name.lower()
    return name.endswith((".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz"))


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for every non-blank line; each line must hold one JSON object."""
    for lineno, line in iter_lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DistillError(f"{path}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise DistillError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        yield lineno, obj


def read_sentences(path: str | Path, column: str | None = None) -> list[str]:
    """The sentences of a file, in file order.

    Plain text (.txt, .gz, anything that is not JSONL and has no `column`): one sentence per line;
    every line is a sentence, empty lines included, so row i of an output is line i + 1 of the
    input. JSONL (.jsonl / .ndjson, optionally .gz, or any file when `column` is given): one object
    per non-blank line, the sentence under `column` (default "text").
    """
    if column is None and not is_jsonl(path):
        return [line for _, line in iter_lines(path)]
    key = column or "text"
    out = []
    for lineno, obj in iter_jsonl(path):
        if key not in obj:
            raise DistillError(f"{path}:{lineno}: no key {key!r} (keys: {', '.join(map(str, obj)) or 'none'}); choose one with --column")
        value = obj[key]
        if not isinstance(value, str):
            raise DistillError(f"{path}:{lineno}: {key!r} is a {type(value).__name__}, not a string: {value!r:.80}")
        out.append(check_text(value, f"{path}:{lineno}"))
    return out
