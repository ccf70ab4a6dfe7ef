"""The streaming corpus reader, its on-disk store (sentences by row index), roles, and the token ids
written in chunks to memory-mapped files (distill/data/corpus.py, sentence_store.py, dedup.py, tokens.py)."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
from conftest import CORPUS_DIR

import distill.data.corpus as corpus_module
from distill.data.corpus import corpus_sha256, read_corpus
from distill.data.readers import check_text, iter_lines
from distill.data.sentence_store import OFFSETS, ROLES_FILE, SentenceStore, SentenceWriter
from distill.errors import DistillError


def old_read_corpus(sources: list[str], max_sentences: int | None = None):
    """The reader as it was before the streaming store (2026-12-03): a set of the strings, a list of
    the kept ones. The reference the new reader must equal row for row (a teacher cache's
    corpus_sha256 and the demo's token ids depend on it)."""
    seen, out = set(), []
    read = empty = duplicates = 0
    for source in sources:
        for lineno, raw in iter_lines(source):
            read += 1
            check_text(raw, f"{source}:{lineno}")
            text = " ".join(raw.split("\n")).strip() if "\n" in raw else raw.strip()
            if not text:
                empty += 1
                continue
            if text in seen:
                duplicates += 1
                continue
            seen.add(text)
            out.append(text)
            if max_sentences is not None and len(out) >= max_sentences:
                return out, (read, empty, duplicates)
    return out, (read, empty, duplicates)


def counts(corpus) -> tuple[int, int, int]:
    return corpus.read, corpus.dropped_empty, corpus.dropped_duplicates


def test_the_new_reader_equals_the_old_on_the_shared_corpus_and_so_do_the_token_ids(tmp_path, minilm_path):
    """Same sentences, order, counts and sha256 on the shared corpus files (an existing cache still
    matches), with and without the demo's cut; the demo's token ids through the memory-mapped
    chunks equal the ids the whole-corpus path made."""
    from transformers import AutoTokenizer

    from distill.data.tokens import tokenize_corpus

    files = [str(CORPUS_DIR / n) for n in ("sts-family-train.txt.gz", "wordnet-examples.txt.gz", "wordnet-glosses.txt.gz")]
    for sources, cut in ((files, None), (files[:1], 4096)):  # the whole corpus; the demo recipe's corpus
        expected, expected_counts = old_read_corpus(sources, cut)
        with read_corpus(sources, max_sentences=cut) as corpus:
            assert corpus.count == len(expected) and counts(corpus) == expected_counts
            assert corpus.sha256 == corpus_sha256(expected) and corpus.roles_sha256 is None
            assert corpus.sentences[:] == expected
    tok = AutoTokenizer.from_pretrained(str(minilm_path))
    with read_corpus(files[:1], max_sentences=4096) as corpus:
        tokens = tokenize_corpus(tok, corpus.sentences, 64, cache_dir=tmp_path, progress=False)
    whole = tok(expected, truncation=True, max_length=64, padding=False)["input_ids"]
    assert isinstance(tokens.ids, np.memmap) and tokens.path.parent == tmp_path / "tokens"
    np.testing.assert_array_equal(tokens.ids, np.concatenate([np.asarray(x, dtype=np.int32) for x in whole]))
    np.testing.assert_array_equal(tokens.lengths, [len(x) for x in whole])
    ids, mask = tokens.collate(np.array([5, 0, 4095]))
    for row, i in enumerate((5, 0, 4095)):
        assert ids[row, : len(whole[i])].tolist() == whole[i] and int(mask[row].sum()) == len(whole[i])


def test_dedup_keeps_the_first_of_each_role_and_text_and_counts_as_before(tmp_path):
    (tmp_path / "docs.txt").write_text("One.\n\n  Two.  \nOne.\n   \nThree.\n")
    (tmp_path / "questions.txt").write_text("Two.\nWhy?\nWhy?\n\n")
    docs, questions = str(tmp_path / "docs.txt"), str(tmp_path / "questions.txt")
    with read_corpus([docs, f"query:{questions}", f"document:{questions}"]) as corpus:
        # "Two." as a query is not the document "Two."; read again as a document, it is a duplicate ("Why?" is not)
        assert corpus.sentences[:] == ["One.", "Two.", "Three.", "Two.", "Why?", "Why?"]
        assert corpus.sentences.roles.tolist() == [0, 0, 0, 1, 1, 0]
        assert counts(corpus) == (14, 4, 4)
        assert corpus.sha256 == corpus_sha256(corpus.sentences[:]) and corpus.roles_sha256 is not None
        with_roles = corpus.identity()
    with read_corpus([docs, questions]) as plain, read_corpus([f"document:{docs}", f"document:{questions}"]) as explicit:
        assert plain.identity() == explicit.identity() == {"corpus_sha256": corpus_sha256(["One.", "Two.", "Three.", "Why?"]),
                                                           "corpus_roles_sha256": None}
        assert plain.identity() != with_roles
    with pytest.raises(DistillError, match="a beir: source gives its own roles"):
        read_corpus([f"query:beir:{tmp_path}"])


def test_the_cut_and_errors_fall_exactly_where_a_row_by_row_reader_puts_them(tmp_path, monkeypatch):
    """Rows are read in chunks (here 4): the max_sentences cut, the counts, and an error after the
    cut (never raised) or before it (raised) are still exactly the row-by-row reader's."""
    monkeypatch.setattr(corpus_module, "CHUNK_ROWS", 4)
    lines = ["a", "b", "", "a", "c", "d", "c", "", "e", "f", "g", "b", "h"]
    first = tmp_path / "first.txt"
    first.write_text("\n".join(lines) + "\n")
    for cut in [None, *range(1, 10)]:
        expected, expected_counts = old_read_corpus([str(first)], cut)
        with read_corpus([str(first)], max_sentences=cut) as corpus:
            assert (corpus.sentences[:], counts(corpus)) == (expected, expected_counts), cut
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"x\ny\n\xff\n")
    assert read_corpus([str(first), str(bad)], max_sentences=8).count == 8  # the cut comes before the bad file
    assert read_corpus([str(first), str(tmp_path / "missing.txt")], max_sentences=8).count == 8
    with pytest.raises(DistillError, match=r"bad\.txt:3: not UTF-8"):
        read_corpus([str(first), str(bad)], max_sentences=11)  # x and y are the 9th and 10th: the bad line comes first


