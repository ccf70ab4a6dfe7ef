"""Tiny real models for the any-teacher tests: real transformers classes with small configs, the
real MiniLM WordPiece tokenizer, random weights, saved as real sentence-transformers folders by
sentence-transformers itself (no hand-written modules.json)."""

from __future__ import annotations

from pathlib import Path

import torch

QUERY_INSTRUCTION = "Instruct: Given a question, retrieve passages that answer it\nQuery: "


def bert_dir(out: Path, tokenizer_from: Path, seed: int = 0, hidden: int = 32) -> Path:
    """A 2-layer BERT (with its pooler) as a plain transformers folder."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(str(tokenizer_from))
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=2 * hidden, max_position_embeddings=128)
    BertModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def decoder_dir(out: Path, tokenizer_from: Path, seed: int = 0) -> Path:
    """A 2-layer Qwen3 decoder (the architecture of Qwen3-Embedding), tokenizer padding on the left
    as LLM embedders pad, so the last position holds each text's last token."""
    from transformers import AutoTokenizer, Qwen3Config, Qwen3Model

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(str(tokenizer_from))
    tok.padding_side = "left"
    cfg = Qwen3Config(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, head_dim=16, max_position_embeddings=128, pad_token_id=tok.pad_token_id)
    Qwen3Model(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def st_folder(out: Path, base: Path, pooling: str = "mean", normalize: bool = False, dense: int | None = None,
              prompts: dict | None = None, include_prompt: bool = True, max_seq_length: int = 64,
              default_prompt_name: str | None = None, seed: int = 0) -> Path:
    """A sentence-transformers folder written by sentence-transformers: Transformer(base) ->
    Pooling(pooling) [-> Dense(dense, tanh)] [-> Normalize], with its prompts."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules as m

    torch.manual_seed(seed)
    transformer = m.Transformer(str(base), max_seq_length=max_seq_length)
    width = transformer.get_embedding_dimension()
    mods = [transformer, m.Pooling(width, pooling_mode=pooling, include_prompt=include_prompt)]
    if dense:
        mods.append(m.Dense(width, dense, activation_function=torch.nn.Tanh()))
    if normalize:
        mods.append(m.Normalize())
    st = SentenceTransformer(modules=mods, device="cpu", prompts=prompts or {}, default_prompt_name=default_prompt_name)
    st.save(str(out))
    return out


def reference(folder: Path, texts: list[str], role: str | None = None, **kwargs):
    """What plain sentence-transformers gives: encode_query / encode_document / encode, fp32 on CPU."""
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(folder), device="cpu", **kwargs)
    fn = {"query": st.encode_query, "document": st.encode_document}.get(role, st.encode)
    return fn(texts, batch_size=4, convert_to_numpy=True)


TEXTS = [
    "A man is playing a guitar on the street.",
    "what is the boiling point of water at sea level",
    "Cats sleep.",
    "The quick brown fox jumps over the lazy dog while the farmer watches from the old wooden fence.",
    "x",
    "Distillation keeps most of the teacher's quality at a fraction of its cost.",
    "how do vaccines train the immune system",
]
