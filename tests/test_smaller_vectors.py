"""Smaller vectors: a Matryoshka-trained student (transformer and static) served at fewer
dimensions (--dims, an export's truncate_dim read by plain sentence-transformers), eval.dims in
training, and the PCA an export can append instead. Real tiny models, real runs, real folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import STS_DIR, StopAt, recipe_at, tiny_recipe_text
from safetensors.torch import load_file

from distill.cli import main
from distill.config import load_recipe
from distill.embedding import Embedder, truncate
from distill.errors import DistillError
from distill.export import export_student
from distill.losses import MatryoshkaLoss, load_loss
from distill.training.run import train
from distill.training.student_folder import load_saved_student

SENTS = ["A man plays a guitar.", "Someone makes music.", "A cat sleeps on the sofa.", "The stock market fell today."]
MRL = ["loss.matryoshka_dims=[32,16,8]", "eval.dims=[32,8]"]


def _plain_st(folder, sentences) -> dict:
    """SentenceTransformer(folder).encode in a process that never imports distill."""
    code = f"""
import sys, json
from sentence_transformers import SentenceTransformer
m = SentenceTransformer({str(folder)!r}, device="cpu")
e = m.encode({sentences!r})
assert not any(k.startswith("distill") for k in sys.modules), "plain sentence-transformers imported distill"
print(json.dumps({{"emb": e.tolist(), "dim": m.get_embedding_dimension()}}))
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _in_process(folder, sentences) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(folder), device="cpu").encode(sentences)


@pytest.fixture(scope="module")
def mrl_run(tmp_path_factory, tiny_home):
    """A tiny InfoNCE run with matryoshka_dims [32, 16, 8] and eval.dims [32, 8] (32-d student),
    stopped after its step-2 checkpoint and resumed: the prefixes' heads come back from it."""
    root = tmp_path_factory.mktemp("mrl")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DISTILL_HOME", str(tiny_home))
        recipe = recipe_at(root, MRL, loss="name: infonce", steps=4, every=2)
        with pytest.raises(KeyboardInterrupt):
            train(recipe, progress=False, callbacks=[StopAt(3)])
        results = train(recipe, resume=True, progress=False)
    return root, results


# ------------------------------------------------------------------------------- --dims


def test_truncate_keeps_the_first_dims_and_renormalizes():
    x = np.array([[3.0, 4.0, 12.0], [0.0, 0.0, 5.0]], dtype=np.float32)
    np.testing.assert_allclose(truncate(x, 2), [[0.6, 0.8], [0.0, 0.0]])  # a zero prefix stays zero
    np.testing.assert_allclose(truncate(x, 3), x / np.linalg.norm(x, axis=1, keepdims=True), rtol=1e-6)
    for bad, message in [(0, "dims 0: expected a whole number"), (4, "dims 4: more than the 3 dimensions"), (2.5, "expected a whole")]:
        with pytest.raises(DistillError, match=message):
            truncate(x, bad)


