"""IBKD stage 1: contrastive distillation plus an HSIC penalty between the input and the student vector."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.errors import DistillError
from distill.losses.base import NON_NEGATIVE, POSITIVE, DistillLoss, one_of
from distill.losses.functional import (
    gather_candidates,
    hidden_state_mean,
    hsic_parts,
    info_nce,
    median_gamma,
    precise,
)

BANDWIDTHS = ("fixed", "median")

# The InfoNCE temperature and the HSIC term's weight and kernel width: both IBKD stages take them.
INFONCE_HSIC_RULES = {
    "tau": POSITIVE,
    "lam": NON_NEGATIVE,
    "gamma": POSITIVE,
    "bandwidth": one_of(*BANDWIDTHS),
}
ESTIMATORS = ("biased", "normalized")  # the penalty: HSIC(X, S), or nHSIC = HSIC(X,S)/sqrt(HSIC(X,X) HSIC(S,S))
LAM_MODES = ("absolute", "relative")  # lam: the weight of the penalty, or its gradient's target share

IBKD_CITATION = """
@inproceedings{zhang-etal-2023-text,
    title = "Text Representation Distillation via Information Bottleneck Principle",
    author = "Zhang, Yanzhao and Long, Dingkun and Li, Zehan and Xie, Pengjun",
    booktitle = "Proceedings of the 2023 Conference on Empirical Methods in Natural Language Processing",
    year = "2023",
    url = "https://arxiv.org/abs/2311.05472",
}
"""


class HSICPenalty(nn.Module):
    """lam * HSIC(X, S) with IBKD's bandwidth options; shared by stage 1 and stage 2.

    X = the masked mean of hidden state `layer` (standing in for the input), S = the student's
    pooled vector. Both stay in the graph: X comes from the student's own (trainable) layers, as in
    the authors' code.
    """

    def __init__(self, *, gamma: float, bandwidth: str, layer: int, kernel_normalize: bool, who: str, estimator: str = "biased"):
        super().__init__()  # the values were checked by the owning loss's rules (INFONCE_HSIC_RULES)
        self.gamma, self.bandwidth, self.layer = float(gamma), bandwidth, int(layer)
        self.kernel_normalize, self.who, self.estimator = bool(kernel_normalize), who, estimator

    def config(self) -> dict[str, Any]:
        return {"gamma": self.gamma, "bandwidth": self.bandwidth, "hsic_layer": self.layer, "kernel_normalize": self.kernel_normalize}

    def inputs(self, outs: list[dict]) -> tuple[Tensor, Tensor]:
        x = torch.cat([hidden_state_mean(o, self.layer, self.who) for o in outs], dim=0)
        s = torch.cat([o["embedding"] for o in outs], dim=0)
        if self.kernel_normalize:
            x, s = F.normalize(precise(x), dim=-1), F.normalize(precise(s), dim=-1)
        return x, s

    def forward(self, outs: list[dict]) -> dict:
        """{"penalty": the term lam multiplies (HSIC or nHSIC, per `estimator`), "hsic", "nhsic",
        "hsic_gamma", "hsic_gamma_x"}; both HSICs are always reported so runs compare."""
        x, s = self.inputs(outs)
        if self.bandwidth == "median":
            gx, gs = median_gamma(x), median_gamma(s)
        else:
            # float64 so that 0.1 stays 0.1 for float64 checks; a 0-dim tensor does not promote float32 inputs.
            gx = gs = torch.tensor(self.gamma, dtype=torch.float64, device=s.device)
        value, normalized = hsic_parts(x, s, gx, gs, normalized_grad=self.estimator == "normalized")
        penalty = normalized if self.estimator == "normalized" else value
        return {"penalty": penalty, "hsic": value, "nhsic": normalized, "hsic_gamma": gs.detach().float(), "hsic_gamma_x": gx.detach().float()}


def _grad_norm(value: Tensor, wrt: Tensor) -> Tensor:
    """||d value / d wrt|| (0 when value does not depend on wrt), leaving the graph for backward."""
    (g,) = torch.autograd.grad(value, wrt, retain_graph=True, allow_unused=True)
    return torch.zeros((), dtype=precise(wrt).dtype, device=wrt.device) if g is None else precise(g.detach()).norm()


class IBKDLoss(DistillLoss):
    """IBKD stage 1 (Zhang, Long, Li, Xie, EMNLP 2023, "Text Representation Distillation via
    Information Bottleneck Principle"):

        L = InfoNCE(W s, t) + lam * HSIC(X, S)

    - InfoNCE: cross-entropy over cos(W s_i, t_j) / tau with the positive j = i; the student
      (through the "decoder" W = nn.Linear(d_s, d_t)) is the anchor and every teacher vector of the
      batch (gathered across DDP ranks) a candidate. It maximizes a lower bound on I(T; S).
    - HSIC(X, S): the biased HSIC estimator with Gaussian kernels k(a, b) = exp(-gamma ||a - b||^2)
      between X, the attention-masked mean of the student's hidden state `hsic_layer` (0 = the
      embedding output, negative = from the top) standing in for the input, and S = the student's
      pooled vector s. It is the information-bottleneck term: a differentiable proxy for I(X; S) that
      the student is pushed to lower. Under DDP it is computed on each rank's own batch (the kernel
      statistics need no global view, and gathering n x n kernels would cost more than it brings).

    Parameters: tau (temperature), lam (HSIC weight; lam = 0 is plain InfoNCE, the "infonce" loss;
    with lam_mode="relative" the target share, see below),
    gamma (kernel width when bandwidth = "fixed"), bandwidth ("fixed": use gamma on both sides;
    "median": gamma = 1 / median pairwise squared distance, per side and per batch, not
    differentiated), hsic_layer, kernel_normalize (L2-normalize X and S before the kernels),
    hsic_estimator ("biased": the penalty is HSIC(X, S); "normalized": nHSIC = HSIC(X, S) /
    sqrt(HSIC(X, X) HSIC(S, S)), scale-free, see `hsic_parts`), lam_mode ("absolute": L = InfoNCE
    + lam * penalty; "relative": L = InfoNCE + c * penalty with the detached c = lam *
    ||dInfoNCE/ds|| / ||dpenalty/ds|| recomputed every step, so that the IB term's gradient on the
    student vector s is exactly the fraction lam of InfoNCE's, whatever the kernel scale).

    Visibility: while training (s requires grad, lam > 0) every step also reports "grad_infonce" =
    ||dInfoNCE/ds||, "grad_ib" = ||d(weight * penalty)/ds|| (the gradient the IB term actually
    puts on s), "ib_share" = grad_ib / grad_infonce and "ib_weight" (lam, or c in relative mode).
    Two autograd.grad calls through the heads and the n x n kernels only: cheap next to the
    encoder. An ib_share of 1e-4 means the term does nothing Adam can notice.

    Bandwidth matters: with the authors' gamma = 1.0 and raw mean-pooled MiniLM vectors (norms near
    5, pairwise squared distances of several units), exp(-gamma d^2) is ~0 off the diagonal, the
    kernel is nearly the identity, HSIC is the constant tr(H)/(n-1)^2 = 1/(n-1) with almost no
    gradient, and the lam term does nothing (measured: ib_share ~1e-4 with the authors' tau 1.0,
    nHSIC ~1.0). bandwidth="median" or kernel_normalize=True make HSIC vary, but its gradient stays
    small next to InfoNCE's at lam 0.2; the scale-free nHSIC with median bandwidth reaches a share
    of ~7% at lam 1 and ~66% at lam 10 (tau 0.05, batch 64, MiniLM-L3); lam_mode="relative" sets
    the share directly. The "hsic_gamma" logs show the width actually used, "ib_share" the effect.

    W is training-only: the student's own s is what evaluation scores and export ships. The same
    holds for the authors: their test numbers come from `AutoModel` with average pooling (384-d,
    no decoder); the decoder serves them only to pick checkpoints on dev, where we score s
    itself. Needs student_out["hidden_states"] and ["attention_mask"] when
    lam > 0. Returns {"loss", "infonce", and when the HSIC term is computed: "hsic" (unweighted),
    "hsic_gamma" (width on S), "hsic_gamma_x" (width on X)}, all but "loss" detached.
    """

    name = "ibkd"
    citation = IBKD_CITATION
    contrastive = True
    # matryoshka_dims: a decoder Linear(k, d_t) and the HSIC term HSIC(X, s[:k]) per prefix (losses/matryoshka.py)
    matryoshka = True
    rules = {
        **INFONCE_HSIC_RULES,
        "hsic_estimator": one_of(*ESTIMATORS),
        "lam_mode": one_of(*LAM_MODES),
    }

    def __init__(
        self,
        student_dim: int,
        teacher_dim: int,
        *,
        tau: float = 0.05,
        lam: float = 0.2,
        gamma: float = 1.0,
        bandwidth: str = "fixed",
        hsic_layer: int = 0,
        kernel_normalize: bool = False,
        hsic_estimator: str = "biased",
        lam_mode: str = "absolute",
    ):
        super().__init__()
        self.student_dim, self.teacher_dim = int(student_dim), int(teacher_dim)
        self.tau, self.lam = float(tau), float(lam)
        self.decoder = nn.Linear(self.student_dim, self.teacher_dim)
        self.hsic_term = HSICPenalty(
            gamma=gamma, bandwidth=bandwidth, layer=hsic_layer, kernel_normalize=kernel_normalize, who=self.name,
            estimator=hsic_estimator,
        )
        self.lam_mode = lam_mode
        self._last_weight = self.lam  # relative mode outside training (no gradient to measure): last step's c

    @property
    def needs_hidden_states(self) -> bool:  # type: ignore[override]
        return self.lam > 0

    def get_config_dict(self) -> dict[str, Any]:
        return {"tau": self.tau, "lam": self.lam, **self.hsic_term.config(), "hsic_estimator": self.hsic_term.estimator, "lam_mode": self.lam_mode}

    def export_head(self):
        return ("decoder", self.decoder, "the IBKD decoder into the teacher's space")

    def run_summary(self, log_file: Path) -> dict[str, Any]:
        """results.json["ib"]: does the HSIC term act (see `ib_summary`); nothing when it logged no share."""
        ib = ib_summary(log_file)
        return {"ib": ib} if ib else {}

    def forward(self, student_out: dict, teacher: Tensor) -> dict:
        s = student_out["embedding"]
        t = self._teacher(teacher, s)
        if t.shape[0] != s.shape[0] or t.shape[-1] != self.teacher_dim:
            raise DistillError(f"{self.name}: teacher batch {tuple(t.shape)} does not fit {s.shape[0]} x {self.teacher_dim}")
        candidates, offset = gather_candidates(t, with_grad=False)  # frozen: plain all_gather
        nce = info_nce(self.decoder(s), candidates, self.tau, positive_offset=offset)
        out = {"loss": nce, "infonce": nce.detach()}
        if self.lam > 0:
            parts = self.hsic_term([student_out])
            penalty = parts.pop("penalty")
            weight = torch.as_tensor(self.lam if self.lam_mode == "absolute" else self._last_weight, dtype=penalty.dtype, device=penalty.device)
            if torch.is_grad_enabled() and s.requires_grad:
                g_nce, g_pen = _grad_norm(nce, s), _grad_norm(penalty, s)
                if self.lam_mode == "relative":
                    # detached: the share is a setting, not something the student may optimize
                    weight = (self.lam * g_nce / g_pen.clamp_min(torch.finfo(g_pen.dtype).tiny)).to(penalty.dtype)
                    self._last_weight = weight.detach()  # a tensor: no host sync per step
                g_ib = weight.to(g_pen.dtype) * g_pen
                parts.update(grad_infonce=g_nce, grad_ib=g_ib, ib_share=g_ib / g_nce.clamp_min(torch.finfo(g_nce.dtype).tiny))
            parts["ib_weight"] = weight
            out["loss"] = nce + weight * penalty
        elif student_out.get("hidden_states") is not None and student_out.get("attention_mask") is not None:
            with torch.no_grad():  # lam = 0: still worth watching, but costs no graph
                parts = self.hsic_term([student_out])
                parts.pop("penalty")
        else:
            return out
        out.update({k: v.detach() for k, v in parts.items()})
        return out


IB_KEYS = ("ib_share", "grad_ib", "grad_infonce", "ib_weight", "hsic", "nhsic")


def ib_summary(log_file: Path) -> dict | None:
    """Means over the logged intervals of a run's log.jsonl of what says whether IBKD's HSIC term
    acts: its share of the gradient on the student vector, both gradient norms, the weight, HSIC and
    nHSIC; plus the last interval's share. None when the loss logged no gradient share (no HSIC term).
    Rows are keyed by step (last wins), so a resumed run counts each interval once."""
    path = Path(log_file)
    if not path.is_file():
        return None
    rows: dict[int, dict] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line cut by a kill
        if isinstance(row, dict) and "ib_share" in row:
            rows[row["step"]] = row
    if not rows:
        return None
    ordered = [rows[k] for k in sorted(rows)]
    out = {k: sum(r[k] for r in ordered if k in r) / max(1, sum(k in r for r in ordered)) for k in IB_KEYS if any(k in r for r in ordered)}
    return {**out, "ib_share_last": ordered[-1]["ib_share"], "intervals": len(ordered)}
