"""distill/lock.py: one process at a time in a run or cache folder; a killed holder never blocks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import CORPUS_DIR, REPO, StopAt, recipe_at, tiny_recipe_text

from distill.cli import main
from distill.errors import DistillError
from distill.training.run import train

HOLDER = "import sys, time\nfrom distill.lock import folder_lock\nwith folder_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(300)\n"


def _hold(folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], cwd=REPO, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_run_is_refused_and_a_killed_holder_never_blocks_resume(tmp_path, tiny_home, monkeypatch, capsys):
    monkeypatch.setenv("DISTILL_HOME", str(tiny_home))
    recipe = recipe_at(tmp_path, steps=4, every=2)
    with pytest.raises(KeyboardInterrupt):
        train(recipe, progress=False, callbacks=[StopAt(3)])  # checkpoint at step 2
    run = tmp_path / "run"
    # a checkpoint saved before data.column existed still resumes: a missing key is its default
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    del ckpt["recipe"]["data"]["column"]
    torch.save(ckpt, run / "checkpoint.pt")
    holder = _hold(run)
    try:
        with pytest.raises(DistillError, match=rf"in use by pid {holder.pid} on .*since"):
            train(recipe, resume=True, progress=False)
        assert main(["train", str(tmp_path / "recipe.yaml"), "--resume", "--quiet"]) == 2
        assert f"in use by pid {holder.pid}" in capsys.readouterr().err
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert str(holder.pid) in (run / ".distill.lock").read_text()  # the dead holder's note is left behind...
    results = train(recipe, resume=True, progress=False)  # ...and does not block
    assert results["steps"] == 4
    assert str(os.getpid()) in (run / ".distill.lock").read_text()


def test_two_cache_builds_into_one_folder(tmp_path, tiny_home, monkeypatch, capsys):
    monkeypatch.setenv("DISTILL_HOME", str(tiny_home))
    out = tmp_path / "cache"
    holder = _hold(out)
    try:
        corpus = str(CORPUS_DIR / "sts-family-train.txt.gz")
        assert main(["cache", "--teacher", "tiny-teacher", "--corpus", corpus, "--max-sentences", "64", "--out", str(out), "--quiet"]) == 2
        assert f"teacher cache is in use by pid {holder.pid}" in capsys.readouterr().err
        assert sorted(p.name for p in out.iterdir()) == [".distill.lock"]  # nothing written next to the holder's build
    finally:
        holder.kill()
        holder.wait()


def test_two_real_trainings_into_one_folder(tmp_path, tiny_home):
    """Two `distill train` into one output.dir at once; the second is refused while the first runs
    (a long run, stopped with Ctrl-C afterwards), and every file is the first's."""
    path = tmp_path / "recipe.yaml"
    path.write_text(tiny_recipe_text(tmp_path, steps=100_000, every=20))
    env = {**os.environ, "DISTILL_HOME": str(tiny_home), "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "distill.cli", "train", str(path), "--quiet"]
    # SIG_DFL for SIGINT in the child: a shell runs background jobs (`cmd &`, as CI scripts may) with
    # SIGINT ignored, the child inherits that, Python then installs no KeyboardInterrupt handler and
    # the Ctrl-C below would be lost (this test hung so in a clean-clone CI run started with `&`).
    first = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lock = tmp_path / "run" / ".distill.lock"
    deadline = time.time() + 120
    while not (lock.is_file() and lock.read_text()) and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    second = subprocess.run([*cmd, "--set", "train.seed=8"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert first.poll() is None, "the first run ended before the second started"
    ckpt = tmp_path / "run" / "checkpoint.pt"
    while not ckpt.is_file() and first.poll() is None and time.time() < deadline + 120:
        time.sleep(0.05)
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=300)  # generous: CI machines may be shared and slow
    assert first.returncode == 130, err[-2000:]
    assert second.returncode == 2 and f"in use by pid {first.pid}" in second.stderr and "Traceback" not in second.stderr
    assert "seed: 7" in (tmp_path / "run" / "recipe.yaml").read_text()  # the first run's recipe, not the second's
    assert torch.load(ckpt, weights_only=True)["recipe"]["train"]["seed"] == 7
