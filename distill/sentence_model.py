"""A teacher served exactly as sentence-transformers serves it: SentenceModel.

Any teacher a user brings (a preset, a hub id, a folder, an inline mapping: distill.presets.
teacher_spec) becomes a real `SentenceTransformer`, built from the folder's own modules.json
(Transformer, Pooling of every mode, Dense, Normalize, a decoder with last-token pooling and left
padding, ...), or assembled from a plain transformers folder (Transformer -> Pooling [-> the
pooler's Dense(tanh) for SimCSE's `cls`] [-> Normalize]). Its vectors are sentence-transformers'
own: every module runs as the library runs it, so there is no second implementation to drift.

What this class adds is the teacher cache's fast path and roles:
  - sentences are ordered and cut into batches by `distill.data.padding.token_batches` (sorted by
    token length, each batch padded to its own longest row), then each batch goes through
    `SentenceTransformer.preprocess` and forward, exactly as `encode` runs one batch; with the
    same batches as the old Encoder the demo's cache is bit-identical;
  - `encode(texts, role=...)` applies the role's prompt and routes by task as `encode_query` /
    `encode_document` do (role None: plain `encode`, the folder's default prompt);
  - `describe(spec, folder)` says from the files alone (no weights loaded) what changes the
    vectors: the cache's manifest records it, and a cache made any other way is refused.

A module or setting it cannot reproduce is an error naming it, never a silent fallback.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from distill.data import padding
from distill.errors import DistillError
from distill.precision import autocast_for
from distill.presets import TeacherSpec, teacher_spec
from distill.st_format import (
    ST_POOLING,
    check_module_types,
    declared_max_length,
    declared_truncate_dim,
    folder_prompts,
    pooling_config,
    read_json,
    read_modules,
    role_prompt_name,
    st_module_classes,
    transformer_folder,
)
from distill.student import EmbeddingModel, best_device

ROLES = ("query", "document")


def _label(spec: TeacherSpec) -> str:
    return f"teacher {spec.name}" if spec.name == spec.hub_id else f"teacher {spec.name} ({spec.hub_id})"


def _dim_from_files(folder: Path, modules) -> int | None:
    """The output width from the files: the last Dense's out_features, else the Pooling's or the model's width."""
    width = None
    tdir = transformer_folder(folder, modules)
    cfg = read_json(tdir / "config.json") or {}
    if isinstance(cfg, dict):
        text = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else cfg
        width = text.get("hidden_size") or text.get("d_model")
    for mod in modules:
        if mod.short == "Dense":
            dense = read_json(folder / mod.path / "config.json") or {}
            width = dense.get("out_features", width)
    return int(width) if width else None


def _role_prompts(spec: TeacherSpec, folder: Path, prompts: dict, default_name: str | None) -> dict[str, str]:
    """role -> prompt text, for the roles query, document and "" (a plain sentence, as `encode`)."""
    out: dict[str, str] = {}
    if spec.prompt_names:
        for role, name in spec.prompt_names.items():
            if name not in prompts:
                have = ", ".join(prompts) or "none"
                raise DistillError(f"{_label(spec)}: prompt_names.{role}: {name!r} is not a prompt of {folder} "
                                   f"(config_sentence_transformers.json has: {have})")
    for role in (*ROLES, ""):
        if spec.prompts is not None:
            text = spec.prompts.get(role, "") if role else ""
        elif spec.prompt_names and role in spec.prompt_names:
            text = prompts[spec.prompt_names[role]]
        else:
            name = role_prompt_name(role or None, prompts, default_name)
            text = prompts.get(name, "") if name else ""
        out[role] = text
    return out


