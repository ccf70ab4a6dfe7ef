"""Distillation objectives, one module each; every loss owns its trainable heads.

    from distill.losses import build_loss
    loss = build_loss("ibkd", student_dim=384, teacher_dim=768, bandwidth="median")
    optimizer = torch.optim.AdamW([*student.parameters(), *loss.parameters()], lr=1e-4)
    out = student(ids, mask, output_hidden_states=loss.needs_hidden_states)
    out["attention_mask"] = mask            # losses that pool intermediate layers need it
    parts = loss(out, teacher_vectors)      # {"loss": scalar, "infonce": ..., "hsic": ..., ...}
    parts["loss"].backward()

With `matryoshka_dims=[384, 256, 128, 64]` (a recipe's loss.matryoshka_dims) a loss that compares
student vectors comes back as a `MatryoshkaLoss` (losses/matryoshka.py): the same objective on
each prefix s[:k], each with its own heads, summed with `matryoshka_weights`.

`loss.embedding_head()` is the module to append to the student for evaluation/export (HPD's
K-d tanh projection; None for the others). `STDistillLoss` (lazy import) wraps any of them as a
sentence-transformers loss.

Adding a loss: one file, and three lines here (its import, its entry in `LOSSES`, its name in `__all__`).

1. distill/losses/<name>.py: a `DistillLoss` subclass (base.py) with a docstring giving the
   formula and the paper, and the class attributes the toolkit reads instead of the loss's name:
   `name` (the recipe name), its recipe parameters as keyword-only constructor arguments with
   defaults (`defaults()` reads them; exclude an internal keyword in `internal` with a reason),
   `rules` (value checks run when a recipe is read), `contrastive` (in-batch negatives only:
   a batch needs at least 2 sentences per device), `targets(params)` (override for anything
   but the teacher's cached vectors, as HPD does for its PCA targets), `embedding_head()` (a
   head that is part of the sentence embedding) and `export_head()` (a training-only head that
   `distill export --keep-projection` may append).
   If it compares student vectors with the teacher's, `matryoshka = True` lets recipes train it on
   prefixes (matryoshka_dims); otherwise `matryoshka_refusal` says why not.
2. here: its import, its entry in `LOSSES` below and its name in `__all__`. Its order is the order of `distill compare`'s default losses
   (every loss with `stage = 1`).

Recipes (config.py), recipe checks, `distill compare`, the trainer and `distill export` then
know it; none of them names a loss.
"""

from __future__ import annotations

from typing import Any

from distill.errors import DistillError
from distill.losses.base import MATRYOSHKA_DEFAULTS, DistillLoss
from distill.losses.cosine import CosineLoss
from distill.losses.crd import CRDLoss
from distill.losses.functional import (
    gather_candidates,
    hidden_state_mean,
    hsic,
    info_nce,
    masked_mean,
    median_gamma,
    rbf_kernel,
)
from distill.losses.hpd import HPDLoss
from distill.losses.ibkd import IBKDLoss
from distill.losses.ibkd_supervised import IBKDSupervisedLoss
from distill.losses.infonce import InfoNCELoss
from distill.losses.matryoshka import MatryoshkaLoss
from distill.losses.mnrl import MNRLLoss
from distill.losses.mse import MSELoss

# Recipe name -> class, one line per loss; the order is `distill compare`'s default order.
# The stage-2 losses (`stage = 2`: ibkd_supervised, mnrl) take rows of student outputs (anchor,
# positive, negatives...) instead of (student, teacher); a recipe names one in stage2.loss.name,
# and they are not compared.
LOSSES: dict[str, type[DistillLoss]] = {cls.name: cls for cls in (
    MSELoss,
    CosineLoss,
    CRDLoss,
    HPDLoss,
    InfoNCELoss,
    IBKDLoss,
    IBKDSupervisedLoss,
    MNRLLoss,
)}


