"""Static students (distill/static_student.py): a token table, mean-pooled, trained like any student.

Real components: the tiny BERT teacher of conftest with the real MiniLM WordPiece tokenizer, real
training runs on the shared corpus, a real export loaded by plain sentence-transformers in a
process that never imports distill.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import STS_DIR, StopAt, tiny_recipe_text

from distill.cli import main
from distill.config import load_recipe
from distill.errors import DistillError
from distill.presets import StaticStudentSpec, load_student, load_teacher
from distill.static_student import SIF_COEFFICIENT, StaticStudent, distill_table, static_tokenizer
from distill.training.trainer import train


def _recipe(tmp_path, loss="name: infonce", steps=8, every=4, extra=""):
    path = tmp_path / "recipe.yaml"
    path.write_text(tiny_recipe_text(tmp_path, loss=loss, steps=steps, every=every, extra=extra).replace("student: tiny-student", "student: tiny-static"))
    return path


@pytest.fixture(scope="module")
def static_run(tmp_path_factory, tiny_home):
    """One trained tiny static student (IBKD with its HSIC term on), shared by the export checks."""
    root = tmp_path_factory.mktemp("static")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DISTILL_HOME", str(tiny_home))
        results = train(load_recipe(_recipe(root, loss="name: ibkd, lam: 0.1, bandwidth: median")), progress=False)
    return root, results


def test_a_damaged_static_init_table_is_named(static_run, tmp_path, tiny_home, monkeypatch):
    """Issue 38, failure 10: the init table kept in CACHE/static/ surfaced, damaged, as numpy's
    ValueError ('cannot reshape array ...'). The run's own table, copied, is read back; cut short,
    it is one line naming it."""
    import shutil

    from distill.resolve import resolve_model
    from distill.static_student import cached_distill_table

    monkeypatch.setenv("DISTILL_HOME", str(tiny_home))
    shutil.copytree(static_run[0] / "cache" / "static", tmp_path / "static")
    (kept,) = (tmp_path / "static").iterdir()
    teacher, tokenizer = load_teacher("tiny-teacher"), static_tokenizer(resolve_model("tiny-teacher", role="teacher"))
    np.testing.assert_array_equal(cached_distill_table(teacher, tokenizer, 16, "zipf", cache_dir=tmp_path, progress=False), np.load(kept))
    kept.write_bytes(kept.read_bytes()[: kept.stat().st_size // 2])
    with pytest.raises(DistillError, match=rf"^{kept}: a damaged static init table \(.*\); delete it and it is computed again$"):
        cached_distill_table(teacher, tokenizer, 16, "zipf", cache_dir=tmp_path, progress=False)


def test_a_static_model_encodes_all_of_a_line_past_a_million_tokens(static_run):
    """Issue 38 (notes): a static model stopped at 1,000,000 tokens of one line; sentence-transformers'
    StaticEmbedding takes all of it. 1,000,000 x "a" and 200,000 x "b" is the mean of 5 "a" rows and
    1 "b" row, as "a a a a a b" is (to float32 summation over 1.2M rows): cut at a million, it was
    the "a" row alone. The saved student's tokenizer.json truncated at training's data.max_length
    (32) when sentence-transformers loaded the folder: it is saved without truncation now."""
    from sentence_transformers import SentenceTransformer

    from distill.models import load_served as load_model

    def cos(x, y):
        return float(x @ y / np.linalg.norm(x) / np.linalg.norm(y))

    best = static_run[0] / "run" / "best"
    long_line = "a " * 1_000_000 + "b " * 200_000
    ours = load_model(str(best), device="cpu").encode([long_line, "a a a a a b", "a"], progress=False)
    assert cos(ours[0], ours[1]) > 0.9999 and cos(ours[2], ours[1]) < 0.999  # measured: 0.99993; "a" alone 0.9944
    plain = SentenceTransformer(str(best), device="cpu").encode([long_line])[0]  # the folder as sentence-transformers serves it
    np.testing.assert_allclose(plain, ours[0], rtol=1e-5, atol=1e-7)


def test_static_preset_kind_is_read_and_checked(tiny_home, monkeypatch, tmp_path):
    monkeypatch.setenv("DISTILL_HOME", str(tiny_home))
    spec = load_student("tiny-static")
    assert spec == StaticStudentSpec(name="tiny-static", type="static", dim=16, tokenizer=None, init="distill", weighting="zipf")
    (tiny_home / "students" / "bad-static.yaml").write_text("name: bad-static\ntype: static\ndim: 16\ninit: pca\n")
    with pytest.raises(DistillError, match=r"bad-static\.yaml: init 'pca' is not one of distill, random"):
        load_student("bad-static")
    (tiny_home / "students" / "bad-static.yaml").write_text("name: bad-static\ntype: statik\ndim: 16\n")
    with pytest.raises(DistillError, match=r"bad-static\.yaml: type 'statik' is not one of transformer, static"):
        load_student("bad-static")
    (tiny_home / "students" / "bad-static.yaml").unlink()


def test_forward_is_the_mean_of_the_rows_and_x_is_frozen(tiny_bert_dir):
    """EmbeddingBag(mean) against an explicit loop; no special tokens; an empty sentence is a zero
    vector; IBKD's X is the mean of a frozen random table, not of the trained one."""
    tok = static_tokenizer(tiny_bert_dir)
    table = torch.randn(len(tok.get_vocab()), 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    st = StaticStudent(tok, table).double()
    sentences = ["A man plays a guitar.", "", "dogs"]
    ids = [tok(s)["input_ids"] for s in sentences]
    assert ids[2] == tok.convert_tokens_to_ids(["dogs"]) and ids[1] == []  # no [CLS] / [SEP]
    width = max(map(len, ids))
    input_ids = torch.tensor([i + [0] * (width - len(i)) for i in ids])
    mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids])
    out = st(input_ids, mask, output_hidden_states=True)
    for row, token_ids in zip(out["embedding"], ids):
        expected = sum(table[t] for t in token_ids) / len(token_ids) if token_ids else torch.zeros(6, dtype=torch.float64)
        torch.testing.assert_close(row, expected)
    (x,) = out["hidden_states"]
    assert x.shape[:2] == input_ids.shape and not x.requires_grad
    before = x.clone()
    with torch.no_grad():
        st.embedding.weight.add_(1.0)  # training the table leaves X as it was
    torch.testing.assert_close(st(input_ids, mask, output_hidden_states=True)["hidden_states"][0], before)


