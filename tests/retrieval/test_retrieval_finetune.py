"""Retrieval training data from a BEIR folder: the distillation corpus (`beir:DIR?queries=dev`, never a
test query), `distill mine` (teacher-mined hard negatives as CoROM / Tevatron rows), the cache at
data.teacher_max_length, and one finished stage 1 serving another stage 2 (the benchmark's seeds)."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
from conftest import REPO, STS_DIR, tiny_recipe_text

from distill.cli import main
from distill.config import load_recipe
from distill.data.corpus import read_corpus
from distill.data.rows import read_rows
from distill.errors import DistillError
from distill.eval.retrieval import load_beir


def _beir(folder, corpus, queries, qrels):
    """A BEIR folder from dicts: corpus {id: (title, text)}, queries {id: text}, qrels {split: {qid: [docids]}}."""
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"_id": d, "title": t, "text": x}) + "\n" for d, (t, x) in corpus.items()))
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": x}) + "\n" for q, x in queries.items()))
    for split, judged in qrels.items():
        lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t1" for q, docs in judged.items() for d in docs]
        (folder / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return folder


def test_beir_corpus_source_has_passages_and_dev_queries_never_a_test_query(tmp_path):
    folder = _beir(tmp_path / "b", {"d1": ("Title one", "Text one."), "d2": ("", "Text two."), "d3": ("T3", "Text three.")},
                   {"q1": "a dev claim", "q2": "a  test claim ", "q3": "a test claim", "q4": "a claim judged nowhere"},
                   {"dev": {"q1": ["d1"], "q2": ["d2"]}, "test": {"q3": ["d3"]}})
    corpus = read_corpus([f"beir:{folder}?queries=dev"])
    # passages as BEIR joins them, then the dev queries; q2 is test query q3 up to spacing: left out
    assert corpus.sentences[:] == ["Title one Text one.", "Text two.", "T3 Text three.", "a dev claim"]
    assert list(corpus.sentences.roles) == [0, 0, 0, 1]  # passages are documents, the split's queries queries
    assert read_corpus([f"beir:{folder}"]).sentences[:] == ["Title one Text one.", "Text two.", "T3 Text three."]
    for source, message in [(f"beir:{folder}?queries=test", r"split 'test' is the reporting split"),
                            (f"beir:{folder}?split=dev", r"expected queries=SPLIT"),
                            (f"beir:{folder}?queries=train", r"no qrels/train\.tsv"),
                            (f"beir:{tmp_path / 'none'}", r"is not a folder")]:
        with pytest.raises(DistillError, match=message):
            read_corpus([source])


def test_beir_source_adds_the_passages_sentences_with_a_role_never_a_test_query(tmp_path):
    """`&sentences=query`: each passage's sentences after the passages and queries (Chinese and
    Western sentence ends, a decimal point is not one), short pieces and test-query texts left out."""
    folder = _beir(tmp_path / "b", {"d1": ("", "小米6防水等级是IP67。它能防溅水!价格 3.5 千元;OK"),
                                    "d2": ("A title", "First sentence here. Second one?\nthird  line e.g.x"),
                                    "d3": ("", "月经后几天可以同房?一般是3到7天.之后")},
                   {"q1": "小米6防水等级", "q2": "月经后几天可以同房", "q3": "防水"},
                   {"dev": {"q1": ["d1"], "q3": ["d1"]}, "test": {"q2": ["d3"]}})
    corpus = read_corpus([f"beir:{folder}?queries=dev&sentences=query"])
    passages = ["小米6防水等级是IP67。它能防溅水!价格 3.5 千元;OK", "A title First sentence here. Second one? third  line e.g.x",
                "月经后几天可以同房?一般是3到7天.之后"]  # (the corpus reader makes a row's newline a space)
    sentences = ["小米6防水等级是IP67", "它能防溅水", "价格 3.5 千元", "A title", "First sentence here", "Second one",
                 "third line e.g.x", "一般是3到7天"]  # "OK" and "之后" are too short; test query q2's text is left out
    assert corpus.sentences[:] == passages + ["小米6防水等级", "防水"] + sentences
    assert list(corpus.sentences.roles) == [0, 0, 0, 1, 1] + [1] * len(sentences)
    as_documents = read_corpus([f"beir:{folder}?sentences=document"])
    # documents only: the passages, then their sentences as documents (no queries asked for)
    assert as_documents.sentences[:] == corpus.sentences[:3] + sentences and set(as_documents.sentences.roles) == {0}
    for source, message in [(f"beir:{folder}?queries=dev&sentences=yes", r"sentences='yes': the role the passages' sentences get"),
                            (f"beir:{folder}?queries=dev&queries=dev", r"queries given twice"),
                            (f"beir:{folder}?queries=dev&crops=query", r"expected queries=SPLIT and/or sentences=query\|document")]:
        with pytest.raises(DistillError, match=message):
            read_corpus([source])


BEIR_RECIPES = sorted(p.name for p in (REPO / "configs").glob("*.yaml") if "beir:" in p.read_text())


@pytest.mark.parametrize("name", BEIR_RECIPES)
def test_no_recipe_trains_on_a_test_query(name, monkeypatch):
    """Every committed recipe with a `beir:` corpus source, read as training reads it: no row is the
    text of a query judged in that folder's qrels/test.tsv (queries, passages' sentences)."""
    from distill.data.beir_source import is_beir_source, parse_source, test_query_texts

    monkeypatch.chdir(REPO)  # a recipe's relative paths are the working directory's: the repository root
    recipe = load_recipe(REPO / "configs" / name)
    folders = [parse_source(s).folder for s in recipe.data.corpus if is_beir_source(s)]
    if not all((f / "corpus.jsonl").is_file() for f in folders):
        pytest.skip(f"needs the shared BEIR folders {', '.join(map(str, folders))}")
    with read_corpus(recipe.data.corpus, max_sentences=recipe.data.max_sentences) as corpus:
        rows = {" ".join(t.split()) for t in corpus.sentences}
    for folder in folders:
        banned = test_query_texts(folder)
        assert banned and not banned & rows, (name, sorted(banned & rows)[:5])


def test_the_scifact_recipes_corpus_holds_no_test_query(scifact_dir):
    recipe = load_recipe(REPO / "configs" / "scifact-minilm-l3.yaml")
    corpus = read_corpus(recipe.data.corpus, max_sentences=recipe.data.max_sentences)
    test = load_beir(scifact_dir, "test")
    test_texts = {" ".join(test.queries[q].split()) for q in test.qrels}
    assert not test_texts & {" ".join(s.split()) for s in corpus.sentences}
    dev = load_beir(scifact_dir, "dev")
    kept = {dev.queries[q] for q in dev.qrels} - test_texts
    assert len(kept) == 805 and kept <= set(corpus.sentences)  # 809 dev claims: 4 repeat texts, 2 of them test claims
    assert set(dev.corpus.values()) <= set(corpus.sentences) and len(corpus.sentences) == 16384
    assert recipe.data.teacher_max_length == recipe.data.max_length == 256
    assert recipe.eval.retrieval.split == "dev" and recipe.eval.final_retrieval.split == "test"


def test_mine_writes_card_rows_without_any_judged_passage_or_test_query(tmp_path, tiny_beir, minilm_path, capsys):
    folder = tmp_path / "beir"
    shutil.copytree(tiny_beir, folder)
    test = load_beir(folder, "test")
    test_qid = next(iter(test.qrels))
    # a dev query that is a test query word for word: never mined
    with open(folder / "queries.jsonl", "a") as f:
        f.write(json.dumps({"_id": "dup", "text": test.queries[test_qid]}) + "\n")
    with open(folder / "qrels" / "dev.tsv", "a") as f:
        f.write(f"dup\t{next(iter(test.qrels[test_qid]))}\t1\n")
    dev = load_beir(folder, "dev")
    # a second relevant passage for the first dev query: it must not come back as its negative
    first = next(q for q in dev.qrels if q != "dup")
    extra = next(d for d in dev.corpus if d not in dev.qrels[first])
    with open(folder / "qrels" / "dev.tsv", "a") as f:
        f.write(f"{first}\t{extra}\t1\n")
    dev = load_beir(folder, "dev")
    out = tmp_path / "rows.jsonl"
    args = ["mine", "--teacher", str(minilm_path), "--beir", str(folder), "--negatives", "4", "--out", str(out), "--quiet"]
    assert main(args) == 0
    stats = json.loads(capsys.readouterr().out)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    pairs = sum(len(d) for q, d in dev.qrels.items() if q != "dup")
    assert stats["queries_left_out_as_test_queries"] == ["dup"] and stats["pairs"] == pairs == len(rows) + stats["pairs_without_enough_negatives"]
    assert len(rows) >= pairs - 2 and stats["max_length"] == 256  # the teacher's own length
    assert {(r["query_id"], r["positive_passages"][0]["docid"]) for r in rows} <= {(q, d) for q, ds in dev.qrels.items() for d in ds}
    assert sum(r["query_id"] == first for r in rows) == 2
    test_texts = {test.queries[q] for q in test.qrels}
    for r in rows:
        negs = [p["docid"] for p in r["negative_passages"]]
        assert len(negs) == len(set(negs)) == 4 and not set(negs) & set(dev.qrels[r["query_id"]])  # no judged passage
        assert r["query"] == dev.queries[r["query_id"]] and r["query"] not in test_texts
        for p in r["positive_passages"] + r["negative_passages"]:
            assert set(p) == {"docid", "title", "text"} and dev.corpus[p["docid"]] == (f"{p['title']} {p['text']}" if p["title"] else p["text"])
    # the rows read through the seed cards' path: (query, positive, 4 negatives)
    read = read_rows([str(out)], ["anchor", "positive"], neg_samples=4)
    assert len(read) == len(rows) and all(len(r) == 6 for r in read) and read[0][0] == rows[0]["query"]
    # refusals: an existing file, the test split
    assert main(args) == 2 and "the file exists" in capsys.readouterr().err
    assert main([*args, "--split", "test", "--overwrite"]) == 2 and "reporting split" in capsys.readouterr().err


def _tiny_st_teacher(folder, tiny_bert_dir):
    """The tiny random BERT as a sentence-transformers folder (mean pooling, normalized): another teacher."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules

    transformer = modules.Transformer(str(tiny_bert_dir), max_seq_length=64)
    SentenceTransformer(modules=[transformer, modules.Pooling(32, pooling_mode="mean"), modules.Normalize()], device="cpu").save(str(folder))
    return folder


