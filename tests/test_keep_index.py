"""Keep your index (issue 34): students in the teacher's space, asymmetric retrieval, one Router folder.

Real components: the tiny BERT teacher (32-d) of conftest with the real MiniLM tokenizer, a tiny
static student (16-d, so it needs the teacher-space head), real training runs, a real BEIR folder
of SciFact text (tiny_beir), and plain sentence-transformers in a process that never imports distill.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import tiny_recipe_text

from distill.cli import main
from distill.config import load_recipe
from distill.errors import DistillError
from distill.eval.retrieval import compute_metrics, evaluate_retrieval, load_beir
from distill.eval.retrieval.asymmetric import clear_doc_memo, doc_embedder, doc_memo_stats
from distill.losses import build_loss, load_loss
from distill.training.trainer import train


def _recipe(tmp_path, beir, loss="name: mse, teacher_space: true", extra=""):
    path = tmp_path / "recipe.yaml"
    text = tiny_recipe_text(tmp_path, loss=loss, steps=8, every=4, extra=extra).replace("student: tiny-student", "student: tiny-static")
    text = text.replace("eval:\n", f"eval:\n  retrieval: {{beir: {beir}, split: dev, metric: ndcg@10, select: true, doc_model: teacher}}\n"
                                    f"  final_retrieval: {{beir: {beir}, split: test, doc_model: teacher}}\n", 1)
    path.write_text(text)
    return path


@pytest.fixture(autouse=True)
def _tiny_presets(tiny_home, monkeypatch):
    """tiny-teacher and tiny-static by name, in every test of this module."""
    monkeypatch.setenv("DISTILL_HOME", str(tiny_home))


@pytest.fixture(scope="module")
def space_run(tmp_path_factory, tiny_home, tiny_beir):
    """A tiny static student (16-d) trained into the tiny teacher's 32-d space, selected and
    reported on student queries against the teacher's documents."""
    root = tmp_path_factory.mktemp("space")
    clear_doc_memo()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DISTILL_HOME", str(tiny_home))
        results = train(load_recipe(_recipe(root, tiny_beir)), progress=False)
        stats = dict(doc_memo_stats)
    return root / "run", results, stats


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory, tiny_home, tiny_beir):
    """The same student with plain mse (its 16 -> 32 projection training-only): not in the teacher's space."""
    root = tmp_path_factory.mktemp("plain")
    text = _recipe(root, tiny_beir, loss="name: mse").read_text()
    text = text.replace(", doc_model: teacher", "")
    (root / "recipe.yaml").write_text(text)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DISTILL_HOME", str(tiny_home))
        train(load_recipe(root / "recipe.yaml"), progress=False)
    return root / "run"


# ------------------------------------------------------------------------------- the loss


def test_teacher_space_head_is_the_embedding_and_starts_at_least_squares():
    torch.manual_seed(0)
    loss = build_loss({"name": "mse", "teacher_space": True}, 16, 32)
    assert loss.needs_prepare and loss.embedding_head() is loss.projection and loss.export_head() is None
    s, w = torch.randn(300, 16), torch.randn(16, 32)
    t = s @ w + 0.25
    loss.prepare(s, t)
    assert torch.allclose(loss.projection(s), t, atol=1e-3)
    back = load_loss({"name": "mse", "teacher_space": True}, 16, loss.state_dict())
    assert torch.equal(back.embedding_head().weight, loss.projection.weight)
    # a plain mse projection stays training-only; the same width needs no head at all
    plain = build_loss({"name": "mse"}, 16, 32)
    assert plain.embedding_head() is None and plain.export_head() is not None and not plain.needs_prepare
    same = build_loss({"name": "cosine", "teacher_space": True}, 32, 32)
    assert same.embedding_head() is None and not same.needs_prepare
    with pytest.raises(DistillError, match="teacher_space with projection: false, but the 16-d student"):
        build_loss({"name": "cosine", "teacher_space": True, "projection": False}, 16, 32)
    with pytest.raises(DistillError, match=r"loss mse\.teacher_space: must be true or false, got 'yes'"):
        build_loss({"name": "mse", "teacher_space": "yes"}, 16, 32)


def test_recipe_refuses_teacher_space_with_stage2_or_prefixes(tmp_path, tiny_home, tiny_beir, monkeypatch):
    monkeypatch.setenv("DISTILL_HOME", str(tiny_home))
    path = _recipe(tmp_path, tiny_beir)
    with pytest.raises(DistillError, match="teacher_space with stage2.rows: stage 2's contrastive fine-tuning moves"):
        load_recipe(path, [f"stage2.rows=[{tmp_path / 'rows.jsonl'}]"])
    with pytest.raises(DistillError, match="teacher_space with loss.matryoshka_dims"):
        load_recipe(path, ["loss.matryoshka_dims=[16,8]"])
    with pytest.raises(DistillError, match="eval.baselines with loss.teacher_space and a doc_model: the untrained student has no head"):
        load_recipe(path, ["eval.baselines=true"])
    with pytest.raises(DistillError, match=r"eval.final_retrieval.doc_model: must be unset .*, got ''"):
        load_recipe(path, ["eval.final_retrieval.doc_model=''"])


