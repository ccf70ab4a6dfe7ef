"""Distillation objectives, one module each; every loss owns its trainable heads.

    from distill.losses import build_loss
    loss = build_loss("ibkd", student_dim=384, teacher_dim=768, bandwidth="median")
    optimizer = torch.optim.AdamW([*student.parameters(), *loss.parameters()], lr=1e-4)
    out = student(ids, mask, output_hidden_states=loss.needs_hidden_states)
    out["attention_mask"] = mask            # losses that pool intermediate layers need it
    parts = loss(out, teacher_vectors)      # {"loss": scalar, "infonce": ..., "hsic": ..., ...}
    parts["loss"].backward()

`loss.embedding_head()` is the module to append to the student for evaluation/export (HPD's
K-d tanh projection; None for the others). `STDistillLoss` (lazy import) wraps any of them as a
sentence-transformers loss.
"""

from __future__ import annotations

from typing import Any

from distill.errors import DistillError
from distill.losses.cosine import CosineLoss
from distill.losses.crd import CRDLoss
from distill.losses.functional import (
    DistillLoss,
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
from distill.losses.mse import MSELoss

# Name (as in recipes, config.LOSS_DEFAULTS) -> class. ibkd_supervised is stage 2 of IBKD: it takes
# (anchor, positive, negative) student outputs instead of (student, teacher).
LOSSES: dict[str, type[DistillLoss]] = {
    "mse": MSELoss,
    "cosine": CosineLoss,
    "hpd": HPDLoss,
    "crd": CRDLoss,
    "infonce": InfoNCELoss,
    "ibkd": IBKDLoss,
    "ibkd_supervised": IBKDSupervisedLoss,
}


def build_loss(spec: str | dict[str, Any], student_dim: int, teacher_dim: int | None, **params: Any) -> DistillLoss:
    """A loss from its name (or a recipe's loss mapping {"name": ..., **params}) and the widths.

    `teacher_dim` is the width of the cached teacher vectors (HPD and stage 2 do not use it).
    """
    if isinstance(spec, dict):
        params = {**{k: v for k, v in spec.items() if k != "name"}, **params}
        spec = spec.get("name", "")
    cls = LOSSES.get(str(spec))
    if cls is None:
        raise DistillError(f"unknown loss {spec!r} (known: {', '.join(LOSSES)})")
    try:
        return cls(student_dim, teacher_dim, **params)
    except TypeError as exc:
        raise DistillError(f"loss {spec!r}: {exc}") from None


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
    "MSELoss",
    "STDistillLoss",
    "build_loss",
    "gather_candidates",
    "hidden_state_mean",
    "hsic",
    "info_nce",
    "masked_mean",
    "median_gamma",
    "rbf_kernel",
]
