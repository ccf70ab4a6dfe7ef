"""Matryoshka prefixes (loss.matryoshka_dims): each of the five objectives that compare student
vectors against an independent float64 reference summed over the prefixes, the recipe's checks,
and the objects the toolkit keeps of a loss (state_dict, load_loss, the export head)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from loss_refs import (  # noqa: F401 (module fixtures: the MiniLM tokenizer)
    fake_hidden,
    np_,
    ref_ce,
    ref_cos_matrix,
    ref_hsic,
    ref_masked_mean,
)

from distill.config import load_recipe
from distill.errors import DistillError
from distill.losses import LOSSES, MatryoshkaLoss, build_loss, load_loss

# Tiny matrices: one torch thread for the whole module (conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")

DIMS, WEIGHTS = [6, 4, 2], [1.0, 0.5, 2.0]
N, D_T = 5, 7


def _inputs(seed=40, layers=3):
    g = torch.Generator().manual_seed(seed)
    s = (torch.randn(N, 6, generator=g, dtype=torch.float64) * 3).requires_grad_()
    t = torch.randn(N, D_T, generator=g, dtype=torch.float64)
    hidden, mask = fake_hidden(N, 7, 6, layers, seed + 1)
    return {"embedding": s, "hidden_states": hidden, "attention_mask": mask}, t


def _linear(layer):
    return np_(layer.weight), np_(layer.bias)


# Independent references of one prefix: x = s[:, :k] (numpy float64), the prefix's own loss module
# for its (random) head weights, t the teacher batch.


def ref_mse(x, loss, t):
    w, b = _linear(loss.projection)
    p = x @ w.T + b
    scale = np.mean([np.linalg.norm(r) for r in p]) / np.mean([np.linalg.norm(r) for r in t])  # student_norm: first batch
    return float(np.mean([(p[i, j] - scale * t[i, j]) ** 2 for i in range(len(p)) for j in range(p.shape[1])]))


def ref_cosine(x, loss, t):
    w, b = _linear(loss.projection)
    p = x @ w.T + b
    return float(np.mean([1 - p[i] @ t[i] / (np.linalg.norm(p[i]) * np.linalg.norm(t[i])) for i in range(len(p))]))


def ref_crd(x, loss, t):
    ws, bs = _linear(loss.student_head)
    wt, bt = _linear(loss.teacher_head)
    zs, zt = x @ ws.T + bs, t @ wt.T + bt
    return 0.5 * (ref_ce(ref_cos_matrix(zs, zt) / loss.tau, range(len(x))) + ref_ce(ref_cos_matrix(zt, zs) / loss.tau, range(len(x))))


def ref_infonce(x, loss, t):
    w, b = _linear(loss.decoder)
    return ref_ce(ref_cos_matrix(x @ w.T + b, t) / loss.tau, range(len(x)))


def ref_ibkd(x, loss, t, out):
    xin = ref_masked_mean(np_(out["hidden_states"][0]), out["attention_mask"].numpy())
    return ref_infonce(x, loss, t) + loss.lam * ref_hsic(xin, x, 0.5)  # HSIC(X, s[:k]) per prefix, gamma fixed


REFS = {"mse": ref_mse, "cosine": ref_cosine, "crd": ref_crd, "infonce": ref_infonce, "ibkd": ref_ibkd}
PARAMS = {"crd": {"proj_dim": 3, "tau": 0.1}, "infonce": {"tau": 0.07}, "ibkd": {"tau": 0.07, "lam": 0.3, "gamma": 0.5}}


@pytest.mark.parametrize("name", list(REFS))
def test_each_objective_is_the_weighted_sum_of_its_prefixes(name):
    out, t = _inputs()
    loss = build_loss({"name": name, **PARAMS.get(name, {}), "matryoshka_dims": DIMS, "matryoshka_weights": WEIGHTS}, 6, D_T).double()
    assert isinstance(loss, MatryoshkaLoss) and loss.name == name and [p.student_dim for p in loss.prefixes] == DIMS
    got = loss(out, t)
    s = np_(out["embedding"])
    per = []
    for k, prefix in zip(DIMS, loss.prefixes):  # each prefix's heads take k inputs: its own, not a slice of one head
        x = s[:, :k].copy()
        per.append(REFS[name](x, prefix, t.numpy(), out) if name == "ibkd" else REFS[name](x, prefix, t.numpy()))
    expected = sum(w * v for w, v in zip(WEIGHTS, per))
    assert got["loss"].item() == pytest.approx(expected, rel=1e-10)
    for k, v in zip(DIMS, per):
        assert got[f"loss@{k}"].item() == pytest.approx(v, rel=1e-10)
    for key, value in got.items():
        assert key == "loss" or not value.requires_grad, key
    got["loss"].backward()  # every prefix's head is trained, and the student through every prefix
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in loss.parameters())
    assert out["embedding"].grad[:, DIMS[-1]:].abs().sum() > 0


def test_parts_of_the_full_width_keep_their_names_and_the_others_say_their_width():
    out, t = _inputs()
    got = build_loss({"name": "ibkd", "lam": 0.3, "matryoshka_dims": DIMS}, 6, D_T).double()(out, t)
    assert {"infonce", "hsic", "ib_share", "infonce@4", "hsic@2", "loss@6", "loss@2"} <= set(got)
    assert "infonce@6" not in got  # the full width's own parts keep the plain names (logs, IBKD's run summary)
    plain = build_loss({"name": "mse", "matryoshka_dims": [6]}, 6, D_T).double()
    reference = build_loss({"name": "mse"}, 6, D_T).double()
    reference.load_state_dict({k.removeprefix("prefixes.0."): v for k, v in plain.state_dict().items()})
    assert plain(out, t)["loss"].item() == pytest.approx(reference(out, t)["loss"].item(), rel=1e-12)  # one prefix = the loss


def test_heads_are_saved_loaded_and_the_full_width_one_is_exported():
    for name in REFS:
        trained = build_loss({"name": name, "matryoshka_dims": [8, 4]}, 8, 12)
        state = {k: v.detach().clone() for k, v in trained.state_dict().items()}
        assert {k.split(".")[1] for k in state} == {"0", "1"}
        again = load_loss({"name": name, "matryoshka_dims": [8, 4], "matryoshka_weights": None}, 8, state)
        assert isinstance(again, MatryoshkaLoss) and again.dims == [8, 4]
        assert all(torch.equal(again.state_dict()[k], v) for k, v in state.items())
        prefix, module, what = again.export_head()
        assert prefix.startswith("prefixes.0.") and module.in_features == 8 and "full 8-d" in what
        assert again.get_config_dict()["matryoshka_dims"] == [8, 4]


def test_the_recipe_checks_prefixes_and_refuses_hpd(tmp_path):
    path = tmp_path / "r.yaml"

    def recipe(loss, extra=""):
        path.write_text(f"teacher: all-minilm-l6-v2\nstudent: all-minilm-l3-v2\nloss: {loss}\n{extra}")
        return load_recipe(path)

    r = recipe("{name: infonce, matryoshka_dims: [384, 256, 128, 64]}", "eval: {dims: [384, 128]}\n")
    assert r.loss["matryoshka_dims"] == [384, 256, 128, 64] and r.loss["matryoshka_weights"] is None and r.eval.dims == [384, 128]
    assert recipe("{name: mse}").loss["matryoshka_dims"] is None  # default: the plain objective
    for loss, message in [
        ("{name: hpd, matryoshka_dims: [128, 64]}", r"loss.matryoshka_dims: loss hpd cannot be trained on prefixes .* its head is the product"),
        ("{name: ibkd, matryoshka_dims: [384, 128, 256]}", r"loss.matryoshka_dims: must be unset, or a list of widths in descending order"),
        ("{name: ibkd, matryoshka_dims: [384, 128, 128]}", r"descending order, no repeats"),
        ("{name: mse, matryoshka_dims: [256, 128]}", r"the first width must be the student's own, 384"),
        ("{name: mse, matryoshka_dims: [512, 384]}", r"the first width must be the student's own, 384"),
        ("{name: crd, matryoshka_dims: [384, 64], matryoshka_weights: [1]}", r"1 weights for 2 matryoshka_dims"),
        ("{name: crd, matryoshka_weights: [1, 2]}", r"matryoshka_weights: given without loss.matryoshka_dims"),
        ("{name: cosine, matryoshka_dims: [384, 64], matryoshka_weights: [1, -1]}", r"one number >= 0 per matryoshka_dims entry"),
        ("{name: infonce, matryoshka_head: pca}", r"loss.matryoshka_head: 'pca' given without loss.matryoshka_dims"),
        ("{name: infonce, matryoshka_dims: [384, 64], matryoshka_head: svd}", r"loss.matryoshka_head: must be none .* or pca"),
    ]:
        with pytest.raises(DistillError, match=message):
            recipe(loss)
    with pytest.raises(DistillError, match=r"eval.dims: must be a list of widths in descending order"):
        recipe("{name: mse}", "eval: {dims: [128, 384]}\n")
    with pytest.raises(DistillError, match=r"loss .*: a 16-d student cannot be compared with a 24-d teacher without a projection"):
        build_loss({"name": "mse", "projection": False, "matryoshka_dims": [24, 16]}, 24, 24)
    assert all(not cls.matryoshka for name, cls in LOSSES.items() if name not in REFS)


# ------------------------------------------------------------------------ matryoshka_head: pca


def test_the_pca_head_starts_as_the_pca_of_every_width_and_the_prefixes_are_of_its_output():
    g = torch.Generator().manual_seed(7)
    sample = torch.randn(40, 6, generator=g, dtype=torch.float64) * torch.tensor([0.5, 3.0, 1.0, 0.1, 2.0, 0.7], dtype=torch.float64) + 4.0
    loss = build_loss({"name": "infonce", "tau": 0.07, "matryoshka_dims": DIMS, "matryoshka_weights": WEIGHTS,
                       "matryoshka_head": "pca"}, 6, D_T).double()
    assert loss.needs_prepare and isinstance(loss.embedding_head(), torch.nn.Linear)
    loss.prepare(sample, torch.randn(40, D_T, dtype=torch.float64))
    # independent: the eigen-decomposition of the sample covariance, largest variance first
    x = np_(sample)
    centered = x - x.mean(0)
    values, vectors = np.linalg.eigh(centered.T @ centered / len(x))
    values, vectors = values[::-1], vectors[:, ::-1]
    y = np_(loss.embedding_head()(sample).detach())
    np.testing.assert_allclose(y.mean(0), 0, atol=1e-10)  # the head centers ...
    np.testing.assert_allclose(y.T @ y / len(y), np.diag(values), atol=1e-9)  # ... and decorrelates, variance descending
    np.testing.assert_allclose(np.abs(y), np.abs(centered @ vectors), atol=1e-9)  # each axis is a principal axis (up to sign)
    # the loss is the weighted sum over prefixes of the head's output (not of the student vector)
    out, t = _inputs()
    got = loss(out, t)
    w, b = _linear(loss.rotation)
    z = np_(out["embedding"]) @ w.T + b
    expected = sum(wj * ref_infonce(z[:, :k].copy(), p, t.numpy()) for k, wj, p in zip(DIMS, WEIGHTS, loss.prefixes))
    assert got["loss"].item() == pytest.approx(expected, rel=1e-10)
    got["loss"].backward()
    assert loss.rotation.weight.grad.abs().sum() > 0  # trained with the student
    # fewer vectors than dimensions: the axes are still an orthonormal basis
    few = build_loss({"name": "cosine", "matryoshka_dims": [6, 2], "matryoshka_head": "pca"}, 6, D_T).double()
    few.prepare(sample[:3], torch.randn(3, D_T, dtype=torch.float64))
    r = np_(few.rotation.weight)
    np.testing.assert_allclose(r @ r.T, np.eye(6), atol=1e-10)
    # saved and loaded with the prefixes' heads; the config says which head
    state = {k: v.detach().clone() for k, v in loss.state_dict().items()}
    assert {"rotation.weight", "rotation.bias"} <= set(state)
    again = load_loss({"name": "infonce", "tau": 0.07, "matryoshka_dims": DIMS, "matryoshka_head": "pca"}, 6, state)
    assert torch.equal(again.rotation.weight, state["rotation.weight"].float()) and again.get_config_dict()["matryoshka_head"] == "pca"
    assert build_loss({"name": "infonce", "matryoshka_dims": DIMS}, 6, D_T).embedding_head() is None  # default: no head


def test_stage_two_refuses_a_matryoshka_head_and_carries_hpds(tmp_path):
    """A Matryoshka head is part of stage 1's embedding and stage 2 does not carry it: refused when
    the recipe is read. HPD's head is carried (stages.stage2; tests/test_retrieval_training.py)."""
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"query": "q", "positive_passages": [{"text": "p"}], "negative_passages": []}\n')
    path = tmp_path / "r.yaml"
    head = "{name: infonce, matryoshka_dims: [384, 64], matryoshka_head: pca}"
    path.write_text(f"teacher: all-minilm-l6-v2\nstudent: all-minilm-l3-v2\nloss: {head}\nstage2: {{rows: [{rows}]}}\n")
    with pytest.raises(DistillError, match="stage2.rows with loss infonce: the Matryoshka head .* does not carry a Matryoshka head"):
        load_recipe(path)
    path.write_text(f"teacher: all-minilm-l6-v2\nstudent: all-minilm-l3-v2\nloss: {{name: hpd, k: 128}}\nstage2: {{rows: [{rows}]}}\n")
    assert load_recipe(path).stage2.rows == [str(rows)]


