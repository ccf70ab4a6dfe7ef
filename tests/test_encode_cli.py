"""`distill encode` and the bulk path of Encoder.encode, with the packaged all-MiniLM-L6-v2."""

from __future__ import annotations

import gzip
import io
import json
import sys

import numpy as np
import pytest
import torch
from conftest import file_size_limit, unwritable_folders
from sentences import ODD_SENTENCES as SENTENCES

from distill.cli import main


@pytest.fixture(scope="module")
def one_by_one(enc):
    return np.stack([enc.encode([s], progress=False)[0] for s in SENTENCES])


def _run(args) -> int:
    return main(["encode", "--model", "all-minilm-l6-v2", "--quiet", *args])


def test_text_file_to_npy_keeps_input_order(tmp_path, one_by_one, capsys):
    src = tmp_path / "in.txt"
    src.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")  # the last line is the empty sentence
    out = tmp_path / "emb.npy"
    assert _run(["--input", str(src), "--out", str(out), "--batch-size", "3"]) == 0
    assert "1 empty sentence(s)" in capsys.readouterr().err
    emb = np.load(out)
    assert emb.shape == (len(SENTENCES), 384) and emb.dtype == np.float32
    np.testing.assert_allclose(emb, one_by_one, atol=1e-5)


def test_gz_and_crlf_to_safetensors(tmp_path, one_by_one):
    from safetensors import safe_open
    from safetensors.numpy import load_file

    src = tmp_path / "in.txt.gz"
    with gzip.open(src, "wb") as f:
        f.write("\r\n".join(SENTENCES[:-1]).encode("utf-8"))  # Windows line ends, no final newline
    out = tmp_path / "sub" / "emb.safetensors"
    assert _run(["--input", str(src), "--out", str(out)]) == 0
    emb = load_file(str(out))["embeddings"]
    np.testing.assert_allclose(emb, one_by_one[:-1], atol=1e-5)
    with safe_open(str(out), "np") as f:
        meta = f.metadata()
    assert meta["model"] == "all-minilm-l6-v2" and meta["rows"] == str(len(SENTENCES) - 1) and meta["dim"] == "384"


def test_jsonl_column_float16_and_stdin(tmp_path, one_by_one, monkeypatch):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": i, "sentence": s}, ensure_ascii=False) + "\n" for i, s in enumerate(SENTENCES)), encoding="utf-8")
    out = tmp_path / "emb16.npy"
    assert _run(["--input", str(src), "--column", "sentence", "--out", str(out), "--dtype", "float16"]) == 0
    emb = np.load(out)
    assert emb.dtype == np.float16
    np.testing.assert_allclose(emb.astype(np.float32), one_by_one, atol=2e-3)

    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(SENTENCES[:3]) + "\n"))
    out = tmp_path / "stdin.npy"
    assert _run(["--input", "-", "--out", str(out)]) == 0
    np.testing.assert_allclose(np.load(out), one_by_one[:3], atol=1e-5)


def test_errors_name_the_file_and_line_and_leave_outputs_alone(tmp_path, capsys):
    out = tmp_path / "keep.npy"
    out.write_bytes(b"old")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"title": "no text key"}\n')
    assert _run(["--input", str(bad), "--out", str(out), "--overwrite"]) == 2
    assert f"{bad}:2: no key 'text'" in capsys.readouterr().err
    assert out.read_bytes() == b"old"  # nothing half-written
    bad.write_text('{"text": "fine"}\n{"text": 3}\n')
    assert _run(["--input", str(bad), "--out", str(out), "--overwrite"]) == 2
    assert f"{bad}:2: 'text' is a int" in capsys.readouterr().err
    txt = tmp_path / "in.txt"
    txt.write_text("a\n")
    assert _run(["--input", str(txt), "--out", str(tmp_path / "emb.csv")]) == 2
    assert "use a .npy or .safetensors file" in capsys.readouterr().err
    assert _run(["--input", str(tmp_path / "missing.txt"), "--out", str(out), "--overwrite"]) == 2
    assert "missing.txt: no such file" in capsys.readouterr().err
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("fine\ncaf\xe9\n".encode("latin-1"))
    assert _run(["--input", str(latin1), "--out", str(out), "--overwrite"]) == 2
    assert f"{latin1}:2: not UTF-8" in capsys.readouterr().err


