"""distill/training/run_folder.py: `train` writes only into a new or empty folder or a run folder it made."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import StopAt, file_tree, recipe_at

from distill.cli import main
from distill.errors import DistillError
from distill.lock import LOCK_NAME
from distill.training.run_folder import RUN_MARKER, check_run_folder, is_run_folder


def _users_folder(path):
    """What a user keeps in a folder of their own, with the names a run writes."""
    (path / "best").mkdir(parents=True)
    (path / "best" / "model.safetensors").write_bytes(b"the user's model")
    (path / "final").mkdir()
    (path / "final" / "notes.txt").write_text("the user's notes")
    (path / "recipe.yaml").write_text("# the user's recipe\n")
    (path / "results.json").write_text('{"the": "user\'s results"}\n')
    return path


def test_train_into_a_users_folder_is_refused_and_touches_nothing(tmp_path, tiny_home, monkeypatch, capsys):
    """issue 38: `--set output.dir=EXISTING_FOLDER` deleted best/ and final/, overwrote recipe.yaml
    (before any check) and results.json, and exited 0."""
    monkeypatch.setenv("DISTILL_HOME", str(tiny_home))
    recipe_at(tmp_path, steps=2, every=2)
    mine = _users_folder(tmp_path / "mine")
    before = file_tree(mine)
    assert main(["train", str(tmp_path / "recipe.yaml"), "--quiet", "--set", f"output.dir={mine}"]) == 2
    err = capsys.readouterr().err
    assert f"output.dir {mine}: a folder distill did not make (no {RUN_MARKER}; it holds best, final, recipe.yaml, results.json)" in err
    assert "nothing in it was changed" in err and "Traceback" not in err
    assert file_tree(mine) == before and sorted(p.name for p in mine.iterdir()) == ["best", "final", "recipe.yaml", "results.json"]
    # --resume of it too (a checkpoint.pt without recipe.yaml is no run of distill's)
    (mine / "recipe.yaml").unlink()
    (mine / "checkpoint.pt").write_bytes(b"not ours")
    before = file_tree(mine)
    assert main(["train", str(tmp_path / "recipe.yaml"), "--resume", "--quiet", "--set", f"output.dir={mine}"]) == 2
    assert f"output.dir {mine}: a folder distill did not make" in capsys.readouterr().err
    assert file_tree(mine) == before and not (mine / LOCK_NAME).exists()


@pytest.mark.parametrize("where", ["cwd", "home"])
def test_train_into_the_current_or_home_folder_is_refused(tmp_path, tiny_home, monkeypatch, capsys, where):
    """Even empty: a run's files do not belong loose in the working or home folder."""
    monkeypatch.setenv("DISTILL_HOME", str(tiny_home))
    recipe_at(tmp_path, steps=2, every=2)
    folder = tmp_path / where
    folder.mkdir()
    if where == "cwd":
        monkeypatch.chdir(folder)
        out = "."
    else:
        monkeypatch.setenv("HOME", str(folder))
        out = str(folder)
    assert main(["train", str(tmp_path / "recipe.yaml"), "--quiet", "--set", f"output.dir={out}"]) == 2
    err = capsys.readouterr().err
    assert f"it is {'the current folder' if where == 'cwd' else 'your home folder'} ({folder.resolve()})" in err
    assert list(folder.iterdir()) == []


def test_the_root_folder_and_a_file_are_refused(tmp_path):
    with pytest.raises(DistillError, match=r"output.dir /: it is the root folder"):
        check_run_folder(Path("/"), resume=False)
    afile = tmp_path / "run"
    afile.write_text("a file")
    with pytest.raises(DistillError, match=r"an existing file, not a folder"):
        check_run_folder(afile, resume=False)


def test_a_new_empty_or_own_folder_is_accepted(tmp_path, trained_run):
    check_run_folder(tmp_path / "new" / "run", resume=False)
    (tmp_path / "empty").mkdir()
    check_run_folder(tmp_path / "empty", resume=False)
    (tmp_path / "empty" / LOCK_NAME).write_text("{}")  # a killed run's lock note alone: still empty
    check_run_folder(tmp_path / "empty", resume=False)
    assert is_run_folder(trained_run) and json.loads((trained_run / RUN_MARKER).read_text())["tool"] == "distill"
    check_run_folder(trained_run, resume=True)
    copy = tmp_path / "copy"  # a copied run (the retrieval benchmark's stage-1 copies) carries its marker
    shutil.copytree(trained_run, copy)
    check_run_folder(copy, resume=True)
    (copy / RUN_MARKER).unlink()  # a run of an older distill: checkpoint.pt and recipe.yaml, resumable
    check_run_folder(copy, resume=True)
    with pytest.raises(DistillError, match="a folder distill did not make"):
        check_run_folder(copy, resume=False)  # but not trained into afresh
    (copy / RUN_MARKER).write_text("{not json")
    with pytest.raises(DistillError, match="a folder distill did not make"):
        check_run_folder(copy, resume=False)


def test_a_run_killed_before_its_first_checkpoint_trains_again_in_its_folder(tmp_path, tiny_home, monkeypatch):
    """The run folder is marked before recipe.yaml: a run stopped before any checkpoint is started
    again in place, without --resume (its files are this tool's)."""
    from distill.training.run import train

    monkeypatch.setenv("DISTILL_HOME", str(tiny_home))
    recipe = recipe_at(tmp_path, steps=2, every=2)
    with pytest.raises(KeyboardInterrupt):
        train(recipe, progress=False, callbacks=[StopAt(1)])
    run = tmp_path / "run"
    assert is_run_folder(run) and (run / "recipe.yaml").is_file() and not (run / "checkpoint.pt").exists()
    assert train(recipe, progress=False)["steps"] == 2