def test_the_digest_set_is_a_set():
    """Against a Python set: repeats inside a batch and across batches, the table growing many times."""
    from distill.data.dedup import DigestSet, as_keys, digest

    rng = np.random.default_rng(0)
    table, reference = DigestSet(capacity=16), set()
    for _ in range(20):
        values = rng.integers(0, 3000, size=700)
        new = table.add(*as_keys(b"".join(digest(int(v).to_bytes(4, "little")) for v in values)))
        expected = []
        for v in values.tolist():
            expected.append(v not in reference)
            reference.add(v)
        assert new.tolist() == expected
    assert len(table) == len(reference) and table.nbytes >= 16 * 2 * len(reference)


def test_the_store_reads_any_row_by_index(tmp_path):
    rows = ["first", "sécond ünïcode 漢字", "tab\there and a \r inside", "x" * 5000, "last"]
    writer = SentenceWriter(tmp_path / "s")
    writer.add([r.encode() for r in rows[:2]], np.array([0, 1]))
    writer.add([r.encode() for r in rows[2:]], np.array([0, 0, 1]))
    store = writer.close()
    assert len(store) == 5 and store[1] == rows[1] and store[-1] == "last" and store[4] == "last"
    assert store[1:4] == rows[1:4] and store[::2] == rows[::2] and store[3:1] == [] and store.batch(3, 99) == rows[3:]
    assert store.take([4, 0, 4]) == ["last", "first", "last"] and list(store) == rows
    assert store.roles.tolist() == [0, 1, 0, 0, 1] and writer.sha256 == corpus_sha256(rows)
    assert (tmp_path / "s" / "sentences.txt").read_bytes() == "".join(r + "\n" for r in rows).encode()
    assert np.load(tmp_path / "s" / OFFSETS).tolist() == [0, *np.cumsum([len(r.encode()) + 1 for r in rows])]
    with pytest.raises(IndexError):
        store[5]
    store.close()
    # a cache folder from before the offsets and roles files: its lines, every row a document
    (tmp_path / "s" / OFFSETS).unlink()
    (tmp_path / "s" / ROLES_FILE).unlink()
    old = SentenceStore.open(tmp_path / "s", count=5)
    assert old[:] == rows and old.roles.tolist() == [0] * 5 and old.roles_sha256 is None
    with pytest.raises(DistillError, match=r"sentences\.txt has 5 lines, the manifest says 6"):
        SentenceStore.open(tmp_path / "s", count=6)
    text = (tmp_path / "s" / "sentences.txt").read_bytes()
    (tmp_path / "s" / "sentences.txt").write_bytes(text[:-3])
    with pytest.raises(DistillError, match=r"sentences\.txt: .* the file was changed or cut short"):
        SentenceStore.open(tmp_path / "s")


