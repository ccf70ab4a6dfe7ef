"""The training corpus: unlabeled sentences from files or a hub dataset, cleaned and de-duplicated.

Sources: plain text or .gz (one sentence per line), JSONL (.jsonl[.gz], one object per line,
text under `column`), CSV/TSV (.csv/.tsv[.gz], header line, text under `column`), or a hub
dataset name (owner/name, split "train", text under `column`; streamed, never downloaded whole),
a local dataset folder (data files `datasets.load_dataset` reads, or a `save_to_disk` folder), or
a BEIR folder's passages, one split's queries and the passages' sentences (`beir:FOLDER?queries=dev&sentences=query`,
distill/data/beir_source.py). Empty lines and exact duplicates (after stripping surrounding
whitespace) are dropped and counted; a sentence's inner newlines become spaces (the store keeps
one sentence per line). Non-UTF-8 input is an error naming the file and line.

Roles: each row is a "document" (the default) or a "query" (for a teacher that encodes the two
differently). A source prefixed `query:` (`query:data/questions.txt`, `query:owner/dataset`)
gives its rows the query role, `document:` says the default explicitly; a `beir:` source gives
its passages the document role and its split's queries the query role. Duplicates are judged on
(role, text): a query that repeats a passage is kept as a query.

One streaming pass: rows are read in chunks, each row's (role, text) key hashed to a 128-bit
digest (distill/data/dedup.py: first occurrence wins, order kept, no string held), and the kept
rows written at once to a store (distill/data/sentence_store.py: sentences.txt, byte offsets,
roles) that is then read by row index. Memory does not grow with the text, only with the digest
table (32 to 64 bytes a distinct row).
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distill.data.beir_source import is_beir_source, iter_beir_source
from distill.data.dedup import DigestSet, as_keys, digest
from distill.data.readers import check_text, iter_jsonl, iter_lines
from distill.data.sentence_store import DOCUMENT, ROLES, SentenceStore, SentenceWriter
from distill.errors import DistillError

DEFAULT_COLUMNS = ("text", "sentence", "sentence1", "anchor")
CHUNK_ROWS = 65536  # rows hashed and looked up together (one vectorized digest-table batch)
_ROLE_BYTE = {r: bytes([r]) for r in ROLES.values()}  # the role is part of the de-duplication key


@dataclass
class Corpus:
    """What `read_corpus` read: counts, identity and (unless read for its identity only) the rows.

    `sentences`: a `SentenceStore` (indexable, sliceable, len(); never a list of every sentence),
    None when read with keep_text=False. When read_corpus made it a temporary folder, the store
    (and so the corpus) removes it on `close()` or when garbage-collected."""

    sources: list[str]
    read: int = 0  # lines / rows read
    dropped_empty: int = 0
    dropped_duplicates: int = 0
    max_sentences: int | None = None  # the cut asked for (recorded in a cache's manifest)
    count: int = 0  # distinct sentences kept
    sha256: str = hashlib.sha256().hexdigest()  # of the sentences, each followed by a newline (not of names or formats)
    roles_sha256: str | None = None  # of the rows' roles; None when every row is a document
    sentences: SentenceStore | None = None

    def identity(self) -> dict:
        """The fields a teacher cache's manifest pins the corpus by."""
        return {"corpus_sha256": self.sha256, "corpus_roles_sha256": self.roles_sha256}

    def summary(self) -> str:
        return (
            f"{self.count:,} distinct sentences from {self.read:,} read "
            f"({self.dropped_empty:,} empty and {self.dropped_duplicates:,} duplicates dropped)"
        )

    def close(self) -> None:
        if self.sentences is not None:
            self.sentences.close()

    def __enter__(self) -> Corpus:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def corpus_sha256(sentences) -> str:
    """The sha256 `read_corpus` gives these sentences (each followed by "\\n"), for a list in memory."""
    h = hashlib.sha256()
    for s in sentences:
        h.update(s.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def split_role(source: str) -> tuple[int | None, str]:
    """"query:X" -> (QUERY, "X"), "document:X" -> (DOCUMENT, "X"), "X" -> (None, "X")."""
    for name, role in ROLES.items():
        if source.startswith(f"{name}:"):
            return role, source[len(name) + 1 :]
    return None, source


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
    """A hub dataset's (or a local dataset folder's) "train" split, streamed row by row."""
    try:
        import datasets
    except ImportError:
        raise DistillError(f"corpus {name!r} looks like a hub dataset: that needs the 'datasets' package (pip install 'distill[hub]')") from None
    try:
        ds = _open_streaming(datasets, name)
    except DistillError:
        raise
    except Exception as exc:
        where = "a dataset folder here that `datasets` cannot read" if Path(name).is_dir() else "not a file here and cannot be loaded from the hub"
        raise DistillError(f"corpus {name!r}: {where} ({str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__})") from None
    yield from iter_dataset_rows(ds, column, name)


def _open_streaming(datasets, name: str):
    """An iterable over the "train" rows: a `save_to_disk` folder (memory-mapped Arrow files) as
    it is; anything else through `load_dataset(name, split="train", streaming=True)`, which reads
    a hub dataset or a folder of data files (parquet, JSON lines, CSV) shard by shard."""
    folder = Path(name)
    if folder.is_dir() and (folder / "dataset_dict.json").is_file():
        folder = folder / "train"
        if not folder.is_dir():
            raise DistillError(f"corpus {name!r}: a saved dataset without a 'train' split")
    if folder.is_dir() and (folder / "state.json").is_file():
        return datasets.load_from_disk(str(folder))
    return datasets.load_dataset(name, split="train", streaming=True)


def iter_dataset_rows(ds, column: str | None, where: str) -> Iterator[tuple[int, str]]:
    """(row number from 1, text) of a `datasets` Dataset or IterableDataset; a value that is not a
    string (None, a number) counts as an empty row, as it always did."""
    rows = iter(ds)
    i = 0
    try:
        first = next(rows, None)
        if first is None:
            return
        key = _pick_column(ds.column_names or list(first), column, where)  # a streamed dataset may not know its columns
        for i, row in enumerate(itertools.chain([first], rows), start=1):
            value = row[key]
            yield i, value if isinstance(value, str) else ""
    except DistillError:
        raise
    except Exception as exc:  # a stream that breaks mid-way (network, a damaged shard)
        raise DistillError(f"corpus {where!r}: reading row {i + 1} failed ({type(exc).__name__}: {str(exc)[:200]})") from None


def iter_source(source: str, column: str | None = None) -> Iterator[tuple[int, str, int]]:
    """(line or row number, raw text, role) of one source (`split_role`: a "query:" prefix gives the query role)."""
    role, body = split_role(source)
    if is_beir_source(body):  # beir:FOLDER[?queries=SPLIT][&sentences=ROLE]: passages (queries, sentences) of a BEIR folder
        if role is not None:
            raise DistillError(f"corpus source {source!r}: a beir: source gives its own roles (passages: document, queries: query); "
                               "drop the role prefix")
        yield from iter_beir_source(body)
        return
    role = DOCUMENT if role is None else role
    for lineno, text in _iter_rows(body, column):
        yield lineno, text, role


def _iter_rows(source: str, column: str | None) -> Iterator[tuple[int, str]]:
    path = Path(source).expanduser()
    if not path.exists():
        file_like = path.name.lower().removesuffix(".gz").endswith((".txt", ".jsonl", ".ndjson", ".csv", ".tsv")) or source.endswith(".gz")
        if "/" in source and not source.startswith((".", "/", "~")) and source.count("/") == 1 and not file_like:
            yield from _iter_hub(source, column)
            return
        tried = "" if path.is_absolute() else f" (looked for {path.absolute()}: relative paths are taken from the working directory {Path.cwd()})"
        raise DistillError(f"corpus file not found: {path}{tried}")
    if path.is_dir():
        if (path / "corpus.jsonl").is_file() or (path / "qrels").is_dir():
            raise DistillError(f"corpus {source!r}: a BEIR folder; name it beir:{source} (its passages) or beir:{source}?queries=dev")
        yield from _iter_hub(str(path), column)  # a local dataset folder, read as the hub's are
        return
    name = path.name.lower().removesuffix(".gz")
    if name.endswith((".jsonl", ".ndjson")):
        yield from _iter_jsonl(path, column)
    elif name.endswith((".csv", ".tsv")):
        yield from _iter_csv(path, column)
    else:
        yield from iter_lines(path)


def read_corpus(sources: list[str], column: str | None = None, max_sentences: int | None = None, *,
                folder: str | Path | None = None, keep_text: bool = True, progress: bool = False) -> Corpus:
    """Read, clean and de-duplicate the sources in order (first occurrence of each (role, text) wins).

    The kept rows are written as they come to a store in `folder` (sentences.txt,
    sentence_offsets.npy, roles.npy; see distill/data/sentence_store.py), opened as
    `corpus.sentences`. Without `folder`, in a new temporary folder (under $TMPDIR) that the
    corpus removes when closed (`corpus.close()`, a `with` block) or garbage-collected: name a
    folder on a big disk for a big corpus. `keep_text=False` writes nothing: the counts and the
    identity (`corpus.identity()`) only, e.g. to check a corpus against an existing cache.
    """
    if not sources:
        raise DistillError("no corpus given: name at least one file or hub dataset")
    if max_sentences is not None and max_sentences < 1:
        raise DistillError(f"max_sentences {max_sentences}: must be at least 1")
    owned = keep_text and folder is None
    target = (Path(tempfile.mkdtemp(prefix="distill-corpus-")) if owned else Path(folder)) if keep_text else None
    corpus = Corpus(sources=list(sources), max_sentences=max_sentences)
    writer = SentenceWriter(target)
    try:
        _read_into(writer, corpus, column, progress)
        corpus.count, corpus.sha256, corpus.roles_sha256 = writer.count, writer.sha256, writer.roles_sha256
        corpus.sentences = writer.close(owned=owned)
    except BaseException:
        writer.abort()
        if owned:
            shutil.rmtree(target, ignore_errors=True)
        raise
    return corpus


def _all_rows(sources: list[str], column: str | None) -> Iterator[tuple[str, int, str, int]]:
    """(source, line, raw text, role) of every source in turn, each opened only when reached."""
    for source in sources:
        for lineno, raw, role in iter_source(source, column):
            yield source, lineno, raw, role


def _read_into(writer: SentenceWriter, corpus: Corpus, column: str | None, progress: bool) -> None:
    """The streaming pass: chunks of rows cleaned and hashed, looked up in the digest set, the new
    ones written. Counts and the `max_sentences` cut are exactly a row-by-row loop's: a row after
    the cut is never counted, and an error raised after it (a bad line, a missing next file) is
    never raised."""
    from tqdm.auto import tqdm

    seen = DigestSet()
    rows = _all_rows(corpus.sources, column)
    limit = corpus.max_sentences
    bar = tqdm(desc="read corpus", unit="rows", disable=not progress, leave=False)
    try:
        while True:
            texts, roles, keys, error, ended = _next_chunk(rows)
            is_text = np.fromiter((t is not None for t in texts), dtype=bool, count=len(texts))
            kept = np.zeros(len(texts), dtype=bool)
            kept[is_text] = seen.add(*as_keys(keys))
            stop = len(texts)
            if limit is not None:
                total = np.cumsum(kept)
                if len(total) and total[-1] >= limit - writer.count:  # the cut falls in this chunk: the row that fills it is the last read
                    stop, error, ended = int(np.searchsorted(total, limit - writer.count)) + 1, None, True
            corpus.read += stop
            corpus.dropped_empty += int((~is_text[:stop]).sum())
            corpus.dropped_duplicates += int((is_text[:stop] & ~kept[:stop]).sum())
            rows_kept = np.flatnonzero(kept[:stop])
            writer.add([texts[i] for i in rows_kept], np.frombuffer(roles, dtype=np.uint8)[rows_kept])
            bar.update(stop)
            if error is not None:
                raise error
            if ended:
                return
    finally:
        bar.close()


def _next_chunk(rows: Iterator) -> tuple[list, bytearray, bytearray, Exception | None, bool]:
    """Up to CHUNK_ROWS rows: their cleaned UTF-8 texts (None for an empty one), roles, the digests
    of the non-empty ones, the error that stopped the chunk early (raised by the caller only if the
    cut is not reached first), and whether the rows are at their end."""
    texts: list[bytes | None] = []
    roles, keys = bytearray(), bytearray()
    try:
        for source, lineno, raw, role in itertools.islice(rows, CHUNK_ROWS):
            check_text(raw, f"{source}:{lineno}")
            text = " ".join(raw.split("\n")).strip() if "\n" in raw else raw.strip()
            roles.append(role)
            if not text:
                texts.append(None)
                continue
            data = text.encode("utf-8")
            texts.append(data)
            keys += digest(_ROLE_BYTE[role] + data)
    except Exception as exc:  # noqa: BLE001 (re-raised by the caller unless the cut comes before it)
        return texts, roles, keys, exc, True
    return texts, roles, keys, None, len(texts) < CHUNK_ROWS
