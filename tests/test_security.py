"""What a shared model folder, recipe or preset can make distill do: never run code it carries.

The security checks of issue 38's probe that held, kept under test: a model folder whose auto_map
names its own code, YAML `!!python` tags in a recipe, a preset or a --set value, and a preset name
that is a path. (A pytorch_model.bin whose unpickling runs a command: test_model_files.py; a
planted checkpoint.pt: test_checkpoint.py.) Each plants a payload that makes a marker file, so the
test sees whether it ran.
"""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import tiny_recipe_text

from distill.cli import main
from distill.config import load_recipe
from distill.errors import DistillError

CUSTOM_CODE = """import pathlib
pathlib.Path({marker!r}).touch()
from transformers import BertConfig, BertModel
class EvilConfig(BertConfig):
    model_type = "evil-bert"
class EvilModel(BertModel):
    config_class = EvilConfig
"""


def _with_auto_map(tiny_bert_dir, folder, model_type, marker):
    """The tiny BERT with modeling_evil.py (it makes `marker` when imported) named by config.json's
    and tokenizer_config.json's auto_map, under `model_type`."""
    shutil.copytree(tiny_bert_dir, folder)
    (folder / "modeling_evil.py").write_text(CUSTOM_CODE.format(marker=str(marker)))
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type=model_type, auto_map={"AutoConfig": "modeling_evil.EvilConfig", "AutoModel": "modeling_evil.EvilModel"})
    (folder / "config.json").write_text(json.dumps(config))
    tok = json.loads((folder / "tokenizer_config.json").read_text())
    tok["auto_map"] = {"AutoTokenizer": ["modeling_evil.EvilTokenizer", None]}
    (folder / "tokenizer_config.json").write_text(json.dumps(tok))
    return folder


def test_a_models_own_code_never_runs(tmp_path, tiny_bert_dir, capsys):
    """A known architecture with an auto_map loads as that architecture, its code unread; an
    unknown one is refused at once, in one line naming config.json, without transformers' prompt
    ("Do you wish to run the custom code? [y/N]", which waits on a terminal)."""
    marker = tmp_path / "custom-code-ran"
    src = tmp_path / "in.txt"
    src.write_text("A man is playing a guitar.\n")
    known = _with_auto_map(tiny_bert_dir, tmp_path / "known", "bert", marker)
    assert main(["encode", "--model", str(known), "--input", str(src), "--out", str(tmp_path / "known.npy"), "--device", "cpu", "--quiet"]) == 0
    unknown = _with_auto_map(tiny_bert_dir, tmp_path / "unknown", "evil-bert", marker)
    code = main(["encode", "--model", str(unknown), "--input", str(src), "--out", str(tmp_path / "unknown.npy"), "--device", "cpu", "--quiet"])
    captured = capsys.readouterr()
    assert code == 2 and "run the custom code" not in captured.out + captured.err, captured
    assert f"distill: error: {unknown / 'config.json'}: its auto_map names the model's own code, which distill never runs" in captured.err
    assert not marker.exists() and not (tmp_path / "unknown.npy").exists()


PYTHON_TAG = '!!python/object/apply:os.system ["touch {marker}"]'


def test_yaml_python_tags_are_never_constructed(tmp_path, tiny_home, monkeypatch, capsys):
    """In a recipe, a preset, and a --set value: refused (or read as a plain string), never run."""
    marker = tmp_path / "yaml-payload-ran"
    tag = PYTHON_TAG.format(marker=marker)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(tiny_recipe_text(tmp_path).replace("teacher: tiny-teacher", f"teacher: {tag}"))
    assert main(["config", str(recipe)]) == 2
    assert f"{recipe}: not valid YAML" in capsys.readouterr().err
    home = tmp_path / "home"
    shutil.copytree(tiny_home, home)
    (home / "teachers" / "tagged.yaml").write_text(f"name: tagged\nhub_id: {tag}\noffline_source: null\npooling: mean\n"
                                                   "normalize: true\ndim: 32\nmax_length: 32\n")
    monkeypatch.setenv("DISTILL_HOME", str(home))
    recipe.write_text(tiny_recipe_text(tmp_path).replace("teacher: tiny-teacher", "teacher: tagged"))
    with pytest.raises(DistillError, match=r"tagged\.yaml: not valid YAML"):
        load_recipe(recipe)
    recipe.write_text(tiny_recipe_text(tmp_path))
    assert main(["config", str(recipe), "--set", f"train.lr={tag}"]) == 2  # not YAML it reads: the text, which is no float
    assert "train.lr: expected float" in capsys.readouterr().err
    assert not marker.exists()


def test_a_preset_name_is_never_a_path(tmp_path, tiny_home, monkeypatch, capsys):
    """`--teacher ../elsewhere/x` read elsewhere/x.yaml as a teacher preset; a recipe's teacher or
    student that is neither a preset nor a folder is refused."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "x.yaml").write_text((tiny_home / "teachers" / "tiny-teacher.yaml").read_text().replace("tiny-teacher", "x"))
    monkeypatch.setenv("DISTILL_HOME", str(tiny_home))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("one sentence\n")
    for name in ("../" * 12 + str(elsewhere / "x").lstrip("/"), f"../{elsewhere.name}/x", ".hidden"):
        assert main(["cache", "--teacher", name, "--corpus", str(corpus), "--out", str(tmp_path / "cache")]) == 2
        assert f"teacher {name!r}: not a preset (teachers: tiny-teacher), not a model folder, not a hub id" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()
    for key in ("teacher", "student"):
        recipe = tmp_path / "recipe.yaml"
        recipe.write_text(tiny_recipe_text(tmp_path).replace(f"{key}: tiny-{key}", f"{key}: ../elsewhere/x"))
        with pytest.raises(DistillError, match=rf"{key}: {key} '\.\./elsewhere/x': not a preset"):
            load_recipe(recipe)
