"""One process at a time in a run or cache folder: an advisory `flock` on FOLDER/.distill.lock.

Two `distill train` runs into one output.dir (or two `distill cache` builds into one --out)
would interleave their checkpoints, students and results; the second is refused at once, with
the holder's pid, host, command and start time in the message. The kernel drops a flock when
its process dies, however it dies, so a killed run never blocks `--resume`: the lock file it
leaves behind is just a note, and the next process takes the lock over.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import os
import socket
import sys
from contextlib import contextmanager
from pathlib import Path

from distill.errors import DistillError

LOCK_NAME = ".distill.lock"
_held: dict[str, int] = {}  # resolved folder -> open fd; a process re-entering its own lock is fine


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode("utf-8") or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "another process"
    return f"pid {info.get('pid')} on {info.get('host')} ({info.get('command')}, since {info.get('started')})"


@contextmanager
def folder_lock(folder: str | Path, what: str = "folder"):
    """Hold FOLDER/.distill.lock for the duration; raise DistillError at once if another process holds it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = str(folder.resolve())
    if key in _held:  # nested use in one process (build_cache -> add_pca)
        yield
        return
    path = folder / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise DistillError(f"{folder}: this {what} is in use by {holder}; wait for it to end, or use another folder") from None
    info = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(["distill", *sys.argv[1:]])[:300],
            "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode("utf-8"), 0)
    _held[key] = fd
    try:
        yield
    finally:
        del _held[key]
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
