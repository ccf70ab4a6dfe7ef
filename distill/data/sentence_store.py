"""The de-duplicated corpus on disk, read by row without loading it: sentences, offsets, roles.

A store is three files in one folder:
  sentences.txt          every sentence, one per line, UTF-8 (row i = line i + 1)
  sentence_offsets.npy   int64, N + 1: row i is bytes offsets[i] .. offsets[i + 1] - 1 of
                         sentences.txt (its "\\n" excluded)
  roles.npy              uint8, N: 0 document, 1 query (`ROLES`)
`SentenceWriter` writes them as the corpus is read (memory does not grow with the corpus: a few
buffered rows and the running sha256); `SentenceStore` reads rows back by index with pread, so a
4-million-sentence corpus costs its offsets' memory map, not its text. A folder with only
sentences.txt (a teacher cache made before the offsets existed) is read too: its offsets are found
by one pass over the file's newlines (8 bytes a row, in memory) and every row is a document.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from distill.data.npy_append import NpyAppender
from distill.errors import DistillError

SENTENCES = "sentences.txt"
OFFSETS = "sentence_offsets.npy"
ROLES_FILE = "roles.npy"
STORE_FILES = (SENTENCES, OFFSETS, ROLES_FILE)
DOCUMENT, QUERY = 0, 1
ROLES = {"document": DOCUMENT, "query": QUERY}  # the role names of a corpus source prefix ("query:FILE")
READ_CHUNK = 8192  # rows per read when a store is iterated


def roles_sha256(roles: np.ndarray) -> str | None:
    """Identity of the rows' roles: sha256 of the uint8 role bytes; None when every row is a document
    (so a corpus of documents only has the identity it had before roles existed)."""
    roles = np.asarray(roles, dtype=np.uint8)
    if not roles.any():
        return None
    h = hashlib.sha256()
    for start in range(0, len(roles), 1 << 24):
        h.update(roles[start : start + (1 << 24)].tobytes())
    return h.hexdigest()


class SentenceStore(Sequence):
    """Read-only rows of a store folder: `store[i]` -> str, `store[a:b]` / `batch(a, b)` / `take(rows)`
    -> list[str], `len(store)`, `roles` (uint8 array, 0 document / 1 query).

    Iterating reads READ_CHUNK rows at a time. Nothing is cached: each read is a pread of one
    contiguous byte range. `owned`: the folder is a temporary one that this store removes when it
    is closed or garbage-collected (read_corpus without a folder)."""

    def __init__(self, folder: Path, offsets: np.ndarray, roles: np.ndarray, owned: bool = False):
        self.folder = Path(folder)
        self.path = self.folder / SENTENCES
        self.offsets = offsets
        self.roles = roles
        self._fd = os.open(self.path, os.O_RDONLY)
        self._finalizer = weakref.finalize(self, _release, self._fd, self.folder if owned else None)

    @classmethod
    def open(cls, folder: str | Path, count: int | None = None, *, owned: bool = False) -> SentenceStore:
        """Open a store folder; `count`: the number of rows it must hold (a manifest's), else an error naming the file."""
        folder = Path(folder)
        path = folder / SENTENCES
        if not path.is_file():
            raise DistillError(f"{path}: no such file (the store's sentences)")
        offsets_file, roles_file = folder / OFFSETS, folder / ROLES_FILE
        try:
            offsets = np.load(offsets_file, mmap_mode="r") if offsets_file.is_file() else line_offsets(path)
            roles = np.load(roles_file, mmap_mode="r") if roles_file.is_file() else None
        except (ValueError, OSError, EOFError) as exc:
            raise DistillError(f"{folder}: damaged store file ({type(exc).__name__}: {str(exc)[:200]})") from None
        n = len(offsets) - 1
        size = path.stat().st_size
        end = int(offsets[-1]) if offsets.ndim == 1 and len(offsets) else -1
        if end != size:
            raise DistillError(f"{path}: {size:,} bytes, but its rows ({offsets_file.name if offsets_file.is_file() else 'its lines'}) "
                               f"end at byte {end:,}: the file was changed or cut short")
        if roles is None:
            roles = np.broadcast_to(np.uint8(DOCUMENT), (n,))  # before roles: every row a document
        elif roles.shape != (n,):
            raise DistillError(f"{roles_file}: {roles.shape[0] if roles.ndim == 1 else roles.shape} roles for {n} sentences")
        if count is not None and n != count:
            raise DistillError(f"{path} has {n} lines, the manifest says {count}")
        return cls(folder, offsets, roles, owned=owned)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index):
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step == 1:
                return self.batch(start, max(start, stop))
            return self.take(range(start, stop, step))
        i = int(index)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"row {index} of a store of {len(self)} sentences")
        return self.batch(i, i + 1)[0]

    def batch(self, start: int, stop: int) -> list[str]:
        """Rows start .. stop - 1, read with one pread."""
        start, stop = max(0, int(start)), min(len(self), int(stop))
        if stop <= start:
            return []
        begin, end = int(self.offsets[start]), int(self.offsets[stop])
        data = os.pread(self._fd, end - begin, begin)
        rows = data.decode("utf-8").split("\n")
        if len(data) != end - begin or len(rows) != stop - start + 1 or rows[-1]:
            raise DistillError(f"{self.path}: rows {start}..{stop - 1} are not where {self.folder / OFFSETS} says "
                               "(the file was changed or cut short)")
        rows.pop()
        return rows

    def take(self, rows) -> list[str]:
        """The given rows (any order, repeats allowed), one read each."""
        return [self[int(i)] for i in rows]

    def __iter__(self) -> Iterator[str]:
        for start in range(0, len(self), READ_CHUNK):
            yield from self.batch(start, start + READ_CHUNK)

    @property
    def roles_sha256(self) -> str | None:
        return roles_sha256(self.roles)

    def close(self) -> None:
        """Close the file (and remove the folder when it is a temporary one); the store is unusable after."""
        self._finalizer()

    def __enter__(self) -> SentenceStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __reduce__(self):  # another process opens the same folder (never taking over a temporary one)
        return (SentenceStore.open, (self.folder,))

    def __repr__(self) -> str:
        return f"SentenceStore({str(self.folder)!r}, {len(self)} sentences)"


