"""Building blocks shared by the distillation losses: InfoNCE, Gaussian kernels, HSIC, DDP gathering.

Everything numerically delicate here runs in float32 (or float64 when given float64) with autocast
disabled: a bf16 kernel matrix exp(-gamma * d^2) or a bf16 logit cos/tau (up to 20 at tau = 0.05)
keeps only ~3 significant digits, which is enough to swamp an HSIC of order 1e-3 or to move a
softmax noticeably. The matrices are n x n (or n x N), so the cost of float32 is negligible.

The base class every loss derives from, `DistillLoss`, is in base.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.errors import DistillError

__all__ = [
    "gather_candidates",
    "hidden_state_mean",
    "hsic",
    "hsic_parts",
    "info_nce",
    "masked_mean",
    "median_gamma",
    "precise",
    "rbf_kernel",
]


# --------------------------------------------------------------------------------------------
# precision helpers


def _precise(*tensors: Tensor) -> list[Tensor]:
    """Cast to float32, or to float64 if any input is float64 (so tests can check in float64)."""
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
    return [t.to(dtype) for t in tensors]


def precise(x: Tensor) -> Tensor:
    """float32 for losses and logits whatever the autocast dtype; float64 stays float64."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _no_autocast(device: torch.device):
    # autocast would silently turn the matmuls below back into bf16/fp16.
    return torch.autocast(device_type=device.type, enabled=False)


# --------------------------------------------------------------------------------------------
# InfoNCE


def info_nce(anchors: Tensor, candidates: Tensor, temperature: float, positive_offset: int = 0) -> Tensor:
    """InfoNCE with cosine similarity: mean_i CE(softmax_j cos(a_i, c_j) / tau, positive j = offset + i).

    `anchors` is n x d, `candidates` is N x d with N >= offset + n. Rows of `candidates` other than
    the positive ones are negatives: the rest of the batch, rows gathered from other DDP ranks (then
    `positive_offset` = the rank's first global row), hard negatives or queue entries appended at the
    end. Both sides are L2-normalized here, so callers pass raw vectors.
    """
    n = anchors.shape[0]
    if candidates.shape[0] < positive_offset + n:
        raise DistillError(
            f"info_nce: {candidates.shape[0]} candidates cannot hold the positives of {n} anchors at offset {positive_offset}"
        )
    if anchors.shape[-1] != candidates.shape[-1]:
        raise DistillError(f"info_nce: anchors are {anchors.shape[-1]}-d but candidates {candidates.shape[-1]}-d")
    with _no_autocast(anchors.device):
        a, c = _precise(anchors, candidates)
        logits = F.normalize(a, dim=-1) @ F.normalize(c, dim=-1).T / temperature
        labels = torch.arange(positive_offset, positive_offset + n, device=anchors.device)
        return F.cross_entropy(logits, labels)


# --------------------------------------------------------------------------------------------
# kernels and HSIC


def _squared_distances(z: Tensor) -> Tensor:
    """||z_i - z_j||^2 via the Gram matrix, after centering (distances are translation invariant and
    centering shrinks the norms, which keeps ||a||^2 + ||b||^2 - 2ab from cancelling catastrophically
    for vectors of norm ~5 whose distances are ~1). Clamped >= 0, diagonal exactly 0."""
    z = z.reshape(z.shape[0], -1)
    z = z - z.mean(dim=0, keepdim=True)
    sq = z.pow(2).sum(dim=1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * (z @ z.T)).clamp_min(0.0)
    return d2 * (1.0 - torch.eye(z.shape[0], dtype=z.dtype, device=z.device))


def rbf_kernel(z: Tensor, gamma: float | Tensor) -> Tensor:
    """Gaussian kernel matrix K_ij = exp(-gamma * ||z_i - z_j||^2) for the n rows of `z` (diagonal 1).

    Computed in float32 (float64 if `z` is float64) with autocast off.
    """
    with _no_autocast(z.device):
        (z,) = _precise(z)
        return torch.exp(-gamma * _squared_distances(z))


