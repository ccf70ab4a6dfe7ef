import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import CORPUS_DIR, REPO, file_size_limit, file_tree, recipe_at, unwritable_folders

from distill.cli import main
from distill.data.cache import TeacherCache, build_cache, fit_pca, teacher_identity
from distill.data.corpus import read_corpus
from distill.encoder import Encoder
from distill.errors import DistillError
from distill.presets import TeacherSpec


def _tiny_teacher_home(tmp_path: Path, model_dir: Path) -> tuple[Path, TeacherSpec]:
    """A DISTILL_HOME whose teachers/tiny.yaml points at the tiny BERT folder."""
    home = tmp_path / "home"
    (home / "teachers").mkdir(parents=True)
    (home / "students").mkdir()
    (home / "teachers" / "tiny.yaml").write_text(
        f"name: tiny\nhub_id: {model_dir}\noffline_source: null\npooling: mean\nnormalize: true\ndim: 32\nmax_length: 32\n"
    )
    spec = TeacherSpec(name="tiny", hub_id=str(model_dir), offline_source=None, pooling="mean", normalize=True, dim=32, max_length=32)
    return home, spec


def _corpus_file(tmp_path: Path, n: int) -> Path:
    with gzip.open(CORPUS_DIR / "wordnet-glosses.txt.gz", "rt", encoding="utf-8") as f:
        lines = [next(f).rstrip("\n") for _ in range(n)]
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_corpus_cleaning_counts_and_formats(tmp_path):
    (tmp_path / "a.txt").write_text("One.\n\n  Two.  \nOne.\n   \n")
    with gzip.open(tmp_path / "b.txt.gz", "wt") as f:
        f.write("Three.\nTwo.\n")
    (tmp_path / "c.jsonl").write_text('{"text": "Four."}\n{"text": "One."}\n')
    (tmp_path / "d.csv").write_text('id,sentence\n1,"Five, with a comma."\n2,Four.\n')
    corpus = read_corpus([str(tmp_path / n) for n in ("a.txt", "b.txt.gz", "c.jsonl", "d.csv")])
    assert corpus.sentences[:] == ["One.", "Two.", "Three.", "Four.", "Five, with a comma."]
    assert (corpus.read, corpus.dropped_empty, corpus.dropped_duplicates) == (11, 2, 4)


def test_non_utf8_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\nalso fine\ncaf\xe9\n")
    with pytest.raises(DistillError, match=r"bad\.txt:3: not UTF-8"):
        read_corpus([str(bad)])
    with pytest.raises(DistillError, match=r"corpus file not found: .*missing\.txt"):
        read_corpus([str(tmp_path / "missing.txt")])


def test_cache_matches_the_teacher_and_refuses_a_mismatch(tmp_path, tiny_bert_dir):
    _, spec = _tiny_teacher_home(tmp_path, tiny_bert_dir)
    corpus = _corpus_file(tmp_path, 300)
    enc = Encoder.load(str(tiny_bert_dir), pooling="mean", normalize=True, max_length=32, device="cpu")
    cache = build_cache(spec, [str(corpus)], tmp_path / "cache", pca=8, shard_size=128, encoder=enc, progress=False)
    sentences = cache.sentences()
    assert len(sentences) == len(cache) == 300 and cache.embeddings.dtype == np.float16
    np.testing.assert_allclose(cache.embeddings, enc.encode(sentences, progress=False), atol=2e-3)
    m = cache.manifest
    assert m["complete"] and m["teacher"] == "tiny" and m["dim"] == 32 and m["teacher_revision"].startswith("sha256:")
    assert not (tmp_path / "cache" / "shards").exists() and not (tmp_path / "cache" / "build.json").exists()
    # PCA: targets are the unit-norm embeddings on the top-8 principal axes (uncentered, as HPD's authors)
    pca = np.load(tmp_path / "cache" / "pca.npz")
    x = np.asarray(cache.embeddings, dtype=np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(cache.pca_targets(8), x @ pca["components"].T, atol=2e-3)
    assert np.all(np.diff(pca["explained_variance"]) <= 1e-7)
    # a run whose teacher or corpus differs is refused, naming the field
    expect = {**teacher_identity(spec), "corpus_sha256": m["corpus_sha256"]}
    TeacherCache.open(tmp_path / "cache", expect=expect)
    with pytest.raises(DistillError, match=r"pooling is 'mean' in the cache but 'cls' here"):
        TeacherCache.open(tmp_path / "cache", expect={**expect, "pooling": "cls"})
    other = tmp_path / "other.txt"
    other.write_text("A different corpus.\n")
    with pytest.raises(DistillError, match=r"corpus_sha256 is '[0-9a-f]+' in the cache but"):
        build_cache(spec, [str(other)], tmp_path / "cache", encoder=enc, progress=False)
    with pytest.raises(DistillError, match=r"has PCA to 8 dims; HPD asks for k=16"):
        cache.pca_targets(16)


def test_fit_pca_matches_numpy_svd_of_the_unit_rows():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 6)) @ rng.normal(size=(6, 6)) * 30.0  # norms far from 1, like SimCSE's
    mean, comps, var = fit_pca(x, 3)
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(mean, u.mean(0), atol=1e-6)
    cov = np.cov(u.T)
    evals, evecs = np.linalg.eigh(cov)
    np.testing.assert_allclose(var, evals[::-1][:3], rtol=1e-5)
    for i in range(3):
        assert abs(abs(comps[i] @ evecs[:, ::-1][:, i]) - 1) < 1e-5