def _release(fd: int, folder: Path | None) -> None:
    os.close(fd)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


def line_offsets(path: Path, block: int = 1 << 24) -> np.ndarray:
    """The N + 1 row offsets of a file of "\\n"-ended lines (a trailing piece without "\\n" is not a row),
    found block by block."""
    ends = [np.zeros(1, dtype=np.int64)]
    pos = 0
    with open(path, "rb") as f:
        while chunk := f.read(block):
            ends.append(np.flatnonzero(np.frombuffer(chunk, dtype=np.uint8) == 10).astype(np.int64) + pos + 1)
            pos += len(chunk)
    return np.concatenate(ends)


class SentenceWriter:
    """Write a store as rows come (`add`), or, without a folder, only count and hash them.

    `sha256` is the sha256 of sentences.txt's bytes (each row and its "\\n"), the corpus identity
    `corpus_sha256` always had. Files are written under temp names and renamed at `close`; `abort`
    removes them."""

    def __init__(self, folder: str | Path | None):
        self.folder = Path(folder) if folder is not None else None
        self.count = 0
        self._sha = hashlib.sha256()
        self._roles_sha = hashlib.sha256()
        self._has_query = False
        self._pos = 0
        self._text = self._offsets = self._roles = None
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._text_tmp = self.folder / f".{SENTENCES}.tmp"
            self._text = open(self._text_tmp, "wb", buffering=1 << 20)  # noqa: SIM115 (closed in close/abort)
            self._offsets = NpyAppender(self.folder / OFFSETS, np.int64)
            self._roles = NpyAppender(self.folder / ROLES_FILE, np.uint8)
            self._offsets.append([0])

    def add(self, rows: list[bytes], roles: np.ndarray) -> None:
        """Append UTF-8 rows (without their "\\n") and their roles (uint8)."""
        if not rows:
            return
        data = b"\n".join(rows) + b"\n"
        roles = np.asarray(roles, dtype=np.uint8)
        self._sha.update(data)
        self._roles_sha.update(roles.tobytes())
        self._has_query = self._has_query or bool(roles.any())
        self.count += len(rows)
        if self.folder is None:
            return
        self._text.write(data)
        ends = np.cumsum(np.fromiter((len(r) + 1 for r in rows), dtype=np.int64, count=len(rows))) + self._pos
        self._pos = int(ends[-1])
        self._offsets.append(ends)
        self._roles.append(roles)

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()

    @property
    def roles_sha256(self) -> str | None:
        """As `roles_sha256(roles)`: None when every row written so far is a document."""
        return self._roles_sha.hexdigest() if self._has_query else None

    def close(self, owned: bool = False) -> SentenceStore | None:
        """Finish the files and open them as a store (None without a folder)."""
        if self.folder is None:
            return None
        self._text.flush()
        os.fsync(self._text.fileno())
        self._text.close()
        os.replace(self._text_tmp, self.folder / SENTENCES)
        self._roles.close()
        self._offsets.close()
        return SentenceStore.open(self.folder, self.count, owned=owned)

    def abort(self) -> None:
        if self.folder is None:
            return
        self._text.close()
        self._text_tmp.unlink(missing_ok=True)
        self._offsets.abort()
        self._roles.abort()
