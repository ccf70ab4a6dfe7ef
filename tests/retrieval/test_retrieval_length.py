"""Retrieval encodes at the model's own length: the max_seq_length its sentence-transformers
folder declares (else its position limit), not a preset's training/caching max_length;
--max-length / max_length override it, checked against the model's limit. STS keeps max_positions."""

import json

import pytest

from distill.cli import main
from distill.embedding import OWN, Embedder, own_max_length
from distill.encoder import Encoder
from distill.errors import DistillError
from distill.eval.retrieval import evaluate_retrieval

DECLARED, PRESET = 64, 16


@pytest.fixture(scope="module")
def tiny_st_home(tmp_path_factory, tiny_bert_dir):
    """A sentence-transformers folder (sentence-transformers <= 5 layout) of the tiny BERT declaring
    max_seq_length 64 (its position limit: 128), and a teacher preset on it whose max_length is 16."""
    import shutil

    folder = tmp_path_factory.mktemp("tiny-st")
    for f in tiny_bert_dir.iterdir():
        shutil.copy(f, folder / f.name)
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": DECLARED, "do_lower_case": False}))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True}))
    home = tmp_path_factory.mktemp("st-home")
    (home / "teachers").mkdir()
    (home / "students").mkdir()
    (home / "teachers" / "tiny-st.yaml").write_text(
        f"name: tiny-st\nhub_id: {folder}\noffline_source: null\npooling: mean\nnormalize: true\ndim: 32\nmax_length: {PRESET}\n")
    return home, folder


def _long_set():
    """Passages of 100+ word pieces: truncation at 16, 64 or 128 tokens gives different vectors."""
    words = "the protein binds receptor cells in mice and humans while dosage changes the outcome".split()
    corpus = {f"d{i}": " ".join(words[(i + j) % len(words)] for j in range(110)) for i in range(12)}
    queries = {f"q{i}": " ".join(words[i : i + 5]) for i in range(6)}
    qrels = {f"q{i}": {f"d{i}": 1} for i in range(6)}
    return queries, corpus, qrels


def _flat(results) -> list[float]:
    return [x for q in sorted(results["run_scores"]) for x in results["run_scores"][q]]


def test_default_length_is_the_folders_declared_one_not_the_presets(tiny_st_home, monkeypatch):
    home, folder = tiny_st_home
    monkeypatch.setenv("DISTILL_HOME", str(home))
    enc = Encoder.load("tiny-st", device="cpu")
    assert (enc.max_length, enc.declared_max_length, enc.max_positions) == (PRESET, DECLARED, 128)
    assert own_max_length(enc) == DECLARED
    q, c, r = _long_set()
    by_name = evaluate_retrieval("tiny-st", q, c, r, return_run=True)
    assert by_name["max_length"] == DECLARED
    at_declared = evaluate_retrieval(enc, q, c, r, return_run=True, max_length=DECLARED)
    at_preset = evaluate_retrieval(enc, q, c, r, return_run=True, max_length=PRESET)
    assert _flat(by_name) == pytest.approx(_flat(at_declared), abs=1e-6) and by_name["run"] == at_declared["run"]
    assert _flat(by_name) != pytest.approx(_flat(at_preset), abs=1e-4)  # the length matters on these passages
    # the unchanged paths: an Encoder's own encode (training, cache) at the preset's length; STS at max_positions
    assert Embedder(enc).max_length is None and Embedder(enc, full_length=True).max_length == 128
    assert Embedder(enc, max_length=OWN).max_length == DECLARED


def test_a_plain_folder_and_a_given_length(tiny_bert_dir):
    enc = Encoder.load(str(tiny_bert_dir), device="cpu")
    assert enc.declared_max_length is None and own_max_length(enc) == enc.max_positions == 128
    q, c, r = _long_set()
    assert evaluate_retrieval(enc, q, c, r)["max_length"] == 128
    assert evaluate_retrieval(enc, q, c, r, max_length=20)["max_length"] == 20
    with pytest.raises(DistillError, match=r"max length 129: over the limit of .* \(128 tokens\)"):
        evaluate_retrieval(enc, q, c, r, max_length=129)
    with pytest.raises(DistillError, match="encodes at its own length"):
        evaluate_retrieval(lambda s: enc.encode(s, progress=False), q, c, r, max_length=20)


def test_cli_max_length_help_and_limit(tiny_st_home, tiny_beir, monkeypatch, capsys, tmp_path):
    home, _ = tiny_st_home
    monkeypatch.setenv("DISTILL_HOME", str(home))
    with pytest.raises(SystemExit):
        main(["eval-retrieval", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "the model's own max_seq_length" in help_text and "--max-length N" in help_text
    out = tmp_path / "r.json"
    assert main(["eval-retrieval", "--model", "tiny-st", "--beir", str(tiny_beir), "--json", str(out), "--quiet"]) == 0
    assert json.loads(out.read_text())["max_length"] == DECLARED
    assert "max length 64 tokens" in capsys.readouterr().err
    run_file = tmp_path / "r.run"
    assert main(["eval-retrieval", "--model", "tiny-st", "--beir", str(tiny_beir), "--max-length", "40", "--json", str(out),
                 "--save-run", str(run_file), "--overwrite", "--quiet"]) == 0  # the first run's JSON replaced
    assert json.loads(out.read_text())["max_length"] == 40
    first = run_file.read_text().splitlines()[0].split()
    assert first[1] == "Q0" and first[3] == "1" and first[5] == "tiny-st"  # qid Q0 docid rank score tag
    assert main(["eval-retrieval", "--model", "tiny-st", "--beir", str(tiny_beir), "--max-length", "500"]) == 2
    assert "max length 500: over the limit" in capsys.readouterr().err
