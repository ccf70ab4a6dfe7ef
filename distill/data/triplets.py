"""Supervised triplets for IBKD stage 2: (anchor, positive, hard negative) rows.

From CSV/TSV (header line), JSONL, or a hub dataset (e.g. sentence-transformers/all-nli with
subset "triplet"). Column names come from the recipe (default anchor, positive, negative);
SimCSE's nli_for_simcse.csv names them sent0, sent1, hard_neg and is recognized as such.
"""

from __future__ import annotations

import csv
from pathlib import Path

from distill.data.readers import iter_jsonl, iter_lines
from distill.errors import DistillError

SIMCSE_COLUMNS = ("sent0", "sent1", "hard_neg")


def _columns(available, wanted: list[str], where: str) -> list[str]:
    if all(c in available for c in wanted):
        return wanted
    if all(c in available for c in SIMCSE_COLUMNS):
        return list(SIMCSE_COLUMNS)
    raise DistillError(f"{where}: needs the columns {', '.join(wanted)} (found: {', '.join(map(str, available))}); set stage2.columns")


def read_triplets(sources: list[str], columns: list[str], subset: str | None = None, limit: int | None = None) -> list[tuple[str, str, str]]:
    if len(columns) != 3:
        raise DistillError(f"stage2.columns: expected three names (anchor, positive, negative), got {columns}")
    out: list[tuple[str, str, str]] = []
    for source in sources:
        path = Path(source).expanduser()
        if path.exists():
            name = path.name.lower().removesuffix(".gz")
            if name.endswith((".jsonl", ".ndjson")):
                cols = None
                for lineno, obj in iter_jsonl(path):
                    cols = cols or _columns(list(obj), columns, f"{path}:{lineno}")
                    row = [obj.get(c) for c in cols]
                    if not all(isinstance(v, str) and v.strip() for v in row):
                        raise DistillError(f"{path}:{lineno}: every one of {', '.join(cols)} must be a non-empty string")
                    out.append(tuple(row))
            else:
                reader = csv.reader((line for _, line in iter_lines(path)), delimiter="\t" if name.endswith(".tsv") else ",")
                header = next(reader, None)
                if header is None:
                    raise DistillError(f"{path}: empty file")
                idx = [header.index(c) for c in _columns(header, columns, str(path))]
                for lineno, row in enumerate(reader, start=2):
                    if len(row) <= max(idx):
                        raise DistillError(f"{path}:{lineno}: {len(row)} columns, expected at least {max(idx) + 1}")
                    out.append(tuple(row[i] for i in idx))
        elif "/" in source:
            try:
                from datasets import load_dataset
            except ImportError:
                raise DistillError(f"stage2.triplets {source!r}: a hub dataset needs the 'datasets' package") from None
            try:
                ds = load_dataset(source, subset, split="train")
            except Exception as exc:
                raise DistillError(f"stage2.triplets {source!r}: not a file here and not loadable from the hub ({str(exc).splitlines()[0][:200]})") from None
            cols = _columns(ds.column_names, columns, source)
            out.extend(zip(*(ds[c] for c in cols)))
        else:
            raise DistillError(f"stage2.triplets: file not found: {path}")
        if limit is not None and len(out) >= limit:
            return out[:limit]
    if not out:
        raise DistillError(f"stage2.triplets {', '.join(sources)}: no triplet found")
    return out
