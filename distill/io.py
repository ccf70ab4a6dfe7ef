"""Atomic writes: a reader sees the old file or folder or the new one, never half of one.

The one place that writes through a temp name and a rename:
  atomic_path(path)     a temp file beside `path` for any writer (np.save to an open file,
                        torch.save, safetensors' save_file, ...), renamed over `path` on success
  atomic_dir(path)      the same for a whole folder (a saved student, an export, a model)
  write_bytes_atomic / write_text_atomic / write_json_atomic   small files, fsync'ed
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: str | Path, *, fixed: bool = False) -> Iterator[Path]:
    """Yield a temp file path in `path`'s folder; on success it is renamed over `path`, on error removed.

    The temp name keeps `path`'s suffix (".x.npy.<random>.tmp.npy"), so writers that append one
    (np.save / np.savez given a name) write the yielded path itself. It exists (empty) with the
    permissions the umask asks for: mkstemp's 0600 is not kept. `fixed=True`: the temp name is
    always `.NAME.tmp` (created by the writer), so a build killed mid-write leaves at most one
    leftover, overwritten by the next try (the teacher cache's shards and matrices: big files, one
    writer at a time under the folder's lock).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fixed:
        tmp = path.with_name(f".{path.name}.tmp")
    else:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
        os.close(fd)
        tmp = Path(name)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def replace_dir(new: Path, path: Path) -> None:
    """Rename the folder `new` to `path`. A non-empty folder already at `path` is moved aside
    first (and put back if the rename fails), then deleted; an empty one is replaced by rename(2)."""
    new, path = Path(new), Path(path)
    if path.is_dir() and any(path.iterdir()):
        old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old."))
        os.replace(path, old / path.name)  # the previous folder, aside: restored if the rename below fails
        try:
            os.replace(new, path)
        except BaseException:
            os.replace(old / path.name, path)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, path)


@contextmanager
def atomic_dir(path: str | Path, *, publish: Callable[[Path, Path], None] | None = None) -> Iterator[Path]:
    """Yield a new empty temp folder beside `path`; on success its tree gets the umask's permissions
    (`apply_umask`) and `publish(tmp, path)` (default `replace_dir`) puts it in place; on error, or
    when publish fails, the temp folder is deleted."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        yield tmp
        apply_umask(tmp)  # mkdtemp made it 0700, safetensors files are 0600
        (publish or replace_dir)(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def _non_finite(obj, where: str = "") -> list[str]:
    if isinstance(obj, float) and not math.isfinite(obj):
        return [where or "(top level)"]
    if isinstance(obj, dict):
        return [w for k, v in obj.items() for w in _non_finite(v, f"{where}.{k}" if where else str(k))]
    if isinstance(obj, (list, tuple)):
        return [w for i, v in enumerate(obj) for w in _non_finite(v, f"{where}[{i}]")]
    return []


def write_json_atomic(path: str | Path, obj) -> None:
    """Strict JSON: a NaN or infinity is refused (json.dumps would write bare NaN, which is not JSON)."""
    try:
        text = json.dumps(obj, indent=2, sort_keys=False, allow_nan=False)
    except ValueError:
        from distill.errors import DistillError

        raise DistillError(f"{path}: not written, it would hold non-finite numbers at {', '.join(_non_finite(obj)[:5])}") from None
    write_text_atomic(path, text + "\n")


def apply_umask(path: str | Path) -> None:
    """Give a folder tree the permissions the umask asks for.

    tempfile.mkdtemp makes 0700 folders and safetensors writes 0600 files: a model published
    that way cannot be read by another user or a serving container.
    """
    path = Path(path)
    os.chmod(path, 0o777 & ~_UMASK if path.is_dir() else 0o666 & ~_UMASK)
    if path.is_dir():
        for root, dirs, files in os.walk(path):
            for d in dirs:
                os.chmod(os.path.join(root, d), 0o777 & ~_UMASK)
            for f in files:
                os.chmod(os.path.join(root, f), 0o666 & ~_UMASK)
