"""A transformer + pooling that embeds sentences: the one model class teachers and students share.

Why not `SentenceTransformer` itself: teachers need SimCSE's `cls` (pooler output) and
`cls_before_pooler` poolings, students need layer cutting and access to intermediate hidden
states (IBKD's HSIC term), and bulk encoding must be faster than `SentenceTransformer.encode`
(tokenize everything once, sort by length, pad per batch: distill/data/padding.py). The weights
and tokenizer are plain `transformers` objects, and export writes a normal sentence-transformers
folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from distill.errors import DistillError
from distill.precision import autocast_for  # noqa: F401 (re-exported: callers and tests import it from here)
from distill.presets import StudentSpec
from distill.st_format import STUDENT_POOLINGS as POOLINGS
from distill.student import EmbeddingModel, best_device


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


def float32_weights() -> dict:
    """`from_pretrained` keywords that load the weights in float32, whatever dtype the files store.

    transformers 5 loads a checkpoint in the dtype its files hold ("auto") when config.json names
    none: an fp16 copy (the GPU run's staged teacher and students, many hub uploads) would come back
    as fp16, and a student would then train fp16 master weights. Compute precision is autocast's
    business (distill/precision.py); the weights stay float32. transformers 4 calls it torch_dtype.
    """
    import transformers

    return {"dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype": torch.float32}


def folder_defaults(path: Path) -> dict:
    """Pooling / normalize / max length that a sentence-transformers folder declares, if it is one.

    A student trains the modules this class computes itself: Transformer -> Pooling (mean or the
    [CLS] token) -> Normalize. A folder with anything else (a Dense layer, another pooling) is
    refused, naming the module; served, such a folder is a SentenceModel (distill/models.py).
    """
    from distill.st_format import STUDENT_POOLINGS, declared_max_length, pooling_config, read_modules

    out: dict = {}
    modules = read_modules(path)
    if not modules:  # a plain transformers folder declares nothing (its tokenizer's limit is max_positions)
        return out
    for mod in modules:
        if mod.short == "Normalize":
            out["normalize"] = True
        elif mod.short == "Pooling":
            pooling, _ = pooling_config(path, mod)
            if pooling not in STUDENT_POOLINGS:
                raise DistillError(f"{path / mod.path / 'config.json'}: pooling {pooling!r}: a transformer student pools with "
                                   f"{', '.join(STUDENT_POOLINGS)}")
            out["pooling"] = pooling
        elif mod.short != "Transformer":
            raise DistillError(f"{path / 'modules.json'}: module {mod.name!r} ({mod.type}): a transformer student is "
                               "Transformer -> Pooling -> Normalize; this folder can be a teacher or be served, not be trained as a student")
    max_len = declared_max_length(path, modules)
    if max_len:
        out["max_length"] = max_len
    return out


class Encoder(EmbeddingModel):
    """transformer -> pooling -> (optional) L2 normalization: the transformer kind of the Student
    protocol (distill/student.py), and every teacher."""

    kind = "transformer"

    def __init__(self, transformer, tokenizer, pooling: str = "mean", normalize: bool = False, max_length: int = 128):
        super().__init__()
        if pooling not in POOLINGS:
            raise DistillError(f"unknown pooling {pooling!r} (known: {', '.join(POOLINGS)})")
        self.transformer = transformer
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.normalize = normalize
        self.max_length = max_length
        # The max_seq_length the model's sentence-transformers folder declares (None: not one, or
        # built directly). Kept apart from max_length, which a preset's training length overrides:
        # retrieval evaluation encodes at the declared length (distill.embedding.own_max_length).
        self.declared_max_length: int | None = None

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
        role: str | None = None,
    ) -> Encoder:
        """Load from a folder, preset, hub id or PyPI model; explicit arguments beat the folder's own settings.

        A preset name brings its pooling, normalization, max length and layer cut. `role`
        ("teacher" or "student") picks the preset folder when a name is in both (see `find_preset`).
        The name is resolved once, here; `from_folder` does the rest.
        """
        from distill.presets import find_preset
        from distill.resolve import resolve_model

        preset = find_preset(name, role) if not Path(name).expanduser().is_dir() else None
        if preset is not None:
            pooling = pooling or preset.pooling
            normalize = preset.normalize if normalize is None else normalize
            max_length = max_length or preset.max_length
            if isinstance(preset, StudentSpec) and layers is None:
                layers = preset.layers
            path = resolve_model(preset.hub_id, offline_source=preset.offline_source)
        else:
            path = resolve_model(name, offline_source=offline_source)
        return cls.from_folder(path, pooling=pooling, normalize=normalize, max_length=max_length, layers=layers, device=device)

    @classmethod
    def from_folder(
        cls,
        path: str | Path,
        *,
        pooling: str | None = None,
        normalize: bool | None = None,
        max_length: int | None = None,
        layers: int | Sequence[int] | None = None,
        device: str | torch.device | None = None,
    ) -> Encoder:
        """A transformers (or Transformer -> Pooling -> Normalize sentence-transformers) folder;
        explicit arguments beat the folder's own settings."""
        import sys

        from transformers import AutoModel, AutoTokenizer

        from distill.model_files import check_tokenizer_files, explain_load_error, position_limit

        path = Path(path)
        found = folder_defaults(path)
        pooling = pooling or found.get("pooling", "mean")
        normalize = found.get("normalize", False) if normalize is None else normalize
        max_length = max_length or found.get("max_length", 128)
        try:
            # trust_remote_code=False: a folder whose auto_map names its own code is refused at once
            # (left unset, transformers asks "run the custom code? [y/N]" on a terminal)
            tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
            check_tokenizer_files(path, tokenizer)  # else an empty-vocabulary stand-in encodes silently wrong
            transformer = AutoModel.from_pretrained(str(path), trust_remote_code=False, **float32_weights())
        except Exception as exc:  # a damaged or foreign file: one line naming it (model_files.explain_load_error)
            raise explain_load_error(path, exc) from None
        limit = position_limit(transformer.config)
        if limit is not None and int(max_length) > limit:
            # Past its position embeddings a model fails (or reads garbage) on long inputs.
            print(f"distill: warning: {path}: max length {max_length} is more than the {limit} tokens the model takes "
                  f"(max_position_embeddings); truncating at {limit}", file=sys.stderr)
            max_length = limit
        if layers is not None:
            keep_layers(transformer, layers)
        pooler = getattr(transformer, "pooler", None)
        if pooling != "cls" and isinstance(pooler, nn.Module):
            # Kept so the saved folder loads without "missing weights" warnings, but frozen: it
            # takes no part in the embedding (and DDP must not wait for its gradients).
            pooler.requires_grad_(False)
        enc = cls(transformer, tokenizer, pooling=pooling, normalize=bool(normalize), max_length=int(max_length))
        enc.source = str(path)
        enc.declared_max_length = found.get("max_length")
        return enc.to(device or best_device()).eval()

    @property
    def dim(self) -> int:
        return int(self.transformer.config.hidden_size)

    @property
    def max_positions(self) -> int:
        """The longest input the model itself takes, whatever length it was trained or cached at.

        Evaluation encodes at this length (SentEval does not truncate): the tokenizer's
        model_max_length when it is set, capped by the position embeddings (RoBERTa-style models
        reserve padding_idx + 1 of them).
        """
        from distill.model_files import position_limit

        limits = []
        tok_max = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(tok_max, int) and 0 < tok_max < 1_000_000:  # unset is VERY_LARGE_INTEGER
            limits.append(tok_max)
        positions = position_limit(self.transformer.config)
        if positions is not None:
            limits.append(positions)
        return min(limits) if limits else self.max_length

    def forward(self, input_ids, attention_mask, output_hidden_states: bool = False, **extra) -> dict:
        out = self.transformer(
            input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=output_hidden_states, **extra
        )
        emb = pool(self.pooling, out.last_hidden_state, attention_mask, getattr(out, "pooler_output", None))
        if self.normalize:
            emb = nn.functional.normalize(emb, dim=-1)
        result = {"embedding": emb}
        if output_hidden_states:
            result["hidden_states"] = out.hidden_states
        return result

    def weights(self) -> dict[str, torch.Tensor]:
        return self.transformer.state_dict()

    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        self.transformer.load_state_dict(state)

    def save(self, folder: Path) -> None:
        """The transformers files (model.safetensors, config.json, tokenizer files): AutoModel loads them."""
        self.transformer.save_pretrained(folder, safe_serialization=True)
        self.tokenizer.save_pretrained(folder)

    def st_modules(self, folder: Path, max_seq_length: int) -> list:
        """Transformer (the saved student folder) -> Pooling, for `distill export`."""
        from distill.st_format import ST_POOLING, st_module_classes

        if self.pooling not in ST_POOLING:
            raise DistillError(f"{folder}: pooling {self.pooling!r} has no sentence-transformers Pooling mode")
        models = st_module_classes()
        return [models.Transformer(str(folder), max_seq_length=max_seq_length), models.Pooling(self.dim, pooling_mode=ST_POOLING[self.pooling])]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.transformer.parameters())
