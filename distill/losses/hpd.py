"""Homomorphic Projective Distillation (HPD): a compact tanh projection regressing the teacher's PCA."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.errors import DistillError
from distill.losses.base import DistillLoss, one_of, whole_number
from distill.losses.functional import precise


class HPDLoss(DistillLoss):
    """HPD (Zhao, Yu, Wu, Li, Findings of ACL 2022, "Compressing Sentence Representation for
    Semantic Retrieval via Homomorphic Projective Distillation").

    The student grows a learnable projection P(s) = tanh(A s + b) (a sentence-transformers
    Dense(d_s -> K, Tanh)) and is trained with MSE to the teacher's vectors reduced to K dimensions
    by PCA (K = 128 in the paper):  L = mean over batch and the K dimensions of (P(s_i) - V_K t_i)^2.

    Our reading of the paper and its code (github.com/XuandongZhao/HPD): the teacher side is
    fixed (PCA fitted once on teacher embeddings; projected with `pca.components_` and no mean
    subtraction, see `fit_pca`), so `teacher` here is the already-reduced K-d target the cache
    provides. The loss is sentence-transformers' MSELoss (mean over elements). Unlike the other
    losses, the head is the product: the compact K-d tanh vector IS the sentence embedding, so
    `embedding_head()` returns it and it must be appended to the student for evaluation/export.

    The head's start (`init`): "lstsq" (default) solves the head before training so that
    tanh(A s + b) best fits the targets on the untrained student's embeddings of a corpus sample,
    by ridge least squares of atanh(t) on [s, 1]; "random" is nn.Linear's default init, as in the
    authors' code. Why: with a random head, the first steps push the backbone through a random
    384 -> 128 map. At the CPU scale (configs/cpu-minilm-l3.yaml: 256 steps, warmup 26; the
    authors warm up for 1,000 steps) STS-B dev then falls after its first evaluation, and the run
    ends at 62.66 avg STS against 74.67 with the least-squares start (untrained student 58.58;
    BENCHMARKS.md, "HPD head start").

    `teacher_dim` (the raw teacher width) is accepted for a uniform constructor and not used.
    Returns {"loss", "mse" (detached)}.
    """

    name = "hpd"
    citation = """
@inproceedings{zhao-etal-2022-compressing,
    title = "Compressing Sentence Representation for Semantic Retrieval via Homomorphic Projective Distillation",
    author = "Zhao, Xuandong and Yu, Zhiguo and Wu, Ming and Li, Lei",
    booktitle = "Findings of the Association for Computational Linguistics: ACL 2022",
    year = "2022",
    pages = "774--781",
    url = "https://aclanthology.org/2022.findings-acl.64",
}
"""

    INITS = ("lstsq", "random")
    matryoshka_refusal = ("its head is the product: the k-d tanh output is the embedding, not a prefix of the student vector "
                          "(set loss.k for its width; train prefixes with mse, cosine, crd, infonce or ibkd)")
    rules = {"k": whole_number(1), "init": one_of(*INITS)}

    @classmethod
    def head_in_embedding(cls, params: dict[str, Any]) -> str | None:
        return "HPD's k-d head"

    @classmethod
    def targets(cls, params: dict[str, Any]):
        """The teacher's vectors reduced to k dimensions by PCA (the cache fits and stores it)."""
        return ("pca", int(params["k"]))

    def __init__(self, student_dim: int, teacher_dim: int | None = None, *, k: int = 128, init: str = "lstsq"):
        super().__init__()
        self.student_dim, self.teacher_dim, self.k, self.init = int(student_dim), teacher_dim, int(k), init
        self.needs_prepare = init == "lstsq"
        self.head = nn.Sequential(nn.Linear(self.student_dim, self.k), nn.Tanh())

    def get_config_dict(self) -> dict[str, Any]:
        return {"k": self.k, "init": self.init}

    @torch.no_grad()
    def prepare(self, student_embeddings: Tensor, teacher: Tensor) -> None:
        """Set the head to the ridge least-squares fit of atanh(t) on [s, 1] (float64)."""
        if self.init != "lstsq":
            return
        s = student_embeddings.detach().double().cpu()
        t = teacher.detach().double().cpu()
        if s.ndim != 2 or t.shape != (s.shape[0], self.k) or s.shape[1] != self.student_dim:
            raise DistillError(f"hpd: prepare needs (n, {self.student_dim}) embeddings and (n, {self.k}) targets,"
                               f" got {tuple(s.shape)} and {tuple(t.shape)}")
        x = torch.cat([s, torch.ones(len(s), 1, dtype=s.dtype)], dim=1)
        y = torch.atanh(t.clamp(-0.999, 0.999))
        gram = x.T @ x
        # a small ridge keeps the solve stable when n is close to d or the embeddings are degenerate
        ridge = 1e-6 * gram.diagonal().mean() * torch.eye(gram.shape[0], dtype=gram.dtype)
        w = torch.linalg.solve(gram + ridge, x.T @ y)  # (d + 1, k)
        linear = self.head[0]
        linear.weight.copy_(w[:-1].T.to(linear.weight.dtype))
        linear.bias.copy_(w[-1].to(linear.bias.dtype))

    def embedding_head(self) -> nn.Module:
        return self.head

    def forward(self, student_out: dict, teacher: Tensor) -> dict:
        pred = precise(self.head(student_out["embedding"]))
        t = self._teacher(teacher, pred)
        if t.shape != pred.shape:
            raise DistillError(
                f"hpd: targets {tuple(t.shape)} do not match the {self.k}-d head output {tuple(pred.shape)}"
                f" (HPD needs the teacher vectors reduced to k={self.k} dimensions by PCA)"
            )
        loss = F.mse_loss(pred, t)
        return {"loss": loss, "mse": loss.detach()}
