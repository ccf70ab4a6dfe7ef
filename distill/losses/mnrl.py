"""Multiple negatives ranking loss: stage 2's in-batch contrast without a head or the HSIC term."""

from __future__ import annotations

from typing import Any

from distill.losses.base import POSITIVE
from distill.losses.ibkd_supervised import IBKDSupervisedLoss

MNRL_CITATION = """
@article{henderson2017efficient,
    title = "Efficient Natural Language Response Suggestion for Smart Reply",
    author = "Henderson, Matthew and Al-Rfou, Rami and Strope, Brian and Sung, Yun-Hsuan and Lukacs, Laszlo and Guo, Ruiqi and Kumar, Sanjiv and Miklos, Balint and Kurzweil, Ray",
    journal = "arXiv preprint arXiv:1705.00652",
    year = "2017",
    url = "https://arxiv.org/abs/1705.00652",
}
"""


class MNRLLoss(IBKDSupervisedLoss):
    """Multiple negatives ranking loss (Henderson et al. 2017, "Efficient Natural Language Response
    Suggestion for Smart Reply"; sentence-transformers' MultipleNegativesRankingLoss) on rows
    (anchor a, positive p, negatives n_1..n_k), k >= 0:

        L = mean_i CE( softmax_j cos(a_i, c_j) / tau , the positive c_i = p_i )
        candidates c = [p_1..p_N ; n1_1..n1_N ; ... ; nk_1..nk_N]

    on the student's own vectors: every positive and every negative of the batch is a candidate
    for every anchor, in sentence-transformers' order. tau = 0.05 is its default scale 20 (= 1 /
    tau). `stage1_head`: as IBKDSupervisedLoss's (HPD's head carried into stage 2, set by distill).
    That is IBKD stage 2 with head "none" and lam = 0 (the HSIC of the batch is still logged
    when the outputs happen to carry hidden states, for watching only). One difference from
    sentence-transformers' default: under DDP the candidates are gathered from every rank, with
    gradient (its gather_across_devices=True).

    Call: `loss(anchor_out, positive_out, *negative_outs)`; returns {"loss", "infonce" (detached)}.
    """

    name = "mnrl"
    citation = MNRL_CITATION
    rules = {"tau": POSITIVE}  # IBKD's head and HSIC parameters are not taken

    def __init__(self, student_dim: int, teacher_dim: int | None = None, *, tau: float = 0.05, stage1_head: dict | None = None,
                 carried=None):
        super().__init__(student_dim, teacher_dim, tau=tau, lam=0.0, head="none", stage1_head=stage1_head, carried=carried)

    def get_config_dict(self) -> dict[str, Any]:
        return {"tau": self.tau, **({"stage1_head": self.stage1_head} if self.stage1_head else {})}