def describe(spec: TeacherSpec, folder: Path) -> dict:
    """What the teacher's vectors depend on, from its files alone: the cache's identity of it.

    Checks the spec against the folder: a pooling or normalize that a sentence-transformers folder
    already declares otherwise, a prompt name it does not have, a truncate_dim above the width, a
    module of the model's own code (unless trust_remote_code) are errors naming the field and file.
    """
    folder = Path(folder)
    modules = read_modules(folder)
    check_module_types(folder, modules, spec.trust_remote_code)
    include_prompt = True
    if modules:
        pools = [m for m in modules if m.short == "Pooling"]
        pooling = None
        if pools:
            pooling, include_prompt = pooling_config(folder, pools[0])
            if spec.pooling is not None and spec.pooling != pooling:
                raise DistillError(f"{_label(spec)}: pooling {spec.pooling!r}, but {folder / pools[0].path / 'config.json'} declares "
                                   f"{pooling!r}: a sentence-transformers folder brings its own pooling (it wins); leave pooling unset")
        elif spec.pooling is not None:
            raise DistillError(f"{_label(spec)}: pooling {spec.pooling!r}, but {folder / 'modules.json'} has no Pooling module")
        normalize = any(m.short == "Normalize" for m in modules)
        module_types = [m.short for m in modules]
        if spec.normalize and not normalize:
            # the spec wins: a Normalize module is appended (cosine scores are unchanged by it; a preset
            # that caches unit vectors keeps doing so)
            normalize = True
            module_types.append("Normalize")
        elif spec.normalize is False and normalize:
            raise DistillError(f"{_label(spec)}: normalize false, but {folder / 'modules.json'} has a Normalize module, "
                               "which a teacher is served with; leave normalize unset")
    else:
        if not (folder / "config.json").is_file():
            raise DistillError(f"{folder}: not a model folder (no modules.json, no config.json)")
        pooling = spec.pooling or "mean"
        normalize = bool(spec.normalize)
        module_types = ["Transformer", "Pooling"] + (["Dense"] if pooling == "cls" else []) + (["Normalize"] if normalize else [])
    declared = declared_max_length(folder, modules)
    max_length = spec.max_length or declared
    dim = _dim_from_files(folder, modules)
    truncate_dim = effective_truncate_dim(spec, folder)
    if truncate_dim is not None and dim is not None and truncate_dim > dim:
        raise DistillError(f"{_label(spec)}: truncate_dim {truncate_dim} is more than the model's {dim} dimensions")
    if truncate_dim is not None:
        dim = truncate_dim
    prompts, default_name = folder_prompts(folder)
    role_prompts = _role_prompts(spec, folder, prompts, default_name)
    return {
        "teacher": spec.name,
        "teacher_model": spec.hub_id,
        "pooling": pooling,
        "normalize": normalize,
        "dim": dim if spec.dim is None else spec.dim,
        "max_length": max_length,
        "prompts": {role or "sentence": text for role, text in role_prompts.items() if text},
        "include_prompt": include_prompt,
        "modules": module_types,
        "truncate_dim": truncate_dim,
        "teacher_dtype": spec.dtype,
    }


def effective_truncate_dim(spec: TeacherSpec, folder: Path) -> int | None:
    """The width it is served at: the spec's truncate_dim, else the one the folder declares
    (config_sentence_transformers.json, as `distill export --dims` writes it), as SentenceTransformer serves it."""
    if spec.truncate_dim is not None:
        return spec.truncate_dim
    return declared_truncate_dim(folder) if (Path(folder) / "modules.json").is_file() else None


def _plain_pipeline(spec: TeacherSpec, folder: Path, plan: dict, max_length: int | None):
    """Transformer -> Pooling [-> the pooler as Dense(tanh)] [-> Normalize] for a folder without modules.json."""
    from distill.encoder import float32_weights

    m = st_module_classes()
    trust = {"trust_remote_code": spec.trust_remote_code}
    transformer = m.Transformer(str(folder), max_seq_length=max_length, model_kwargs={**float32_weights(), **trust},
                                processor_kwargs=dict(trust), config_kwargs=dict(trust))
    width = transformer.get_embedding_dimension()
    pooling = plan["pooling"]
    modules = [transformer, m.Pooling(width, pooling_mode=ST_POOLING.get(pooling, "cls"))]
    if pooling == "cls":  # the model's pooler output (SimCSE): [CLS] -> its trained Linear -> tanh
        pooler = getattr(transformer.auto_model, "pooler", None)
        dense = getattr(pooler, "dense", None)
        if not isinstance(dense, torch.nn.Linear):
            raise DistillError(f"{_label(spec)}: pooling 'cls' is the model's pooler output, and {folder} has no pooler "
                               "(use cls_before_pooler for the [CLS] token's own vector)")
        head = m.Dense(dense.in_features, dense.out_features, bias=dense.bias is not None, activation_function=torch.nn.Tanh())
        head.linear.load_state_dict(dense.state_dict())
        modules.append(head)
    if plan["normalize"]:
        modules.append(m.Normalize())
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(modules=modules, device="cpu")


