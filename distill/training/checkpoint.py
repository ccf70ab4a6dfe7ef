"""RUN/checkpoint.pt: everything `--resume` needs to end where an uninterrupted run ends.

Student and loss-head weights, optimizer, scheduler, every RNG, the TrainState (step, epoch,
position in the epoch, best score, evals) and the recipe. Written atomically, so a kill during
the write leaves the previous checkpoint intact.

Read without unpickling code: run folders are copied and shared, and `torch.load(weights_only=False)`
of a planted checkpoint.pt would run whatever its pickle names. So everything in a checkpoint is
tensors, dicts, lists, numbers and strings (the RNG states converted, see rng_state), read with
`weights_only=True`. Checkpoints written before that hold numpy's RNG state as an ndarray: the
four numpy names that rebuild a plain array are allowed while loading, nothing else.
"""

from __future__ import annotations

import pickle
import random
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from distill.errors import DistillError
from distill.io import atomic_path, os_error_text
from distill.model_files import weights_only_reason

NAME = "checkpoint.pt"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def rng_state() -> dict:
    """Every RNG's state as lists, numbers, strings and tensors (what weights_only loading reads)."""
    version, internal, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "python": [version, list(internal), gauss_next],
        "numpy": {"kind": kind, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(cached_gaussian)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(s: dict) -> None:
    """Restore rng_state()'s dict, or the tuples a checkpoint written before it holds."""
    version, internal, gauss_next = s["python"]
    random.setstate((version, tuple(internal), gauss_next))
    n = s["numpy"]
    if isinstance(n, dict):
        n = (n["kind"], np.asarray(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    np.random.set_state(n)
    torch.set_rng_state(s["torch"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def save_checkpoint(path: Path, payload: dict) -> None:
    """Write atomically: a kill or a full disk leaves the previous checkpoint intact.

    torch.save is given an open file, not a name: its own file writer reports a failed write as
    "unexpected pos 704 vs 598", while Python's write raises the OSError (disk full, file too large)
    that names the cause, kept as the RuntimeError's context.
    """
    try:
        with atomic_path(path, fixed=True) as tmp, open(tmp, "wb") as f:
            torch.save(payload, f)
    except (OSError, RuntimeError) as exc:
        cause = exc if isinstance(exc, OSError) else exc.__context__
        if not isinstance(cause, OSError):
            raise
        then = ("the previous checkpoint is kept as it was: once the disk takes it, continue with --resume" if path.is_file()
                else "there was no checkpoint yet: once the disk takes it, train again")
        raise DistillError(f"{path}: checkpoint not written, {os_error_text(cause)}; {then}") from None


def damaged(path: Path, exc: BaseException) -> DistillError:
    return DistillError(f"{path}: damaged or not this run's checkpoint ({type(exc).__name__}: {str(exc)[:200]}); "
                        f"--resume cannot continue from it: restore it from a copy, or move it away and train again without --resume")


def _older_numpy_state():
    """While loading: the numpy names an older checkpoint's RNG state (a uint32 ndarray) is rebuilt from.
    They make plain arrays only; any other global in the file is still refused."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1
        from numpy.core.multiarray import _reconstruct
    allowed = [_reconstruct, np.ndarray, np.dtype, *([np.dtypes.UInt32DType] if hasattr(np, "dtypes") else [])]
    safe_globals = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    return safe_globals(allowed) if safe_globals is not None else nullcontext()


def refused(path: Path, exc: BaseException) -> DistillError:
    """weights_only's refusal, with its reason ("Unsupported global: GLOBAL posix.system ...") and
    without torch's advice to allowlist the global or load with weights_only=False."""
    reason = weights_only_reason(exc)
    return DistillError(f"{path}: refused, not a checkpoint distill can read without unpickling code ({reason}); it is not "
                        "from distill, was altered, or an older distill wrote it, and distill never runs what a pickle names: "
                        "--resume cannot continue from it: re-run without --resume (into a new output.dir)")


def load_checkpoint(path: Path) -> dict:
    """The checkpoint's dict, read with weights_only=True: a file that needs any other unpickling is refused."""
    try:
        with _older_numpy_state():
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # weights_only's refusal of a global (a class, a function) in the pickle
        raise refused(path, exc) from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, ImportError) as exc:
        raise damaged(path, exc) from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("recipe"), dict):
        raise damaged(path, ValueError("no recipe in it"))
    return ckpt


def check_resumed_recipe(ckpt: dict, recipe, ckpt_file: Path, only: tuple[str, ...] | None = None) -> None:
    """--resume continues only the recipe the checkpoint was written with (keys added since take their
    defaults); `only`: the recipe sections compared (a finished stage 1: those that trained it)."""
    from distill.config import saved_recipe_with_defaults

    saved, now = dict(saved_recipe_with_defaults(ckpt["recipe"])), recipe.to_dict()
    # output.dir is the folder being resumed, however it is spelled (relative, absolute, moved): not compared.
    # Nor is data.cache_dir: where the teacher cache lies is not what trained the run; a cache that is
    # opened again is checked against the recipe by its own manifest (teacher, corpus, length).
    for r in (saved, now):
        if isinstance(r.get("output"), dict):
            r["output"] = {k: v for k, v in r["output"].items() if k != "dir"}
        if isinstance(r.get("data"), dict):
            r["data"] = {k: v for k, v in r["data"].items() if k != "cache_dir"}
    if only is not None:
        saved, now = {k: saved.get(k) for k in only}, {k: now[k] for k in only}
    if saved != now:
        from distill.recipe_diff import describe_differences

        raise DistillError(f"--resume: the recipe differs from the checkpoint's ({ckpt_file}) in "
                           + describe_differences(saved, now, "the checkpoint", "now"))
