"""A teacher cache's corpus rows: stored with their roles and read by index; a cache made before
roles (no offsets, no roles file, no corpus_roles_sha256) reads as all documents."""

from __future__ import annotations

import json

import numpy as np
import pytest

from distill.data.cache import STAGING, TeacherCache, build_cache, teacher_identity
from distill.data.corpus import read_corpus
from distill.data.sentence_store import OFFSETS, ROLES_FILE
from distill.encoder import Encoder
from distill.errors import DistillError
from distill.presets import TeacherSpec


@pytest.fixture(scope="module")
def tiny_teacher(tiny_bert_dir):
    spec = TeacherSpec(name="tiny", hub_id=str(tiny_bert_dir), offline_source=None, pooling="mean", normalize=True, dim=32, max_length=32)
    return spec, Encoder.load(str(tiny_bert_dir), pooling="mean", normalize=True, max_length=32, device="cpu")


def test_roles_are_stored_pinned_and_checked(tmp_path, tiny_teacher):
    spec, enc = tiny_teacher
    (tmp_path / "docs.txt").write_text("".join(f"passage number {i}\n" for i in range(30)))
    (tmp_path / "q.txt").write_text("what is passage 3?\nwhere is passage 4?\n")
    sources = [str(tmp_path / "docs.txt"), f"query:{tmp_path / 'q.txt'}"]
    out = tmp_path / "cache"
    (out / STAGING).mkdir(parents=True)
    (out / STAGING / ".sentences.txt.tmp").write_text("a read killed half-way")  # a leftover of ours: read again
    cache = build_cache(spec, sources, out, shard_size=8, encoder=enc, progress=False)
    assert not (out / STAGING).exists()
    store = cache.sentences()
    assert len(store) == 32 and store[30:] == ["what is passage 3?", "where is passage 4?"] and store[4] == "passage number 4"
    assert store.roles.tolist() == [0] * 30 + [1, 1]
    with read_corpus(sources) as corpus:
        assert cache.manifest["corpus_roles_sha256"] == corpus.roles_sha256 is not None
    np.testing.assert_allclose(cache.embeddings[28:31], enc.encode(store[28:31], progress=False), atol=2e-3)
    # the same texts, all documents (the same corpus_sha256): refused, naming the roles' field
    with pytest.raises(DistillError, match=r"corpus_roles_sha256 is '[0-9a-f]+' in the cache but None here .*rebuild"):
        build_cache(spec, [str(tmp_path / "docs.txt"), str(tmp_path / "q.txt")], out, encoder=enc, progress=False)


def test_a_cache_from_before_roles_reads_as_documents_or_is_refused_with_the_reason(tmp_path, tiny_teacher):
    spec, enc = tiny_teacher
    (tmp_path / "c.txt").write_text("".join(f"sentence {i}\n" for i in range(20)) + "sentence 3\n")
    out = tmp_path / "cache"
    build_cache(spec, [str(tmp_path / "c.txt")], out, encoder=enc, progress=False)
    # as the reader before roles left it: sentences.txt alone, no corpus_roles_sha256 in the manifest
    (out / OFFSETS).unlink()
    (out / ROLES_FILE).unlink()
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["corpus_roles_sha256"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    with read_corpus([str(tmp_path / "c.txt")], keep_text=False) as corpus:
        cache = TeacherCache.open(out, expect={**teacher_identity(spec), **corpus.identity()}, corpus=corpus)
    assert cache.sentences()[:] == [f"sentence {i}" for i in range(20)] and not cache.sentences().roles.any()
    assert build_cache(spec, [str(tmp_path / "c.txt")], out, encoder=enc, progress=False).manifest == manifest  # reused as it is
    with pytest.raises(DistillError, match=r"corpus_roles_sha256 is None in the cache .*made before corpus rows had roles.*rebuild it"):
        build_cache(spec, [f"query:{tmp_path / 'c.txt'}"], out, encoder=enc, progress=False)


def test_a_build_interrupted_before_roles_existed_resumes(tmp_path):
    """build.json of a build begun before corpus_roles_sha256 existed: an all-document corpus
    resumes it (a missing key reads as None), one with query rows is refused, naming the field."""
    from distill.data.cache import _start_or_resume

    params = {"teacher": "tiny", "corpus_sha256": "ab" * 32, "count": 10, "shard_size": 4, "precision": "fp32"}
    (tmp_path / "build.json").write_text(json.dumps(params))
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "00000.npy").write_bytes(b"a shard of that build")
    assert _start_or_resume(tmp_path, {**params, "corpus_roles_sha256": None}) == tmp_path / "shards"
    assert (tmp_path / "shards" / "00000.npy").is_file()
    with pytest.raises(DistillError, match=r"other parameters \(corpus_roles_sha256 differ\)"):
        _start_or_resume(tmp_path, {**params, "corpus_roles_sha256": "cd" * 32})
