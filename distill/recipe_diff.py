"""What differs between two recipes (as dicts), key by key: `--resume` names the keys it refuses on
and both values, not only the section ("train")."""

from __future__ import annotations

from typing import Any

_ABSENT = object()


def recipe_differences(old: dict, new: dict, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, old value, new value) of every value that differs, sections walked down to
    their keys, in the new recipe's key order (then keys only the old one has); a key one side
    lacks has the value `_ABSENT` there."""
    out = []
    for key in [*new, *(k for k in old if k not in new)]:
        a, b = old.get(key, _ABSENT), new.get(key, _ABSENT)
        if a == b:
            continue
        where = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += recipe_differences(a, b, f"{where}.")
        else:
            out.append((where, a, b))
    return out


def describe_differences(old: dict, new: dict, old_name: str, new_name: str, limit: int = 4) -> str:
    """'train.lr: 0.001 in the checkpoint, 0.0005 now; ...' (at most `limit`, then how many more)."""
    diffs = recipe_differences(old, new)

    def show(value) -> str:
        return "(not set)" if value is _ABSENT else repr(value)

    text = "; ".join(f"{key}: {show(a)} in {old_name}, {show(b)} {new_name}" for key, a, b in diffs[:limit])
    return text + (f"; and {len(diffs) - limit} more" if len(diffs) > limit else "")
