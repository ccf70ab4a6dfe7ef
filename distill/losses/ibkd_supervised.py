"""IBKD stage 2: supervised SimCSE fine-tuning of the distilled student, with the HSIC penalty kept."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from distill.errors import DistillError
from distill.losses.base import DistillLoss, head_out_dim, one_of
from distill.losses.functional import gather_candidates, info_nce
from distill.losses.ibkd import IBKD_CITATION, INFONCE_HSIC_RULES, HSICPenalty

HEADS = ("linear", "mlp", "none")
AUTHORS_HEAD_DIM = 128  # the IBKD authors' stage-2 head: Linear(384 -> 128), no activation


class IBKDSupervisedLoss(DistillLoss):
    """IBKD stage 2 (Zhang, Long, Li, Xie, EMNLP 2023, "Text Representation Distillation via
    Information Bottleneck Principle"): after stage 1, the student is fine-tuned on labelled rows
    (anchor, positive, negative_1, ..., negative_k), the authors' being NLI triplets (k = 1:
    entailment, contradiction), with the supervised SimCSE objective (Gao, Yao, Chen, EMNLP 2021,
    "SimCSE: Simple Contrastive Learning of Sentence Embeddings") plus the same HSIC bottleneck term:

        L = mean_i CE( softmax over {cos(h_i, c_j)/tau}_j , the positive c_i = h+_i ) + lam * HSIC(X, S)
        candidates c = [h+_1..h+_N ; h-1_1..h-1_N ; ... ; h-k_1..h-k_N]

    h = head(s) for every text; every positive and every negative of the batch (each column
    gathered across DDP ranks, with gradient: N rows per column) is a candidate for every anchor,
    positives first, then the negative columns in order (for k = 1, SimCSE's layout). k = 0
    contrasts with the other rows' positives only. HSIC runs over all sentences of the local batch
    (anchors, positives and negatives together), X being the masked mean of hidden state
    `hsic_layer`: the authors use the second-to-last layer (-2, negative indices count from the
    top), lam = 1.0 and a fixed gamma = 0.1, tau = 0.05.

    head: "linear" (default, the authors' stage-2 head: a plain Linear(d_s, head_dim), head_dim
    128 unless set), "mlp" (SimCSE's MLP, Linear(d_s, head_dim or d_s) + Tanh) or "none"
    (contrast s itself). The head is training-only: `embedding_head()` is None. The authors use
    theirs only to pick checkpoints on dev; the test numbers they report come from `AutoModel`
    with average pooling, 384-d, no head. We select on dev with the student's own pooled vector,
    the vector that is exported and reported.

    stage1_head: set by distill, not by hand, when stage 1's loss has a head that is part of the
    embedding (HPD's k-d Dense + tanh): that loss's mapping. The stage-1 loss is rebuilt inside this
    one ("carried", its trained weights loaded by the stage), every text's vector goes through its
    head before the contrast, the head trains on with the student, and `embedding_head()` is that
    head, so evaluation, the saved student and the export serve what stage 2 trained. Without it,
    stage 2 would train the student's own vector and drop the head that stage 1's scores came from.

    Call: `loss(anchor_out, positive_out, *negative_outs)`, student forward dicts (each with
    "embedding" and, when lam > 0, "hidden_states" and "attention_mask"); no teacher. Parameter
    values are checked by `rules` when a recipe is read, not here. Returns {"loss", "infonce",
    "hsic", "hsic_gamma", "hsic_gamma_x"} (all but "loss" detached; the HSIC keys only when the
    term is computed).
    """

    name = "ibkd_supervised"
    citation = IBKD_CITATION
    stage = 2  # trained on rows (anchor, positive, negatives...) after stage 1: not a `distill compare` loss
    rules = {
        **INFONCE_HSIC_RULES,
        "head": one_of(*HEADS),
        "head_dim": (lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 1), "unset or a whole number >= 1"),
    }
    internal = {"stage1_head": "distill sets it from a stage 1 whose head is part of the embedding (training/stages.py: stage2)",
                "carried": "the stage-1 loss of stage1_head, built by the registry (distill/losses/registry.py)"}

    def __init__(
        self,
        student_dim: int,
        teacher_dim: int | None = None,
        *,
        tau: float = 0.05,
        lam: float = 1.0,
        gamma: float = 0.1,
        bandwidth: str = "fixed",
        hsic_layer: int = -2,
        kernel_normalize: bool = False,
        head: str = "linear",
        head_dim: int | None = None,
        stage1_head: dict | None = None,
        carried: DistillLoss | None = None,
    ):
        super().__init__()
        self.stage1_head = dict(stage1_head) if stage1_head else None
        if self.stage1_head and carried is None:
            raise DistillError(f"{self.name}.stage1_head: build this loss with distill.losses.build_loss, which builds the carried loss")
        self.carried = carried if self.stage1_head else None
        if self.carried is not None:  # the contrast (and this loss's own head) sees the carried head's output
            student_dim = head_out_dim(self.carried.embedding_head())
        # the one check `rules` cannot make: it needs the student's width
        if head == "none" and head_dim not in (None, student_dim):
            raise DistillError(f"{self.name}: head='none' keeps the {student_dim}-d student vector; head_dim must be unset")
        self.student_dim, self.teacher_dim = int(student_dim), teacher_dim
        self.tau, self.lam, self.head_kind = float(tau), float(lam), head
        # head_dim unset: the authors' 128 for the linear head, the student's width for SimCSE's MLP
        out_dim = int(head_dim or (AUTHORS_HEAD_DIM if head == "linear" else student_dim))
        self.head_dim = out_dim if head != "none" else self.student_dim
        if head == "mlp":
            self.head = nn.Sequential(nn.Linear(self.student_dim, out_dim), nn.Tanh())
        elif head == "linear":
            self.head = nn.Linear(self.student_dim, out_dim)
        else:
            self.head = nn.Identity()
        self.hsic_term = HSICPenalty(
            gamma=gamma, bandwidth=bandwidth, layer=hsic_layer, kernel_normalize=kernel_normalize, who=self.name
        )

    @property
    def needs_hidden_states(self) -> bool:  # type: ignore[override]
        return self.lam > 0

    def get_config_dict(self) -> dict[str, Any]:
        return {"tau": self.tau, "lam": self.lam, **self.hsic_term.config(), "head": self.head_kind, "head_dim": self.head_dim,
                **({"stage1_head": self.stage1_head} if self.stage1_head else {})}

    def embedding_head(self) -> nn.Module | None:
        """The carried stage-1 head (part of the embedding), or None: stage 2's own head is training-only."""
        return self.carried.embedding_head() if self.carried is not None else None

    def through_carried_head(self, outs: list[dict]) -> list[dict]:
        """Each output with its vector through the carried stage-1 head (unchanged without one)."""
        if self.carried is None:
            return outs
        head = self.carried.embedding_head()
        return [{**o, "embedding": head(o["embedding"])} for o in outs]

    def forward(self, anchor: dict, positive: dict, *negatives: dict) -> dict:  # type: ignore[override]
        outs = self.through_carried_head([anchor, positive, *negatives])
        anchor, positive, negatives = outs[0], outs[1], outs[2:]
        n = anchor["embedding"].shape[0]
        if any(o["embedding"].shape[0] != n for o in outs):
            sizes = ", ".join(str(o["embedding"].shape[0]) for o in outs)
            raise DistillError(f"{self.name}: the anchor, positive and negative batches must have the same size, got {sizes}")
        h_a = self.head(anchor["embedding"])
        # Candidates from every rank, with gradient: other GPUs' positives/negatives are trained too.
        candidates, offset = gather_candidates(self.head(positive["embedding"]), with_grad=True)
        if negatives:
            columns = [gather_candidates(self.head(o["embedding"]), with_grad=True)[0] for o in negatives]
            candidates = torch.cat([candidates, *columns], dim=0)
        nce = info_nce(h_a, candidates, self.tau, positive_offset=offset)
        out = {"loss": nce, "infonce": nce.detach()}
        if self.lam > 0:
            parts = self.hsic_term(outs)
            out["loss"] = nce + self.lam * parts.pop("penalty")
        elif all(o.get("hidden_states") is not None and o.get("attention_mask") is not None for o in outs):
            with torch.no_grad():
                parts = self.hsic_term(outs)
                parts.pop("penalty")
        else:
            return out
        out.update({k: v.detach() for k, v in parts.items()})
        return out
