"""distill/data/corpus.py: the corpus files named in a recipe or `distill cache --corpus`."""

from __future__ import annotations

import pytest

from distill.errors import DistillError


def test_relative_corpus_path_shows_the_absolute_path_tried(tmp_path, monkeypatch):
    from distill.data.corpus import read_corpus

    monkeypatch.chdir(tmp_path)
    with pytest.raises(DistillError, match=rf"corpus file not found: data/c\.txt \(looked for {tmp_path}/data/c\.txt"):
        read_corpus(["data/c.txt"])
