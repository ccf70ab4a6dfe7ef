"""`distill export`: a run's student as a sentence-transformers folder, never at the cost of a
folder this tool did not write, and never half-written."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys

import pytest
from conftest import REPO, file_tree

from distill.cli import main

UMASK = os.umask(0)
os.umask(UMASK)


def test_export_refuses_folders_it_did_not_make_and_keeps_their_files(tmp_path, trained_run, monkeypatch, capsys):
    run_before = file_tree(trained_run)
    user = tmp_path / "x"
    user.mkdir()
    (user / "notes.txt").write_text("keep")
    assert main(["export", str(trained_run), "--out", str(user)]) == 2
    assert "not a distill export" in capsys.readouterr().err and (user / "notes.txt").read_text() == "keep"
    assert main(["export", str(trained_run), "--out", str(user), "--overwrite"]) == 2  # --overwrite does not make it ours
    assert (user / "notes.txt").read_text() == "keep"
    assert main(["export", str(trained_run), "--out", str(trained_run)]) == 2
    assert "is the run folder" in capsys.readouterr().err
    assert main(["export", str(trained_run), "--out", str(trained_run / "best" / "sub")]) == 2
    assert "inside it" in capsys.readouterr().err
    monkeypatch.chdir(user)
    assert main(["export", str(trained_run), "--out", "."]) == 2
    assert "not a distill export" in capsys.readouterr().err and (user / "notes.txt").read_text() == "keep"
    afile = tmp_path / "model.bin"
    afile.write_text("mine")
    assert main(["export", str(trained_run), "--out", str(afile)]) == 2
    assert "an existing file" in capsys.readouterr().err and afile.read_text() == "mine"
    assert file_tree(trained_run) == run_before  # the run folder is untouched by every probe
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp folders left


def test_export_marks_replaces_only_its_own_export_and_honors_the_umask(tmp_path, trained_run, capsys):
    from distill.export import EXPORT_MARKER

    out = tmp_path / "exported"
    assert main(["export", str(trained_run), "--out", str(out)]) == 0
    marker = json.loads((out / EXPORT_MARKER).read_text())
    assert marker["tool"] == "distill" and marker["source_run"] == str(trained_run.resolve()) and marker["which"] == "best"
    # the student learns raw texts (docs/DESIGN.md, "Roles and prompts"): its folder declares no prompt
    prompts = json.loads((out / "config_sentence_transformers.json").read_text()).get("prompts") or {}
    assert not any(prompts.values()), prompts
    assert main(["export", str(trained_run), "--out", str(out)]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    (out / "README.md").write_text("edited")
    assert main(["export", str(trained_run), "--out", str(out), "--overwrite", "--which", "final"]) == 0
    assert json.loads((out / EXPORT_MARKER).read_text())["which"] == "final" and (out / "README.md").read_text() != "edited"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported"]  # the old export deleted, no temp folders
    # mkdtemp makes 0700 folders and safetensors 0600 files: the umask decides instead
    for folder in (out, trained_run / "best", trained_run / "final"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~UMASK
        assert stat.S_IMODE((folder / "model.safetensors").stat().st_mode) == 0o666 & ~UMASK
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["export", str(trained_run), "--out", str(empty)]) == 0 and (empty / EXPORT_MARKER).is_file()


def test_exporting_an_interrupted_run_warns(tmp_path, trained_run, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("results.json", "final"))
    assert main(["export", str(run), "--out", str(tmp_path / "out")]) == 0
    assert "was interrupted or is still running" in capsys.readouterr().err
    assert main(["export", str(trained_run), "--out", str(tmp_path / "out2")]) == 0
    assert "interrupted" not in capsys.readouterr().err


# kill -9 of a real `distill export` process at a fixed point of the write: after the model's
# files, before the model card and the marker (the end of an export is a few milliseconds after
# its start: a kill from outside at a random time would race it).
KILLED_EXPORT = """import os, signal, sys
import distill.export
def card(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
distill.export.model_card = card
from distill.cli import main
main(sys.argv[1:])
"""


def test_an_export_killed_mid_write_leaves_nothing_that_looks_complete(tmp_path, trained_run):
    from distill.export import EXPORT_MARKER
    from distill.io import PARTIAL_MARKER

    out = tmp_path / "exported"
    proc = subprocess.run([sys.executable, "-c", KILLED_EXPORT, "export", str(trained_run), "--out", str(out)],
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not out.exists()  # the half-written export is in a hidden temp folder, without the marker
    (left,) = [p for p in tmp_path.iterdir() if p.name.startswith(".exported.")]
    assert (left / "model.safetensors").is_file() and not (left / EXPORT_MARKER).exists()
    assert (left / PARTIAL_MARKER).is_file()  # but marked as the killed process's work in progress
    users = tmp_path / ".exported.mine"  # a folder of the user's with a name like a temp folder's: never removed
    users.mkdir()
    (users / "notes.txt").write_text("keep")
    assert main(["export", str(trained_run), "--out", str(out)]) == 0  # the next export is not blocked by it
    assert (out / EXPORT_MARKER).is_file() and (out / "README.md").is_file() and not (out / PARTIAL_MARKER).exists()
    # ... and removes it (issue 38: a kill -9 left a 68 MB hidden folder that no later export removed)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".exported.mine", "exported"]
    assert (users / "notes.txt").read_text() == "keep"


def test_export_to_a_folder_it_cannot_write_or_a_full_disk(tmp_path, trained_run, monkeypatch, capsys):
    """Issue 38, failure 6: an --out that cannot be written is refused before the student loads (not
    after ~20 s of work), a disk that fills up mid-write is one line naming --out, and nothing is
    left half-written."""
    from conftest import file_size_limit, unwritable_folders

    import distill.export

    with monkeypatch.context() as m:
        m.setattr(distill.export, "load_saved_student", lambda *a, **k: pytest.fail("the student loaded before --out was checked"))
        for folder in unwritable_folders(tmp_path):
            out = folder / "exported"
            assert main(["export", str(trained_run), "--out", str(out)]) == 2
            err = capsys.readouterr().err
            assert f"--out {out}: " in err and ("is not a folder" in err or "Permission denied" in err or "Read-only" in err), err
    work = tmp_path / "work"
    work.mkdir()
    out = work / "exported"
    with file_size_limit(200_000):  # the tiny student's model.safetensors is larger
        code = main(["export", str(trained_run), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and f"--out {out}: File too large (EFBIG)" in err and "nothing written" in err and "Traceback" not in err, err
    assert list(work.iterdir()) == []  # no export, no temp folder


def test_a_run_whose_tokenizer_files_were_deleted_is_not_exported(tmp_path, trained_run, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (run / "best" / name).unlink()
    assert main(["export", str(run), "--out", str(tmp_path / "out")]) == 2
    assert f"{run / 'best'}: no tokenizer files (missing tokenizer.json" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # nothing exported, no temp folder
