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

from distill.losses.base import DistillLoss
from distill.losses.functional import (
    gather_candidates,
    hidden_state_mean,
    hsic,
    info_nce,
    masked_mean,
    median_gamma,
    rbf_kernel,
)
from distill.losses.registry import (  # noqa: F401 (the package's names)
    LOSSES,
    CosineLoss,
    CRDLoss,
    HPDLoss,
    IBKDLoss,
    IBKDSupervisedLoss,
    InfoNCELoss,
    MatryoshkaLoss,
    MNRLLoss,
    MSELoss,
    build_loss,
    comparable_losses,
    load_loss,
    loss_class,
)


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