def test_detach_trains_the_student_from_the_full_width_only_and_the_head_from_every_prefix():
    sample = torch.randn(30, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    spec = {"name": "cosine", "matryoshka_dims": DIMS, "matryoshka_weights": WEIGHTS, "matryoshka_head": "pca"}
    joint = build_loss(spec, 6, D_T).double()
    joint.prepare(sample, torch.randn(30, D_T, dtype=torch.float64))
    detached = build_loss({**spec, "matryoshka_detach": True}, 6, D_T).double()
    detached.load_state_dict(joint.state_dict())
    out, t = _inputs()
    got = detached(out, t)
    assert got["loss"].item() == pytest.approx(joint(out, t)["loss"].item(), rel=1e-12)  # the same value ...
    got["loss"].backward()
    # ... but the student's gradient is the full width's term alone (w_1 L_1(R s + b)), computed apart
    s = out["embedding"].detach().clone().requires_grad_()
    (WEIGHTS[0] * detached.prefixes[0]({**out, "embedding": detached.rotation(s)}, t)["loss"]).backward()
    np.testing.assert_allclose(np_(out["embedding"].grad), np_(s.grad), rtol=1e-10, atol=1e-14)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in detached.prefixes[-1].parameters())  # the small prefixes train their heads
    assert detached.get_config_dict()["matryoshka_detach"] is True
    with pytest.raises(DistillError, match="matryoshka_detach: true needs .*matryoshka_head: pca"):
        build_loss({"name": "cosine", "matryoshka_dims": DIMS, "matryoshka_detach": True}, 6, D_T)
