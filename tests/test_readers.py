"""distill/data/readers.py: damaged gzip files and invalid text are named by file and line in
every command that reads sentences (cache, train, encode)."""

from __future__ import annotations

import gzip
import io
import sys
from pathlib import Path

import pytest
from conftest import CORPUS_DIR, recipe_at

from distill.cli import main
from distill.errors import DistillError
from distill.training.run import train


def _damaged_gz(path: Path, kind: str) -> Path:
    with gzip.open(CORPUS_DIR / "sts-family-train.txt.gz", "rb") as f:
        data = gzip.compress(f.read(200_000))
    if kind == "truncated":
        data = data[: len(data) // 2]
    else:  # bytes flipped inside the deflate stream: zlib.error or a CRC error
        data = data[:400] + bytes(b ^ 0xFF for b in data[400:800]) + data[800:]
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("kind", ["truncated", "corrupt"])
def test_damaged_gzip_is_named_in_cache_train_and_encode(tmp_path, tiny_home, monkeypatch, capsys, kind):
    monkeypatch.setenv("DISTILL_HOME", str(tiny_home))
    bad = _damaged_gz(tmp_path / "bad.txt.gz", kind)
    assert main(["cache", "--teacher", "tiny-teacher", "--corpus", str(bad), "--out", str(tmp_path / "c"), "--quiet"]) == 2
    assert f"{bad}:" in capsys.readouterr().err
    with pytest.raises(DistillError, match=rf"{bad}:\d+: a damaged gzip file"):
        train(recipe_at(tmp_path, [f"data.corpus=[{bad}]", "data.max_sentences=null"]), progress=False)
    assert main(["encode", "--model", "tiny-teacher", "--input", str(bad), "--out", str(tmp_path / "e.npy"), "--quiet"]) == 2
    assert f"{bad}:" in capsys.readouterr().err and not (tmp_path / "e.npy").exists()


def test_lone_surrogates_are_named_by_line(tmp_path, monkeypatch, capsys):
    from distill.data.corpus import read_corpus

    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "fine"}\n{"text": "bad \\ud800 here"}\n')
    with pytest.raises(DistillError, match=r"in\.jsonl:2: a lone surrogate '\\ud800' at character 5"):
        read_corpus([str(src)])
    assert main(["encode", "--model", "all-minilm-l6-v2", "--input", str(src), "--out", str(tmp_path / "e.npy"), "--quiet"]) == 2
    assert "in.jsonl:2: a lone surrogate" in capsys.readouterr().err
    # stdin read with surrogateescape (a POSIX locale) turns a bad byte into a lone surrogate
    monkeypatch.setattr(sys, "stdin", io.StringIO("ok\nbad \udce9 byte\n"))
    assert main(["encode", "--model", "all-minilm-l6-v2", "--input", "-", "--out", str(tmp_path / "e.npy"), "--quiet"]) == 2
    assert "stdin:2: a lone surrogate" in capsys.readouterr().err
    assert not (tmp_path / "e.npy").exists()
