"""distill/model_files.py: a model folder without its tokenizer files is refused, not encoded with
an empty vocabulary; lengths past the position embeddings are refused or capped."""

from __future__ import annotations

import numpy as np
import pytest

from distill.cli import main
from distill.encoder import Encoder
from distill.errors import DistillError
from distill.model_files import position_limit

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")


def _linked_copy(src, dst, leave_out=()):
    """The model folder `src` as symlinks in `dst` (no 90 MB copy), without the files `leave_out`."""
    dst.mkdir()
    for p in src.iterdir():
        if p.name not in leave_out:
            (dst / p.name).symlink_to(p)
    return dst


def test_a_folder_without_tokenizer_files_is_refused(tmp_path, minilm_path, capsys):
    """transformers 5 builds a BertTokenizer with no vocabulary from config.json's model_type when
    the tokenizer files are gone: every word became [UNK] and `distill encode` wrote vectors up to
    0.21 away from the intact folder's, with exit 0."""
    bare = _linked_copy(minilm_path, tmp_path / "bare", leave_out=TOKENIZER_FILES)
    with pytest.raises(DistillError, match=rf"{bare}: no tokenizer files \(missing tokenizer\.json, vocab\.txt, tokenizer_config\.json\); "
                                           r"transformers would build an empty BertTokenizer from config\.json's model_type 'bert'"):
        Encoder.load(str(bare), device="cpu")
    src = tmp_path / "in.txt"
    src.write_text("A man is playing a guitar.\n")
    assert main(["encode", "--model", str(bare), "--input", str(src), "--out", str(tmp_path / "e.npy"), "--quiet"]) == 2
    assert "no tokenizer files" in capsys.readouterr().err and not (tmp_path / "e.npy").exists()
    # vocab.txt alone is a whole BERT vocabulary (a slow-format folder): loaded, and the same vectors
    vocab_only = _linked_copy(minilm_path, tmp_path / "vocab-only", leave_out=("tokenizer.json",))
    sentences = ["A man is playing a guitar.", "Ünïcödé façade, naïve café."]
    np.testing.assert_allclose(Encoder.load(str(vocab_only), device="cpu").encode(sentences, progress=False),
                               Encoder.load(str(minilm_path), device="cpu").encode(sentences, progress=False), atol=1e-5)


def test_position_limit_follows_the_models_own_rule():
    assert position_limit({"model_type": "bert", "max_position_embeddings": 512}) == 512
    # RoBERTa-like models start their positions after the padding index
    assert position_limit({"model_type": "roberta", "max_position_embeddings": 514, "pad_token_id": 1}) == 512
    assert position_limit({"model_type": "t5"}) is None  # relative positions: nothing to count


def test_a_max_length_past_the_positions_is_capped_at_load_and_said(tiny_bert_dir, capsys):
    enc = Encoder.load(str(tiny_bert_dir), max_length=1000, device="cpu")
    assert enc.max_length == 128 == enc.max_positions
    assert "max length 1000 is more than the 128 tokens the model takes (max_position_embeddings); truncating at 128" in capsys.readouterr().err
    long = " ".join(["word"] * 300)  # 300 tokens: past the 128 position embeddings, it failed
    np.testing.assert_allclose(enc.encode([long], progress=False), enc.encode([long], max_length=128, progress=False), atol=1e-6)


# --- damaged or foreign files: one line naming the file (issue 38, failure 10) ---------------------


def _damaged_copy(tiny_bert_dir, folder, damage):
    import shutil

    shutil.copytree(tiny_bert_dir, folder)
    damage(folder)
    return folder


def _cut(path, keep=2000):
    path.write_bytes(path.read_bytes()[:keep])


def _planted_pickle(folder):
    """pytorch_model.bin as an attacker writes it: torch.save of a state dict whose unpickling runs
    a command (here: one that makes a marker file)."""
    import torch
    from conftest import Payload

    (folder / "model.safetensors").unlink()
    torch.save({"embeddings.word_embeddings.weight": Payload(folder.parent / "payload-ran")}, folder / "pytorch_model.bin")


def _vocab_only(folder, text):
    (folder / "tokenizer.json").unlink()
    (folder / "vocab.txt").write_text(text)


DAMAGES = {
    "a tokenizer.json cut short": (lambda f: _cut(f / "tokenizer.json"), r"tokenizer\.json:\d+: not valid JSON \(.*\); the file is damaged or cut short"),
    "an empty vocab.txt": (lambda f: _vocab_only(f, ""), r"vocab\.txt: empty, a tokenizer vocabulary with no token in it"),
    "a vocab.txt of another kind": (lambda f: _vocab_only(f, "hello\nworld\n"), r"vocab\.txt: the vocabulary has no \[UNK\] token"),
    "a config.json cut short": (lambda f: _cut(f / "config.json", 40), r"config\.json:\d+: not valid JSON"),
    "a model.safetensors cut short": (lambda f: _cut(f / "model.safetensors", 5000), r"model\.safetensors: not a readable safetensors file"),
    "a pytorch_model.bin torch refuses": (_planted_pickle, r"pytorch_model\.bin: refused, not weights torch can read without unpickling "
                                                           r"code \(.*GLOBAL posix\.system.*\); distill never runs"),
}


@pytest.mark.parametrize("what", DAMAGES)
def test_a_damaged_or_foreign_file_is_one_line_naming_it(what, tmp_path, tiny_bert_dir, capsys):
    """These surfaced as library tracebacks (a JSONDecodeError, torch's UnpicklingError, a
    SafetensorError; an empty vocab.txt loaded and failed at the first sentence with 'WordPiece
    error: Missing [UNK] token'). The planted pickle never runs."""
    damage, message = DAMAGES[what]
    folder = _damaged_copy(tiny_bert_dir, tmp_path / "model", damage)
    src = tmp_path / "in.txt"
    src.write_text("A man is playing a guitar.\n")
    code = main(["encode", "--model", str(folder), "--input", str(src), "--out", str(tmp_path / "e.npy"), "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"distill: error: {folder}/") and __import__("re").search(message, lines[0]), lines[0]
    assert not (tmp_path / "e.npy").exists() and not (tmp_path / "payload-ran").exists()