class SentenceModel(EmbeddingModel):
    """A frozen teacher: a SentenceTransformer, encoded by role through the fast batching path."""

    kind = "sentence"

    def __init__(self, st, spec: TeacherSpec, folder: Path, plan: dict):
        super().__init__()
        self.st = st
        self.spec = spec
        self.folder = Path(folder)
        self.plan = plan
        self.source = str(folder)
        self.tokenizer = st.tokenizer
        self.max_length = int(st.max_seq_length)
        self.declared_max_length = declared_max_length(folder) if (folder / "modules.json").is_file() else None
        # role -> prompt text, as describe() resolved them ("" for a plain sentence; no prompt: "")
        self.prompts = {role: plan["prompts"].get(role or "sentence", "") for role in (*ROLES, "")}
        self.truncate_dim = plan["truncate_dim"]

    @classmethod
    def load(cls, spec, *, folder: str | Path | None = None, device=None) -> SentenceModel:
        """Resolve (once) and load a teacher; `folder` skips the resolution (already done by the caller)."""
        from distill.model_files import explain_load_error, position_limit
        from distill.resolve import resolve_model

        spec = teacher_spec(spec)
        folder = Path(folder) if folder is not None else resolve_model(spec.hub_id, offline_source=spec.offline_source,
                                                                       revision=spec.revision)
        plan = describe(spec, folder)
        max_length = plan["max_length"]
        config = read_json(transformer_folder(folder, read_modules(folder)) / "config.json") or {}
        limit = position_limit(config) if isinstance(config, dict) else None
        if limit is not None and max_length is not None and max_length > limit:
            print(f"distill: warning: {folder}: max length {max_length} is more than the {limit} tokens the model takes "
                  f"(max_position_embeddings); truncating at {limit}", file=sys.stderr)
            max_length = plan["max_length"] = limit
        try:
            if (folder / "modules.json").is_file():
                from sentence_transformers import SentenceTransformer

                from distill.encoder import float32_weights

                st = SentenceTransformer(str(folder), device="cpu", trust_remote_code=spec.trust_remote_code, local_files_only=True,
                                         model_kwargs=float32_weights())
            else:
                st = _plain_pipeline(spec, folder, plan, max_length)
        except DistillError:
            raise
        except Exception as exc:  # a damaged or foreign file: one line naming it
            raise explain_load_error(folder, exc) from None
        if max_length is not None:
            st.max_seq_length = max_length
        if plan["normalize"] and not any(type(m).__name__ == "Normalize" for m in st):
            st.append(st_module_classes().Normalize())  # normalize: true on a folder without it (describe)
        st.truncate_dim = None  # the full width here; encode truncates to plan["truncate_dim"], as encode does
        model = cls(st, spec, folder, plan)
        width = (getattr(st, "get_embedding_dimension", None) or st.get_sentence_embedding_dimension)()
        if plan["truncate_dim"] is not None:
            if width is not None and plan["truncate_dim"] > width:
                raise DistillError(f"{_label(spec)}: truncate_dim {plan['truncate_dim']} is more than the model's {width} dimensions")
            width = plan["truncate_dim"]
        if width is not None and plan["dim"] is not None and width != plan["dim"]:
            where = "its preset says dim" if spec.dim is not None else "its files say"
            raise DistillError(f"{_label(spec)} gives {width}-d vectors but {where} {plan['dim']}")
        plan["dim"] = width or plan["dim"]
        return model.to(device or best_device()).eval()

    # ---------------------------------------------------------------- the protocol

    @property
    def device(self) -> torch.device:
        return self.st.device

    @property
    def dim(self) -> int:
        return int(self.plan["dim"])

    @property
    def transformer(self):
        return self.st[0].auto_model if hasattr(self.st[0], "auto_model") else None

    @property
    def max_positions(self) -> int:
        """The longest input the model takes: the tokenizer's own limit, capped by its position embeddings."""
        from distill.model_files import position_limit

        limits = []
        # the tokenizer_config.json's own limit (sentence-transformers overwrote the loaded tokenizer's
        # model_max_length with max_seq_length), as the Encoder reads it
        tok = read_json(transformer_folder(self.folder, read_modules(self.folder)) / "tokenizer_config.json") or {}
        tok_max = tok.get("model_max_length") if isinstance(tok, dict) else None
        if isinstance(tok_max, int) and not isinstance(tok_max, bool) and 0 < tok_max < 1_000_000:
            limits.append(tok_max)
        model = self.transformer
        positions = position_limit(model.config) if model is not None else None
        if positions is not None:
            limits.append(positions)
        return min(limits) if limits else self.max_length

    def identity(self) -> dict:
        """What the cache records of this teacher (see `describe`)."""
        return dict(self.plan)

    def prompt(self, role: str | None) -> str:
        if role not in (None, "", *ROLES):
            raise DistillError(f"role {role!r}: one of {', '.join(ROLES)} (or none for a plain sentence)")
        return self.prompts[role or ""]

    def forward(self, input_ids, attention_mask, output_hidden_states: bool = False, **extra) -> dict:
        out = self.st({"input_ids": input_ids, "attention_mask": attention_mask})
        emb = out["sentence_embedding"]
        if self.truncate_dim is not None:
            emb = emb[..., : self.truncate_dim]
        return {"embedding": emb}

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.st.parameters())

    # ---------------------------------------------------------------- encoding

    @torch.inference_mode()
    def encode(
        self,
        sentences: Sequence[str],
        batch_size: int = 128,
        progress: bool = True,
        desc: str = "encode",
        to_numpy: bool = True,
        max_length: int | None = None,
        precision: str | None = None,
        bar=None,
        role: str | None = None,
    ):
        """Row i is sentence i's vector, as `SentenceTransformer.encode_query` (role "query"),
        `encode_document` ("document") or `encode` (None) gives it, in float32."""
        from tqdm.auto import tqdm

        sentences = list(sentences)
        if not sentences:
            return np.zeros((0, self.dim), dtype=np.float32) if to_numpy else torch.zeros(0, self.dim)
        padding.check_sentences(sentences, batch_size)
        prompt = self.prompt(role) or None
        task = {"task": role} if role in ROLES else {}
        length = int(max_length or self.max_length)
        saved = self.st.max_seq_length
        self.st.max_seq_length = length
        device = self.device
        out = torch.empty(len(sentences), self.dim, dtype=torch.float32)
        budget = batch_size * length if device.type == "cuda" else 0
        # the order and cut of the batches by the prompted texts' token lengths; the texts themselves
        # go to sentence-transformers unprompted, with the prompt, as encode hands them over
        ordered = [prompt + s for s in sentences] if prompt else sentences
        own_bar = bar is None
        if own_bar:
            bar = tqdm(total=len(sentences), desc=desc, unit="sent", disable=not progress, leave=False)
        try:
            with autocast_for(device, precision or self.spec.dtype):
                for idx, _, _ in padding.token_batches(self.tokenizer, ordered, length, batch_size, token_budget=budget):
                    features = self.st.preprocess([sentences[i] for i in idx], prompt=prompt, **task)
                    features = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in features.items()}
                    emb = self.st(features, **task)["sentence_embedding"]
                    if self.truncate_dim is not None:
                        emb = emb[..., : self.truncate_dim]
                    out[torch.from_numpy(np.asarray(idx))] = emb.float().cpu()
                    bar.update(len(idx))
        finally:
            self.st.max_seq_length = saved
            if own_bar:
                bar.close()
        return out.numpy() if to_numpy else out
