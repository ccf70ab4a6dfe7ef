"""What training, evaluation and export need of a model: the Student protocol (loading is distill/models.py).

Every model this toolkit trains or scores is an `EmbeddingModel` (an nn.Module), the Student
protocol:

    tokenizer        a transformers fast tokenizer; training tokenizes the corpus with it once
                     (data/tokens.py) and `encode` batches with it (data/padding.py)
    max_length       truncation for training and plain encoding (the recipe's data.max_length)
    max_positions    the longest input it takes: evaluation encodes at it (SentEval style)
    dim              the width of its sentence vector
    device
    forward(input_ids, attention_mask, output_hidden_states=False)
                     -> {"embedding": (n, dim)[, "hidden_states": tuple of (n, length, width)]}
                     hidden states are what IBKD's HSIC term pools as X (the input side)
    encode(sentences, ...) -> (n, dim) array, rows in input order   (shared, below)
    weights() / load_weights(state)   the trainable state a checkpoint holds
    save(folder)     the saved-student files (distill/saved_student.py adds its meta and heads)
    st_modules(folder)  sentence-transformers input modules for `distill export`
    num_parameters() / no_weight_decay()   its size; parameters AdamW must not shrink
    kind             "transformer" or "static", recorded in a saved student's meta

Three classes implement it: `distill.encoder.Encoder` (a transformers model + pooling, layer cut:
transformer students), `distill.static_student.StaticStudent` (a token-embedding table,
mean-pooled) and `distill.sentence_model.SentenceModel` (any sentence-transformers pipeline, served
exactly and frozen: every teacher). A new kind of student is one new subclass, a preset kind
(presets.py), and its entry in distill/models.py's registry.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from distill.data import padding
from distill.precision import autocast_for

_PREFETCH_BATCHES = 8  # padded batches the tokenizer thread may run ahead
_FLUSH_ROWS = 65536  # embeddings kept on the device before one copy back to the host


def best_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


class EmbeddingModel(nn.Module):
    """The shared part of every model kind: bulk encoding through `forward`. Subclasses set
    `tokenizer`, `max_length` and implement the rest of the protocol (module docstring)."""

    kind = ""
    tokenizer = None
    max_length: int = 128
    source: str = ""

    # -------------------------------------------------------------------- the protocol

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dim(self) -> int:
        raise NotImplementedError

    @property
    def max_positions(self) -> int:
        raise NotImplementedError

    def forward(self, input_ids, attention_mask, output_hidden_states: bool = False) -> dict:
        raise NotImplementedError

    def weights(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError

    def save(self, folder: Path) -> None:
        raise NotImplementedError

    def st_modules(self, folder: Path, max_seq_length: int) -> list:
        raise NotImplementedError

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def no_weight_decay(self) -> list[nn.Parameter]:
        """Parameters AdamW must not decay, beyond the trainer's own rule (biases and norms)."""
        return []

    # -------------------------------------------------------------------- shared

    def tokenize(self, sentences: Sequence[str]) -> dict:
        return self.tokenizer(list(sentences), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")

    def _batches(self, sentences: list[str], batch_size: int, max_length: int):
        """What `encode` feeds the model: (input positions, input_ids, attention_mask) tensors,
        from the shared `distill.data.padding.token_batches`; on GPU by token budget and pinned."""
        cuda = self.device.type == "cuda"
        budget = batch_size * max_length if cuda else 0
        for idx, input_ids, attention_mask in padding.token_batches(self.tokenizer, sentences, max_length, batch_size, token_budget=budget):
            input_ids, attention_mask = torch.from_numpy(input_ids), torch.from_numpy(attention_mask)
            if cuda:  # pinned here, in the tokenizer thread, so the copy to the GPU can be non-blocking
                input_ids, attention_mask = input_ids.pin_memory(), attention_mask.pin_memory()
            yield idx, input_ids, attention_mask

    @torch.inference_mode()
    def encode(
        self,
        sentences: Sequence[str],
        batch_size: int = 128,
        progress: bool = True,
        desc: str = "encode",
        to_numpy: bool = True,
        max_length: int | None = None,
        precision: str = "auto",
        bar=None,
    ):
        """Embed sentences; row i of the result is sentence i, whatever order they ran in.

        `max_length` truncates (default: the model's own `max_length`); `precision` is the GPU
        autocast ("auto", "bf16", "fp16" or "fp32", see distill/precision.py); CPU always runs fp32.
        Batches come from `distill.data.padding.token_batches` (length-sorted, chunked Rust
        tokenization; on GPU as many rows as fit `batch_size * max_length` tokens, on CPU
        `batch_size` rows); for inputs over one chunk a background thread tokenizes and pads the
        next batches while the model runs the current one. On GPU: pinned memory, non-blocking
        copies, bf16/fp16 autocast, and embeddings stay on the GPU until a large block is copied
        back at once (no sync per batch).

        `bar`: a tqdm bar of the caller's to advance batch by batch instead of opening one (the
        teacher cache keeps one bar over all its shards; a shard is 16,384 sentences, minutes on CPU).
        """
        sentences = list(sentences)
        if not sentences:
            return np.zeros((0, self.dim), dtype=np.float32) if to_numpy else torch.zeros(0, self.dim)
        padding.check_sentences(sentences, batch_size)
        max_length = int(max_length or self.max_length)
        self.eval()
        device = self.device
        out = torch.empty(len(sentences), self.dim, dtype=torch.float32)
        batches = self._batches(sentences, batch_size, max_length)
        if len(sentences) > padding.FIRST_CHUNK:
            batches = padding.Prefetch(batches, depth=_PREFETCH_BATCHES)
        own_bar = bar is None
        if own_bar:
            bar = tqdm(total=len(sentences), desc=desc, unit="sent", disable=not progress, leave=False)
        done_idx: list[np.ndarray] = []
        done_emb: list[torch.Tensor] = []
        held = 0
        try:
            with autocast_for(device, precision):
                for idx, input_ids, attention_mask in batches:
                    input_ids = input_ids.to(device, non_blocking=True)
                    attention_mask = attention_mask.to(device, non_blocking=True)
                    done_emb.append(self(input_ids, attention_mask)["embedding"].float())
                    done_idx.append(idx)
                    held += len(idx)
                    if held >= _FLUSH_ROWS:
                        _flush(out, done_idx, done_emb)
                        held = 0
                    bar.update(len(idx))
            _flush(out, done_idx, done_emb)
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()
            if own_bar:
                bar.close()
        return out.numpy() if to_numpy else out


def _flush(out: torch.Tensor, done_idx: list, done_emb: list) -> None:
    """Write the held embeddings into their input rows (one device->host copy) and clear the lists."""
    if done_idx:
        rows = torch.from_numpy(np.concatenate(done_idx))
        out[rows] = torch.cat(done_emb).cpu()
        done_idx.clear()
        done_emb.clear()