def test_mine_embeddings_cache_is_keyed_on_the_teacher_and_length_and_quiet_shows_no_bar(tmp_path, tiny_beir, minilm_path,
                                                                                         tiny_bert_dir, capsys):
    """Issue 38, failure 7: with --embeddings-cache, a second mine at another --max-length or with
    another teacher read the first one's embeddings back (the rows came out identical, the output
    named the new teacher). Now the cache holds one folder per teacher and length, and a cached
    mine gives the rows an uncached one gives. And `--quiet` prints no progress bar (it printed the
    miner's encode and scoring bars)."""
    cache = tmp_path / "embeddings"
    other = _tiny_st_teacher(tmp_path / "other-teacher", tiny_bert_dir)
    capsys.readouterr()  # the bars of saving it

    def mine(name, teacher, *extra, cached=True):
        out = tmp_path / f"{name}.jsonl"
        args = ["mine", "--teacher", str(teacher), "--beir", str(tiny_beir), "--negatives", "2", "--relative-margin", "none", "--out", str(out),
                "--quiet", *extra]
        assert main(args + (["--embeddings-cache", str(cache)] if cached else [])) == 0
        err = capsys.readouterr().err
        assert "Batches" not in err and "Computing similarity scores" not in err and "it/s" not in err, err  # no bar
        return out.read_text()

    first = mine("first", minilm_path)
    short = mine("short", minilm_path, "--max-length", "8")
    assert short == mine("short-uncached", minilm_path, "--max-length", "8", cached=False) != first
    assert mine("other", other) == mine("other-uncached", other, cached=False) != first
    assert mine("first-again", minilm_path) == first  # the cache still serves its own teacher and length
    keys = sorted(json.loads((p / "distill-teacher.json").read_text())["max_length"] for p in cache.iterdir())
    assert keys == [8, 64, 256]


