"""Rows of texts for the supervised stage 2: (anchor, positive, negative_1, ..., negative_k).

Any k >= 0, the same k for every row of a dataset: a batch stacks its rows column by column.

- CSV/TSV (header line) or JSONL with named columns: `stage2.columns`, the anchor's, the
  positive's, then the negatives'. SimCSE's nli_for_simcse.csv (sent0, sent1, hard_neg) is
  recognized when the named columns are absent. sentence-transformers' mine_hard_negatives(
  output_format="n-tuple") writes the anchor and positive columns under their own names and
  negative_1..negative_n: `columns: [query, answer, negative_1, negative_2, negative_3]`.
- Retrieval JSONL (CoROM / Tevatron training files), recognized by "positive_passages": one
  object per line, {"query": str, "positive_passages": [passage, ...], "negative_passages":
  [passage, ...]}, a passage being {"text": str, "title"?: str, "docid"?: ...}. The row is the
  query, the first positive and the first `neg_samples` negatives (the rows are tokenized once,
  so there is no per-epoch resampling as in Tevatron's default); a passage with a title reads
  "title text" (BEIR's convention).
- A hub dataset name (needs the optional `datasets`): named columns, or the retrieval layout.

Every malformed line is a DistillError naming the file and line (a hub dataset: its row), and an
empty text names its column.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from distill.data.readers import check_text, is_jsonl, iter_jsonl, iter_lines, join_title
from distill.errors import DistillError

SIMCSE_COLUMNS = ("sent0", "sent1", "hard_neg")
RETRIEVAL_MARK = "positive_passages"  # an object with this key is a retrieval (Tevatron) row

Row = tuple[str, ...]


def read_rows(sources: list[str], columns: list[str], subset: str | None = None, limit: int | None = None,
              neg_samples: int = 4) -> list[Row]:
    """The rows of every source, in order, at most `limit`; all of one width (2 + negatives)."""
    if len(columns) < 2:
        raise DistillError(f"stage2.columns: expected at least two names (anchor, positive, then any negatives), got {columns}")
    out: list[Row] = []
    width, first = None, None
    for source in sources:
        for row in _read_source(source, columns, subset, neg_samples, None if limit is None else limit - len(out)):
            if width is None:
                width, first = len(row), source
            elif len(row) != width:
                raise DistillError(f"stage2.rows: {source} gives rows of {len(row)} texts, {first} rows of {width}: "
                                   "every row of a dataset needs the same number of negatives")
            out.append(row)
            if limit is not None and len(out) >= limit:
                return out
    if not out:
        raise DistillError(f"stage2.rows {', '.join(sources)}: no row found")
    return out


def _read_source(source: str, columns: list[str], subset: str | None, neg_samples: int, limit: int | None) -> Iterator[Row]:
    path = Path(source).expanduser()
    if path.exists():
        if is_jsonl(path):
            return _jsonl_rows(path, columns, neg_samples)
        return _csv_rows(path, columns)
    if "/" in source and not source.startswith(("/", ".", "~")):  # a hub name: org/name
        return _hub_rows(source, columns, subset, neg_samples, limit)
    raise DistillError(f"stage2.rows: file not found: {path}")


def _columns(available, wanted: list[str], where: str) -> list[str]:
    if all(c in available for c in wanted):
        return list(wanted)
    if all(c in available for c in SIMCSE_COLUMNS):
        return list(SIMCSE_COLUMNS)
    raise DistillError(f"{where}: needs the columns {', '.join(wanted)} (found: {', '.join(map(str, available))}); set stage2.columns")


def _text(value, column: str, where: str) -> str:
    if not isinstance(value, str):
        raise DistillError(f"{where}: {column!r} must be a string, got {type(value).__name__} {value!r:.80}")
    if not value.strip():
        raise DistillError(f"{where}: {column!r} is empty")
    return check_text(value, where)


def _named_row(obj: dict, cols: list[str], where: str) -> Row:
    missing = [c for c in cols if c not in obj]
    if missing:
        raise DistillError(f"{where}: no column {missing[0]!r} (keys: {', '.join(map(str, obj)) or 'none'})")
    return tuple(_text(obj[c], c, where) for c in cols)


def _passage(value, column: str, where: str) -> str:
    if not isinstance(value, dict) or "text" not in value:
        raise DistillError(f"{where}: {column} must be an object with a 'text' (and optionally 'title', 'docid'), got {value!r:.80}")
    title = value.get("title")
    if title is not None and not isinstance(title, str):
        raise DistillError(f"{where}: {column}.title must be a string, got {type(title).__name__} {title!r:.80}")
    _text(value["text"], f"{column}.text", where)
    return _text(join_title(title, value["text"]), column, where)


def _retrieval_row(obj: dict, neg_samples: int, where: str) -> Row:
    """(query, first positive, first `neg_samples` negatives) of a CoROM / Tevatron training object."""
    if "query" not in obj:
        raise DistillError(f"{where}: no 'query' (keys: {', '.join(map(str, obj))})")
    query = _text(obj["query"], "query", where)
    positives, negatives = obj.get("positive_passages"), obj.get("negative_passages", [])
    for key, value in (("positive_passages", positives), ("negative_passages", negatives)):
        if not isinstance(value, list):
            raise DistillError(f"{where}: {key} must be a list of passages, got {value!r:.80}")
    if not positives:
        raise DistillError(f"{where}: no positive passage (positive_passages is empty)")
    if len(negatives) < neg_samples:
        raise DistillError(f"{where}: {len(negatives)} negative passages, fewer than stage2.neg_samples = {neg_samples} "
                           "(lower stage2.neg_samples, or drop the row)")
    return (query, _passage(positives[0], "positive_passages[0]", where),
            *(_passage(p, f"negative_passages[{i}]", where) for i, p in enumerate(negatives[:neg_samples])))


def _jsonl_rows(path: Path, columns: list[str], neg_samples: int) -> Iterator[Row]:
    cols = None
    for lineno, obj in iter_jsonl(path):
        where = f"{path}:{lineno}"
        if RETRIEVAL_MARK in obj:
            yield _retrieval_row(obj, neg_samples, where)
        else:
            cols = cols or _columns(list(obj), columns, where)
            yield _named_row(obj, cols, where)


def _csv_rows(path: Path, columns: list[str]) -> Iterator[Row]:
    lines = (line for _, line in iter_lines(path))
    reader = csv.reader(lines, delimiter="\t" if path.name.lower().removesuffix(".gz").endswith(".tsv") else ",")
    header = next(reader, None)
    if header is None:
        raise DistillError(f"{path}: empty file")
    cols = _columns(header, columns, f"{path}:1")
    idx = [header.index(c) for c in cols]
    for fields in reader:
        where = f"{path}:{reader.line_num}"
        if not fields:  # a blank line
            continue
        if len(fields) <= max(idx):
            raise DistillError(f"{where}: {len(fields)} fields, the header names {len(header)} ({', '.join(header)})")
        yield tuple(_text(fields[i], c, where) for i, c in zip(idx, cols))


def _hub_rows(source: str, columns: list[str], subset: str | None, neg_samples: int, limit: int | None) -> Iterator[Row]:
    try:
        from datasets import load_dataset
    except ImportError:
        raise DistillError(f"stage2.rows {source!r}: a hub dataset needs the 'datasets' package") from None
    try:
        ds = load_dataset(source, subset, split="train")
    except Exception as exc:
        raise DistillError(f"stage2.rows {source!r}: not a file here and not loadable from the hub ({str(exc).splitlines()[0][:200]})") from None
    if limit is not None and limit < len(ds):
        ds = ds.select(range(limit))
    if RETRIEVAL_MARK in ds.column_names:
        for i, obj in enumerate(ds, 1):
            yield _retrieval_row(obj, neg_samples, f"{source} row {i}")
        return
    cols = _columns(ds.column_names, columns, source)
    for i, values in enumerate(zip(*(ds[c] for c in cols)), 1):
        yield tuple(_text(v, c, f"{source} row {i}") for v, c in zip(values, cols))