@torch.no_grad()
def median_gamma(z: Tensor) -> Tensor:
    """Median heuristic: 1 / median of the n(n-1)/2 pairwise squared distances (torch.median: the
    lower median for an even count). Not differentiated: the bandwidth is a setting, not a path for
    gradients (otherwise the student could lower HSIC by inflating its own distances)."""
    with _no_autocast(z.device):
        (z,) = _precise(z.detach())
        n = z.shape[0]
        if n < 2:
            raise DistillError("median bandwidth needs at least 2 samples")
        iu = torch.triu_indices(n, n, offset=1, device=z.device)
        med = _squared_distances(z)[iu[0], iu[1]].median()
        # All rows identical: any gamma gives a constant kernel; avoid inf.
        return 1.0 / med.clamp_min(torch.finfo(z.dtype).tiny)


def _resolve_gamma(z: Tensor, gamma: float | str | Tensor) -> float | Tensor:
    if isinstance(gamma, str):
        if gamma != "median":
            raise DistillError(f"gamma must be a number or 'median', got {gamma!r}")
        return median_gamma(z)
    return gamma


def hsic(
    x: Tensor,
    y: Tensor,
    gamma: float | str | Tensor | Sequence[float | str | Tensor] = 1.0,
) -> Tensor:
    """Biased HSIC estimator with Gaussian kernels (Gretton et al., 2005): tr(K_X H K_Y H) / (n - 1)^2.

    H = I - 11^T / n centers the kernels. `x` (n x d_x) and `y` (n x d_y) may differ in width.
    `gamma` is one bandwidth for both sides, "median" (median heuristic per side, see
    `median_gamma`), or a pair (gamma_x, gamma_y). HSIC is 0 when either kernel is constant and
    grows with the dependence between the rows of x and y. Float32 (float64 if given) with autocast
    off, whatever the caller's precision.
    """
    if x.shape[0] != y.shape[0]:
        raise DistillError(f"hsic: x has {x.shape[0]} rows but y has {y.shape[0]}")
    n = x.shape[0]
    if n < 2:
        raise DistillError("hsic needs at least 2 samples")
    gx, gy = gamma if isinstance(gamma, (tuple, list)) else (gamma, gamma)
    with _no_autocast(x.device):
        x, y = _precise(x, y)
        kx = rbf_kernel(x, _resolve_gamma(x, gx))
        ky = rbf_kernel(y, _resolve_gamma(y, gy))
        return (_center(kx) * ky).sum() / (n - 1) ** 2


def _center(k: Tensor) -> Tensor:
    """H K H for a symmetric K, so that tr(K H L H) = sum((H K H) * L): O(n^2) instead of two n^3
    matrix products."""
    return k - k.mean(dim=0, keepdim=True) - k.mean(dim=1, keepdim=True) + k.mean()


