"""Each distillation objective against an independent float64 reference, the registry's view of
its parameters, gradient flow, and a few optimizer steps on a tiny real BERT."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from loss_refs import (  # noqa: F401 (module fixtures: the MiniLM tokenizer)
    fake_hidden,
    forward,
    np_,
    ref_ce,
    ref_cos_matrix,
    ref_hsic,
    ref_masked_mean,
    ref_median_gamma,
    tiny_encoder,
    tokenizer,
)
from sentences import CONTRADICTIONS, PARAPHRASES, SENTENCES

from distill.data.cache import fit_pca
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
    load_loss,
)
from distill.losses.base import MATRYOSHKA_DEFAULTS

# Tiny matrices: one torch thread for the whole module (conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")

# ----------------------------------------------------------------------------------------------
# the registry: a recipe's parameters are each class's constructor keywords


def test_constructor_defaults_match_loss_defaults():
    assert list(LOSSES) == ["mse", "cosine", "crd", "hpd", "infonce", "ibkd", "ibkd_supervised", "mnrl"]
    for name, cls in LOSSES.items():
        assert cls.name == name
        params = inspect.signature(cls.__init__).parameters
        keywords = {k: p.default for k, p in params.items() if p.kind is p.KEYWORD_ONLY and k not in cls.internal}
        if cls.matryoshka:  # taken by build_loss's MatryoshkaLoss around the class (losses/matryoshka.py)
            keywords.update(MATRYOSHKA_DEFAULTS)
        assert list(params)[1:3] == ["student_dim", "teacher_dim"]
        defaults = cls.defaults()
        assert defaults == keywords and all(type(defaults[k]) is type(v) for k, v in keywords.items()), name
        assert set(cls.rules) <= set(defaults), f"{name}: rules for parameters it does not take"
        loss = build_loss({"name": name, **defaults}, 16, 24)
        assert loss.name == name
    with pytest.raises(DistillError, match="unknown loss"):
        build_loss("nope", 16, 24)
    # the class's rules are the one check of a parameter's value; build_loss runs them
    with pytest.raises(DistillError, match=r"loss mse\.standardize: must be one of none, student_norm, zscore, got 'l2'"):
        build_loss("mse", 16, 24, standardize="l2")
    with pytest.raises(DistillError, match=r"loss ibkd\.bandwidth"):
        build_loss("ibkd", 16, 24, bandwidth="silverman")
    with pytest.raises(DistillError, match=r"loss crd\.tau: must be a number > 0, got -1"):
        build_loss("crd", 16, 24, tau=-1)
    with pytest.raises(DistillError, match=r"loss crd\.tau: must be a number > 0, got 'x'"):
        build_loss("crd", 16, 24, tau="x")  # a rule that cannot compare is a failed rule, not a TypeError



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
    with pytest.raises(DistillError, match="init: must be one of lstsq, random, got 'pca'"):
        build_loss("hpd", 5, 12, k=3, init="pca")
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


@pytest.mark.parametrize("name", ["ibkd_supervised", "mnrl"])
def test_stage2_through_a_carried_hpd_head_reference(name):
    """Stage 2 over an HPD stage 1: every vector goes through HPD's tanh(W s + b) before the
    contrast (and the HSIC term); the head is the embedding's (embedding_head), trains, and is saved
    in the loss's state so that the loaded loss rebuilds it."""
    outs = [_student(seed=30 + i, layers=4) for i in range(3)]
    hpd = {"name": "hpd", "k": 3, "init": "lstsq"}
    params = {"lam": 1.0, "gamma": 0.1, "hsic_layer": -2, "head": "none"} if name == "ibkd_supervised" else {}
    loss = build_loss({"name": name, **params, "stage1_head": hpd}, 5, None).double()
    with torch.no_grad():  # stage 1's trained head, as stages.stage2 loads it
        loss.carried.head[0].weight.copy_(torch.randn(3, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64))
        loss.carried.head[0].bias.copy_(torch.randn(3, generator=torch.Generator().manual_seed(5), dtype=torch.float64))
    w, b = _linear(loss.carried.head[0])
    ha, hp, hn = (np.tanh(np_(o["embedding"]) @ w.T + b) for o in outs)
    nce = ref_ce(np.concatenate([ref_cos_matrix(ha, hp), ref_cos_matrix(ha, hn)], axis=1) / 0.05, range(6))
    got = loss(*outs)
    assert got["infonce"].item() == pytest.approx(nce, rel=1e-10)
    if name == "ibkd_supervised":  # S of the HSIC term is the served (head) vector
        x = np.concatenate([ref_masked_mean(np_(o["hidden_states"][-2]), o["attention_mask"].numpy()) for o in outs])
        hs = ref_hsic(x, np.concatenate([ha, hp, hn]), 0.1)
        assert got["loss"].item() == pytest.approx(nce + hs, rel=1e-10)
    got["loss"].backward()
    assert loss.carried.head[0].weight.grad.abs().sum() > 0  # the head trains on in stage 2
    assert loss.embedding_head() is loss.carried.head and loss.get_config_dict()["stage1_head"] == hpd
    state = loss.state_dict()
    assert {"carried.head.0.weight", "carried.head.0.bias"} <= set(state)
    again = load_loss({"name": name, **params, "stage1_head": hpd}, 5, state)
    assert torch.equal(again.embedding_head()[0].weight, state["carried.head.0.weight"].float())
    with pytest.raises(DistillError, match="stage1_head: loss 'mse' has no head that is part of the embedding"):
        build_loss({"name": name, "stage1_head": {"name": "mse"}}, 5, None)


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
