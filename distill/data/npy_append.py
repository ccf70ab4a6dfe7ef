"""A 1-D .npy file written piece by piece, its length unknown until the end.

The corpus and token stores grow with the corpus (a sentence's bytes offset, its role, its token
ids) and must not be held in memory whole: each piece is appended to the file as it comes, and
the header, whose shape is known only then, is written over a fixed-size placeholder at `close`.
The result is an ordinary .npy file (`np.load(path, mmap_mode="r")` reads it). Written under a
temp name beside the target and renamed over it at `close`: a reader never sees half a file.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

# magic (6) + version (2) + header length (2) + the header dict padded with spaces and a "\n":
# 128 bytes hold any 1-D shape (a 19-digit length) and keep the data 64-byte aligned, as numpy's own.
HEADER_BYTES = 128
_MAGIC = b"\x93NUMPY\x01\x00"


def npy_header(dtype: np.dtype, length: int) -> bytes:
    """The version 1.0 header of a C-ordered 1-D array of `length` `dtype`s, HEADER_BYTES long."""
    text = repr({"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": (int(length),)})
    body_len = HEADER_BYTES - len(_MAGIC) - 2
    body = text.ljust(body_len - 1) + "\n"
    return _MAGIC + struct.pack("<H", body_len) + body.encode("latin1")


class NpyAppender:
    """Append 1-D pieces of one dtype; `close()` writes the header and renames the file into place."""

    def __init__(self, path: str | Path, dtype):
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.length = 0
        self._tmp = self.path.with_name(f".{self.path.name}.tmp")  # one fixed name: a killed writer leaves one leftover
        self._file = open(self._tmp, "wb")  # noqa: SIM115 (held open across appends, closed in close/abort)
        self._file.write(b"\0" * HEADER_BYTES)

    def append(self, values) -> None:
        a = np.ascontiguousarray(values, dtype=self.dtype).reshape(-1)
        self._file.write(a.tobytes())
        self.length += len(a)

    def close(self) -> Path:
        """Write the header, flush, and rename over `path`; returns `path`."""
        self._file.seek(0)
        self._file.write(npy_header(self.dtype, self.length))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Drop what was written (an error or an interruption: nothing half-written stays)."""
        if not self._file.closed:
            self._file.close()
        self._tmp.unlink(missing_ok=True)
