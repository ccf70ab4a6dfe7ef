"""distill/training/checkpoint.py: RUN/checkpoint.pt, written atomically, read back or refused by name."""

from __future__ import annotations

import pytest
import torch
from conftest import StopAt, file_size_limit, recipe_at

from distill.cli import main
from distill.errors import DistillError
from distill.training.trainer import train


def test_damaged_checkpoint_says_which_file_and_what_to_do(tmp_path, tiny_home, monkeypatch):
    monkeypatch.setenv("DISTILL_HOME", str(tiny_home))
    recipe = recipe_at(tmp_path, steps=2, every=2)
    (tmp_path / "run").mkdir()
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
    assert torch.load(run / "checkpoint.pt", weights_only=False)["state"]["step"] == 2
    results = train(recipe, resume=True, progress=False)
    assert results["steps"] == 4 and [e["step"] for e in results["evals"]] == [2, 4]
