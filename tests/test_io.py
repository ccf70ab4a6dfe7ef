import os
import stat

import numpy as np
import pytest
from conftest import unwritable_folders

from distill.errors import DistillError
from distill.io import atomic_dir, atomic_path, check_writable, write_errors, write_json_atomic


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_path_serves_torch_save_and_np_save_and_cleans_up(tmp_path):
    import torch

    umask = os.umask(0o022)
    os.umask(umask)
    ckpt = tmp_path / "run" / "checkpoint.pt"
    with atomic_path(ckpt) as tmp:  # what the trainer's checkpoint write needs
        assert tmp.parent == ckpt.parent and tmp.name.startswith(".checkpoint.pt.")
        torch.save({"step": 3}, tmp)
    assert torch.load(ckpt)["step"] == 3 and _mode(ckpt) == 0o666 & ~umask
    with atomic_path(tmp_path / "a.npy") as tmp:  # the suffix is kept: np.save appends none
        np.save(tmp, np.arange(3))
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.arange(3))
    with pytest.raises(RuntimeError), atomic_path(ckpt) as tmp:
        torch.save({"step": 4}, tmp)
        raise RuntimeError("killed mid-write")
    assert torch.load(ckpt)["step"] == 3  # the old file is intact
    with atomic_path(tmp_path / "b.npy", fixed=True) as tmp:
        assert tmp.name == ".b.npy.tmp"
        with open(tmp, "wb") as f:
            np.save(f, np.zeros(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy", "b.npy", "run"]
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["checkpoint.pt"]


def test_atomic_dir_replaces_a_folder_whole_or_not_at_all(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    target = tmp_path / "best"
    with atomic_dir(target) as tmp:
        (tmp / "x.txt").write_text("one")
    assert (target / "x.txt").read_text() == "one"
    assert _mode(target) == 0o777 & ~umask  # not mkdtemp's 0700
    with atomic_dir(target) as tmp:
        (tmp / "y.txt").write_text("two")
    assert sorted(p.name for p in target.iterdir()) == ["y.txt"]
    with pytest.raises(OSError), atomic_dir(target) as tmp:
        (tmp / "z.txt").write_text("three")
        raise OSError("disk full")
    assert sorted(p.name for p in target.iterdir()) == ["y.txt"]
    (tmp_path / ".best.old").mkdir()  # a stale folder of an older scheme does not block a save
    (tmp_path / ".best.old" / "junk").write_text("")
    with atomic_dir(target) as tmp:
        (tmp / "w.txt").write_text("four")
    assert sorted(p.name for p in target.iterdir()) == ["w.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".best.old", "best"]  # no temp folder left


def test_non_finite_json_is_refused(tmp_path):
    with pytest.raises(DistillError, match=r"out\.json: not written, it would hold non-finite numbers at scores\.STS-B"):
        write_json_atomic(tmp_path / "out.json", {"scores": {"STS12": 1.0, "STS-B": float("nan")}})
    assert not (tmp_path / "out.json").exists()


def test_check_writable_probes_the_nearest_folder_and_leaves_nothing(tmp_path):
    check_writable(tmp_path / "new" / "deeper" / "x.npy", "--out")  # folders that can be made: fine, and not made
    check_writable(tmp_path / "cache", "--out", folder=True)
    assert list(tmp_path.iterdir()) == []  # no folder made, no probe file left
    for folder in unwritable_folders(tmp_path):
        with pytest.raises(DistillError, match=rf"--out {folder}/x\.npy: (cannot write in .*(Permission denied|Read-only)|.*is not a folder)"):
            check_writable(folder / "x.npy", "--out")


def test_write_errors_names_the_output_and_the_errno():
    import errno

    with pytest.raises(DistillError, match=r"^--out /d/e\.npy: No space left on device \(ENOSPC\) at /d/\.e\.npy\.tmp; kept$"):
        with write_errors("/d/e.npy", "--out", "; kept"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/d/.e.npy.tmp")
    with pytest.raises(DistillError, match=r"Read-only file system \(EROFS\)"):
        with write_errors("/d/e.npy", "--out"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))


def test_only_this_tools_temp_folders_of_dead_processes_are_removed(tmp_path):
    """A temp folder a killed distill process left (PARTIAL_MARKER, its pid gone) is removed by the
    next write to the same path; one of a live process or another host, or without the marker, stays."""
    import json
    import socket
    import subprocess
    import sys

    from distill.io import PARTIAL_MARKER, make_temp_dir, remove_stale_temps

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    target = tmp_path / "export"
    folders = {}
    for name, pid, host in (("dead", int(dead), socket.gethostname()), ("live", os.getpid(), socket.gethostname()),
                            ("other-host", int(dead), "another-host"), ("unmarked", None, None)):
        folder = folders[name] = tmp_path / f".export.{name}"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"x")
        if pid is not None:
            (folder / PARTIAL_MARKER).write_text(json.dumps({"tool": "distill", "pid": pid, "host": host}))
    (tmp_path / ".other.dead").mkdir()  # a temp folder of another path: not this write's
    (tmp_path / ".other.dead" / PARTIAL_MARKER).write_text(json.dumps({"tool": "distill", "pid": int(dead), "host": socket.gethostname()}))
    assert remove_stale_temps(target) == [folders["dead"]]
    new = make_temp_dir(target)
    assert json.loads((new / PARTIAL_MARKER).read_text())["pid"] == os.getpid()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".export.live", ".export.other-host", ".export.unmarked", ".other.dead", new.name])


def test_write_errors_reads_a_rust_librarys_io_error():
    """safetensors and tokenizers raise their own exception types for a failed write."""
    with pytest.raises(DistillError, match=r"^--out /d/e: No space left on device \(ENOSPC\); kept$"):
        with write_errors("/d/e", "--out", "; kept"):
            raise Exception("Error while serializing: I/O error: No space left on device (os error 28)")
    with pytest.raises(ValueError, match="not an I/O error"), write_errors("/d/e", "--out"):
        raise ValueError("not an I/O error")
