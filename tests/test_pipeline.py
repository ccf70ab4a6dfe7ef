"""The model-card similarity pipeline and `distill similarity`, with the packaged all-MiniLM-L6-v2."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest

from distill.cli import main
from distill.errors import DistillError

SOURCE = "A man is playing a guitar."
CANDIDATES = ["A man plays the guitar.", "Someone is cooking pasta.", "The stock market fell sharply today."]


@pytest.fixture(scope="module")
def pipe(enc):
    from distill import pipeline

    return pipeline(enc)


def _cos(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_import_distill_stays_light_and_exposes_pipeline():
    code = (
        "import sys, distill\n"
        "assert 'torch' not in sys.modules\n"
        "from distill import pipeline\n"
        "assert callable(pipeline) and 'pipeline' in distill.__all__\n"
        "assert 'torch' not in sys.modules, 'pipeline import must not load torch'\n"
        "import distill.eval.similarity as mod\n"  # the module no longer shares its function's name
        "assert mod.pipeline is pipeline\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_source_and_candidates_give_first_vs_each(pipe, enc):
    out = pipe({"source_sentence": [SOURCE], "sentences_to_compare": CANDIDATES})
    emb = out["text_embedding"]
    assert isinstance(emb, np.ndarray) and emb.shape == (1 + len(CANDIDATES), enc.dim) and emb.dtype == np.float32
    assert len(out["scores"]) == len(CANDIDATES) and all(isinstance(s, float) for s in out["scores"])
    np.testing.assert_allclose(emb, enc.encode([SOURCE, *CANDIDATES], progress=False), atol=1e-5)
    np.testing.assert_allclose(out["scores"], [_cos(emb[0], e) for e in emb[1:]], atol=1e-6)
    assert out["metric"] == "cosine" and out["higher_is_closer"] is True
    assert int(np.argmax(out["scores"])) == 0  # the paraphrase
    assert "ignored_source_sentences" not in out


def test_source_only_scores_first_against_the_rest(pipe, enc):
    out = pipe({"source_sentence": [SOURCE, *CANDIDATES]})
    assert out["text_embedding"].shape == (4, enc.dim) and len(out["scores"]) == 3
    np.testing.assert_allclose(out["scores"], [_cos(out["text_embedding"][0], e) for e in out["text_embedding"][1:]], atol=1e-6)
    one = pipe({"source_sentence": [SOURCE]})
    assert one["text_embedding"].shape == (1, enc.dim) and one["scores"] == []
    # model-card call style: keyword `input`, candidates None = absent, a bare string = one sentence
    assert pipe(input={"source_sentence": SOURCE, "sentences_to_compare": None})["text_embedding"].shape == (1, enc.dim)


def test_further_source_sentences_are_ignored_with_a_note(pipe):
    with pytest.warns(UserWarning, match="further source sentence"):
        out = pipe({"source_sentence": [SOURCE, "another one", "and a third"], "sentences_to_compare": CANDIDATES[:2]})
    assert out["text_embedding"].shape[0] == 3 and len(out["scores"]) == 2
    assert out["ignored_source_sentences"] == 2 and "first" in out["note"]
    ref = pipe({"source_sentence": [SOURCE], "sentences_to_compare": CANDIDATES[:2]})
    np.testing.assert_allclose(out["scores"], ref["scores"], atol=1e-6)


def test_three_metrics(enc):
    from distill import pipeline

    inputs = {"source_sentence": [SOURCE], "sentences_to_compare": CANDIDATES}
    cos = pipeline(enc)(inputs)
    dot = pipeline(enc, metric="dot")(inputs)
    l2 = pipeline(enc, metric="euclidean")(inputs)
    e = cos["text_embedding"].astype(np.float64)
    np.testing.assert_allclose(dot["scores"], e[1:] @ e[0], atol=1e-6)
    np.testing.assert_allclose(l2["scores"], np.linalg.norm(e[1:] - e[0], axis=1), atol=1e-6)
    # all-MiniLM-L6-v2 normalizes: dot == cosine, l2 == sqrt(2 - 2 cos)
    np.testing.assert_allclose(dot["scores"], cos["scores"], atol=1e-5)
    np.testing.assert_allclose(l2["scores"], np.sqrt(2 - 2 * np.asarray(cos["scores"])), atol=1e-5)
    assert dot["metric"] == "dot" and dot["higher_is_closer"] is True
    assert l2["metric"] == "l2" and l2["higher_is_closer"] is False
    assert int(np.argmin(l2["scores"])) == 0  # smaller is closer
    assert pipeline(enc)(inputs, metric="l2")["scores"] == pytest.approx(l2["scores"])  # per-call metric
    with pytest.raises(DistillError, match="unknown metric 'manhattan'"):
        pipeline(enc, metric="manhattan")


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"source_sentence": []}, "'source_sentence' is an empty list"),
        ({"source_sentence": [SOURCE], "sentences_to_compare": []}, "'sentences_to_compare' is an empty list"),
        ({"sentences_to_compare": ["x"]}, "no 'source_sentence'"),
        ({"source_sentence": [SOURCE, 3]}, "'source_sentence' item 1 is a int"),
        ({"source_sentence": [SOURCE], "sentences_to_compare": ["ok", None]}, "'sentences_to_compare' item 1 is a NoneType"),
        ({"source_sentence": [SOURCE], "sentence_to_compare": ["typo"]}, "unknown input key"),
        ({"source_sentence": {"a": 1}}, "must be a list of strings"),
        (["not", "a", "mapping"], "must be a mapping"),
    ],
)
def test_bad_inputs_are_clear_errors(pipe, inputs, message):
    with pytest.raises(DistillError, match=message):
        pipe(inputs)


def test_other_model_forms(enc, minilm_path):
    from sentence_transformers import SentenceTransformer

    from distill import pipeline

    inputs = {"source_sentence": [SOURCE], "sentences_to_compare": CANDIDATES}
    ref = pipeline(enc)(inputs)["scores"]
    st = SentenceTransformer(str(minilm_path), device="cpu")
    assert pipeline(st)(inputs)["scores"] == pytest.approx(ref, abs=1e-4)
    assert pipeline(lambda s: enc.encode(s, progress=False))(inputs)["scores"] == pytest.approx(ref, abs=1e-6)
    with pytest.raises(DistillError, match="cannot embed with a int"):
        pipeline(42)


def test_chinese_goes_through_unchanged(enc, pipe):
    """The WordPiece vocab of the packaged MiniLM (bert-base-uncased's) holds a few hundred CJK
    characters, one token each; these sentences use only those. (Characters outside a model's
    vocabulary become its [UNK], as for any language: the pipeline itself never alters text.)"""
    source, candidates = "北京大学", ["北京的大学", "日本的東京", "山上有水", "The weather is nice today."]
    tok = enc.tokenizer
    for s in [source, *candidates[:3]]:
        pieces = tok.tokenize(s)
        assert pieces == list(s), pieces  # one token per character, nothing dropped or rewritten
        assert tok.unk_token not in pieces
    out = pipe({"source_sentence": [source], "sentences_to_compare": candidates})
    emb = out["text_embedding"]
    assert emb.shape == (5, enc.dim) and np.isfinite(emb).all()
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)  # the model normalizes
    assert len({tuple(np.round(r, 4)) for r in emb}) == 5  # distinct sentences, distinct vectors
    batch = enc.tokenizer([source], return_tensors="pt")
    import torch

    with torch.inference_mode():
        direct = enc(batch["input_ids"], batch["attention_mask"])["embedding"][0].numpy()
    np.testing.assert_allclose(emb[0], direct, atol=1e-5)  # exactly the text given, no preprocessing
    scores = out["scores"]
    assert all(-1.0 <= s <= 1.0 for s in scores)
    assert scores[0] == max(scores) and scores[0] > 0.8  # shares 北京 and 大学
    assert scores[-1] < scores[0]
    same = pipe({"source_sentence": [source], "sentences_to_compare": [source]})
    assert same["scores"][0] == pytest.approx(1.0, abs=1e-5)


# --- CLI -------------------------------------------------------------------------------------


def test_cli_ranked_table(capsys):
    rc = main(["similarity", "--model", "all-minilm-l6-v2", "--source", SOURCE, "--compare", *CANDIDATES])
    out = capsys.readouterr().out
    assert rc == 0
    lines = out.strip().splitlines()
    assert lines[0] == f"source: {SOURCE}" and "rank" in lines[1] and "cosine" in lines[1]
    assert lines[2].split()[0] == "1" and lines[2].endswith(CANDIDATES[0])
    scores = [float(line.split()[1]) for line in lines[2:]]
    assert scores == sorted(scores, reverse=True) and len(scores) == 3


def test_cli_json_from_file_and_stdin(tmp_path, capsys, monkeypatch):
    data = {"source_sentence": ["中国的北京"], "sentences_to_compare": ["山上有水", "中国的北京"]}
    f = tmp_path / "in.json"
    f.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    assert main(["similarity", "--model", "all-minilm-l6-v2", "--input", str(f), "--json", "--metric", "l2"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["metric"] == "l2" and res["higher_is_closer"] is False and res["source_sentence"] == "中国的北京"
    assert [r["sentence"] for r in res["results"]] == ["中国的北京", "山上有水"]  # ascending distance
    assert res["results"][0]["score"] == pytest.approx(0.0, abs=1e-3) and res["results"][0]["index"] == 1

    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps({"source_sentence": [SOURCE, "x"], "sentences_to_compare": CANDIDATES})))
    assert main(["similarity", "--model", "all-minilm-l6-v2", "--input", "-", "--json"]) == 0
    captured = capsys.readouterr()
    res = json.loads(captured.out)
    assert res["ignored_source_sentences"] == 1 and "ignored" in captured.err
    assert res["results"][0]["sentence"] == CANDIDATES[0] and res["results"][0]["rank"] == 1


def test_cli_errors(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"source_sentence": ["a"],\n "sentences_to_compare": ["b",]}')
    assert main(["similarity", "--model", "all-minilm-l6-v2", "--input", str(bad)]) == 2
    assert f"{bad}:2: not valid JSON" in capsys.readouterr().err
    empty = tmp_path / "empty.json"
    empty.write_text('{"source_sentence": ["a"], "sentences_to_compare": []}')
    assert main(["similarity", "--model", "all-minilm-l6-v2", "--input", str(empty)]) == 2
    assert "'sentences_to_compare' is an empty list" in capsys.readouterr().err
    assert main(["similarity", "--model", "all-minilm-l6-v2"]) == 2
    assert "nothing to score" in capsys.readouterr().err