def test_distill_init_matches_an_independent_computation(tiny_home, tiny_bert_dir, monkeypatch):
    """The teacher's pooled vector of "[CLS] t [SEP]" per kept token, PCA, a fixed sign, SIF/Zipf weights."""
    from transformers import AutoModel

    monkeypatch.setenv("DISTILL_HOME", str(tiny_home))
    spec = load_teacher("tiny-teacher")
    tok = static_tokenizer(tiny_bert_dir)
    table = distill_table(spec, tok, 4, "zipf", progress=False, device="cpu")
    vocab = tok.get_vocab()
    kept = sorted(i for t, i in vocab.items() if not (t.startswith("[unused") or t in ("[CLS]", "[SEP]", "[MASK]")))
    model = AutoModel.from_pretrained(str(tiny_bert_dir)).eval().double()
    cls_id, sep_id = vocab["[CLS]"], vocab["[SEP]"]
    with torch.no_grad():
        ids = torch.tensor([[cls_id, t, sep_id] for t in kept])
        h = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state.mean(1)
    v = torch.nn.functional.normalize(h, dim=-1).numpy()  # the tiny teacher preset normalizes
    c = v - v.mean(0)
    eigval, eigvec = np.linalg.eigh(c.T @ c)
    comps = eigvec[:, ::-1][:, :4]
    r = c @ comps
    r = r * np.sign(r[np.abs(r).argmax(0), np.arange(4)])
    p = np.array([1.0 / (rank + 1) for rank in range(1, len(kept) + 1)])
    r = r * (SIF_COEFFICIENT / (SIF_COEFFICIENT + p / p.sum()))[:, None]
    np.testing.assert_allclose(table[kept], r, rtol=2e-3, atol=2e-5)
    skipped = sorted(set(range(len(vocab))) - set(kept))
    assert skipped and not table[skipped].any()