def test_dims_in_the_embedder_pipeline_and_clis(tiny_bert_dir, tmp_path, capsys):
    from distill import pipeline

    full = Embedder(str(tiny_bert_dir))(SENTS)
    assert full.shape == (4, 32)
    eight = Embedder(str(tiny_bert_dir), dims=8)
    assert (eight.width, eight.dims) == (32, 8)
    np.testing.assert_allclose(eight(SENTS), truncate(full, 8), atol=1e-6)
    out = pipeline(str(tiny_bert_dir), dims=8)({"source_sentence": [SENTS[0]], "sentences_to_compare": SENTS[1:]})
    t = truncate(full, 8)
    assert out["text_embedding"].shape == (4, 8)
    np.testing.assert_allclose(out["scores"], t[1:] @ t[0], atol=1e-5)
    with pytest.raises(DistillError, match=r"dims 33: more than the 32 dimensions of .*use 1 to 32"):
        Embedder(str(tiny_bert_dir), dims=33)
    # a callable's width shows only in its output: checked there
    with pytest.raises(DistillError, match="dims 40: more than the 32 dimensions"):
        Embedder(lambda s: full[: len(s)], dims=40)(SENTS)
    # the commands
    (tmp_path / "in.txt").write_text("\n".join(SENTS) + "\n")
    assert main(["encode", "--model", str(tiny_bert_dir), "--input", str(tmp_path / "in.txt"), "--out", str(tmp_path / "e.npy"),
                 "--dims", "8", "--quiet"]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "e.npy"), t, atol=1e-5)
    assert main(["similarity", "--model", str(tiny_bert_dir), "--source", SENTS[0], "--compare", *SENTS[1:], "--dims", "8",
                 "--json", "--embeddings"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert len(printed["text_embedding"][0]) == 8
    assert main(["eval", "--model", str(tiny_bert_dir), "--sts-dir", str(STS_DIR), "--tasks", "STS-B-dev", "--dims", "64", "--quiet"]) == 2
    assert "dims 64: more than the 32 dimensions" in capsys.readouterr().err
    (tmp_path / "q.tsv").write_text("q1\tguitar music\nq2\ta sleeping cat\n")
    (tmp_path / "c.tsv").write_text("".join(f"d{i}\t{s}\n" for i, s in enumerate(SENTS)))
    (tmp_path / "qrels.tsv").write_text("q1\td0\t1\nq2\td2\t1\n")
    assert main(["eval-retrieval", "--model", str(tiny_bert_dir), "--queries", str(tmp_path / "q.tsv"), "--corpus", str(tmp_path / "c.tsv"),
                 "--qrels", str(tmp_path / "qrels.tsv"), "--k", "2", "--dims", "8", "--json", str(tmp_path / "r.json"), "--quiet"]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["dims"] == 8


# ------------------------------------------------------------------------------- training


def test_a_matryoshka_run_logs_each_width_selects_on_the_first_and_saves_every_prefix_head(mrl_run):
    root, results = mrl_run
    run = root / "run"
    assert results["steps"] == 4 and [e["step"] for e in results["evals"]] == [2, 4]  # resumed after step 2
    assert {"STS-B", "STS-B@8", "Avg", "Avg@8"} <= set(results["best"]) and results["dev_task"] == "STS-B-dev"
    assert all({"STS-B-dev", "STS-B-dev@8"} <= set(e) for e in results["evals"])
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert any({"loss@32", "loss@16", "loss@8", "infonce", "infonce@8"} <= set(row) for row in log)
    assert "@8 |" in (run / "results.md").read_text()  # a table row per eval.dims width
    heads = load_file(str(run / "best" / "heads.safetensors"))
    assert {k.rsplit(".", 1)[0] for k in heads} == {f"prefixes.{j}.decoder" for j in range(3)}
    assert heads["prefixes.2.decoder.weight"].shape == (32, 8)  # prefix 8 -> the 32-d teacher: its own head
    student, meta, state = load_saved_student(run / "best", device="cpu")
    loss = load_loss(meta["loss"], student.dim, state)
    assert isinstance(loss, MatryoshkaLoss) and loss.dims == [32, 16, 8]
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)["loss"]
    assert {k.split(".")[1] for k in ckpt} == {"0", "1", "2"}


# ------------------------------------------------------------------------------- export


def test_export_dims_is_what_plain_sentence_transformers_and_distill_eval_serve(mrl_run, tmp_path, capsys):
    root, results = mrl_run
    out = tmp_path / "at8"
    assert main(["export", str(root / "run"), "--out", str(out), "--dims", "8"]) == 0
    assert json.loads((out / "config_sentence_transformers.json").read_text())["truncate_dim"] == 8
    card = (out / "README.md").read_text()
    assert "first 8 dimensions (truncate_dim)" in card and f"| {results['best']['STS-B@8']:.2f} |" in card  # the run's score at 8
    plain = _plain_st(out, SENTS)
    assert plain["dim"] == 8 and np.asarray(plain["emb"]).shape == (4, 8)
    full = Embedder(str(out), dims=32)(SENTS)  # --dims overrides the folder's truncate_dim, as encode(truncate_dim=) does
    np.testing.assert_allclose(Embedder(str(out))(SENTS), truncate(full, 8), atol=1e-5)
    # sentence-transformers truncates after the folder's Normalize: same direction, not unit length
    e = np.asarray(plain["emb"])
    np.testing.assert_allclose(e / np.linalg.norm(e, axis=1, keepdims=True), truncate(full, 8), atol=1e-5)
    # distill's commands honour truncate_dim (they all embed through Embedder: eval, encode, similarity, eval-retrieval)
    (tmp_path / "in.txt").write_text("\n".join(SENTS) + "\n")
    assert main(["encode", "--model", str(out), "--input", str(tmp_path / "in.txt"), "--out", str(tmp_path / "e.npy"), "--quiet"]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "e.npy"), truncate(full, 8), atol=1e-5)
    # ... and at 8 dimensions it is the student the run scored as STS-B@8 (its best/ through Embedder at dims=8)
    np.testing.assert_allclose(Embedder(str(root / "run" / "best"), dims=8)(SENTS), truncate(full, 8), atol=1e-5)
    # --keep-projection keeps the full-width prefix's head; with --dims it is refused; bad widths are named
    proj = export_student(root / "run", tmp_path / "proj", keep_projection=True)
    assert _in_process(proj, SENTS[:1]).shape == (1, 32)
    assert "the full 32-d vector's head" in (proj / "README.md").read_text()
    with pytest.raises(DistillError, match="--dims and --keep-projection"):
        export_student(root / "run", tmp_path / "x", keep_projection=True, dims=8)
    assert main(["export", str(root / "run"), "--out", str(tmp_path / "y"), "--dims", "33"]) == 2
    assert "--dims 33: must be between 1 and the exported width 32" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()


def test_pca_export_is_one_folder_and_pca_then_dims_equals_a_smaller_pca(trained_run, tmp_path, capsys):
    """--pca N: a Dense layer fitted on the student's vectors of the run's training sentences;
    `distill eval` scores the folder's Dense too (what SentenceTransformer serves)."""
    p8, p32 = tmp_path / "pca8", tmp_path / "pca32"
    assert main(["export", str(trained_run), "--out", str(p8), "--pca", "8"]) == 0
    assert main(["export", str(trained_run), "--out", str(p32), "--pca", "32", "--dims", "8"]) == 0
    assert "not trained with loss.matryoshka_dims" not in capsys.readouterr().err  # PCA coordinates are ordered: no note
    kinds = [m["type"].rsplit(".", 1)[-1] for m in json.loads((p8 / "modules.json").read_text())]
    assert kinds == ["Transformer", "Pooling", "Dense", "Normalize"]
    ea, eb = _in_process(p8, SENTS), _in_process(p32, SENTS)
    assert ea.shape == eb.shape == (4, 8)
    eb = eb / np.linalg.norm(eb, axis=1, keepdims=True)
    assert np.abs(np.abs((ea * eb).sum(1)) - 1).max() < 1e-4  # the same directions (a principal axis may flip sign)
    # distill's own commands serve the Dense layer, not the bare pooled vector
    np.testing.assert_allclose(Embedder(str(p8))(SENTS), ea, atol=1e-5)
    # the PCA is of the run's training sentences: centered there, its top direction carries the most variance
    from distill.data.cache import TeacherCache

    meta = json.loads((trained_run / "best" / "distill_student.json").read_text())
    train_emb = Embedder(str(p8))(TeacherCache.open(meta["cache"]).sentences()[:200])
    assert train_emb.shape == (200, 8)
    assert main(["export", str(trained_run), "--out", str(tmp_path / "z"), "--pca", "8", "--keep-projection"]) == 2
    assert "--pca and --keep-projection" in capsys.readouterr().err
    assert main(["export", str(trained_run), "--out", str(tmp_path / "z"), "--pca", "40"]) == 2
    assert "--pca 40: must be at most the student's width 32" in capsys.readouterr().err
    assert main(["export", str(trained_run), "--out", str(tmp_path / "z"), "--dims", "8"]) == 0
    assert "not trained with loss.matryoshka_dims" in capsys.readouterr().err


def test_a_pca_head_run_serves_prefixes_of_the_head_through_plain_sentence_transformers(tmp_path, tiny_home, monkeypatch):
    """matryoshka_head pca: the head is fitted before step 1, trained, saved with the student,
    scored by the run and written by export as a Dense layer, so the folder's 8-d vectors are the
    first 8 of the head's output, in this process and in plain sentence-transformers."""
    monkeypatch.setenv("DISTILL_HOME", str(tiny_home))
    recipe = recipe_at(tmp_path, [*MRL, "loss.matryoshka_head=pca"], loss="name: infonce", steps=2, every=2)
    results = train(recipe, progress=False)
    assert {"STS-B", "STS-B@8"} <= set(results["best"]) and results["embedding_dim"] == 32
    run = tmp_path / "run"
    student, meta, state = load_saved_student(run / "best", device="cpu")
    assert meta["embedding_head"] == "Linear" and state["rotation.weight"].shape == (32, 32)
    head = load_loss(meta["loss"], student.dim, state).embedding_head()
    own = student.encode(SENTS, batch_size=4, progress=False).astype(np.float64)  # the student's own vectors
    out = export_student(run, tmp_path / "at8", dims=8)
    plain = _plain_st(out, SENTS)
    assert plain["dim"] == 8
    full = Embedder(str(out), dims=32)(SENTS)
    np.testing.assert_allclose(Embedder(str(run / "best"), dims=32)(SENTS), full, atol=1e-5)  # the run's vectors = the export's
    y = own @ head.weight.detach().double().numpy().T + head.bias.detach().double().numpy()
    np.testing.assert_allclose(truncate(y, 32), full, atol=1e-4)  # the head is applied ...
    assert np.abs(truncate(own, 32) - full).max() > 1e-2  # ... and is not the identity
    e = np.asarray(plain["emb"])
    np.testing.assert_allclose(e / np.linalg.norm(e, axis=1, keepdims=True), truncate(full, 8), atol=1e-5)  # prefixes of the head


# ------------------------------------------------------------------------------- static student


def test_static_student_trains_prefixes_and_serves_them(tmp_path, tiny_home, monkeypatch):
    """Also: eval.dims whose first width is below the vector's own select on it (the full vector
    is still scored)."""
    monkeypatch.setenv("DISTILL_HOME", str(tiny_home))
    path = tmp_path / "recipe.yaml"
    path.write_text(tiny_recipe_text(tmp_path, loss="name: mse", steps=2, every=2).replace("student: tiny-student", "student: tiny-static"))
    results = train(load_recipe(path, ["loss.matryoshka_dims=[16,8,4]", "eval.dims=[8,4]"]), progress=False)
    assert {"STS-B", "STS-B@8", "STS-B@4"} <= set(results["best"]) and results["embedding_dim"] == 16
    assert results["dev_task"] == "STS-B-dev@8" and results["best_dev"] == results["evals"][0]["STS-B-dev@8"]
    assert "STS-B-dev" in results["evals"][0]
    heads = load_file(str(tmp_path / "run" / "best" / "heads.safetensors"))
    assert heads["prefixes.2.projection.weight"].shape == (32, 4)  # MSE: a Linear(4 -> 32-d teacher) for the 4-d prefix
    out = export_student(tmp_path / "run", tmp_path / "at4", dims=4)
    plain = _in_process(out, SENTS)
    assert plain.shape == (4, 4)
    np.testing.assert_allclose(Embedder(str(out))(SENTS), truncate(plain, 4), atol=1e-5)
    with pytest.raises(DistillError, match=r"the first width must be the student's own, 16"):
        load_recipe(path, ["loss.matryoshka_dims=[8,4]"])
    from distill.training.evaluators import STSEvaluator

    with pytest.raises(DistillError, match=r"eval.dims \[64, 8\]: 64 is more than the 32 dimensions"):
        STSEvaluator(["STS-B-dev"], sts_dir=STS_DIR, dims=[64, 8], width=32)


def test_onnx_export_refuses_a_dense_after_a_normalize(tiny_bert_dir, tmp_path):
    """The graph normalizes once, at the end: a folder that normalizes before a Dense would be exported wrong."""
    pytest.importorskip("onnxruntime")
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules as m

    from distill.onnx.export import export_onnx

    t = m.Transformer(str(tiny_bert_dir), max_seq_length=16)
    folder = tmp_path / "norm-then-dense"
    SentenceTransformer(modules=[t, m.Pooling(32, pooling_mode="mean"), m.Normalize(), m.Dense(32, 8), m.Normalize()], device="cpu").save(str(folder))
    with pytest.raises(DistillError, match="Dense module 3 comes after a Normalize"):
        export_onnx(folder, log=lambda msg: None)


def test_a_damaged_or_wrong_truncate_dim_is_an_error_naming_the_file(tmp_path, minilm_path):
    """The folder's config_sentence_transformers.json is read strictly (st_format's reader): a file
    cut short names itself and its line, a truncate_dim that is no positive whole number names the
    value, instead of being passed over or failing later inside sentence-transformers."""
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(minilm_path, folder)
    config = folder / "config_sentence_transformers.json"
    config.write_text('{"truncate_dim": 8,\n')
    with pytest.raises(DistillError, match=r"config_sentence_transformers\.json:2: not valid JSON"):
        Embedder(str(folder))
    config.write_text('{"truncate_dim": 0}\n')
    with pytest.raises(DistillError, match="truncate_dim 0 is not a positive whole number"):
        Embedder(str(folder))
    (folder / "modules.json").write_text("[{\"idx\": 0,\n")  # read for the modules our Encoder does not reproduce
    config.write_text("{}\n")
    with pytest.raises(DistillError, match=r"modules\.json:\d+: not valid JSON"):
        Embedder(str(folder))
