"""Plain contrastive distillation: IBKD stage 1 without its HSIC term."""

from __future__ import annotations

from typing import Any

from distill.losses.base import POSITIVE
from distill.losses.ibkd import IBKD_CITATION, IBKDLoss


class InfoNCELoss(IBKDLoss):
    """L = mean_i CE( softmax_j cos(W s_i, t_j) / tau, positive j = i ), W = nn.Linear(d_s, d_t).

    The student (through the training-only decoder W) is the anchor; every teacher vector of the
    batch, gathered across DDP ranks, is a candidate. This is IBKD's stage-1 objective with lam = 0
    (Zhang et al., EMNLP 2023; the InfoNCE bound of van den Oord et al., 2018), the baseline that
    shows what the HSIC term adds. Same state_dict layout as IBKDLoss ("decoder").

    Returns {"loss", "infonce" (detached)} (plus the HSIC of the batch, for watching only, when the
    student output happens to carry hidden states and an attention mask).
    """

    name = "infonce"
    citation = IBKD_CITATION
    rules = {"tau": POSITIVE}  # IBKD's HSIC parameters are not taken

    def __init__(self, student_dim: int, teacher_dim: int, *, tau: float = 0.05):
        super().__init__(student_dim, teacher_dim, tau=tau, lam=0.0)

    def get_config_dict(self) -> dict[str, Any]:
        return {"tau": self.tau}

    def export_head(self):
        return ("decoder", self.decoder, "the InfoNCE decoder into the teacher's space")