def test_trained_static_student_exports_to_plain_sentence_transformers(static_run, tmp_path):
    """best/ -> export -> SentenceTransformer(DIR) in a process that never imports distill: the
    same vectors and the same STS as `distill eval` of the folder (to 0.01)."""
    root, results = static_run
    assert results["steps"] == 8 and results["embedding_dim"] == 16 and "ib" in results
    meta = json.loads((root / "run" / "best" / "distill_student.json").read_text())
    assert meta["kind"] == "static"
    out = tmp_path / "export"
    assert main(["export", str(root / "run"), "--out", str(out)]) == 0
    modules = json.loads((out / "modules.json").read_text())
    assert modules[0]["type"].endswith("StaticEmbedding") and modules[-1]["type"].endswith("Normalize")
    assert main(["eval", "--model", str(out), "--sts-dir", str(STS_DIR), "--tasks", "STS-B", "--json", str(tmp_path / "ours.json"), "--quiet"]) == 0
    ours = json.loads((tmp_path / "ours.json").read_text())["scores"]["STS-B"]
    code = f"""
import sys, json, numpy as np
from scipy.stats import spearmanr
from sentence_transformers import SentenceTransformer
m = SentenceTransformer({str(out)!r}, device="cpu")
rows = [l.split("\\t") for l in open({str(STS_DIR / 'stsb' / 'sts-test.csv')!r}, encoding="utf-8").read().splitlines()]
s1 = [" ".join(r[5].split()) for r in rows]; s2 = [" ".join(r[6].split()) for r in rows]; gold = [float(r[4]) for r in rows]
a, b = m.encode(s1), m.encode(s2)
cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
assert not any(k.startswith("distill") for k in sys.modules), "plain sentence-transformers imported distill"
print(json.dumps({{"stsb": float(spearmanr(cos, gold).statistic * 100), "first": m.encode(["A man plays a guitar."])[0].tolist()}}))
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    plain = json.loads(done.stdout.strip().splitlines()[-1])
    assert abs(plain["stsb"] - ours) < 0.01
    mine = StaticStudent.load_folder(out, device="cpu").encode(["A man plays a guitar."], progress=False)[0]
    np.testing.assert_allclose(plain["first"], mine / np.linalg.norm(mine), atol=1e-5)
    with pytest.raises(DistillError, match="needs no ONNX graph"):
        from distill.onnx.export import export_onnx

        export_onnx(out)


def test_static_folder_works_in_encode_and_similarity(static_run, tmp_path, capsys):
    root, _ = static_run
    best = root / "run" / "best"
    (tmp_path / "in.txt").write_text("A man plays a guitar.\nSomeone makes music.\n\n")
    assert main(["encode", "--model", str(best), "--input", str(tmp_path / "in.txt"), "--out", str(tmp_path / "e.npy"), "--quiet"]) == 0
    emb = np.load(tmp_path / "e.npy")
    assert emb.shape == (3, 16) and not emb[2].any()  # an empty line is a zero vector, row i stays line i
    assert main(["similarity", "--model", str(best), "--source", "A man plays a guitar.", "--compare", "Someone makes music.", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["sentence"] == "Someone makes music."


def test_static_resume_ends_where_a_straight_run_ends(tmp_path, tiny_home, monkeypatch):
    """Interrupted after its first checkpoint and resumed: the same evaluations and table; the
    rows of tokens the corpus never shows keep their distilled init (no weight decay on them)."""
    from safetensors.torch import load_file

    monkeypatch.setenv("DISTILL_HOME", str(tiny_home))
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    straight = train(load_recipe(_recipe(a, steps=12, every=4)), progress=False)
    recipe = load_recipe(_recipe(b, steps=12, every=4))
    with pytest.raises(KeyboardInterrupt):
        train(recipe, progress=False, callbacks=[StopAt(10)])  # after the step-8 checkpoint
    resumed = train(recipe, resume=True, progress=False)
    assert [e["step"] for e in resumed["evals"]] == [e["step"] for e in straight["evals"]] == [4, 8, 12]
    wa, wb = load_file(str(a / "run" / "final" / "model.safetensors")), load_file(str(b / "run" / "final" / "model.safetensors"))
    torch.testing.assert_close(wa["embedding.weight"], wb["embedding.weight"], atol=1e-5, rtol=1e-4)
    init = np.load(next((a / "cache" / "static").glob("*.npy")))
    seen = {int(t) for t in np.load(next((a / "cache" / "tokens").glob("*/ids.npy")))}
    unseen = sorted(set(range(len(init))) - seen)
    np.testing.assert_array_equal(wa["embedding.weight"].numpy()[unseen], init[unseen])


def test_a_static_preset_names_the_teacher_it_needs(tiny_home, monkeypatch):
    from distill.models import load_student

    monkeypatch.setenv("DISTILL_HOME", str(tiny_home))
    with pytest.raises(DistillError, match="static student: it is built from a teacher"):
        load_student("tiny-static")


def test_compare_takes_a_static_student(tmp_path, tiny_home, monkeypatch, capsys):
    """`distill compare --student tiny-static`: the same recipe's losses on the static student,
    HPD's head on top of the table included; the untrained row is the distilled init."""
    monkeypatch.setenv("DISTILL_HOME", str(tiny_home))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(tiny_recipe_text(tmp_path, loss="name: infonce", steps=4, every=4))
    out = tmp_path / "cmp"
    assert main(["compare", str(recipe), "--student", "tiny-static", "--losses", "mse,hpd", "--loss-set", "hpd.k=8",
                 "--out", str(out), "--quiet"]) == 0
    rows = json.loads((out / "compare.json").read_text())
    assert [r["loss"] for r in rows] == ["teacher", "init", "mse", "hpd"]
    assert all(r["student"] == "tiny-static" for r in rows[1:]) and rows[1]["dim"] == 16 and rows[3]["dim"] == 8
    assert "student init (tiny-static)" in (out / "compare.md").read_text()


def test_quiet_training_shows_no_static_init_bar(tmp_path, tiny_home, monkeypatch, capfd):
    """`distill train --quiet` (progress=False) reached the static table's init with its bar on:
    a log of ~100 bar redraws per run (seen in a dureader-robust run's log)."""
    monkeypatch.setenv("DISTILL_HOME", str(tiny_home))
    train(load_recipe(_recipe(tmp_path, loss="name: mse", steps=2, every=2)), progress=False)
    assert list((tmp_path / "cache" / "static").iterdir())  # the table was computed in this run, not read back
    err = capfd.readouterr().err
    assert "static init" not in err, err[-500:]
