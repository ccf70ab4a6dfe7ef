"""distill.data.padding: the tokenize / pad / length-sort routine that Encoder.encode, OnnxEncoder.encode
and the training collate share (their agreement on one model: test_onnx.py)."""

from __future__ import annotations

import numpy as np
import pytest
from sentences import ODD_SENTENCES as SENTENCES

from distill.data.padding import MAX_ROWS_FACTOR, Prefetch, plan_batches, rust_tokenizer, token_batches
from distill.errors import DistillError


@pytest.fixture(scope="module")
def tok(minilm_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_path))


def _check_rows_match(tokenizer, batches, max_length, batch_size):
    """Every batch row is the tokenizer's own ids for that sentence, right-padded; every sentence once."""
    seen = []
    for idx, ids, mask in batches:
        assert ids.dtype == mask.dtype == np.int64 and ids.shape == mask.shape and ids.shape[0] <= batch_size
        assert ids.shape[1] == max(int(mask.sum(1).max()), 1)  # padded to the batch's longest row, no wider
        for row, i in enumerate(idx):
            ref = tokenizer(SENTENCES[i], truncation=True, max_length=max_length)["input_ids"]
            n = int(mask[row].sum())
            assert ids[row, :n].tolist() == ref and (ids[row, n:] == tokenizer.pad_token_id).all()
            assert mask[row, :n].all() and not mask[row, n:].any()
        seen.extend(idx.tolist())
    assert sorted(seen) == list(range(len(SENTENCES)))


def test_token_batches_match_the_tokenizer(tok):
    _check_rows_match(tok, token_batches(tok, SENTENCES, 16, 4), 16, 4)
    # several tokenizer calls (chunks), each sorted by token length within itself
    _check_rows_match(tok, token_batches(tok, SENTENCES, 16, 2, first_chunk=2, chunk=3), 16, 2)


def test_slow_tokenizer_fallback():
    """A Python tokenizer has no Rust backend to copy: token_batches calls the tokenizer itself."""
    from transformers import ByT5Tokenizer

    slow = ByT5Tokenizer()
    assert not slow.is_fast and rust_tokenizer(slow, 16) is None
    _check_rows_match(slow, token_batches(slow, SENTENCES, 16, 3), 16, 3)


def test_rust_copy_is_private_and_truncates_on_the_tokenizers_side(tok, minilm_path):
    from tokenizers import Tokenizer

    rust = rust_tokenizer(tok, 8)
    assert rust is not tok.backend_tokenizer and rust_tokenizer(tok, 8) is rust  # cached per length
    assert rust.padding is None and rust.truncation["max_length"] == 8
    tok(["x"], padding="max_length", max_length=32)  # the wrapper re-sets its own backend's padding ...
    assert rust.padding is None  # ... not the copy's
    raw = Tokenizer.from_file(str(minilm_path / "tokenizer.json"))  # what OnnxEncoder holds
    assert rust_tokenizer(raw, 8).encode(SENTENCES[1]).ids == rust.encode(SENTENCES[1]).ids
    left = rust_tokenizer(type(tok).from_pretrained(str(minilm_path), truncation_side="left"), 8)
    assert left.truncation["direction"] == "left" and rust.truncation["direction"] == "right"


def test_plan_batches_by_token_budget():
    lengths = np.array([128, 128, 64, 64, 64, 64, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8])
    assert plan_batches(lengths, 4) == [(0, 4), (4, 8), (8, 12), (12, 16), (16, 18)]
    # budget 2 x 128 tokens: 2 rows at 128, 4 at 64, then up to MAX_ROWS_FACTOR * 2 rows of 8
    plan = plan_batches(lengths, 2, token_budget=256)
    assert plan[:2] == [(0, 2), (2, 6)] and plan[2][0] == 6
    assert plan[2][1] - plan[2][0] == min(12, MAX_ROWS_FACTOR * 2)
    assert plan[-1][1] == len(lengths)


def test_collate_pads_like_an_explicit_loop():
    import torch

    from distill.data.tokens import TokenizedCorpus

    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 12, size=40)
    lengths[[3, 17]] = 0  # empty rows pad to all-padding, all-zero mask
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    corpus = TokenizedCorpus(rng.integers(1, 30_000, size=int(offsets[-1])).astype(np.int32), offsets, pad_id=7)
    for rows in (np.arange(40), rng.permutation(40)[:9], np.array([17, 3, 5, 5, 39, 0]), np.array([3, 17, 2])):
        width = int(lengths[rows].max())
        ref_ids = np.full((len(rows), width), 7, dtype=np.int64)
        ref_mask = np.zeros((len(rows), width), dtype=np.int64)
        for j, r in enumerate(rows):
            n = int(offsets[r + 1] - offsets[r])
            ref_ids[j, :n] = corpus.ids[offsets[r] : offsets[r + 1]]
            ref_mask[j, :n] = 1
        ids, mask = corpus.collate(rows)
        assert ids.dtype == mask.dtype == torch.int64
        np.testing.assert_array_equal(ids.numpy(), ref_ids)
        np.testing.assert_array_equal(mask.numpy(), ref_mask)


def test_prefetch_hands_errors_to_the_consumer():
    def items():
        yield 1
        raise DistillError("tokenizer broke")

    it = Prefetch(items(), depth=1)
    got = []
    with pytest.raises(DistillError, match="tokenizer broke"):
        got.extend(it)
    it.close()
    assert got == [1]
    stopped = Prefetch(iter(range(10_000)), depth=2)
    assert next(iter(stopped)) == 0
    stopped.close()  # the producer thread ends though its queue is full
    assert not stopped._thread.is_alive()
