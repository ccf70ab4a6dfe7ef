"""Issue 12: IBKD's information-bottleneck term made visible (gradient share, nHSIC) and the options
that can make it act (normalized HSIC, lam relative to InfoNCE's gradient, random batches), each
checked against an independent float64 reference."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from distill.config import load_recipe
from distill.data.batches import epoch_batches
from distill.errors import DistillError
from distill.losses import IBKDLoss, build_loss
from distill.losses.functional import hsic_parts
from distill.losses.ibkd import ib_summary


def _ref_kernel(z: np.ndarray, gamma: float) -> np.ndarray:
    n = z.shape[0]
    k = np.empty((n, n))
    for i in range(n):
        for j in range(n):
            k[i, j] = math.exp(-gamma * sum((a - b) ** 2 for a, b in zip(z[i], z[j])))
    return k


def _ref_hsic_loops(k: np.ndarray, lk: np.ndarray) -> float:
    """Biased HSIC written out: (1/(n-1)^2) sum_ij Kc_ij Lc_ij with explicitly centered kernels."""
    n = k.shape[0]
    def centered(m):
        row = [sum(m[i]) / n for i in range(n)]
        col = [sum(m[:, j]) / n for j in range(n)]
        tot = sum(row) / n
        return np.array([[m[i, j] - row[i] - col[j] + tot for j in range(n)] for i in range(n)])
    kc, lc = centered(k), centered(lk)
    return sum(kc[i, j] * lc[i, j] for i in range(n) for j in range(n)) / (n - 1) ** 2


def _ref_nhsic(x: np.ndarray, s: np.ndarray, gx: float, gs: float) -> tuple[float, float]:
    kx, ks = _ref_kernel(x, gx), _ref_kernel(s, gs)
    xs = _ref_hsic_loops(kx, ks)
    return xs, xs / math.sqrt(_ref_hsic_loops(kx, kx) * _ref_hsic_loops(ks, ks))


@pytest.mark.parametrize("gx,gs", [(0.3, 0.05), (1.0, 1.0), (0.02, 0.5)])
def test_nhsic_matches_float64_reference(gx, gs):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(7, 4, generator=g, dtype=torch.float64)
    s = torch.randn(7, 3, generator=g, dtype=torch.float64) * 2 + x[:, :3]
    got_h, got_n = hsic_parts(x, s, gx, gs)
    ref_h, ref_n = _ref_nhsic(x.numpy(), s.numpy(), gx, gs)
    assert got_h.item() == pytest.approx(ref_h, rel=1e-10)
    assert got_n.item() == pytest.approx(ref_n, rel=1e-10)
    assert 0.0 < got_n.item() <= 1.0 + 1e-12


def test_nhsic_is_scale_free_where_biased_hsic_vanishes():
    """Shrinking S (a student collapsing) drives the biased HSIC to 0 but leaves nHSIC at the
    alignment of the linearized kernels; a fully collapsed S gives 0, not nan."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(8, 4, generator=g, dtype=torch.float64)
    s = x @ torch.randn(4, 4, generator=g, dtype=torch.float64)
    h1, n1 = hsic_parts(x, s * 1e-3, 0.2, 1.0)
    h2, n2 = hsic_parts(x, s * 1e-4, 0.2, 1.0)
    assert h2.item() < h1.item() / 50  # biased: ~ scale^2
    assert n2.item() == pytest.approx(n1.item(), rel=1e-3) and n1.item() > 0.1
    h0, n0 = hsic_parts(x, torch.zeros_like(s), 0.2, 1.0)
    assert h0.item() == pytest.approx(0.0, abs=1e-15) and n0.item() == pytest.approx(0.0, abs=1e-12)


def _batch(seed=10, n=8, d=5, seq=6):
    g = torch.Generator().manual_seed(seed)
    s = (torch.randn(n, d, generator=g, dtype=torch.float64) * 3).requires_grad_()
    hidden = tuple(torch.randn(n, seq, d, generator=g, dtype=torch.float64) for _ in range(3))
    lengths = torch.randint(1, seq + 1, (n,), generator=g)
    mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()
    t = torch.randn(n, 7, generator=g, dtype=torch.float64)
    return {"embedding": s, "hidden_states": hidden, "attention_mask": mask}, t


def _ib_grad_on_s(loss, out, t):
    """||d(loss - InfoNCE)/ds|| and ||dInfoNCE/ds||, measured from outside the loss."""
    parts = loss(out, t)
    s = out["embedding"]
    (g_total,) = torch.autograd.grad(parts["loss"], s, retain_graph=True)
    lam0 = IBKDLoss(loss.student_dim, loss.teacher_dim, tau=loss.tau, lam=0.0).double()
    lam0.load_state_dict(loss.state_dict())
    (g_nce,) = torch.autograd.grad(lam0(out, t)["loss"], s)
    return (g_total - g_nce).norm().item(), g_nce.norm().item(), parts


@pytest.mark.parametrize("estimator", ["biased", "normalized"])
@pytest.mark.parametrize("target", [0.1, 0.3])
def test_relative_lam_gives_the_ib_term_exactly_its_target_share(estimator, target):
    out, t = _batch()
    loss = IBKDLoss(5, 7, tau=0.1, lam=target, bandwidth="median", hsic_estimator=estimator, lam_mode="relative").double()
    g_ib, g_nce, parts = _ib_grad_on_s(loss, out, t)
    assert g_ib / g_nce == pytest.approx(target, rel=1e-9)
    assert parts["ib_share"].item() == pytest.approx(target, rel=1e-9)
    assert parts["grad_infonce"].item() == pytest.approx(g_nce, rel=1e-9)


