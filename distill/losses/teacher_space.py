"""A student in the teacher's own vector space (`loss.teacher_space: true` of mse and cosine).

The point (issue 34, docs/keep-your-index.md): an index already holds the teacher's document
vectors; a query encoder that writes into the same space can replace the teacher for queries
only, and no document is embedded again. MSE (or cosine) to the teacher's full vector trains that
space. When the widths agree the student's own vector is the embedding. When they differ
(static-256 against a 384-d teacher, a 384-d student against a 768-d teacher) a Linear(d_s, d_t)
maps the student into the teacher's space, and unlike the default projection of mse / cosine
(training machinery, dropped after training) this head IS the embedding: evaluation scores its
output, a saved student carries it (heads.safetensors, `embedding_head()`), and `distill
export` appends it as a Dense layer. docs/DESIGN.md, "Heads that stay and heads that go".

The head starts from the ridge least-squares fit of the cached teacher vectors on [s, 1] over a
sample of the untrained student's vectors (`fit_linear`), so step 1 already lands in the
teacher's space: with a random start, the first steps would push the student through a random
map whose output the loss then has to rotate into place.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from distill.errors import DistillError

HEAD_NAME = "the teacher-space head (loss.teacher_space)"


def teacher_space_head(student_dim: int, teacher_dim: int | None, projection: bool | None, who: str) -> nn.Linear | None:
    """With teacher_space: nn.Linear(d_s, d_t) when the widths differ (or `projection: true`),
    None when the student's own vector already has the teacher's width."""
    if teacher_dim is None:
        raise DistillError(f"{who}: teacher_space needs the teacher's width (the cached vectors' dimension)")
    if projection is False and student_dim != teacher_dim:
        raise DistillError(f"{who}: teacher_space with projection: false, but the {student_dim}-d student cannot be in the "
                           f"{teacher_dim}-d teacher's space without a head; drop projection: false")
    use = student_dim != teacher_dim if projection is None else bool(projection)
    return nn.Linear(student_dim, teacher_dim) if use else None


@torch.no_grad()
def fit_linear(linear: nn.Linear, student_embeddings: Tensor, teacher: Tensor, who: str) -> None:
    """Set `linear` to the ridge least-squares fit of `teacher` on [student_embeddings, 1] (float64)."""
    s = student_embeddings.detach().double().cpu()
    t = teacher.detach().double().cpu()
    if s.ndim != 2 or s.shape[1] != linear.in_features or t.shape != (s.shape[0], linear.out_features):
        raise DistillError(f"{who}: the teacher-space head's start needs (n, {linear.in_features}) student vectors and "
                           f"(n, {linear.out_features}) teacher vectors, got {tuple(s.shape)} and {tuple(t.shape)}")
    x = torch.cat([s, torch.ones(len(s), 1, dtype=s.dtype)], dim=1)
    gram = x.T @ x
    ridge = 1e-6 * gram.diagonal().mean() * torch.eye(gram.shape[0], dtype=gram.dtype)  # n close to d, degenerate vectors
    w = torch.linalg.solve(gram + ridge, x.T @ t)  # (d_s + 1, d_t)
    linear.weight.copy_(w[:-1].T.to(linear.weight.dtype))
    if linear.bias is not None:
        linear.bias.copy_(w[-1].to(linear.bias.dtype))


class TeacherSpaceMixin:
    """What mse and cosine do differently with `teacher_space: true`: the projection (if any) is
    the embedding head, started by least squares, and not a training-only head to export on demand."""

    teacher_space: bool = False
    projection: nn.Module | None

    @classmethod
    def head_in_embedding(cls, params: dict[str, Any]) -> str | None:
        if params.get("teacher_space"):
            return HEAD_NAME
        return super().head_in_embedding(params)  # type: ignore[misc]

    @property
    def needs_prepare(self) -> bool:  # type: ignore[override]
        return bool(self.teacher_space and self.projection is not None)

    def prepare(self, student_embeddings: Tensor, teacher: Tensor) -> None:
        if self.needs_prepare:
            fit_linear(self.projection, student_embeddings, teacher, f"{self.name}.teacher_space")  # type: ignore[attr-defined,arg-type]

    def embedding_head(self) -> nn.Module | None:
        return self.projection if self.teacher_space else None