# ------------------------------------------------------------------------------- training and asymmetric scores


def test_run_selects_and_reports_student_queries_against_teacher_documents(space_run, tiny_beir):
    run, results, stats = space_run
    assert results["embedding_dim"] == 32  # the head's output, the teacher's width
    ret = results["retrieval"]
    assert ret["doc_model"] == "tiny-teacher" and ret["split"] == "test"
    # the fixed teacher's documents: encoded once for the whole run (2 evaluation points, the test report)
    assert stats["misses"] == 1 and stats["hits"] >= 2
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert sum("retrieval/nDCG@10" in e.get("eval", {}) for e in log) == 2
    # the same number from the command, from the saved student
    clear_doc_memo()
    data = load_beir(tiny_beir, "test")
    again = evaluate_retrieval(str(run / "best"), data.queries, data.corpus, data.qrels, k=(100,), doc_model="tiny-teacher")
    assert abs(100 * again["nDCG@10"] - ret["nDCG@10"]) < 0.01


def test_eval_retrieval_doc_model_widths_and_teacher_warning(space_run, plain_run, tiny_beir, tmp_path, capsys):
    run = space_run[0]
    out = tmp_path / "r.json"
    assert main(["eval-retrieval", "--model", str(run / "best"), "--doc-model", "tiny-teacher", "--beir", str(tiny_beir),
                 "--split", "dev", "--json", str(out), "--quiet"]) == 0
    saved = json.loads(out.read_text())
    assert saved["doc_model"] == "tiny-teacher" and saved["doc_max_length"] == 128
    # a 16-d student (projection training-only) against the 32-d teacher: both widths named
    capsys.readouterr()
    assert main(["eval-retrieval", "--model", str(plain_run / "best"), "--doc-model", "tiny-teacher", "--beir", str(tiny_beir), "--quiet"]) == 2
    assert "puts out 16-d vectors and the document model tiny-teacher 32-d ones" in capsys.readouterr().err
    # another model than the one it was distilled from: a warning naming both
    assert main(["eval-retrieval", "--model", str(run / "best"), "--doc-model", "tiny-student", "--beir", str(tiny_beir),
                 "--split", "dev", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "was distilled from the teacher tiny-teacher, not from the document model tiny-student" in err


# ------------------------------------------------------------------------------- the Router folder


def test_asymmetric_export_serves_student_queries_and_teacher_documents(space_run, tiny_beir, tmp_path, capsys):
    """SentenceTransformer(DIR), in a process that never imports distill: encode_query = the student,
    encode_document = the teacher (to 1e-5), and cosine search gives eval-retrieval's nDCG@10 (to 0.01)."""
    run = space_run[0]
    out = tmp_path / "router"
    assert main(["export", str(run), "--asymmetric", "--out", str(out)]) == 0
    modules = json.loads((out / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Router"]
    data = load_beir(tiny_beir, "test")
    qids = [q for q in data.queries if q in data.qrels]
    queries, doc_ids = [data.queries[q] for q in qids], list(data.corpus)
    (tmp_path / "texts.json").write_text(json.dumps({"queries": queries, "docs": [data.corpus[d] for d in doc_ids]}))
    code = f"""
import sys, json, numpy as np
from sentence_transformers import SentenceTransformer
m = SentenceTransformer({str(out)!r}, device="cpu")
t = json.load(open({str(tmp_path / 'texts.json')!r}))
np.save("q.npy", m.encode_query(t["queries"])); np.save("d.npy", m.encode_document(t["docs"])); np.save("p.npy", m.encode(t["queries"][:3]))
assert not any(k.startswith("distill") for k in sys.modules), "plain sentence-transformers imported distill"
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    q, d, plain = (np.load(tmp_path / f) for f in ("q.npy", "d.npy", "p.npy"))
    from distill.embedding import OWN, Embedder

    student = Embedder(str(run / "best"), full_length=True, max_length=OWN)(queries)
    teacher = doc_embedder("tiny-teacher")([data.corpus[x] for x in doc_ids])
    norm = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    np.testing.assert_allclose(q, norm(student), atol=1e-5)
    np.testing.assert_allclose(d, norm(teacher), atol=1e-5)
    np.testing.assert_allclose(plain, norm(doc_embedder("tiny-teacher")(queries[:3])), atol=1e-5)  # plain encode: the document route
    scores = norm(q) @ norm(d).T
    run_lists = {qid: [doc_ids[i] for i in np.argsort(-row, kind="stable")[:100]] for qid, row in zip(qids, scores)}
    ours = compute_metrics(run_lists, {qid: data.qrels[qid] for qid in qids}, (100,))
    assert main(["eval-retrieval", "--model", str(run / "best"), "--doc-model", "tiny-teacher", "--beir", str(tiny_beir),
                 "--json", str(tmp_path / "e.json"), "--quiet"]) == 0
    reported = json.loads((tmp_path / "e.json").read_text())
    assert abs(ours["nDCG@10"] - reported["nDCG@10"]) < 1e-4
    # the folder itself, scored by distill with roles: the same figure
    assert main(["eval-retrieval", "--model", str(out), "--beir", str(tiny_beir), "--json", str(tmp_path / "f.json"), "--quiet"]) == 0
    assert abs(json.loads((tmp_path / "f.json").read_text())["nDCG@10"] - reported["nDCG@10"]) < 1e-4


def test_router_folder_in_encode_similarity_and_pipeline(space_run, tmp_path, capsys):
    from distill import pipeline

    run = space_run[0]
    out = tmp_path / "router"
    assert main(["export", str(run), "--asymmetric", "--out", str(out)]) == 0
    (tmp_path / "in.txt").write_text("does aspirin lower the risk of stroke?\nAspirin reduces stroke risk in adults.\n")
    for role in ("query", "document"):
        assert main(["encode", "--model", str(out), "--role", role, "--input", str(tmp_path / "in.txt"), "--out", str(tmp_path / f"{role}.npy"),
                     "--quiet"]) == 0
    q, d = np.load(tmp_path / "query.npy"), np.load(tmp_path / "document.npy")
    assert q.shape == d.shape == (2, 32) and not np.allclose(q, d)
    from distill.embedding import OWN, Embedder

    texts = (tmp_path / "in.txt").read_text().splitlines()
    mine = Embedder(str(run / "best"), full_length=True, max_length=OWN)(texts)
    np.testing.assert_allclose(q, mine / np.linalg.norm(mine, axis=1, keepdims=True), atol=1e-5)
    capsys.readouterr()
    assert main(["similarity", "--model", str(out), "--source", texts[0], "--compare", texts[1], "query text", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    expected = float(q[0] @ d[1])
    assert abs(next(r["score"] for r in shown["results"] if r["sentence"] == texts[1]) - expected) < 1e-4
    result = pipeline(str(out))({"source_sentence": texts[0], "sentences_to_compare": [texts[1]]})
    assert abs(result["scores"][0] - expected) < 1e-4
    # how those commands know the folder serves two roles: its modules.json, read strictly
    from distill.errors import DistillError
    from distill.st_format import is_router_folder

    assert is_router_folder(out) and not is_router_folder(run / "best") and not is_router_folder("owner/not-a-folder")
    (out / "modules.json").write_text('[{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers')
    with pytest.raises(DistillError, match=r"modules\.json:1: not valid JSON"):
        is_router_folder(out)


def test_asymmetric_export_refuses_a_student_outside_the_teacher_space(plain_run, tmp_path, capsys):
    assert main(["export", str(plain_run), "--asymmetric", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "--asymmetric: the student of" in err and "puts out 16-d vectors and its teacher tiny-teacher 32-d ones" in err
    assert not (tmp_path / "x").exists() and [p.name for p in tmp_path.iterdir()] == []  # no temp folder left either
    assert main(["export", str(plain_run), "--asymmetric", "--dims", "8", "--out", str(tmp_path / "x")]) == 2
    assert "--asymmetric with --dims" in capsys.readouterr().err


def test_document_vectors_kept_between_processes_by_file_identity(tiny_beir, tmp_path, monkeypatch):
    """$DISTILL_DOC_VECTORS: the teacher's documents embedded once for several processes; a changed
    corpus file (its size or time) is a new entry, never a stale one."""
    import shutil

    from distill.eval.retrieval.asymmetric import STORE_ENV, doc_vectors

    monkeypatch.setenv(STORE_ENV, str(tmp_path / "store"))
    beir = tmp_path / "beir"
    shutil.copytree(tiny_beir, beir)
    data = load_beir(beir, "dev")
    embed = doc_embedder("tiny-teacher")
    clear_doc_memo()
    first = doc_vectors(embed, data.corpus, beir)
    clear_doc_memo()  # a new process: only the folder remembers
    again = doc_vectors(embed, data.corpus, beir)
    assert doc_memo_stats == {"hits": 1, "misses": 0} and np.array_equal(first, again)
    assert len(list((tmp_path / "store").iterdir())) == 1
    with open(beir / "corpus.jsonl", "a", encoding="utf-8") as f:  # the file changes: its vectors are embedded anew
        f.write(json.dumps({"_id": "new", "title": "", "text": "A new abstract about stroke."}) + "\n")
    changed = load_beir(beir, "dev")
    clear_doc_memo()
    fresh = doc_vectors(embed, changed.corpus, beir)
    assert doc_memo_stats["misses"] == 1 and fresh.shape[0] == first.shape[0] + 1
    assert len(list((tmp_path / "store").iterdir())) == 2
