"""distill/training/checkpoint.py: RUN/checkpoint.pt, written atomically, read back (never by
unpickling code) or refused by name."""

from __future__ import annotations

import json
import pickle
import random
import shutil

import numpy as np
import pytest
import torch
from conftest import Payload, StopAt, file_size_limit, file_tree, recipe_at

from distill.cli import main
from distill.config import load_recipe
from distill.errors import DistillError
from distill.lock import LOCK_NAME
from distill.training import checkpoint as ckpt_io
from distill.training.run import train
from distill.training.run_folder import RUN_MARKER, mark_run_folder


def test_damaged_checkpoint_says_which_file_and_what_to_do(tmp_path, tiny_home, monkeypatch):
    monkeypatch.setenv("DISTILL_HOME", str(tiny_home))
    recipe = recipe_at(tmp_path, steps=2, every=2)
    (tmp_path / "run").mkdir()
    mark_run_folder(tmp_path / "run")
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"PK\x03\x04 not a checkpoint")
    with pytest.raises(DistillError, match=r"checkpoint\.pt: damaged .*restore it from a copy, or move it away"):
        train(recipe, resume=True, progress=False)


def test_a_checkpoint_write_the_disk_refuses_keeps_the_last_one_and_resume_finishes(tmp_path, tiny_home, monkeypatch, capsys):
    """Ctrl-C after the step-2 checkpoint; `distill train --resume` while files may not pass 8 MB
    (a real EFBIG, as a full disk gives ENOSPC): the best student (4 MB) is written, the step-4
    checkpoint (student + AdamW moments, 12 MB) is not. The run stops with the reason (it was
    torch's "unexpected pos" RuntimeError), the step-2 checkpoint intact and no temp file; a
    `--resume` with room then ends the run."""
    monkeypatch.setenv("DISTILL_HOME", str(tiny_home))
    recipe = recipe_at(tmp_path, steps=4, every=2)
    with pytest.raises(KeyboardInterrupt):
        train(recipe, progress=False, callbacks=[StopAt(3)])
    run = tmp_path / "run"
    saved = (run / "checkpoint.pt").read_bytes()
    with file_size_limit(8 << 20):
        assert main(["train", str(tmp_path / "recipe.yaml"), "--resume", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{run / 'checkpoint.pt'}: checkpoint not written, File too large (EFBIG); the previous checkpoint is kept" in err
    assert (run / "checkpoint.pt").read_bytes() == saved and not list(run.glob(".checkpoint*"))
    assert torch.load(run / "checkpoint.pt", weights_only=True)["state"]["step"] == 2
    results = train(recipe, resume=True, progress=False)
    assert results["steps"] == 4 and [e["step"] for e in results["evals"]] == [2, 4]


def _shared_copy(trained_run, tmp_path, marked: bool = True):
    """A copy of a finished run's folder, as a colleague shares it; `marked=False`: as a run made
    before run folders carried RUN_MARKER (checkpoint.pt and recipe.yaml, no marker)."""
    run = tmp_path / "shared-run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns(LOCK_NAME, *([] if marked else [RUN_MARKER])))
    (run / "results.json").unlink()  # an interrupted run: --resume continues stage 1 from the checkpoint
    return run


@pytest.mark.parametrize("planted", ["raw pickle", "extra key in a real checkpoint", "extra key, unmarked run"])
def test_a_planted_checkpoint_never_runs_its_code(tmp_path, trained_run, tiny_home, monkeypatch, capsys, planted):
    """issue 38: `--resume` unpickled checkpoint.pt with weights_only=False, so a shared run folder
    could run any command: a raw pickle ran it then said "damaged"; a real checkpoint with one more
    key ran it and resumed with exit 0. Now it is refused, the command never runs, nothing is written."""
    monkeypatch.setenv("DISTILL_HOME", str(tiny_home))
    run = _shared_copy(trained_run, tmp_path, marked=planted != "extra key, unmarked run")
    ran = tmp_path / "payload-ran"
    if planted == "raw pickle":
        (run / "checkpoint.pt").write_bytes(pickle.dumps(Payload(ran), protocol=2))
    else:
        torch.save({**torch.load(run / "checkpoint.pt", weights_only=True), "note": Payload(ran)}, run / "checkpoint.pt")
    before = file_tree(run)
    assert main(["train", str(run / "recipe.yaml"), "--resume", "--quiet", "--set", f"output.dir={run}"]) == 2
    err = capsys.readouterr().err
    assert f"{run / 'checkpoint.pt'}: refused, not a checkpoint distill can read without unpickling code" in err
    assert "re-run without --resume" in err and "Traceback" not in err
    assert not ran.exists(), "the planted pickle ran its command"
    assert {k: v for k, v in file_tree(run).items() if k != LOCK_NAME} == before  # not even recipe.yaml rewritten


def test_the_rng_states_round_trip_as_plain_values(tmp_path):
    """Python's and numpy's RNG states are stored as lists and numbers (weights_only reads them) and
    restored exactly, as are those of a checkpoint written before (tuples, a numpy array)."""
    random.seed(3)
    np.random.seed(4)
    torch.manual_seed(5)
    torch.save({"rng": ckpt_io.rng_state(), "recipe": {}}, tmp_path / "checkpoint.pt")
    draws = (random.random(), np.random.rand(), torch.rand(1).item())
    ckpt_io.set_rng_state(torch.load(tmp_path / "checkpoint.pt", weights_only=True)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == draws
    random.seed(3)
    np.random.seed(4)
    older = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(), "cuda": None}
    draws = (random.random(), np.random.rand())
    torch.save({"rng": older, "recipe": {}}, tmp_path / "older.pt")
    ckpt_io.set_rng_state(ckpt_io.load_checkpoint(tmp_path / "older.pt")["rng"])
    assert (random.random(), np.random.rand()) == draws


def test_a_run_made_before_this_change_resumes(tmp_path, trained_run, tiny_home, monkeypatch):
    """A run folder of an older distill: no RUN_MARKER, its checkpoint's RNG states a tuple and a
    numpy array (read with weights_only=True and only numpy's array names allowed). --resume accepts
    it, marks it as a run folder, and ends as the original run ended."""
    monkeypatch.setenv("DISTILL_HOME", str(tiny_home))
    run = _shared_copy(trained_run, tmp_path, marked=False)
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    random.seed(1)
    np.random.seed(2)
    ckpt["rng"] = {**ckpt["rng"], "python": random.getstate(), "numpy": np.random.get_state()}  # as older versions saved it
    torch.save(ckpt, run / "checkpoint.pt")
    assert torch.serialization.get_unsafe_globals_in_checkpoint(run / "checkpoint.pt")  # numpy's names: the older format
    results = train(load_recipe(run / "recipe.yaml", [f"output.dir={run}"]), resume=True, progress=False)
    original = json.loads((trained_run / "results.json").read_text())
    assert results["steps"] == 2 and results["best"] == pytest.approx(original["best"], abs=1e-6)
    assert json.loads((run / RUN_MARKER).read_text())["tool"] == "distill"


def test_a_resume_of_a_changed_recipe_names_each_key_and_both_values(tmp_path, tiny_home, monkeypatch):
    """Issue 38 (notes): the refusal named only the section ("... in train")."""
    from distill.training.checkpoint import check_resumed_recipe

    monkeypatch.setenv("DISTILL_HOME", str(tiny_home))
    saved = {"recipe": recipe_at(tmp_path).to_dict()}
    check_resumed_recipe(saved, recipe_at(tmp_path, ["output.dir=elsewhere"]), tmp_path / "checkpoint.pt")  # where it lives: not compared
    changed = recipe_at(tmp_path, ["train.lr=0.5", "loss.lam=0.3"])
    with pytest.raises(DistillError, match=r"the recipe differs from the checkpoint's \(.*checkpoint\.pt\) in loss\.lam: 0\.2 in the "
                                           r"checkpoint, 0\.3 now; train\.lr: 0\.001 in the checkpoint, 0\.5 now$"):
        check_resumed_recipe(saved, changed, tmp_path / "checkpoint.pt")
