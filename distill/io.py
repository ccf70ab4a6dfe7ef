"""Atomic writes: a reader sees the old file or folder or the new one, never half of one.

The one place that writes through a temp name and a rename:
  atomic_path(path)     a temp file beside `path` for any writer (np.save to an open file,
                        torch.save, safetensors' save_file, ...), renamed over `path` on success
  atomic_dir(path)      the same for a whole folder (a saved student, an export, a model)
  temp_folder(path)     a marked work folder beside `path`, deleted on exit (files moved out of it
                        are kept): several files made, checked, then renamed into place
  write_bytes_atomic / write_text_atomic / write_json_atomic   small files, fsync'ed
and the checks of a command that writes a user-named output:
  check_new_file(path)  before the work: not a folder, not an existing file unless --overwrite,
                        and `check_writable`
  check_writable(path)  before the work: the folder exists or can be made, and a file can be
                        created in it (a read-only disk fails here, not after an hour of encoding)
  write_errors(path)    around the write: an OSError (disk full, read-only, quota) becomes a
                        DistillError naming the output and what the errno means
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from distill.errors import DistillError

_UMASK = os.umask(0)
os.umask(_UMASK)

# Inside every temp folder while this tool writes it (the pid and host of the writer), removed just
# before the folder is renamed into place: a folder left by a process killed mid-write (kill -9,
# power loss) is known as this tool's by it, and removed by the next write to the same path.
PARTIAL_MARKER = ".distill-partial.json"


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


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temps(path: str | Path) -> list[Path]:
    """Delete the temp folders of `path` that a distill process left when it died mid-write: the
    folders `.NAME.*` beside it that hold PARTIAL_MARKER naming this host and a pid that no longer
    runs. Nothing else is touched: a folder without the marker, one of another host (a shared
    disk) or of a live process (a write still going on) stays. Returns what was removed."""
    path = Path(path)
    removed = []
    host = socket.gethostname()
    try:
        candidates = [p for p in path.parent.iterdir() if p.name.startswith(f".{path.name}.")]
    except OSError:  # no such folder yet, or not readable: nothing of ours in it
        return removed
    for folder in candidates:
        marker = folder / PARTIAL_MARKER
        if folder.is_symlink() or not marker.is_file():
            continue
        try:
            info = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(info, dict) or info.get("tool") != "distill" or info.get("host") != host:
            continue
        pid = info.get("pid")
        if not isinstance(pid, int) or isinstance(pid, bool) or _process_alive(pid):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def make_temp_dir(path: str | Path) -> Path:
    """A new empty folder `.NAME.XXXXXXXX` beside `path`, marked as this process's (PARTIAL_MARKER),
    after removing the ones a killed distill process left there (`remove_stale_temps`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        (tmp / PARTIAL_MARKER).write_text(json.dumps({"tool": "distill", "pid": os.getpid(), "host": socket.gethostname()}) + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


@contextmanager
def temp_folder(path: str | Path) -> Iterator[Path]:
    """Yield a marked work folder beside `path` (`make_temp_dir`); it is deleted on exit, success or
    not: what the caller wants to keep, it renames out of it first."""
    tmp = make_temp_dir(path)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def atomic_dir(path: str | Path, *, publish: Callable[[Path, Path], None] | None = None) -> Iterator[Path]:
    """Yield a new empty temp folder beside `path` (`make_temp_dir`); on success its marker is
    removed, its tree gets the umask's permissions (`apply_umask`) and `publish(tmp, path)`
    (default `replace_dir`) puts it in place; on error, or when publish fails, the temp folder is
    deleted. One left by a killed process is deleted by the next atomic_dir of the same path."""
    path = Path(path)
    tmp = make_temp_dir(path)
    try:
        yield tmp
        (tmp / PARTIAL_MARKER).unlink()
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


def try_read_json(path: str | Path):
    """The JSON value in `path`, or None when the file is missing, unreadable or not JSON: for
    optional metadata a reader can do without. A file the user must fix is read strictly, with an
    error naming it and its line (st_format.read_json: model folders; data/cache.py: the manifest)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None


def try_read_json_object(path: str | Path) -> dict:
    """try_read_json's value when it is a JSON object, else {}."""
    data = try_read_json(path)
    return data if isinstance(data, dict) else {}


def write_json_atomic(path: str | Path, obj) -> None:
    """Strict JSON: a NaN or infinity is refused (json.dumps would write bare NaN, which is not JSON)."""
    try:
        text = json.dumps(obj, indent=2, sort_keys=False, allow_nan=False)
    except ValueError:
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


def os_error_text(exc: OSError) -> str:
    """What an OSError means, in words, with the errno's name: "No space left on device (ENOSPC)"."""
    if exc.errno is None:
        if "requested and" in str(exc):  # numpy's tofile reports a short write without its errno
            return f"a short write ({exc}): the disk is full, or a file size limit was reached"
        return str(exc)
    return f"{os.strerror(exc.errno)} ({errno.errorcode.get(exc.errno, exc.errno)})"


def check_writable(path: str | Path, what: str, *, folder: bool = False) -> None:
    """Refuse, before any work, an output that cannot be written: `path` is the output file
    (`folder=True`: the output folder). Its folder must exist or be creatable, and a file must be
    creatable in it: a probe file is made and removed in the nearest existing folder. The probe,
    not os.access, decides: os.access says yes to root on a folder root cannot write (sysfs), and
    says nothing of a full disk's quota or inodes. Nothing is left behind, no folder is made."""
    path = Path(os.path.abspath(path))
    target = path if folder else path.parent
    existing = target
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise DistillError(f"{what} {path}: cannot be written, {existing} exists and is not a folder")
    where = "" if existing == target else f" (to make {target.relative_to(existing)} in it)"
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".distill-write-probe.")
    except OSError as exc:
        raise DistillError(f"{what} {path}: cannot write in {existing}{where}: {os_error_text(exc)}") from None
    os.close(fd)
    os.unlink(probe)


def check_new_file(path: str | Path, what: str, overwrite: bool) -> None:
    """Before the work, an output file the user names (`what` is its flag): a folder is refused, and
    an existing file (or link) unless `overwrite`: a JSON or text file carries no mark of who wrote
    it, so any existing one may be the user's own. Then `check_writable`."""
    path = Path(path)
    if path.is_dir():
        raise DistillError(f"{what} {path}: an existing folder; name a file")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise DistillError(f"{what} {path}: the file exists; pass --overwrite to replace it, or name a new file")
    check_writable(path, what)


@contextmanager
def write_errors(path: str | Path, what: str, hint: str = ""):
    """Turn an OSError raised inside (disk full, read-only disk, quota, file too large) into a
    DistillError naming the output (`what` `path`), what the errno means, the file the system
    refused, then `hint` (what was kept, what to do)."""
    try:
        yield
    except OSError as exc:
        at = f" at {exc.filename}" if exc.filename and str(exc.filename) != str(path) else ""
        raise DistillError(f"{what} {path}: {os_error_text(exc)}{at}{hint}") from None
    except Exception as exc:
        found = _RUST_OS_ERROR.search(str(exc))
        if found is None:
            raise
        # a Rust library's write (safetensors, tokenizers) fails with its own exception type,
        # its io::Error's text ending in "(os error 27)"
        raise DistillError(f"{what} {path}: {os_error_text(OSError(int(found.group(1)), ''))}{hint}") from None


_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")
