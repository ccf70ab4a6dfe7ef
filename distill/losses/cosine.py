"""Direction matching: one minus the cosine between the (projected) student vector and the teacher's."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor

from distill.errors import DistillError
from distill.losses.base import BOOL, OPTIONAL_BOOL, DistillLoss
from distill.losses.functional import precise
from distill.losses.mse import teacher_projection
from distill.losses.teacher_space import TeacherSpaceMixin, teacher_space_head


class CosineLoss(TeacherSpaceMixin, DistillLoss):
    """L = mean_i [1 - cos(W s_i, t_i)].

    W is a learned nn.Linear(d_s, d_t) when the widths differ (or `projection=True`), the identity
    otherwise; training-only, unless `teacher_space=True` (then W s is the embedding and is
    exported: losses/teacher_space.py). Scale-free, so unlike MSE it needs no standardization of the teacher:
    it trains exactly the quantity STS evaluation reads (the direction). This is the "cosine"
    distance of EmbedDistill (Kim et al., 2023, "EmbedDistill: A Geometric Knowledge Distillation
    for Information Retrieval"), sentence-transformers' `EmbedDistillLoss(distance_metric="cosine")`.

    Returns {"loss", "cosine" (mean cos(W s_i, t_i), detached)}.
    """

    name = "cosine"
    matryoshka = True  # matryoshka_dims: one projection Linear(k, d_t) per prefix (losses/matryoshka.py)
    rules = {"projection": OPTIONAL_BOOL, "teacher_space": BOOL}
    citation = """
@article{kim2023embeddistill,
    title = {EmbedDistill: A Geometric Knowledge Distillation for Information Retrieval},
    author = {Kim, Seungyeon and Rawat, Ankit Singh and Zaheer, Manzil and Jayasumana, Sadeep and Sadhanala, Veeranjaneyulu and Jitkrittum, Wittawat and Menon, Aditya Krishna and Fergus, Rob and Kumar, Sanjiv},
    journal = {arXiv preprint arXiv:2301.12005},
    year = {2023},
}
"""

    def __init__(self, student_dim: int, teacher_dim: int, *, projection: bool | None = None, teacher_space: bool = False):
        super().__init__()
        self.student_dim, self.teacher_dim, self.teacher_space = int(student_dim), int(teacher_dim), bool(teacher_space)
        self.projection = (teacher_space_head(self.student_dim, self.teacher_dim, projection, "cosine") if self.teacher_space
                           else teacher_projection(self.student_dim, self.teacher_dim, projection, "cosine"))

    def get_config_dict(self) -> dict[str, Any]:
        return {"projection": self.projection is not None, "teacher_space": self.teacher_space}

    def export_head(self):
        return None if self.projection is None or self.teacher_space else ("projection", self.projection, "the cosine projection into the teacher's space")

    def forward(self, student_out: dict, teacher: Tensor) -> dict:
        s = student_out["embedding"]
        pred = precise(self.projection(s) if self.projection is not None else s)
        t = self._teacher(teacher, pred)
        if t.shape != pred.shape:
            raise DistillError(f"cosine: teacher batch {tuple(t.shape)} does not match the student's {tuple(pred.shape)}")
        cos = F.cosine_similarity(pred, t, dim=-1, eps=1e-8)
        loss = (1.0 - cos).mean()
        return {"loss": loss, "cosine": cos.mean().detach()}