def test_absolute_lam_reports_the_share_it_measures():
    out, t = _batch(seed=11)
    loss = IBKDLoss(5, 7, tau=0.05, lam=0.7, bandwidth="median").double()
    g_ib, g_nce, parts = _ib_grad_on_s(loss, out, t)
    assert parts["grad_ib"].item() == pytest.approx(g_ib, rel=1e-9)
    assert parts["ib_share"].item() == pytest.approx(g_ib / g_nce, rel=1e-9)
    assert parts["ib_weight"].item() == 0.7


def test_normalized_estimator_penalizes_nhsic():
    out, t = _batch(seed=12)
    kw = dict(tau=0.05, lam=0.5, gamma=0.1, hsic_layer=1)
    biased = IBKDLoss(5, 7, **kw).double()
    normalized = IBKDLoss(5, 7, hsic_estimator="normalized", **kw).double()
    normalized.load_state_dict(biased.state_dict())
    a, b = biased(out, t), normalized(out, t)
    assert a["nhsic"].item() == pytest.approx(b["nhsic"].item(), rel=1e-12)
    assert b["loss"].item() == pytest.approx(a["infonce"].item() + 0.5 * b["nhsic"].item(), rel=1e-12)
    assert a["loss"].item() == pytest.approx(a["infonce"].item() + 0.5 * a["hsic"].item(), rel=1e-12)


def test_no_gradient_no_share_and_bad_options_are_named():
    out, t = _batch(seed=13)
    loss = IBKDLoss(5, 7, lam=0.2).double()
    with torch.no_grad():
        parts = loss(out, t)
    assert "ib_share" not in parts and "nhsic" in parts
    # the class's rules are the one check of its parameters: build_loss (and recipes) run them
    with pytest.raises(DistillError, match=r"loss ibkd\.hsic_estimator: must be one of biased, normalized, got 'unbiased'"):
        build_loss("ibkd", 5, 7, hsic_estimator="unbiased")
    with pytest.raises(DistillError, match="lam_mode"):
        build_loss("ibkd", 5, 7, lam_mode="share")


def test_random_batching_mixes_lengths_and_is_deterministic():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 60, size=1000)
    rand = epoch_batches(lengths, 64, seed=5, epoch=0, batching="random")
    grouped = epoch_batches(lengths, 64, seed=5, epoch=0, batching="length")
    assert len(rand) == 1000 // 64 and all(len(b) == 64 for b in rand)
    flat = np.concatenate(rand)
    assert len(set(flat.tolist())) == len(flat)  # no row twice in an epoch
    assert all(np.array_equal(a, b) for a, b in zip(rand, epoch_batches(lengths, 64, seed=5, epoch=0, batching="random")))
    assert not np.array_equal(np.concatenate(rand), np.concatenate(epoch_batches(lengths, 64, seed=5, epoch=1, batching="random")))
    spread = lambda bs: np.mean([np.ptp(lengths[b]) for b in bs])  # noqa: E731
    assert spread(grouped) < 10 < 40 < spread(rand)  # length-grouped batches share a length, random ones do not


def test_recipe_keys_are_validated(tmp_path):
    base = (
        "teacher: all-minilm-l6-v2\nstudent: all-minilm-l3-v2\nloss: {name: ibkd}\n"
        "data: {corpus: [x.txt], cache_dir: c}\n"
    )
    path = tmp_path / "r.yaml"
    path.write_text(base)
    r = load_recipe(path, ["loss.hsic_estimator=normalized", "loss.lam_mode=relative", "data.batching=random"])
    assert (r.loss["hsic_estimator"], r.loss["lam_mode"], r.data.batching) == ("normalized", "relative", "random")
    assert load_recipe(path).data.batching == "length"
    for bad, key in (("loss.hsic_estimator=unbiased", "loss.hsic_estimator"), ("loss.lam_mode=share", "loss.lam_mode"),
                     ("data.batching=sorted", "data.batching"), ("loss.bandwidth=silverman", "loss.bandwidth")):
        with pytest.raises(DistillError, match=key.replace(".", r"\.")) as err:
            load_recipe(path, [bad])
        assert str(path) in str(err.value) and bad.split("=")[1] in str(err.value)


def test_ib_summary_means_and_counts_each_step_once(tmp_path):
    log = tmp_path / "log.jsonl"
    rows = [{"step": 10, "loss": 1.0}, {"step": 10, "ib_share": 0.2, "nhsic": 0.5}, {"step": 20, "ib_share": 0.4, "nhsic": 0.7},
            {"step": 20, "eval": {"STS-B-dev": 1}}, {"step": 20, "ib_share": 0.6, "nhsic": 0.9}]
    log.write_text("\n".join(json.dumps(r) for r in rows) + "\n{\"step\": 3")  # last line cut by a kill
    got = ib_summary(log)
    assert got["ib_share"] == pytest.approx(0.4) and got["nhsic"] == pytest.approx(0.7)
    assert got["ib_share_last"] == 0.6 and got["intervals"] == 2
    assert ib_summary(tmp_path / "none.jsonl") is None