def test_a_corpus_without_a_folder_lives_in_a_temporary_one_until_closed(tmp_path):
    (tmp_path / "c.txt").write_text("a\nb\na\n")
    corpus = read_corpus([str(tmp_path / "c.txt")])
    folder = corpus.sentences.folder
    assert folder.is_dir() and corpus.sentences[:] == ["a", "b"]
    corpus.close()
    assert not folder.exists()
    named = read_corpus([str(tmp_path / "c.txt")], folder=tmp_path / "store")
    named.close()
    assert SentenceStore.open(tmp_path / "store")[:] == ["a", "b"]  # a named folder is the caller's: kept
    counted = read_corpus([str(tmp_path / "c.txt")], keep_text=False)
    assert counted.sentences is None and counted.identity() == named.identity() and counted.count == 2


def test_a_local_dataset_streams_through_datasets(tmp_path):
    """The hub path (`load_dataset(..., streaming=True)`) on a local folder of data files, and a
    `save_to_disk` folder: rows in order, the column picked, a non-string value an empty row."""
    import datasets

    from distill.data.corpus import _open_streaming

    folder = tmp_path / "hubish"
    folder.mkdir()
    rows = [{"id": i, "body": t} for i, t in enumerate(["Alpha.", "Beta.", "Alpha.", None, "Gamma."])]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert isinstance(_open_streaming(datasets, str(folder)), datasets.IterableDataset)
    with read_corpus([f"query:{folder}"], column="body") as corpus:
        assert corpus.sentences[:] == ["Alpha.", "Beta.", "Gamma."] and counts(corpus) == (5, 1, 1)
        assert corpus.sentences.roles.tolist() == [1, 1, 1]
    assert read_corpus([str(folder)], column="body", max_sentences=2).sentences[:] == ["Alpha.", "Beta."]
    with pytest.raises(DistillError, match=r"hubish.*none of the columns text, sentence"):
        read_corpus([str(folder)])
    saved = tmp_path / "saved"
    datasets.Dataset.from_list([{"text": "One."}, {"text": "Two."}, {"text": "One."}]).save_to_disk(str(saved))
    assert read_corpus([str(saved)]).sentences[:] == ["One.", "Two."]


def test_tokens_are_written_chunk_by_chunk_and_reopened_memory_mapped(tmp_path, minilm_path, monkeypatch):
    from transformers import AutoTokenizer

    import distill.data.tokens as tokens_module

    monkeypatch.setattr(tokens_module, "CHUNK", 3)
    with gzip.open(CORPUS_DIR / "sts-family-train.txt.gz", "rt", encoding="utf-8") as f:
        sentences = [next(f).strip() for _ in range(10)]
    tok = AutoTokenizer.from_pretrained(str(minilm_path))
    stored = tokens_module.tokenize_corpus(tok, sentences, 16, cache_dir=tmp_path, progress=False)
    in_memory = tokens_module.tokenize_corpus(tok, sentences, 16, progress=False)
    expected = [tok(s, truncation=True, max_length=16)["input_ids"] for s in sentences]
    for tokens in (stored, in_memory):
        assert tokens.ids.tolist() == [i for x in expected for i in x] and tokens.lengths.tolist() == [len(x) for x in expected]
    files = sorted(stored.path.iterdir())
    assert [f.name for f in files] == ["ids.npy", "offsets.npy"]
    (tmp_path / "tokens" / f"{stored.path.name}.npz").write_bytes(b"PK an old file beside it, ignored")
    stamps = [f.stat().st_mtime_ns for f in files]
    again = tokens_module.tokenize_corpus(tok, sentences, 16, cache_dir=tmp_path, progress=False)
    assert [f.stat().st_mtime_ns for f in files] == stamps and isinstance(again.ids, np.memmap)  # read back, not redone
    for a, b in zip(again.collate(np.array([9, 2])), in_memory.collate(np.array([9, 2]))):
        assert a.tolist() == b.tolist()
