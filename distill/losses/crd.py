"""Contrastive Representation Distillation (CRD), adapted to sentence embeddings."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.errors import DistillError
from distill.losses.base import POSITIVE, DistillLoss, whole_number
from distill.losses.functional import gather_candidates, info_nce, precise


class CRDLoss(DistillLoss):
    """CRD (Tian, Krishnan, Isola, ICLR 2020, "Contrastive Representation Distillation"), for
    sentence vectors.

    Both sides go through learned linear heads to a shared proj_dim space and are L2-normalized
    (CRD's "embed" heads): z_s = g_s(s) / ||g_s(s)||, z_t = g_t(t) / ||g_t(t)||. The objective is a
    symmetric InfoNCE with temperature tau:

        L = 1/2 [ CE_i( softmax_j z_s_i . z_t_j / tau ) + CE_i( softmax_j z_t_i . z_s_j / tau ) ],

    positive j = i, every other sentence of the (DDP-gathered) batch a negative. Where the paper
    estimates its bound with NCE against a 16,384-entry memory bank, we use InfoNCE with in-batch
    negatives (SimCLR/CLIP style), which at batch sizes of a few hundred already gives plenty of
    negatives; `queue_size` > 0 adds a FIFO queue of past RAW teacher vectors as extra negatives for
    the student -> teacher direction (MoCo-like; raw so they are re-projected with the current teacher
    head every step instead of going stale with an old one). The queue is filled after each training
    step with the step's (gathered) teacher vectors and is not saved in state_dict().

    Both heads are training-only (the student's s is the embedding). Returns {"loss",
    "crd_s2t", "crd_t2s" (the two directions, detached), "queue_used" (negatives taken from the
    queue this step)}.
    """

    name = "crd"
    contrastive = True
    matryoshka = True  # matryoshka_dims: a student and a teacher head per prefix (losses/matryoshka.py)
    rules = {"proj_dim": whole_number(1), "tau": POSITIVE, "queue_size": whole_number(0)}

    @classmethod
    def needs_batch_negatives(cls, params: dict[str, Any]) -> bool:
        return int(params.get("queue_size", 0)) == 0  # a queue brings negatives of its own
    citation = """
@inproceedings{tian2020contrastive,
    title = {Contrastive Representation Distillation},
    author = {Tian, Yonglong and Krishnan, Dilip and Isola, Phillip},
    booktitle = {International Conference on Learning Representations},
    year = {2020},
    url = {https://openreview.net/forum?id=SkgpBJrtvS},
}
"""

    def __init__(
        self,
        student_dim: int,
        teacher_dim: int,
        *,
        proj_dim: int = 128,
        tau: float = 0.07,
        queue_size: int = 0,
    ):
        super().__init__()
        self.student_dim, self.teacher_dim = int(student_dim), int(teacher_dim)
        self.proj_dim, self.tau, self.queue_size = int(proj_dim), float(tau), int(queue_size)
        self.student_head = nn.Linear(self.student_dim, self.proj_dim)
        self.teacher_head = nn.Linear(self.teacher_dim, self.proj_dim)
        self.register_buffer("queue", torch.zeros(self.queue_size, self.teacher_dim), persistent=False)
        # Host-side counters: no device sync per step (the queue is not checkpointed anyway).
        self.queue_ptr = 0
        self.queue_len = 0

    def get_config_dict(self) -> dict[str, Any]:
        return {"proj_dim": self.proj_dim, "tau": self.tau, "queue_size": self.queue_size}

    def export_head(self):
        return ("student_head", self.student_head, "CRD's student head into its contrastive space (not the teacher's space)")

    @torch.no_grad()
    def _enqueue(self, t: Tensor) -> None:
        t = t[-self.queue_size :].to(self.queue.dtype)  # a batch bigger than the queue keeps its last rows
        idx = (torch.arange(t.shape[0], device=self.queue.device) + self.queue_ptr) % self.queue_size
        self.queue[idx] = t
        self.queue_ptr = (self.queue_ptr + t.shape[0]) % self.queue_size
        self.queue_len = min(self.queue_size, self.queue_len + t.shape[0])

    def forward(self, student_out: dict, teacher: Tensor) -> dict:
        s = student_out["embedding"]
        t = self._teacher(teacher, s)
        if t.shape[0] != s.shape[0] or t.shape[-1] != self.teacher_dim:
            raise DistillError(f"crd: teacher batch {tuple(t.shape)} does not fit {s.shape[0]} x {self.teacher_dim}")
        # Teacher side: gather the frozen raw vectors (no grad needed) and project them here, so the
        # teacher head gets gradient through every rank's rows without a grad-carrying collective.
        t_all, offset = gather_candidates(t, with_grad=False)
        z_s = F.normalize(precise(self.student_head(s)), dim=-1)
        z_t_all = F.normalize(precise(self.teacher_head(t_all)), dim=-1)
        n = s.shape[0]
        z_t = z_t_all[offset : offset + n]
        queue_used = self.queue_len
        candidates_t = z_t_all
        if queue_used:
            queued = F.normalize(precise(self.teacher_head(self.queue[:queue_used].to(t_all.dtype, copy=True))), dim=-1)
            candidates_t = torch.cat([z_t_all, queued], dim=0)
        s2t = info_nce(z_s, candidates_t, self.tau, positive_offset=offset)
        # Student side as candidates: other ranks' student vectors carry gradient back to them.
        z_s_all, offset_s = gather_candidates(z_s, with_grad=True)
        t2s = info_nce(z_t, z_s_all, self.tau, positive_offset=offset_s)
        loss = 0.5 * (s2t + t2s)
        if self.queue_size and self.training:
            self._enqueue(t_all)
        return {
            "loss": loss,
            "crd_s2t": s2t.detach(),
            "crd_t2s": t2s.detach(),
            "queue_used": torch.tensor(float(queue_used), device=loss.device),
        }
