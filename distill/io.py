"""Atomic writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

_UMASK = os.umask(0)
os.umask(_UMASK)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