def hsic_parts(x: Tensor, y: Tensor, gx: float | Tensor, gy: float | Tensor, normalized_grad: bool = False) -> tuple[Tensor, Tensor]:
    """(HSIC(X, Y), nHSIC(X, Y)) from one pair of Gaussian kernels.

    nHSIC = HSIC(X, Y) / sqrt(HSIC(X, X) * HSIC(Y, Y)) (Cristianini et al. 2002's kernel
    alignment of the centered kernels; "CKA", Kornblith et al. 2019): in [0, 1] by Cauchy-Schwarz,
    blind to the overall scale of the kernels, so unlike the biased HSIC it does not sink to 0 when
    one side merely shrinks, and it says how much of the dependence that is possible is there.
    Both biased estimators share the 1/(n-1)^2 factor, which cancels. With a near-identity kernel
    on both sides (a fixed gamma far too large for the distances) all three HSICs are 1/(n-1) and
    nHSIC is 1 with no gradient: a sign that the bandwidth, not the estimator, is wrong.
    `normalized_grad=False` computes nHSIC without a graph (for logging only).
    """
    n = x.shape[0]
    if n < 2 or y.shape[0] != n:
        raise DistillError(f"hsic: needs at least 2 rows on both sides with the same count, got {n} and {y.shape[0]}")
    with _no_autocast(x.device):
        x, y = _precise(x, y)
        kx, ky = rbf_kernel(x, gx), rbf_kernel(y, gy)
        kx_c = _center(kx)
        xy = (kx_c * ky).sum() / (n - 1) ** 2
        with torch.set_grad_enabled(normalized_grad and torch.is_grad_enabled()):
            xx = (kx_c * kx).sum() / (n - 1) ** 2
            yy = (_center(ky) * ky).sum() / (n - 1) ** 2
            # A constant kernel (a collapsed side) has HSIC = 0 up to rounding (kernel entries <= 1, so
            # the centered ones carry ~eps of error and the self-HSICs ~eps^2): below that floor report
            # no dependence (0), not a ratio of rounding errors.
            floor = (64 * torch.finfo(xy.dtype).eps) ** 2
            ok = (xx > floor) & (yy > floor)
            nhsic = torch.where(ok, xy / torch.where(ok, xx * yy, torch.ones_like(xx)).sqrt(), torch.zeros_like(xy))
        return xy, nhsic


# --------------------------------------------------------------------------------------------
# pooling of intermediate layers


def masked_mean(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """Mean over the real (mask = 1) tokens: padding must not leak into a sentence vector."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)


def hidden_state_mean(student_out: dict, layer: int, who: str = "loss") -> Tensor:
    """Mean-pooled hidden state `layer` (0 = embedding output, negative = from the top) of a student
    forward dict that carries "hidden_states" and "attention_mask"."""
    hidden_states = student_out.get("hidden_states")
    if hidden_states is None:
        raise DistillError(f"{who}: needs the student's hidden states (run the encoder with output_hidden_states=True)")
    mask = student_out.get("attention_mask")
    if mask is None:
        raise DistillError(
            f"{who}: needs the batch's attention mask in the student output (student_out['attention_mask'])"
            " to mean-pool an intermediate layer without the padding"
        )
    count = len(hidden_states)
    if not -count <= layer < count:
        raise DistillError(f"{who}: hidden-state layer {layer} does not exist (the student has {count}: 0..{count - 1})")
    return masked_mean(hidden_states[layer], mask)


# --------------------------------------------------------------------------------------------
# DDP


def rank_and_world() -> tuple[int, int]:
    """(this process's rank, the number of processes): (0, 1) without torch.distributed."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_candidates(x: Tensor, with_grad: bool = True) -> tuple[Tensor, int]:
    """All rows of `x` from every DDP rank, in rank order, and this rank's first row in the result.

    Identity (offset 0) without an initialized process group of size > 1. `with_grad=True` uses
    torch.distributed.nn.functional.all_gather, whose backward sends each rank the gradient that
    every rank's loss put on its rows (summed), so in-batch negatives from other GPUs train the
    model that produced them; the no-grad variant is for frozen inputs (teacher vectors). Ranks may
    hold different numbers of rows (a short last batch): rows are padded to the largest count for
    the collective and the padding is cut off again.
    """
    rank, world = rank_and_world()
    if world == 1:
        return x, 0
    import torch.distributed as dist

    sizes_t = torch.tensor([x.shape[0]], device=x.device)
    all_sizes = [torch.zeros_like(sizes_t) for _ in range(world)]
    dist.all_gather(all_sizes, sizes_t)
    sizes = [int(s.item()) for s in all_sizes]
    largest = max(sizes)
    padded = F.pad(x, [0, 0] * (x.dim() - 1) + [0, largest - x.shape[0]]) if x.shape[0] < largest else x
    if with_grad:
        import torch.distributed.nn.functional as dist_fn

        parts = list(dist_fn.all_gather(padded.contiguous()))
    else:
        padded = padded.detach().contiguous()
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded)
    gathered = torch.cat([p[:size] for p, size in zip(parts, sizes)], dim=0)
    return gathered, sum(sizes[:rank])
