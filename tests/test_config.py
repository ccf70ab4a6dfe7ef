from pathlib import Path

import pytest

from distill.cli import main
from distill.config import load_recipe, loss_defaults
from distill.errors import DistillError

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_recipe_validates(path):
    recipe = load_recipe(path)
    assert set(recipe.loss) == {"name", *loss_defaults(recipe.loss["name"])}


def _write(tmp_path, text):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


BASE = "teacher: all-minilm-l6-v2\nstudent: all-minilm-l3-v2\nloss: {name: ibkd}\n"


def test_defaults_and_overrides(tmp_path):
    r = load_recipe(_write(tmp_path, BASE), ["loss.lam=0.5", "train.lr=3e-5", "eval.tasks=[STS-B-dev, STS12]", "loss.bandwidth=median"])
    assert r.loss == {**loss_defaults("ibkd"), "name": "ibkd", "lam": 0.5, "bandwidth": "median"}
    assert r.train.lr == 3e-5 and isinstance(r.train.lr, float)
    assert r.eval.tasks == ["STS-B-dev", "STS12"]
    assert r.train.batch_size == 256


@pytest.mark.parametrize(
    "text, overrides, message",
    [
        (BASE + "train: {lrr: 1}\n", [], r"r\.yaml: unknown key train\.lrr"),
        (BASE, ["train.lrr=1"], r"unknown key train\.lrr"),
        (BASE, ["trian.lr=1"], r"--set trian\.lr: unknown key 'trian'"),
        (BASE, ["loss.lamb=1"], r"unknown key loss\.lamb for loss 'ibkd'"),
        (BASE, ["train.lr=fast"], r"train\.lr: expected float, got 'fast'"),
        (BASE, ["loss.name=l2"], r"loss\.name 'l2' is not one of"),
        (BASE + "extra: 1\n", [], r"unknown key extra"),
        (BASE.replace("all-minilm-l6-v2", "no-such-teacher"), [], r"teacher 'no-such-teacher' is neither a preset"),
        ("student: all-minilm-l3-v2\nloss: {name: mse}\n", [], r"missing key teacher"),
        (BASE, ["loss.lam"], r"expected key=value"),
    ],
)
def test_bad_recipes_name_the_key(tmp_path, text, overrides, message):
    with pytest.raises(DistillError, match=message):
        load_recipe(_write(tmp_path, text), overrides)


def test_config_cli_reports_unknown_key_without_traceback(tmp_path, capsys):
    assert main(["config", str(_write(tmp_path, BASE)), "--set", "train.epoch=3"]) == 2
    err = capsys.readouterr().err
    assert "unknown key train.epoch" in err and "Traceback" not in err
    assert main(["config", str(_write(tmp_path, BASE)), "--set", "train.epochs=3"]) == 0
    assert "epochs: 3.0" in capsys.readouterr().out