def test_mine_without_datasets_says_what_to_install(tmp_path, tiny_beir, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "datasets", None)  # an import of it now raises ImportError
    assert main(["mine", "--teacher", "all-minilm-l6-v2", "--beir", str(tiny_beir), "--out", str(tmp_path / "r.jsonl")]) == 2
    assert "needs the 'datasets' package: pip install 'distill[hub]'" in capsys.readouterr().err


def test_cache_at_teacher_max_length_and_a_finished_stage1_serves_another_stage2(tmp_path, tiny_home, tiny_beir, monkeypatch):
    from distill.training.run import train

    monkeypatch.setenv("DISTILL_HOME", str(tiny_home))
    (tmp_path / "sts" / "stsb").mkdir(parents=True)  # the first 200 pairs of STS-B dev: seconds
    dev = (STS_DIR / "stsb" / "sts-dev.csv").read_text(encoding="utf-8").splitlines(keepends=True)[:200]
    (tmp_path / "sts" / "stsb" / "sts-dev.csv").write_text("".join(dev), encoding="utf-8")
    (tmp_path / "recipe.yaml").write_text(tiny_recipe_text(tmp_path, steps=2, every=2))
    sets = [f"eval.sts_dir={tmp_path / 'sts'}", "eval.final_tasks=[STS-B-dev]", "data.teacher_max_length=48", "data.max_length=48"]
    with pytest.raises(DistillError, match=r"data\.teacher_max_length 200: the teacher tiny-teacher takes at most 128 tokens"):
        load_recipe(tmp_path / "recipe.yaml", [*sets, "data.teacher_max_length=200"])
    stage1 = train(load_recipe(tmp_path / "recipe.yaml", sets), progress=False)
    assert json.loads((tmp_path / "cache" / "manifest.json").read_text())["max_length"] == 48
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"query": f"query {i}", "positive_passages": [{"text": f"passage {i}"}],
                                        "negative_passages": [{"text": f"other {i} {k}"} for k in range(4)]}) + "\n" for i in range(16)))
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "run", copy)
    second = [*sets, f"output.dir={copy}", f"stage2.rows=[{rows}]", "stage2.loss.name=mnrl", "stage2.train.max_steps=2",
              "stage2.train.batch_size=8", "stage2.train.seed=3", "eval.every_steps=1"]
    with pytest.raises(DistillError, match=r"recipe differs from the checkpoint's .* in train"):  # stage 1's own keys still count
        train(load_recipe(tmp_path / "recipe.yaml", [*second, "train.lr=0.5"]), resume=True, progress=False)
    results = train(load_recipe(tmp_path / "recipe.yaml", second), resume=True, progress=False)
    assert results["steps"] == 2 and results["stage1"]["best_dev"] == stage1["best_dev"]
    assert [e["step"] for e in results["evals"]] == [1, 2]
    assert not (tmp_path / "run" / "stage2").exists() and (copy / "stage2" / "results.json").is_file()