def loss_class(name: str) -> type[DistillLoss]:
    """The class registered under `name`; an unknown name is a DistillError listing the known ones."""
    cls = LOSSES.get(str(name))
    if cls is None:
        raise DistillError(f"unknown loss {name!r} (known: {', '.join(LOSSES)})")
    return cls


def comparable_losses() -> tuple[str, ...]:
    """The losses `distill compare` runs by default: every stage-1 loss, in registry order."""
    return tuple(name for name, cls in LOSSES.items() if cls.stage == 1)


def build_loss(spec: str | dict[str, Any], student_dim: int, teacher_dim: int | None, **params: Any) -> DistillLoss:
    """A loss from its name (or a recipe's loss mapping {"name": ..., **params}) and the widths.

    `teacher_dim` is the width of the cached teacher vectors (HPD and stage 2 do not use it).
    """
    if isinstance(spec, dict):
        params = {**{k: v for k, v in spec.items() if k != "name"}, **params}
        spec = spec.get("name", "")
    cls = loss_class(str(spec))
    cls.check(params, f"loss {cls.name}")  # the class's rules: the one check of its parameters
    try:
        return _construct(cls, student_dim, teacher_dim, params)
    except TypeError as exc:
        raise DistillError(f"loss {spec!r}: {exc}") from None


def _construct(cls: type[DistillLoss], student_dim: int, teacher_dim: int | None, params: dict[str, Any]) -> DistillLoss:
    """The class itself, or with `matryoshka_dims` set a MatryoshkaLoss over one instance per prefix."""
    dims, weights = params.get("matryoshka_dims"), params.get("matryoshka_weights")
    rest = {k: v for k, v in params.items() if k not in MATRYOSHKA_DEFAULTS}
    if dims is None:
        return cls(student_dim, teacher_dim, **rest)
    return MatryoshkaLoss(cls, student_dim, teacher_dim, dims=dims, weights=weights,
                          head=params.get("matryoshka_head", "none"), detach=bool(params.get("matryoshka_detach", False)), **rest)


def load_loss(spec: dict[str, Any], student_dim: int, state: dict[str, Any]) -> DistillLoss:
    """A saved student's loss (its recipe mapping) with its trained heads (`state`, the saved
    state_dict). The teacher width is not saved with it: it is the width, among the sizes of the
    saved tensors, with which the loss's state_dict has exactly the saved keys and shapes.
    Parameters this version no longer knows are ignored (only the heads are wanted)."""
    cls = loss_class(spec.get("name", ""))
    known = cls.defaults()
    params = {k: v for k, v in spec.items() if k in known or k in cls.internal}  # internal: e.g. stage 2's carried stage-1 head
    cls.check(params, f"saved loss {cls.name}")
    widths = sorted({int(d) for t in state.values() for d in t.shape} | {int(student_dim)})
    for teacher_dim in widths:
        try:
            loss = _construct(cls, student_dim, teacher_dim, params)
            loss.load_state_dict(state, strict=True)
        except (RuntimeError, DistillError):  # heads of another width, or a width the loss refuses
            continue
        return loss
    raise DistillError(f"the saved heads of loss {cls.name!r} fit none of the widths {widths}: "
                       f"saved by another version? (keys: {', '.join(sorted(state)) or 'none'})")


def __getattr__(name: str):  # sentence-transformers is only imported by those who want the adapter
    if name in ("STDistillLoss",):
        from distill.losses.st_adapter import STDistillLoss

        return STDistillLoss
    raise AttributeError(name)


__all__ = [
    "LOSSES",
    "CRDLoss",
    "CosineLoss",
    "DistillLoss",
    "HPDLoss",
    "IBKDLoss",
    "IBKDSupervisedLoss",
    "InfoNCELoss",
    "MNRLLoss",
    "MSELoss",
    "MatryoshkaLoss",
    "STDistillLoss",
    "build_loss",
    "comparable_losses",
    "load_loss",
    "loss_class",
    "gather_candidates",
    "hidden_state_mean",
    "hsic",
    "info_nce",
    "masked_mean",
    "median_gamma",
    "rbf_kernel",
]
