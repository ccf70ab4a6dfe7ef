"""Matryoshka prefixes: one objective trained on every leading prefix s[:k] of the student vector,
so that one student serves at several widths (384, 256, 128, 64) by truncation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from distill.errors import DistillError
from distill.losses.base import DistillLoss

MRL_CITATION = """
@inproceedings{kusupati2022matryoshka,
    title = {Matryoshka Representation Learning},
    author = {Kusupati, Aditya and Bhatt, Gantavya and Rege, Aniket and Wallingford, Matthew and Sinha, Aditya and Ramanujan, Vivek and Howard-Snyder, William and Chen, Kaifeng and Kakade, Sham and Jain, Prateek and Farhadi, Ali},
    booktitle = {Advances in Neural Information Processing Systems},
    year = {2022},
    url = {https://arxiv.org/abs/2205.13147},
}
"""


def check_prefix_widths(dims, width: int, where: str = "loss.matryoshka_dims") -> list[int]:
    """`dims` as ints, refused unless its first entry is the student's own `width` (the rules of
    MATRYOSHKA_RULES, descending and distinct, were checked when the recipe was read)."""
    dims = [int(d) for d in dims]
    if dims[0] != int(width):
        raise DistillError(
            f"{where} {dims}: the first width must be the student's own, {width}: the full vector is what evaluation "
            f"scores and export ships, so it is trained too (e.g. [{width}, {', '.join(str(d) for d in dims if d < width) or width // 2}])"
        )
    return dims


class MatryoshkaLoss(DistillLoss):
    """Matryoshka representation learning (Kusupati et al., NeurIPS 2022, "Matryoshka
    Representation Learning"; sentence-transformers' `MatryoshkaLoss`) over any objective that
    compares student vectors with the teacher's (mse, cosine, crd, infonce, ibkd):

        L = sum_j w_j * L_inner( s[:, :k_j], t ),   k_1 = d_s > k_2 > ... (matryoshka_dims),
                                                   w_j = matryoshka_weights (default all 1)

    Each prefix has its own instance of the inner loss, built with student_dim = k_j, and so its
    own heads: MSE and cosine regress the teacher through a Linear(k_j, d_t) per prefix (the
    identity where k_j = d_t and no projection is asked for), InfoNCE / IBKD decode each prefix
    with its own Linear(k_j, d_t), CRD projects each with its own student head (one teacher head
    per prefix too). What a prefix means is therefore the leading k_j coordinates of the
    student's own pooled vector, which is what is exported and truncated at serving time; it is
    not a prefix of a projected vector. Each inner loss normalizes where its formula does (the
    cosines of InfoNCE / cosine / CRD are of the prefix, i.e. the prefix re-normalized), MSE's
    `student_norm` scale is measured per prefix on its first batch, and IBKD's HSIC term is
    computed per prefix as its formula says: HSIC(X, s[:k_j]) with X the same hidden-state mean,
    weighted by lam in each prefix's loss (so by lam * w_j in L). CRD's queue is held per prefix
    (the same raw teacher rows in each).

    `matryoshka_head: pca` (default none) puts a trained layer in front of the prefixes,
    y = R s + b with R a d x d matrix, and takes the prefixes of y: L = sum_j w_j L_inner(y[:, :k_j], t).
    It is started at the PCA of the untrained student's vectors (the PREPARE_SAMPLE sentences of
    training/stages.py: R = their principal axes, largest variance first, b = -R mean), so that
    at step 0 every prefix is already the PCA of that width, the best linear k-d summary of the
    student, and training refines it. Why: a student cut from a pretrained model spreads its
    information over all coordinates, and a short run cannot rotate a transformer's last layer to
    put the most in the first 64 (measured: plain Matryoshka at 128 stayed 3 points under a PCA
    of the plain student). The layer is part of the embedding (`embedding_head`): evaluation
    applies it and export writes it as a Dense layer, so --dims N prefixes are of y. It centers
    the vector (b), which changes full-width cosines a little at step 0 (the PCA export at full
    width: -0.26 avg STS on the CPU recipe).

    `matryoshka_detach: true` (with the head) stops the smaller prefixes' gradients at the head's
    input: L_inner(y[:, :k_1], t) with y = R s + b trains the student, the head and the full
    width's heads, and every k_j < d_s prefix is taken of R sg(s) + b (sg: stop-gradient), so
    it trains only the head and its own heads. The student's full vector is then trained as the
    plain objective trains it, and the head learns the best k-d linear read-outs of it for the
    objective, starting from its PCA. Why: sharing the student between the widths cost the full
    width 2.3 avg STS on the CPU recipe (its InfoNCE at step 180: 0.73 against the plain run's 0.39).

    The first width must be the student's (`check_prefix_widths`). A loss whose head is the
    product (HPD: its k-d tanh output is the embedding) is refused when the recipe is read: a
    prefix of the student vector is not what it serves.

    Returns {"loss": L; the full-width prefix's own parts under their usual names ("infonce",
    "hsic", "ib_share", "mse", "target_scale"...), so logs, the progress bar and IBKD's run
    summary read as for the plain loss; every other prefix's parts as "NAME@k"; and "loss@k", the
    unweighted loss of each prefix}, all but "loss" detached. The state_dict holds each prefix's
    heads under "prefixes.<j>." (saved students, checkpoints, `load_loss`).
    """

    stage = 1

    def __init__(self, inner: type[DistillLoss], student_dim: int, teacher_dim: int | None, *, dims, weights=None,
                 head: str = "none", detach: bool = False, **params: Any):
        super().__init__()
        if not inner.matryoshka:
            raise DistillError(f"loss.matryoshka_dims: loss {inner.name} cannot be trained on prefixes of the student vector: "
                               f"{inner.matryoshka_refusal}")
        self.inner, self.name = inner, inner.name
        self.citation = inner.citation + MRL_CITATION
        self.contrastive = inner.contrastive
        self.student_dim, self.teacher_dim = int(student_dim), teacher_dim
        self.dims = check_prefix_widths(dims, self.student_dim)
        self.weights = [float(w) for w in weights] if weights is not None else [1.0] * len(self.dims)
        prefixes = []
        for k in self.dims:
            try:
                prefixes.append(inner(k, teacher_dim, **params))
            except DistillError as exc:
                raise DistillError(f"loss {inner.name}, Matryoshka prefix {k}: {exc}") from None
        self.prefixes = nn.ModuleList(prefixes)
        if head not in ("none", "pca"):
            raise DistillError(f"loss.matryoshka_head: {head!r}, expected none or pca")
        self.head = head
        if detach and head == "none":
            raise DistillError("loss.matryoshka_detach: true needs loss.matryoshka_head: pca")
        self.detach = bool(detach)
        # registered only when asked for, so a plain Matryoshka student's saved heads are unchanged
        self.rotation = nn.Linear(self.student_dim, self.student_dim) if head == "pca" else None
        self.needs_prepare = head == "pca" or any(p.needs_prepare for p in self.prefixes)
        if any(p.embedding_head() is not None for p in self.prefixes):  # a new loss that forgot matryoshka = False
            raise DistillError(f"loss {inner.name}: its head is part of the embedding; prefixes of the student vector are not what it serves")

    # ------------------------------------------------------------------ what the toolkit asks

    @property
    def needs_hidden_states(self) -> bool:  # type: ignore[override]
        return any(p.needs_hidden_states for p in self.prefixes)

    @property
    def wants_all_targets(self) -> bool:
        return any(p.wants_all_targets for p in self.prefixes)

    def fit_targets(self, teacher_all) -> None:
        for p in self.prefixes:
            if p.wants_all_targets:
                p.fit_targets(teacher_all)

    def prepare(self, student_embeddings: Tensor, teacher: Tensor) -> None:
        if self.rotation is not None:
            self._fit_pca(student_embeddings)
            with torch.no_grad():
                student_embeddings = self.rotation(student_embeddings.to(self.rotation.weight))
        for k, p in zip(self.dims, self.prefixes):
            if p.needs_prepare:
                p.prepare(student_embeddings[:, :k], teacher)

    @torch.no_grad()
    def _fit_pca(self, s: Tensor) -> None:
        """R = the principal axes of the untrained student's vectors (rows, largest variance first),
        b = -R mean: the PCA of every width at once. In float64; with fewer vectors than
        dimensions the trailing axes complete an orthonormal basis (any completion, of no variance)."""
        s = s.detach().double().cpu()
        if s.ndim != 2 or s.shape[1] != self.student_dim or len(s) < 2:
            raise DistillError(f"matryoshka_head pca: needs (n >= 2, {self.student_dim}) untrained student vectors, got {tuple(s.shape)}")
        mean = s.mean(0)
        _, _, vh = torch.linalg.svd(s - mean, full_matrices=True)
        self.rotation.weight.copy_(vh.to(self.rotation.weight.dtype))
        self.rotation.bias.copy_((-vh @ mean).to(self.rotation.bias.dtype))

    def embedding_head(self) -> nn.Module | None:
        """matryoshka_head pca: the trained layer, part of the embedding (evaluation, export)."""
        return self.rotation

    def get_config_dict(self) -> dict[str, Any]:
        return {**self.prefixes[0].get_config_dict(), "matryoshka_dims": list(self.dims), "matryoshka_weights": list(self.weights),
                "matryoshka_head": self.head, "matryoshka_detach": self.detach}

    def export_head(self):
        """The full-width prefix's head (it maps the whole exported vector), if the inner loss has one."""
        kept = self.prefixes[0].export_head()
        if kept is None:
            return None
        prefix, module, what = kept
        return (f"prefixes.0.{prefix}", module, f"{what} (the full {self.dims[0]}-d vector's head; each Matryoshka prefix has its own)")

    def run_summary(self, log_file: Path) -> dict[str, Any]:
        return self.prefixes[0].run_summary(log_file)  # the full-width parts are logged under the plain names

    # ------------------------------------------------------------------ the loss

    def forward(self, student_out: dict, teacher: Tensor) -> dict:
        s = student_out["embedding"]
        if s.shape[-1] != self.student_dim:
            raise DistillError(f"{self.name}: a {s.shape[-1]}-d student vector, the Matryoshka widths {self.dims} are for {self.student_dim}")
        full = small = s
        if self.rotation is not None:
            full = self.rotation(s)
            small = self.rotation(s.detach()) if self.detach else full
        total, out = None, {}
        for j, (k, w, loss) in enumerate(zip(self.dims, self.weights, self.prefixes)):
            parts = loss({**student_out, "embedding": (full if j == 0 else small)[..., :k]}, teacher)
            value = parts.pop("loss")
            total = w * value if total is None else total + w * value
            out[f"loss@{k}"] = value.detach()
            out.update({(key if j == 0 else f"{key}@{k}"): v for key, v in parts.items()})
        out["loss"] = total
        return out

    def extra_repr(self) -> str:
        return f"inner={self.inner.__name__}, dims={self.dims}, weights={self.weights}, head={self.head}, detach={self.detach}"