def test_stage2_carries_hpds_head_trains_it_and_exports_what_it_scored(tmp_path, tiny_home, monkeypatch):
    """HPD's stage 1 serves its k-d head's output; stage 2 on rows starts from that head (its stage-1
    weights), trains it with the student, and its saved student and export are k-d through it."""
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    from distill.export import export_student
    from distill.training.run import train
    from distill.training.student_folder import StudentEmbedder, load_saved_student, saved_embedding_head

    monkeypatch.setenv("DISTILL_HOME", str(tiny_home))
    (tmp_path / "sts" / "stsb").mkdir(parents=True)  # the first 200 pairs of STS-B dev: seconds
    dev = (STS_DIR / "stsb" / "sts-dev.csv").read_text(encoding="utf-8").splitlines(keepends=True)[:200]
    (tmp_path / "sts" / "stsb" / "sts-dev.csv").write_text("".join(dev), encoding="utf-8")
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"query": f"query {i}", "positive_passages": [{"text": f"passage {i}"}],
                                        "negative_passages": [{"text": f"other {i} {k}"} for k in range(4)]}) + "\n" for i in range(16)))
    (tmp_path / "recipe.yaml").write_text(tiny_recipe_text(tmp_path, loss="name: hpd, k: 8", steps=2, every=2))
    sets = [f"eval.sts_dir={tmp_path / 'sts'}", "eval.tasks=[STS-B-dev]", "eval.final_tasks=[STS-B-dev]", f"stage2.rows=[{rows}]",
            "stage2.loss.name=mnrl", "stage2.train.max_steps=2", "stage2.train.batch_size=8", "stage2.train.lr=0.01", "stage2.init=final"]
    results = train(load_recipe(tmp_path / "recipe.yaml", sets), progress=False)
    assert results["steps"] == 2
    run = tmp_path / "run"
    _, meta1, heads1 = load_saved_student(run / "final")
    _, meta2, heads2 = load_saved_student(run / "stage2" / "final")
    assert meta2["loss"] == {"name": "mnrl", "tau": 0.05, "stage1_head": meta1["loss"]} and meta2["embedding_dim"] == 8
    assert set(heads2) == {"carried." + k for k in heads1}
    assert not torch.equal(heads2["carried.head.0.weight"], heads1["head.0.weight"])  # trained on in stage 2
    # stage 2 starts from stage 1's student as it served, head included: the same dev score
    stage1 = json.loads((run / "results.json").read_text())
    assert results["init_dev"] == pytest.approx(stage1["evals"][-1][stage1["dev_task"]], abs=1e-6)
    head = saved_embedding_head(run / "stage2" / "final")
    assert head is not None and head[0].out_features == 8
    enc, _, _ = load_saved_student(run / "stage2" / "final")
    sentences = ["a man is playing a guitar.", "the cat sits on the mat.", "stocks fell sharply on monday."]
    ours = StudentEmbedder(enc, head)(sentences, batch_size=8)
    out = export_student(run, tmp_path / "export")
    st = SentenceTransformer(str(out), device="cpu")
    theirs = st.encode(sentences, normalize_embeddings=False)
    assert theirs.shape == (3, 8)
    np.testing.assert_allclose(theirs / np.linalg.norm(theirs, axis=1, keepdims=True),
                               ours / np.linalg.norm(ours, axis=1, keepdims=True), atol=1e-5)