def test_interrupted_build_resumes_where_it_stopped(tmp_path, tiny_bert_dir):
    home, spec = _tiny_teacher_home(tmp_path, tiny_bert_dir)
    corpus = _corpus_file(tmp_path, 3000)
    out = tmp_path / "cache"
    env = {**os.environ, "DISTILL_HOME": str(home), "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "distill.cli", "cache", "--teacher", "tiny", "--corpus", str(corpus), "--out", str(out), "--shard-size", "100", "--quiet"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (out / "shards" / "00001.npy").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists(), "the build finished before it could be interrupted"
    with pytest.raises(DistillError, match="not a complete teacher cache.*interrupted"):
        TeacherCache.open(out)
    done_before = len(list((out / "shards").glob("*.npy")))
    assert done_before >= 2
    enc = Encoder.load(str(tiny_bert_dir), pooling="mean", normalize=True, max_length=32, device="cpu")
    cache = build_cache(spec, [str(corpus)], out, shard_size=100, encoder=enc, progress=False)
    assert cache.build_stats["shards_reused"] == done_before
    assert cache.build_stats["shards_encoded"] == 30 - done_before
    # the resumed cache equals what an uninterrupted encoding gives, row for row
    np.testing.assert_allclose(cache.embeddings, enc.encode(cache.sentences(), progress=False), atol=2e-3)
    assert json.loads((out / "manifest.json").read_text())["count"] == 3000


@pytest.mark.integration
def test_offline_teacher_cache_over_part_of_the_shared_corpus(tmp_path):
    """The packaged all-MiniLM-L6-v2 as teacher, via the CLI, on 400 corpus sentences."""
    from sentence_transformers import SentenceTransformer

    corpus = CORPUS_DIR / "sts-family-train.txt.gz"
    out = tmp_path / "cache"
    proc = subprocess.run(
        [sys.executable, "-m", "distill.cli", "cache", "--teacher", "all-minilm-l6-v2", "--corpus", str(corpus),
         "--out", str(out), "--max-sentences", "400", "--pca", "32", "--quiet"],
        capture_output=True, text=True, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    assert "400 sentences x 384" in proc.stdout
    cache = TeacherCache.open(out)
    ref = SentenceTransformer(str(Encoder.load("all-minilm-l6-v2", device="cpu").source), device="cpu").encode(cache.sentences()[:])
    np.testing.assert_allclose(cache.embeddings, ref, atol=2e-3)
    assert cache.pca_targets(32).shape == (400, 32)


def test_hpd_targets_of_an_unnormalized_teacher_fit_the_tanh_range(tmp_path, tiny_bert_dir):
    """A teacher preset with normalize: false (SimCSE's raw pooler vectors): the PCA is fitted on
    the L2-normalized vectors, as the HPD and IBKD authors do, so every target lies in (-1, 1)."""
    spec = TeacherSpec(name="raw", hub_id=str(tiny_bert_dir), offline_source=None, pooling="mean", normalize=False, dim=32, max_length=32)
    enc = Encoder.load(str(tiny_bert_dir), pooling="mean", normalize=False, max_length=32, device="cpu")
    corpus = _corpus_file(tmp_path, 200)
    cache = build_cache(spec, [str(corpus)], tmp_path / "cache", pca=8, encoder=enc, progress=False)
    raw = np.asarray(cache.embeddings, dtype=np.float64)
    assert np.linalg.norm(raw, axis=1).min() > 2  # the cache itself keeps the raw vectors
    targets = np.asarray(cache.pca_targets(8), dtype=np.float64)
    assert np.linalg.norm(targets, axis=1).max() <= 1.0 + 1e-3 and np.abs(targets).max() < 1
    comps = np.load(tmp_path / "cache" / "pca.npz")["components"].astype(np.float64)
    np.testing.assert_allclose(targets, raw / np.linalg.norm(raw, axis=1, keepdims=True) @ comps.T, atol=2e-3)
    # a cache whose PCA predates this (no "normalized" flag) is refitted, not used
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    manifest["pca"].pop("normalized")
    (tmp_path / "cache" / "manifest.json").write_text(json.dumps(manifest))
    old = TeacherCache.open(tmp_path / "cache")
    assert not old.has_pca(8)
    with pytest.raises(DistillError, match="un-normalized vectors"):
        old.pca_targets(8)
    again = build_cache(spec, [str(corpus)], tmp_path / "cache", pca=8, encoder=enc, progress=False)
    assert again.has_pca(8)


def test_tokenizer_fingerprint_ignores_the_tokenizers_call_state(tmp_path, minilm_path):
    """The transformers wrapper leaves the truncation / padding of its last call on the Rust backend:
    the fingerprint of the stored token ids must not change with it (it did: three names for one
    tokenizer, and the ids were tokenized again under each)."""
    from transformers import AutoTokenizer

    from distill.data.tokens import tokenize_corpus, tokenizer_fingerprint

    tok = AutoTokenizer.from_pretrained(str(minilm_path))
    first = tokenizer_fingerprint(tok, 32)
    tok(["hello world"], truncation=True, max_length=16)
    assert tokenizer_fingerprint(tok, 32) == first
    tok(["hello world", "a"], padding=True)
    assert tokenizer_fingerprint(tok, 32) == first
    assert tokenizer_fingerprint(AutoTokenizer.from_pretrained(str(minilm_path)), 32) == first  # a fresh load
    assert tokenizer_fingerprint(tok, 16) != first  # max_length does change the ids
    sentences = ["One sentence.", "Another, longer sentence than the first one."]
    made = tokenize_corpus(tok, sentences, 32, cache_dir=tmp_path, progress=False)
    assert [p.name for p in (tmp_path / "tokens").iterdir()] == [first]
    tok(["x"], truncation=True, max_length=8, padding="max_length")
    again = tokenize_corpus(tok, sentences, 32, cache_dir=tmp_path, progress=False)
    assert [p.name for p in (tmp_path / "tokens").iterdir()] == [first]  # reused, no second folder
    np.testing.assert_array_equal(again.ids, made.ids)


def test_build_cache_resolves_the_teacher_once(tmp_path, tiny_bert_dir, monkeypatch):
    """The preset is read once and the model folder resolved once (they were three times: the
    preset, then Encoder.load by name, then resolve_model by name again for the manifest)."""
    import distill.data.cache as cache_mod
    import distill.presets
    import distill.resolve

    home, _ = _tiny_teacher_home(tmp_path, tiny_bert_dir)
    monkeypatch.setenv("DISTILL_HOME", str(home))
    calls = []

    def counting(name, fn):
        return lambda *a, **k: (calls.append((name, a[0] if a else None)), fn(*a, **k))[1]

    monkeypatch.setattr(cache_mod, "teacher_spec", counting("teacher_spec", cache_mod.teacher_spec))
    monkeypatch.setattr(cache_mod, "resolve_model", counting("resolve_model", cache_mod.resolve_model))
    monkeypatch.setattr(distill.presets, "find_preset", counting("find_preset", distill.presets.find_preset))
    monkeypatch.setattr(distill.resolve, "find_preset", counting("find_preset", distill.resolve.find_preset))
    cache = build_cache("tiny", [str(_corpus_file(tmp_path, 40))], tmp_path / "cache", device="cpu", progress=False)
    assert [c[0] for c in calls] == ["teacher_spec", "resolve_model"], calls
    assert cache.manifest["teacher"] == "tiny" and cache.manifest["teacher_revision"].startswith("sha256:")


# --- cache writes only into an empty folder or a cache ------------------------------------------

def test_cache_refuses_a_folder_with_user_files(tmp_path, tiny_home, monkeypatch, capsys):
    monkeypatch.setenv("DISTILL_HOME", str(tiny_home))
    corpus = str(CORPUS_DIR / "sts-family-train.txt.gz")
    work = tmp_path / "work"
    (work / "shards").mkdir(parents=True)
    (work / "sentences.txt").write_text("a\nb\na\nc\nb\n")
    (work / "shards" / "mine.npy").write_bytes(b"user data")
    before = file_tree(work)
    monkeypatch.chdir(work)
    args = ["cache", "--teacher", "tiny-teacher", "--corpus", corpus, "--max-sentences", "64", "--quiet"]
    assert main([*args, "--out", "."]) == 2
    assert "is not a teacher cache" in capsys.readouterr().err
    assert file_tree(work) == before  # sentences.txt keeps its 5 lines, shards/ is still there
    assert main([*args, "--out", str(work / "sentences.txt")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    for flag in ("--shard-size", "--pca", "--batch-size", "--max-sentences"):
        assert main([*args, "--out", str(tmp_path / "c0"), flag, "0"]) == 2
        assert f"{flag} 0: must be a whole number of at least 1" in capsys.readouterr().err
    assert not (tmp_path / "c0").exists()
    # an empty folder is fine, and a cache of ours is reused
    (tmp_path / "c1").mkdir()
    assert main([*args, "--out", str(tmp_path / "c1")]) == 0
    assert "the slow step, done once" in capsys.readouterr().out  # the long pole says so before it starts
    assert main([*args, "--out", str(tmp_path / "c1")]) == 0
    out = capsys.readouterr().out
    assert "complete and matches: reused" in out and "the slow step" not in out


def test_corpus_mismatch_says_how_to_rebuild_and_names_max_sentences(tmp_path, tiny_home, monkeypatch, capsys):
    from distill.training.stages import open_or_build_cache

    monkeypatch.setenv("DISTILL_HOME", str(tiny_home))
    open_or_build_cache(recipe_at(tmp_path, ["data.max_sentences=64"]), progress=False)
    with pytest.raises(DistillError, match=r"max_sentences is 64 in the cache but 32 here.*to a new folder, or delete .*cache"):
        open_or_build_cache(recipe_at(tmp_path, ["data.max_sentences=32"]), progress=False)
    # distill cache on that folder gives the same advice, not "rebuild it with distill cache"
    corpus = str(CORPUS_DIR / "sts-family-train.txt.gz")
    assert main(["cache", "--teacher", "tiny-teacher", "--corpus", corpus, "--max-sentences", "32", "--out", str(tmp_path / "cache"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "max_sentences is 64 in the cache but 32 here" in err and "rebuild it with `distill cache`" not in err


def test_jsonl_corpus_column_is_a_recipe_key(tmp_path, tiny_home, monkeypatch):
    from distill.training.stages import open_or_build_cache

    monkeypatch.setenv("DISTILL_HOME", str(tiny_home))
    with gzip.open(CORPUS_DIR / "sts-family-train.txt.gz", "rt", encoding="utf-8") as f:
        lines = [next(f).strip() for _ in range(80)]
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"id": i, "body": s}) + "\n" for i, s in enumerate(lines)))
    over = [f"data.corpus=[{corpus}]", "data.max_sentences=null"]
    with pytest.raises(DistillError, match=r"c\.jsonl:1: none of the columns .* data\.column \(a recipe\)"):
        open_or_build_cache(recipe_at(tmp_path, over), progress=False)
    cache = open_or_build_cache(recipe_at(tmp_path, [*over, "data.column=body"]), progress=False)
    assert cache.sentences()[:] == list(dict.fromkeys(s for s in lines if s))


def test_damaged_cache_files_say_which_and_what_to_do(tmp_path, tiny_home, tiny_bert_dir, monkeypatch):
    from distill.training.stages import open_or_build_cache

    monkeypatch.setenv("DISTILL_HOME", str(tiny_home))
    recipe = recipe_at(tmp_path, ["data.max_sentences=64"])
    cache = open_or_build_cache(recipe, progress=False).path
    manifest = (cache / "manifest.json").read_bytes()
    (cache / "manifest.json").write_bytes(manifest[: len(manifest) // 2])
    with pytest.raises(DistillError, match=r"manifest\.json: damaged .*delete the cache folder .*cache and build it again"):
        open_or_build_cache(recipe, progress=False)
    (cache / "manifest.json").write_bytes(manifest)
    emb = (cache / "embeddings.npy").read_bytes()
    (cache / "embeddings.npy").write_bytes(emb[:40])
    with pytest.raises(DistillError, match=r"embeddings\.npy: damaged .*delete the cache folder"):
        TeacherCache.open(cache)
    (cache / "embeddings.npy").write_bytes(emb)
    assert len(TeacherCache.open(cache)) == 64
    # the student's token ids stored next to the cache are recomputed when damaged
    from transformers import AutoTokenizer

    from distill.data.tokens import tokenize_corpus

    sentences = TeacherCache.open(cache).sentences()
    # a fresh tokenizer each time, as each run has (a used one carries its truncation setting)
    first = tokenize_corpus(AutoTokenizer.from_pretrained(str(tiny_bert_dir)), sentences, 32, cache, progress=False)
    (ids_file,) = (cache / "tokens").glob("*/ids.npy")
    made = np.array(first.ids), np.array(first.offsets)
    del first  # its memory map: a file cut short under a map is a bus error, not the damage this test makes
    ids_file.write_bytes(ids_file.read_bytes()[:100])  # cut short
    again = tokenize_corpus(AutoTokenizer.from_pretrained(str(tiny_bert_dir)), sentences, 32, cache, progress=False)
    assert np.array_equal(made[0], again.ids) and np.array_equal(np.load(ids_file.parent / "offsets.npy"), made[1])


# --- a corpus that changed, a disk that cannot take the cache -----------------------------------

def test_an_interrupted_build_refuses_a_corpus_that_changed_since(tmp_path, tiny_bert_dir, monkeypatch, capsys):
    """Ctrl-C after the first shard, the corpus file edited, the same command again: refused, the
    shards of the first corpus untouched (never mixed into a cache of the second); with the first
    corpus back, the build resumes."""
    home, spec = _tiny_teacher_home(tmp_path, tiny_bert_dir)
    corpus = _corpus_file(tmp_path, 300)
    original = corpus.read_bytes()
    out = tmp_path / "cache"
    enc = Encoder.load(str(tiny_bert_dir), pooling="mean", normalize=True, max_length=32, device="cpu")
    encode, calls = enc.encode, []

    def ctrl_c_at_the_second_shard(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return encode(*args, **kwargs)

    monkeypatch.setattr(enc, "encode", ctrl_c_at_the_second_shard)
    with pytest.raises(KeyboardInterrupt):
        build_cache(spec, [str(corpus)], out, shard_size=100, encoder=enc, progress=False)
    monkeypatch.setattr(enc, "encode", encode)
    shards = file_tree(out / "shards")
    assert list(shards) == ["00000.npy"]
    lines = original.decode().splitlines()
    corpus.write_text("\n".join(lines[150:] + lines[:150]) + "\n")  # the same sentences in another order: other rows
    with pytest.raises(DistillError, match=r"interrupted build with other parameters \(corpus_sha256 differ\); the corpus is not the one"):
        build_cache(spec, [str(corpus)], out, shard_size=100, encoder=enc, progress=False)
    monkeypatch.setenv("DISTILL_HOME", str(home))
    assert main(["cache", "--teacher", "tiny", "--corpus", str(corpus), "--out", str(out), "--shard-size", "100", "--quiet"]) == 2
    assert "corpus_sha256 differ" in capsys.readouterr().err
    assert file_tree(out / "shards") == shards and not (out / "manifest.json").exists()
    corpus.write_bytes(original)
    cache = build_cache(spec, [str(corpus)], out, shard_size=100, encoder=enc, progress=False)
    assert cache.build_stats["shards_reused"] == 1 and cache.sentences()[:] == lines
    np.testing.assert_allclose(cache.embeddings, enc.encode(lines, progress=False), atol=2e-3)


def test_cache_out_that_cannot_be_written_is_refused_before_the_corpus_is_read(tmp_path, capsys):
    for folder in unwritable_folders(tmp_path):
        # a corpus that does not exist and a teacher that is not a preset: neither is looked at first
        assert main(["cache", "--teacher", "nope", "--corpus", str(tmp_path / "missing.txt"), "--out", str(folder / "cache")]) == 2
        err = capsys.readouterr().err
        assert f"--out {folder / 'cache'}: " in err and ("is not a folder" in err or "Permission denied" in err), err


def test_a_disk_that_fills_up_mid_build_is_named_and_the_build_resumes(tmp_path, tiny_bert_dir, monkeypatch, capsys):
    """Files may not pass 40 kB (a real EFBIG, as a full disk gives ENOSPC): the 100-row shards
    (7 kB) and sentences.txt (20 kB) fit, the 1000 x 32 float16 matrix assembled at the end
    (64 kB) does not. (A really full disk failed there with SIGBUS: the matrix is a memory map;
    its blocks are now allocated first, and a full disk is ENOSPC.)"""
    home, _ = _tiny_teacher_home(tmp_path, tiny_bert_dir)
    monkeypatch.setenv("DISTILL_HOME", str(home))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"sentence number {i}\n" for i in range(1000)))
    out = tmp_path / "cache"
    cmd = ["cache", "--teacher", "tiny", "--corpus", str(corpus), "--out", str(out), "--shard-size", "100", "--quiet"]
    with file_size_limit(40_000):
        assert main(cmd) == 2
    err = capsys.readouterr().err
    assert f"--out {out}: File too large (EFBIG)" in err and "resumes the build" in err
    assert sorted(p.name for p in out.iterdir()) == [".distill.lock", "build.json", "roles.npy", "sentence_offsets.npy", "sentences.txt",
                                                "shards"]  # no temp matrix left
    assert len(list((out / "shards").glob("*.npy"))) == 10
    assert main(cmd) == 0
    assert "10 of 10 shards already encoded" in capsys.readouterr().out
    assert len(TeacherCache.open(out)) == 1000


def test_the_progress_bar_moves_within_a_shard(tmp_path, tiny_bert_dir, monkeypatch):
    """A corpus under one shard (16,384 rows: SciFact's whole recipe) is one encode call: the bar
    must still move batch by batch, not sit at 0% for the minutes the teacher takes on a CPU."""
    import distill.data.cache as cache_module

    updates: list[int] = []

    class Recording(cache_module.tqdm):
        def update(self, n=1):
            updates.append(n)
            return super().update(n)

    monkeypatch.setattr(cache_module, "tqdm", Recording)
    home, spec = _tiny_teacher_home(tmp_path, tiny_bert_dir)
    enc = Encoder.load(str(tiny_bert_dir), pooling="mean", normalize=True, max_length=32, device="cpu")
    cache = build_cache(spec, [str(_corpus_file(tmp_path, 300))], tmp_path / "cache", batch_size=32, encoder=enc, progress=True)
    assert cache.build_stats["shards_encoded"] == 1
    assert len(updates) == 10 and sum(updates) == 300  # one update per batch of 32 (the last one 12)