def test_encode_out_folder_and_missing_device(tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_text("a sentence\n")
    (tmp_path / "emb.npy").mkdir()
    assert main(["encode", "--model", "all-minilm-l6-v2", "--input", str(src), "--out", str(tmp_path / "emb.npy"), "--quiet"]) == 2
    assert "an existing folder" in capsys.readouterr().err
    if torch.cuda.is_available():  # a GPU machine: ask for one it does not have
        device, message = f"cuda:{torch.cuda.device_count()}", "there are"
    else:
        device, message = "cuda", "no CUDA GPU"
    assert main(["encode", "--model", "all-minilm-l6-v2", "--input", str(src), "--out", str(tmp_path / "e.npy"), "--device", device, "--quiet"]) == 2
    assert message in capsys.readouterr().err
    assert main(["encode", "--model", "all-minilm-l6-v2", "--input", str(src), "--out", str(tmp_path / "e.npy"), "--device", "gpu0", "--quiet"]) == 2
    assert "not a device name" in capsys.readouterr().err
    for flag in ("--max-length", "--batch-size"):
        assert main(["encode", "--model", "all-minilm-l6-v2", "--input", str(src), "--out", str(tmp_path / "e.npy"), flag, "0", "--quiet"]) == 2
        assert f"{flag} 0: must be at least" in capsys.readouterr().err
    assert not (tmp_path / "e.npy").exists()


def test_an_existing_out_file_is_replaced_only_with_overwrite(tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_text("a sentence\n")
    out = tmp_path / "mine.npy"
    out.write_bytes(b"the user's own array")
    # refused before the model loads: a model that does not exist is not looked at
    assert main(["encode", "--model", "no-such-model", "--input", str(src), "--out", str(out)]) == 2
    assert f"--out {out}: the file exists; pass --overwrite to replace it" in capsys.readouterr().err
    assert out.read_bytes() == b"the user's own array"
    assert _run(["--input", str(src), "--out", str(out), "--overwrite"]) == 0
    assert np.load(out).shape == (1, 384)


def test_an_out_folder_that_cannot_be_written_is_refused_before_the_input_is_read(tmp_path, capsys):
    for folder in unwritable_folders(tmp_path):
        out = folder / "emb.npy"
        # an input that does not exist and a model that does not exist: neither is looked at first
        assert main(["encode", "--model", "no-such-model", "--input", str(tmp_path / "missing.txt"), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"--out {out}: " in err and ("is not a folder" in err or "Permission denied" in err), err


def test_a_write_the_disk_refuses_is_named_and_the_old_file_kept(tmp_path, tiny_bert_dir, capsys):
    """Files may not pass 64 kB (a real EFBIG from the kernel, as a full disk gives ENOSPC);
    1000 x 32 float32 rows are 128 kB."""
    src = tmp_path / "in.txt"
    src.write_text("".join(f"sentence number {i}\n" for i in range(1000)))
    out = tmp_path / "emb.npy"
    out.write_bytes(b"old")
    with file_size_limit(64_000):
        code = main(["encode", "--model", str(tiny_bert_dir), "--input", str(src), "--out", str(out), "--overwrite", "--device", "cpu", "--quiet"])
    assert code == 2 and f"--out {out}: File too large (EFBIG)" in capsys.readouterr().err
    assert out.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["emb.npy", "in.txt"]  # no temp file left


# --- Encoder.encode internals: the threaded chunked path (batching itself: test_padding.py) ------


def test_threaded_chunked_path_keeps_order(enc, one_by_one, monkeypatch):
    import distill.data.padding as P
    import distill.student as E  # the shared encode of every model kind

    # Tiny chunks force several tokenizer calls, the background thread, and several flushes.
    monkeypatch.setattr(P, "FIRST_CHUNK", 2)
    monkeypatch.setattr(P, "CHUNK", 3)
    monkeypatch.setattr(E, "_PREFETCH_BATCHES", 1)
    monkeypatch.setattr(E, "_FLUSH_ROWS", 4)
    sentences = SENTENCES * 2
    emb = enc.encode(sentences, batch_size=2, progress=False)
    np.testing.assert_allclose(emb, np.concatenate([one_by_one] * 2), atol=1e-5)
    as_tensor = enc.encode(sentences[:4], batch_size=3, progress=False, to_numpy=False)
    np.testing.assert_allclose(as_tensor.numpy(), one_by_one[:4], atol=1e-5)
