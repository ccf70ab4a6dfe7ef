"""Any teacher (issue 33): a folder, a hub id or a mapping trains and caches end to end, every
row encoded with its role's prompt as sentence-transformers would; old caches are read or refused
by name; offline hub ids say what to do. Tiny real models (tests/tiny_models.py)."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
from conftest import CORPUS_DIR, recipe_at
from tiny_models import QUERY_INSTRUCTION, bert_dir, decoder_dir, reference, st_folder

from distill.cli import main
from distill.data.cache import TeacherCache, build_cache
from distill.errors import DistillError

TOL = 1e-5


@pytest.fixture(scope="module")
def dense_teacher(tmp_path_factory, minilm_path):
    """CLS -> Dense(tanh, 24) -> Normalize, with query/document prompts (bge/e5-like)."""
    root = tmp_path_factory.mktemp("dense-teacher")
    return st_folder(root / "st", bert_dir(root / "bert", minilm_path, seed=1), pooling="cls", dense=24, normalize=True,
                     prompts={"query": "query: ", "document": "passage: "})


@pytest.fixture(scope="module")
def decoder_teacher(tmp_path_factory, minilm_path):
    root = tmp_path_factory.mktemp("decoder-teacher")
    return st_folder(root / "st", decoder_dir(root / "qwen3", minilm_path), pooling="lasttoken", normalize=True,
                     prompts={"query": QUERY_INSTRUCTION, "document": ""})


def _corpus(tmp_path, n_docs=40, n_queries=12):
    with gzip.open(CORPUS_DIR / "sts-family-train.txt.gz", "rt", encoding="utf-8") as f:
        lines = [line.strip() for _, line in zip(range(400), f) if line.strip()]
    docs, queries = tmp_path / "docs.txt", tmp_path / "questions.txt"
    docs.write_text("\n".join(lines[:n_docs]) + "\n")
    queries.write_text("\n".join(f"question {i}: what is meant by {w.lower()}" for i, w in enumerate(lines[200 : 200 + n_queries])) + "\n")
    return [str(docs), f"query:{queries}"]


def test_cache_teacher_folder_encodes_each_role_as_sentence_transformers(tmp_path, dense_teacher, capsys):
    """`distill cache --teacher FOLDER`: a Dense teacher with prompts; document rows equal
    encode_document, query rows encode_query (float16 storage: 1e-3), the manifest records the rest."""
    out = tmp_path / "cache"
    assert main(["cache", "--teacher", str(dense_teacher), "--corpus", *_corpus(tmp_path), "--out", str(out),
                 "--batch-size", "8", "--quiet"]) == 0
    cache = TeacherCache.open(out)
    m = cache.manifest
    assert (m["format_version"], m["modules"], m["dim"], m["prompts"]) == (2, ["Transformer", "Pooling", "Dense", "Normalize"], 24,
                                                                         {"query": "query: ", "document": "passage: "})
    store = cache.sentences()
    rows = np.arange(len(cache))
    roles = np.asarray(store.roles[:])
    for code, role in ((0, "document"), (1, "query")):
        pick = rows[roles == code]
        want = reference(dense_teacher, [store[int(i)] for i in pick], role)
        np.testing.assert_allclose(np.asarray(cache.embeddings[pick], dtype=np.float32), want, atol=1e-3, rtol=0)
    assert (roles == 1).sum() == 12
    # the same folder with other prompts is another teacher: refused, naming the field
    with pytest.raises(DistillError, match=r"prompts is .* in the cache but"):
        build_cache({"model": str(dense_teacher), "prompts": {"query": "q: "}}, _corpus(tmp_path), out, progress=False)


def test_train_with_a_teacher_folder_and_with_a_mapping(tmp_path, tiny_home, monkeypatch, dense_teacher):
    """`teacher: FOLDER` and an inline mapping run end to end (smoke size); results name the teacher."""
    from distill.training.trainer import train

    monkeypatch.setenv("DISTILL_HOME", str(tiny_home))
    for name, value in (("folder", str(dense_teacher)), ("mapping", json.dumps({"model": str(dense_teacher), "max_length": 48}))):
        root = tmp_path / name
        root.mkdir()
        recipe = recipe_at(root, [f"teacher={value}", "loss={name: mse}"], steps=2, every=2)
        results = train(recipe, progress=False)
        manifest = json.loads((root / "cache" / "manifest.json").read_text())
        assert manifest["teacher_model"] == str(dense_teacher.resolve()) and manifest["dim"] == 24
        assert manifest["max_length"] == (48 if name == "mapping" else 64)
        assert (root / "run" / "best" / "distill_student.json").is_file() and results


def test_decoder_teacher_distills_into_a_bert_student(tmp_path, tiny_home, monkeypatch, decoder_teacher):
    """A tiny Qwen3 embedder (last token, left padding, query-only instruction) teaches a BERT student on CPU."""
    from distill.training.trainer import train

    monkeypatch.setenv("DISTILL_HOME", str(tiny_home))
    recipe = recipe_at(tmp_path, [f"teacher={decoder_teacher}", "loss={name: mse}", f"data.corpus={json.dumps(_corpus(tmp_path, 120, 30))}"],
                       steps=3, every=3)
    train(recipe, progress=False)
    cache = TeacherCache.open(tmp_path / "cache")
    assert cache.manifest["pooling"] == "lasttoken" and cache.manifest["prompts"] == {"query": QUERY_INSTRUCTION}
    first_query = int(np.flatnonzero(np.asarray(cache.sentences().roles[:]) == 1)[0])
    text = cache.sentences()[first_query]
    np.testing.assert_allclose(np.asarray(cache.embeddings[first_query], dtype=np.float32),
                               reference(decoder_teacher, [text], "query")[0], atol=1e-3, rtol=0)
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()


def test_a_version_1_cache_is_read_or_refused_by_name(tmp_path, tiny_home, monkeypatch, dense_teacher):
    """A cache made before the manifest recorded prompts and modules: read for a teacher without
    them, refused (saying rebuild) for one with them."""
    monkeypatch.setenv("DISTILL_HOME", str(tiny_home))
    corpus = _corpus(tmp_path, 30, 0)[:1]
    out = tmp_path / "v1"
    build_cache("tiny-teacher", corpus, out, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    v1 = {k: v for k, v in manifest.items() if k not in ("prompts", "include_prompt", "modules", "truncate_dim", "teacher_dtype")}
    (out / "manifest.json").write_text(json.dumps({**v1, "format_version": 1}))
    assert len(build_cache("tiny-teacher", corpus, out, progress=False)) == 30  # reused, not rebuilt
    with pytest.raises(DistillError, match=r"did not record prompts, modules, which this teacher sets; rebuild it"):
        TeacherCache.open(out, expect={**manifest, "teacher": str(dense_teacher), "prompts": {"query": "query: "},
                                       "modules": ["Transformer", "Pooling", "Dense", "Normalize"]})


def test_student_mapping_picks_layers(tmp_path, tiny_bert_dir):
    from distill.models import load_student

    student = load_student({"model": str(tiny_bert_dir), "layers": [0, 3], "pooling": "mean"}, device="cpu")
    assert student.transformer.config.num_hidden_layers == 2


def test_a_hub_id_offline_says_so_and_how_to_name_a_folder(monkeypatch, tmp_path, capsys):
    from distill.models import load_teacher

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(DistillError, match=r"the model hub is off .*huggingface-cli download BAAI/bge-small-en-v1.5 --local-dir DIR.*"
                                           r"name the folder instead"):
        load_teacher("BAAI/bge-small-en-v1.5")
    corpus = tmp_path / "c.txt"
    corpus.write_text("one\ntwo\n")
    assert main(["cache", "--teacher", "BAAI/bge-small-en-v1.5", "--corpus", str(corpus), "--out", str(tmp_path / "c"), "--quiet"]) == 2
    assert "the model hub is off" in capsys.readouterr().err and not (tmp_path / "c").exists()


def test_encode_role_uses_the_models_prompt(tmp_path, dense_teacher):
    texts = tmp_path / "in.txt"
    texts.write_text("how do vaccines work\nthe cat sat on the mat\n")
    for role in ("query", "document"):
        out = tmp_path / f"{role}.npy"
        assert main(["encode", "--model", str(dense_teacher), "--input", str(texts), "--out", str(out), "--role", role, "--quiet"]) == 0
        np.testing.assert_allclose(np.load(out), reference(dense_teacher, texts.read_text().split("\n")[:2], role), atol=TOL, rtol=0)


def test_config_and_train_accept_the_same_teacher(tmp_path, tiny_home, monkeypatch, dense_teacher, capsys):
    monkeypatch.setenv("DISTILL_HOME", str(tiny_home))
    recipe_at(tmp_path)  # writes recipe.yaml
    assert main(["config", str(tmp_path / "recipe.yaml"), "--set", f"teacher={dense_teacher}"]) == 0
    assert main(["config", str(tmp_path / "recipe.yaml"), "--set", "teacher=BAAI/bge-small-en-v1.5"]) == 0
    capsys.readouterr()
    assert main(["config", str(tmp_path / "recipe.yaml"), "--set", "teacher={model: a/b, promts: {}}"]) == 2
    assert "teacher: teacher mapping: unknown key 'promts'" in capsys.readouterr().err
