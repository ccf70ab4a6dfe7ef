"""The training corpus: unlabeled sentences from files or a hub dataset, cleaned and de-duplicated.

Sources: plain text or .gz (one sentence per line), JSONL (.jsonl[.gz], one object per line,
text under `column`), CSV/TSV (.csv/.tsv[.gz], header line, text under `column`), or a hub
dataset name (owner/name, split "train", text under `column`), or a BEIR folder's passages and
one split's queries (`beir:FOLDER?queries=dev`, distill/data/beir_source.py). Empty lines and exact duplicates
(after stripping surrounding whitespace) are dropped and counted; a sentence's inner newlines
become spaces (the cache stores one sentence per line). Non-UTF-8 input is an error naming the
file and line.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from distill.data.beir_source import is_beir_source, iter_beir_source
from distill.data.readers import check_text, iter_jsonl, iter_lines, open_binary
from distill.errors import DistillError

DEFAULT_COLUMNS = ("text", "sentence", "sentence1", "anchor")


@dataclass
class Corpus:
    sentences: list[str]
    sources: list[str]
    read: int = 0  # lines / rows read
    dropped_empty: int = 0
    dropped_duplicates: int = 0
    max_sentences: int | None = None  # the cut asked for (recorded in a cache's manifest)

    @property
    def sha256(self) -> str:
        """Identity of the content (not of the file names or formats): sha256 of the sentences."""
        return corpus_sha256(self.sentences)

    def summary(self) -> str:
        return (
            f"{len(self.sentences):,} distinct sentences from {self.read:,} read "
            f"({self.dropped_empty:,} empty and {self.dropped_duplicates:,} duplicates dropped)"
        )


def corpus_sha256(sentences: list[str]) -> str:
    h = hashlib.sha256()
    for s in sentences:
        h.update(s.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def _pick_column(names, column: str | None, where: str) -> str:
    if column is not None:
        if column not in names:
            raise DistillError(f"{where}: no column {column!r} (columns: {', '.join(map(str, names))})")
        return column
    for c in DEFAULT_COLUMNS:
        if c in names:
            return c
    raise DistillError(f"{where}: none of the columns {', '.join(DEFAULT_COLUMNS)}; name one with --column (distill cache) or data.column (a recipe) (columns: {', '.join(map(str, names))})")


def _iter_csv(path: Path, column: str | None) -> Iterator[tuple[int, str]]:
    delimiter = "\t" if ".tsv" in path.name.lower() else ","
    lines = (line for _, line in iter_lines(path))  # UTF-8 checked line by line, with file:line errors
    reader = csv.reader(lines, delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        return
    col = header.index(_pick_column(header, column, str(path)))
    for lineno, row in enumerate(reader, start=2):
        if len(row) <= col:
            raise DistillError(f"{path}:{lineno}: {len(row)} columns, the text column {header[col]!r} is number {col + 1}")
        yield lineno, row[col]


def _iter_jsonl(path: Path, column: str | None) -> Iterator[tuple[int, str]]:
    for lineno, obj in iter_jsonl(path):
        key = _pick_column(list(obj), column, f"{path}:{lineno}")
        value = obj[key]
        if not isinstance(value, str):
            raise DistillError(f"{path}:{lineno}: {key!r} is a {type(value).__name__}, not a string")
        yield lineno, value


def _iter_hub(name: str, column: str | None) -> Iterator[tuple[int, str]]:
    try:
        from datasets import load_dataset
    except ImportError:
        raise DistillError(f"corpus {name!r} looks like a hub dataset: that needs the 'datasets' package (pip install 'distill[hub]')") from None
    try:
        ds = load_dataset(name, split="train")
    except Exception as exc:
        raise DistillError(f"corpus {name!r}: not a file here and cannot be loaded from the hub ({str(exc).splitlines()[0][:200]})") from None
    key = _pick_column(ds.column_names, column, name)
    for i, value in enumerate(ds[key], start=1):
        yield i, value if isinstance(value, str) else ""


def iter_source(source: str, column: str | None = None) -> Iterator[tuple[int, str]]:
    """(line or row number, raw text) of one source."""
    if is_beir_source(source):  # beir:FOLDER[?queries=SPLIT]: passages (and a split's queries) of a BEIR folder
        yield from iter_beir_source(source)
        return
    path = Path(source).expanduser()
    if not path.exists():
        file_like = path.name.lower().removesuffix(".gz").endswith((".txt", ".jsonl", ".ndjson", ".csv", ".tsv")) or source.endswith(".gz")
        if "/" in source and not source.startswith((".", "/", "~")) and source.count("/") == 1 and not file_like:
            yield from _iter_hub(source, column)
            return
        tried = "" if path.is_absolute() else f" (looked for {path.absolute()}: relative paths are taken from the working directory {Path.cwd()})"
        raise DistillError(f"corpus file not found: {path}{tried}")
    name = path.name.lower().removesuffix(".gz")
    if name.endswith((".jsonl", ".ndjson")):
        yield from _iter_jsonl(path, column)
    elif name.endswith((".csv", ".tsv")):
        yield from _iter_csv(path, column)
    else:
        yield from iter_lines(path)


def read_corpus(sources: list[str], column: str | None = None, max_sentences: int | None = None) -> Corpus:
    """Read, clean and de-duplicate the sources in order (first occurrence wins)."""
    if not sources:
        raise DistillError("no corpus given: name at least one file or hub dataset")
    seen: set[str] = set()
    if max_sentences is not None and max_sentences < 1:
        raise DistillError(f"max_sentences {max_sentences}: must be at least 1")
    corpus = Corpus(sentences=[], sources=list(sources), max_sentences=max_sentences)
    for source in sources:
        for lineno, raw in iter_source(source, column):
            corpus.read += 1
            check_text(raw, f"{source}:{lineno}")
            text = " ".join(raw.split("\n")).strip() if "\n" in raw else raw.strip()
            if not text:
                corpus.dropped_empty += 1
                continue
            if text in seen:
                corpus.dropped_duplicates += 1
                continue
            seen.add(text)
            corpus.sentences.append(text)
            if max_sentences is not None and len(corpus.sentences) >= max_sentences:
                return corpus
    return corpus


def write_sentences(path: Path, sentences: list[str]) -> None:
    from distill.io import write_bytes_atomic

    buf = io.StringIO()
    for s in sentences:
        buf.write(s)
        buf.write("\n")
    write_bytes_atomic(path, buf.getvalue().encode("utf-8"))


def read_sentences_file(path: Path) -> list[str]:
    with open_binary(path) as f:
        return f.read().decode("utf-8").split("\n")[:-1]
