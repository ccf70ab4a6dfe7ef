"""The loss registry: recipe name -> class, and building a loss from a recipe's mapping.

Apart from distill/losses/__init__.py so that a loss module (st_adapter) can build losses without
importing the package it is part of; a stage-2 loss gets the stage-1 loss it carries built here and
handed in (`carried`), so no loss module imports the registry back.
"""

from __future__ import annotations

from typing import Any

from distill.errors import DistillError
from distill.losses.base import MATRYOSHKA_DEFAULTS, DistillLoss
from distill.losses.cosine import CosineLoss
from distill.losses.crd import CRDLoss
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
    if rest.get("stage1_head") and "carried" in cls.internal:
        rest["carried"] = carried_loss(rest["stage1_head"], int(student_dim), cls.name)
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




def carried_loss(spec: dict, student_dim: int, who: str) -> DistillLoss:
    """The stage-1 loss whose embedding head a stage-2 loss trains on (its weights are loaded by the caller)."""
    if not loss_class(spec["name"]).head_in_embedding(spec) or spec.get("matryoshka_dims"):
        raise DistillError(f"{who}.stage1_head: loss {spec['name']!r} has no head that is part of the embedding "
                           "(or one stage 2 does not carry); leave it unset")
    return build_loss(spec, student_dim, None)
