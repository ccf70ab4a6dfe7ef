"""RUN/checkpoint.pt: everything `--resume` needs to end where an uninterrupted run ends.

Student and loss-head weights, optimizer, scheduler, every RNG, the TrainState (step, epoch,
position in the epoch, best score, evals) and the recipe. Written atomically, so a kill during
the write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np
import torch

from distill.errors import DistillError
from distill.io import atomic_path, os_error_text

NAME = "checkpoint.pt"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def rng_state() -> dict:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(s: dict) -> None:
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
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


def load_checkpoint(path: Path) -> dict:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, AttributeError, ImportError) as exc:
        raise damaged(path, exc) from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("recipe"), dict):
        raise damaged(path, ValueError("no recipe in it"))
    return ckpt
