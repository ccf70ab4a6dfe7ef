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
from distill.io import atomic_path

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
    with atomic_path(path, fixed=True) as tmp:  # a kill leaves the previous checkpoint intact
        torch.save(payload, tmp)


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
