"""A loss is one file plus one line in distill.losses.LOSSES: recipes, recipe checks, `distill
compare`, the trainer's choice of targets and `distill export` ask the loss class, never its name."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distill.config import load_recipe, saved_recipe_with_defaults
from distill.errors import DistillError
from distill.losses import LOSSES, DistillLoss, build_loss, comparable_losses, load_loss, loss_class
from distill.losses.base import POSITIVE

REPO = Path(__file__).resolve().parent.parent
BASE = "teacher: all-minilm-l6-v2\nstudent: all-minilm-l3-v2\n"


def _write(tmp_path, loss: str, extra: str = "") -> Path:
    p = tmp_path / "r.yaml"
    p.write_text(BASE + f"loss: {loss}\n" + extra)
    return p


# ------------------------------------------------------------------------------------ (a) defaults


def test_defaults_are_the_constructor_keywords():
    """...plus matryoshka_dims / matryoshka_weights / matryoshka_head for a class that compares student vectors."""
    from distill.losses.base import MATRYOSHKA_DEFAULTS

    for name, cls in LOSSES.items():
        params = list(inspect.signature(cls.__init__).parameters.values())[3:]  # self, student_dim, teacher_dim
        extra = MATRYOSHKA_DEFAULTS if cls.matryoshka else {}
        assert cls.defaults() == {**{p.name: p.default for p in params if p.name not in cls.internal}, **extra}, name


@pytest.mark.parametrize("name", ["mse", "cosine"])
def test_a_recipe_can_set_the_projection(tmp_path, name):
    r = load_recipe(_write(tmp_path, f"{{name: {name}}}"))
    assert r.loss["projection"] is None  # default: a projection only when the widths differ
    r = load_recipe(_write(tmp_path, f"{{name: {name}, projection: true}}"))
    assert r.loss["projection"] is True
    loss = build_loss(r.loss, 8, 8)
    assert isinstance(loss.projection, nn.Linear)  # equal widths, projection asked for
    assert loss.export_head()[0] == "projection"
    assert build_loss({**r.loss, "projection": None}, 8, 8).export_head() is None
    with pytest.raises(DistillError, match=r"loss.projection: must be unset, true or false, got 'maybe'"):
        load_recipe(_write(tmp_path, f"{{name: {name}, projection: maybe}}"))


def test_saved_recipe_gets_the_new_defaults():
    out = saved_recipe_with_defaults({"loss": {"name": "mse", "standardize": "zscore"}, "stage2": {"loss": {"lam": 0.5}}})
    # a run saved before Matryoshka prefixes existed resumes as the plain objective it was
    assert out["loss"] == {"name": "mse", "standardize": "zscore", "projection": None, "matryoshka_dims": None, "matryoshka_weights": None, "matryoshka_head": "none", "matryoshka_detach": False, "teacher_space": False}
    assert out["stage2"]["loss"] == {"name": "ibkd_supervised", **loss_class("ibkd_supervised").defaults(), "lam": 0.5}


def test_compare_reuses_a_folder_written_before_a_parameter_existed(tmp_path):
    import yaml

    from distill.compare import _check_same_recipe, plan_runs

    recipe = load_recipe(_write(tmp_path, "{name: ibkd}"))
    (run,) = plan_runs(recipe, ["mse"], tmp_path / "cmp")
    saved = run.recipe.to_dict()
    del saved["loss"]["projection"]  # written before MSE's projection was a recipe parameter
    run.dir.mkdir(parents=True)
    (run.dir / "recipe.yaml").write_text(yaml.safe_dump(saved))
    _check_same_recipe(run)  # same recipe: no error
    saved["loss"]["standardize"] = "zscore"
    (run.dir / "recipe.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(DistillError, match=r"holds a run of another recipe \(loss differ\)"):
        _check_same_recipe(run)


def test_targets_and_heads_come_from_the_class():
    assert loss_class("hpd").targets({"k": 16, "init": "random"}) == ("pca", 16)
    assert all(loss_class(n).targets(loss_class(n).defaults()) == "teacher" for n in comparable_losses() if n != "hpd")
    with pytest.raises(DistillError, match=r"unknown loss 'nope' \(known: mse, cosine, crd, hpd, infonce, ibkd, ibkd_supervised, mnrl\)"):
        loss_class("nope")
    assert comparable_losses() == ("mse", "cosine", "crd", "hpd", "infonce", "ibkd")
    # a saved loss comes back with its heads, whatever the (unsaved) teacher width
    for name, params, teacher_dim in [("crd", {}, 12), ("ibkd", {}, 12), ("mse", {}, 12), ("cosine", {}, 8), ("hpd", {"k": 4}, 4)]:
        trained = build_loss({"name": name, **params}, 8, teacher_dim)
        state = {k: v.detach().clone() for k, v in trained.state_dict().items()}
        again = load_loss({"name": name, **params}, 8, state)
        assert again.state_dict().keys() == state.keys()
        assert all(torch.equal(again.state_dict()[k], v) for k, v in state.items())


# ------------------------------------------------------------------------------------ (b) a new loss


class ToyLoss(DistillLoss):
    """L = alpha * mean_i [1 - cos(s_i, t_i)] (a test loss)."""

    name = "toy"
    contrastive = True
    rules = {"alpha": POSITIVE}
    internal = {"trace": "a debugging switch, not an experiment parameter"}

    def __init__(self, student_dim: int, teacher_dim: int, *, alpha: float = 0.5, trace: bool = False):
        super().__init__()
        self.alpha, self.trace = float(alpha), trace
        self.head = nn.Linear(student_dim, teacher_dim)

    def export_head(self):
        return ("head", self.head, "the toy head")

    def forward(self, student_out: dict, teacher: torch.Tensor) -> dict:
        pred = self.head(student_out["embedding"])
        loss = self.alpha * (1 - F.cosine_similarity(pred, self._teacher(teacher, pred), dim=-1)).mean()
        return {"loss": loss}


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(LOSSES, "toy", ToyLoss)
    return ToyLoss


def test_a_registered_loss_is_known_everywhere(tmp_path, toy, capsys):
    from distill.cli import main
    from distill.compare import default_losses, loss_specs, parse_loss_overrides, parse_losses

    # recipes
    assert toy.defaults() == {"alpha": 0.5}  # `trace` is internal
    r = load_recipe(_write(tmp_path, "{name: toy, alpha: 2}"))
    assert r.loss == {"name": "toy", "alpha": 2.0}
    assert load_recipe(_write(tmp_path, "{name: mse}"), ["loss={name: toy}"]).loss == {"name": "toy", "alpha": 0.5}
    for bad, message in [
        ("{name: toy, beta: 1}", r"unknown key loss.beta for loss 'toy' \(it takes: alpha\)"),
        ("{name: toy, trace: true}", r"unknown key loss.trace for loss 'toy' \(it takes: alpha\)"),
        ("{name: toy, alpha: -1}", r"loss.alpha: must be a number > 0, got -1.0"),
        ("{name: toy, alpha: big}", r"loss.alpha: expected a value like 0.5"),
    ]:
        with pytest.raises(DistillError, match=message):
            load_recipe(_write(tmp_path, bad))
    with pytest.raises(DistillError, match="loss toy is contrastive"):
        load_recipe(_write(tmp_path, "{name: toy}", "train: {batch_size: 1}\n"))
    with pytest.raises(DistillError, match=r"loss.name 'toyy' is not one of mse, .*, toy"):
        load_recipe(_write(tmp_path, "{name: toyy}"))
    # compare
    assert default_losses()[-1] == "toy" and parse_losses("mse,toy") == ["mse", "toy"]
    assert parse_loss_overrides(["toy.alpha=3"]) == {"toy": {"alpha": 3}}
    assert loss_specs(r, ["toy", "mse"])["toy"] == {"name": "toy", "alpha": 2.0}
    recipe = _write(tmp_path, "{name: mse}")
    assert main(["compare", str(recipe), "--losses", "toy", "--loss-set", "toy.beta=1", "--out", str(tmp_path / "x")]) == 2
    assert "unknown key loss.beta for loss 'toy'" in capsys.readouterr().err  # the name passed, the key did not
    # training and export
    loss = build_loss(r.loss, 4, 6)
    assert isinstance(loss, ToyLoss) and loss.alpha == 2.0 and loss_class("toy").targets(r.loss) == "teacher"
    out = loss({"embedding": torch.randn(3, 4)}, torch.randn(3, 6))
    out["loss"].backward()
    again = load_loss(r.loss, 4, loss.state_dict())
    assert torch.equal(again.head.weight, loss.head.weight) and again.export_head()[0] == "head"


# ------------------------------------------------------------------------------------ (c) no names


NAMELESS = ["distill/training/loop.py", "distill/training/run.py", "distill/report.py", "distill/training/stages.py", "distill/training/evaluators.py", "distill/export.py", "distill/compare.py", "distill/commands/compare.py",
            "distill/recipe_checks.py"]
NAMES = ["hpd", "ibkd", "mse", "crd", "infonce", "cosine"]


def _code_strings(path: Path) -> list[tuple[int, str]]:
    """(line, value) of the string literals of a module's code, docstrings left out."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]


@pytest.mark.parametrize("rel", NAMELESS)
def test_no_loss_is_named_outside_the_losses(rel):
    path = REPO / rel
    code_lines = [line.split("#", 1)[0] for line in path.read_text(encoding="utf-8").splitlines()]
    for name in NAMES:
        quoted = [f'"{name}"', f"'{name}'"]
        # grep: the quoted name on a line of code (comments stripped) outside a docstring ...
        hits = [(i, v) for i, v in _code_strings(path) if name in v.split(",") and all(p in NAMES for p in v.split(","))]
        assert not hits, f"{rel}: loss name {name!r} in code at lines {[i for i, _ in hits]}"
        # ... and no comparison or lookup by the quoted name at all
        for i, line in enumerate(code_lines, 1):
            for q in quoted:
                assert f"== {q}" not in line and f"!= {q}" not in line and f"[{q}]" not in line, f"{rel}:{i}: {line.strip()}"
