"""Embedding regression: mean squared error between the (projected) student vector and the teacher's."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.errors import DistillError
from distill.losses.base import BOOL, OPTIONAL_BOOL, DistillLoss, one_of
from distill.losses.functional import precise, rank_and_world
from distill.losses.teacher_space import TeacherSpaceMixin, teacher_space_head

STANDARDIZE_MODES = ("none", "student_norm", "zscore")


def teacher_projection(student_dim: int, teacher_dim: int, projection: bool | None, who: str) -> nn.Module | None:
    """nn.Linear(d_s, d_t) when the widths differ or one is asked for; None (identity) otherwise (mse and cosine)."""
    use = student_dim != teacher_dim if projection is None else bool(projection)
    if not use and student_dim != teacher_dim:
        raise DistillError(
            f"{who}: a {student_dim}-d student cannot be compared with a {teacher_dim}-d teacher without a projection"
        )
    return nn.Linear(student_dim, teacher_dim) if use else None


class MSELoss(TeacherSpaceMixin, DistillLoss):
    """Regress the teacher's sentence vector: L = mean over batch and dimensions of (W s_i - t'_i)^2.

    W is a learned nn.Linear(d_s, d_t) when the widths differ (or `projection=True`), the identity
    otherwise; it is training-only (the student's own s is the embedding at test time), unless
    `teacher_space=True`: then W s is the embedding, W starts from least squares and is exported
    (losses/teacher_space.py: a query encoder for an index of the teacher's vectors). This is the
    objective of Reimers & Gurevych (EMNLP 2020, "Making Monolingual Sentence Embeddings
    Multilingual using Knowledge Distillation"), and sentence-transformers' `MSELoss`.

    t' is the teacher vector after `standardize`, because teacher and student scales rarely agree:
    teachers are often unit-norm while a mean-pooled MiniLM has norms near 5, so plain MSE first
    spends its effort shrinking the student's norm (which STS cosine scores ignore) and its gradients
    are tiny relative to the vectors' size.

    - "none": t' = t.
    - "student_norm" (default): t' = c t with c = mean_i ||W s_i|| / mean_i ||t_i|| measured on the
      FIRST batch (detached, averaged over DDP ranks) and then kept fixed (buffer `target_scale`,
      saved in state_dict): the student keeps its own scale and MSE works on direction and
      relative norm. Not re-measured per batch on purpose: a scale that follows the student makes
      shrinking free, and since the MSE gradient 2(s - c t) always has an outward-pointing radial
      part while directions disagree, the norm then collapses step after step. Measured: the first
      3 layers of all-MiniLM-L6-v2 distilled from the whole (unit-norm) model, 6,000 corpus
      sentences, 150 AdamW steps at lr 2e-4, batch 64: with a per-batch scale the mean norm fell
      6.0 -> 0.9 and STS-B dev went 63.0 -> 33.9; with the scale fixed after the first batch, 78.9.
    - "zscore": t' = (t - mu) / sigma per dimension. mu and sigma come from `fit_targets(t_all)`
      (call it once with the whole teacher cache: exact statistics); if it was never called, running
      statistics are accumulated over every training batch seen so far (exact cumulative mean and
      variance, not an exponential average) and used immediately, so early batches see noisier
      statistics. The statistics are buffers: they travel with state_dict().

    In the same experiment zscore reached 77.1 and "none" 30.6.

    Returns {"loss", "mse" (the same value, detached), "target_scale" (c; 1 unless student_norm)}.
    """

    name = "mse"
    matryoshka = True  # matryoshka_dims: one projection Linear(k, d_t) per prefix (losses/matryoshka.py)
    rules = {"standardize": one_of(*STANDARDIZE_MODES), "projection": OPTIONAL_BOOL, "teacher_space": BOOL}
    citation = """
@inproceedings{reimers-2020-multilingual-sentence-bert,
    title = "Making Monolingual Sentence Embeddings Multilingual using Knowledge Distillation",
    author = "Reimers, Nils and Gurevych, Iryna",
    booktitle = "Proceedings of the 2020 Conference on Empirical Methods in Natural Language Processing",
    year = "2020",
    url = "https://arxiv.org/abs/2004.09813",
}
"""

    def __init__(
        self,
        student_dim: int,
        teacher_dim: int,
        *,
        standardize: str = "student_norm",
        projection: bool | None = None,
        teacher_space: bool = False,
    ):
        super().__init__()
        self.student_dim, self.teacher_dim = int(student_dim), int(teacher_dim)
        self.standardize, self.teacher_space = standardize, bool(teacher_space)
        self.projection = (teacher_space_head(self.student_dim, self.teacher_dim, projection, "mse") if self.teacher_space
                           else teacher_projection(self.student_dim, self.teacher_dim, projection, "mse"))
        # z-score statistics (float64: the cumulative updates run over millions of rows).
        self.register_buffer("target_mean", torch.zeros(self.teacher_dim, dtype=torch.float64))
        self.register_buffer("target_m2", torch.zeros(self.teacher_dim, dtype=torch.float64))
        self.register_buffer("target_count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("targets_fitted", torch.zeros((), dtype=torch.bool))
        # student_norm's fixed scale; 0 = not measured yet (set by the first batch).
        self.register_buffer("target_scale", torch.zeros((), dtype=torch.float64))

    def get_config_dict(self) -> dict[str, Any]:
        return {"standardize": self.standardize, "projection": self.projection is not None, "teacher_space": self.teacher_space}

    def export_head(self):
        return None if self.projection is None or self.teacher_space else ("projection", self.projection, "the MSE projection into the teacher's space")

    @property
    def wants_all_targets(self) -> bool:
        return self.standardize == "zscore"

    @torch.no_grad()
    def fit_targets(self, teacher_all: Tensor | np.ndarray, chunk: int = 65536) -> None:
        """Fix the z-score statistics from the whole teacher cache (rows = sentences)."""
        t_all = torch.as_tensor(teacher_all)
        if t_all.dim() != 2 or t_all.shape[1] != self.teacher_dim or t_all.shape[0] < 2:
            raise DistillError(f"mse.fit_targets: expected an (n >= 2) x {self.teacher_dim} matrix, got {tuple(t_all.shape)}")
        self.target_mean.zero_()
        self.target_m2.zero_()
        self.target_count.zero_()
        for start in range(0, t_all.shape[0], chunk):  # chunks: a 1M x 1024 cache need not be copied to float64
            self._update_stats(t_all[start : start + chunk])
        self.targets_fitted.fill_(True)

    @torch.no_grad()
    def _measure_scale(self, pred: Tensor, t: Tensor) -> None:
        scale = (pred.detach().norm(dim=-1).mean() / t.norm(dim=-1).mean().clamp_min(1e-12)).to(torch.float64)
        _, world = rank_and_world()
        if world > 1:  # one scale for every rank, or the ranks would regress different targets
            import torch.distributed as dist

            dist.all_reduce(scale)
            scale /= world
        self.target_scale.fill_(scale.item())

    def _update_stats(self, t: Tensor) -> None:
        # Chan et al.'s parallel update of mean and sum of squared deviations: exact, order-free.
        t = t.detach().to(device=self.target_mean.device, dtype=torch.float64)
        n_b = float(t.shape[0])
        mean_b = t.mean(0)
        m2_b = ((t - mean_b) ** 2).sum(0)
        n_a = self.target_count.clone()  # tensor arithmetic: no host sync per step on GPU
        total = n_a + n_b
        delta = mean_b - self.target_mean
        self.target_mean += delta * (n_b / total)
        self.target_m2 += m2_b + delta.pow(2) * (n_a * n_b / total)
        self.target_count.fill_(total)

    def _zscore(self, t: Tensor) -> Tensor:
        if not bool(self.targets_fitted) and self.training:
            with torch.no_grad():
                self._update_stats(t)
        if float(self.target_count.item()) < 2:
            if t.shape[0] < 2:
                raise DistillError("mse: zscore needs fit_targets() or batches of at least 2 sentences")
            mean, var = t.double().mean(0), t.double().var(0, unbiased=True)
        else:
            mean, var = self.target_mean, self.target_m2 / (self.target_count - 1)
        std = var.clamp_min(1e-12).sqrt()
        return ((t.double() - mean) / std).to(t.dtype)

    def forward(self, student_out: dict, teacher: Tensor) -> dict:
        s = student_out["embedding"]
        pred = precise(self.projection(s) if self.projection is not None else s)
        t = self._teacher(teacher, pred)
        if t.shape != pred.shape:
            raise DistillError(f"mse: teacher batch {tuple(t.shape)} does not match the student's {tuple(pred.shape)}")
        scale = torch.ones((), device=pred.device, dtype=pred.dtype)
        if self.standardize == "student_norm":
            if not bool(self.target_scale > 0):
                self._measure_scale(pred, t)
            scale = self.target_scale.to(pred.dtype)
            t = t * scale
        elif self.standardize == "zscore":
            t = self._zscore(t)
        loss = F.mse_loss(pred, t)
        return {"loss": loss, "mse": loss.detach(), "target_scale": scale}
