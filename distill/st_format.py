"""The sentence-transformers folder format, read and written in one place.

A sentence-transformers folder is a pipeline of modules listed in modules.json (Transformer, Pooling,
Dense, Normalize, StaticEmbedding, Router, ...), each with its own subfolder and config, plus
config_sentence_transformers.json (prompts, default_prompt_name, similarity). Everything in distill
that reads or writes that format goes through here: the model registry (distill/models.py) to
recognize a folder, SentenceModel (distill/sentence_model.py) to serve one exactly, the Encoder and
export to write one. A low module: it imports nothing of distill but errors, so nothing can close an
import circle through it.

Pooling names. Ours are sentence-transformers' Pooling modes, except two that predate them:
`cls_before_pooler` is sentence-transformers' `cls` (the [CLS] token's vector), and our `cls` is
the model's pooler output (SimCSE's choice: tanh(W h_cls + b)), which sentence-transformers
expresses as Pooling(cls) followed by a Dense(tanh) holding the pooler's weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from distill.errors import DistillError

# our pooling name -> sentence-transformers Pooling mode
ST_POOLING = {
    "mean": "mean",
    "cls_before_pooler": "cls",
    "max": "max",
    "weightedmean": "weightedmean",
    "lasttoken": "lasttoken",
    "mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
}
OUR_POOLING = {mode: ours for ours, mode in ST_POOLING.items()}
# every pooling a teacher may name: the ST modes plus the pooler output
POOLINGS = ("mean", "cls", "cls_before_pooler", "max", "weightedmean", "lasttoken", "mean_sqrt_len_tokens")
# what a trained transformer student (distill.encoder.Encoder) computes itself, and exports
STUDENT_POOLINGS = ("mean", "cls", "cls_before_pooler")
# the legacy boolean keys of a Pooling config.json (sentence-transformers up to 5)
_LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
STATIC_MODULE = "StaticEmbedding"
ROUTER_MODULE = "Router"
# A token-length limit at or above this is transformers' "unset" placeholder (VERY_LARGE_INTEGER).
_SANE_MAX_LENGTH = 100_000


@dataclass(frozen=True)
class ModuleEntry:
    """One line of modules.json: its position, subfolder and class path."""

    idx: int
    name: str
    path: str
    type: str

    @property
    def short(self) -> str:
        """The class name alone (sentence_transformers.models.Pooling -> Pooling)."""
        return self.type.rsplit(".", 1)[-1]

    @property
    def builtin(self) -> bool:
        """A module class of the sentence-transformers package (not a model's own code)."""
        return self.type.startswith("sentence_transformers.")


def read_json(path: Path, *, required: bool = False):
    """A JSON file's data; a damaged file is one line naming it (with its line); missing: None or an error."""
    if not path.is_file():
        if required:
            raise DistillError(f"{path}: missing")
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DistillError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); the file is damaged or cut short") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DistillError(f"{path}: cannot be read ({exc})") from None


def is_st_folder(folder: Path) -> bool:
    return (Path(folder) / "modules.json").is_file()


def read_modules(folder: Path) -> list[ModuleEntry]:
    """modules.json of a sentence-transformers folder, each entry checked; [] for a plain folder."""
    file = Path(folder) / "modules.json"
    data = read_json(file)
    if data is None:
        return []
    if not isinstance(data, list) or not data:
        raise DistillError(f"{file}: expected a non-empty list of modules")
    out = []
    for i, mod in enumerate(data):
        if not isinstance(mod, dict) or not isinstance(mod.get("type"), str):
            raise DistillError(f"{file}: module {i} has no 'type' (the module's class path)")
        out.append(ModuleEntry(int(mod.get("idx", i)), str(mod.get("name", i)), str(mod.get("path", "")), mod["type"]))
    return out


def check_module_types(folder: Path, modules: list[ModuleEntry], trust_remote_code: bool = False) -> None:
    """Refuse a module whose class is a model's own code, unless the user asked for it.

    sentence-transformers would import and run it (custom modules are Python files in the model's
    repository): never done behind the user's back."""
    for mod in modules:
        if not mod.builtin and not trust_remote_code:
            raise DistillError(f"{Path(folder) / 'modules.json'}: module {mod.name!r} is {mod.type!r}, the model's own code, not a "
                               "sentence-transformers module; it runs only if you trust it: set trust_remote_code: true in the "
                               "teacher's mapping")


def static_folder(folder: Path) -> bool:
    """A folder whose first module is a StaticEmbedding (ours, or model2vec's through sentence-transformers)."""
    try:
        modules = read_modules(folder)
    except DistillError:
        return False
    return bool(modules) and modules[0].short == STATIC_MODULE


def pooling_config(folder: Path, entry: ModuleEntry) -> tuple[str, bool]:
    """(our pooling name, include_prompt) of a Pooling module's config.json (either format)."""
    file = Path(folder) / entry.path / "config.json"
    cfg = read_json(file, required=True)
    if not isinstance(cfg, dict):
        raise DistillError(f"{file}: expected a JSON object")
    mode = cfg.get("pooling_mode")
    if mode is None:
        active = [m for key, m in _LEGACY_POOLING_KEYS.items() if cfg.get(key)]
        mode = active if len(active) != 1 else active[0]
        if not active:
            mode = "mean"  # sentence-transformers' own default when no key is set
    if isinstance(mode, list) and len(mode) == 1:
        mode = mode[0]
    if not isinstance(mode, str) or mode not in OUR_POOLING:
        raise DistillError(f"{file}: pooling mode {mode!r} is not one pooling of {', '.join(ST_POOLING.values())}; "
                           "a concatenation of poolings is not supported")
    return OUR_POOLING[mode], bool(cfg.get("include_prompt", True))


ST_CONFIG = "config_sentence_transformers.json"  # prompts, similarity, truncate_dim


def st_config(folder: Path) -> dict:
    """config_sentence_transformers.json ({} when absent)."""
    file = Path(folder) / ST_CONFIG
    data = read_json(file)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DistillError(f"{file}: expected a JSON object")
    return data


def declared_truncate_dim(folder: Path) -> int | None:
    """The `truncate_dim` config_sentence_transformers.json declares (as `distill export --dims`
    writes it; None: none); a value that is not a positive whole number is an error naming the file."""
    value = st_config(folder).get("truncate_dim")
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise DistillError(f"{Path(folder) / ST_CONFIG}: truncate_dim {value!r} is not a positive whole number")
    return value


def folder_prompts(folder: Path) -> tuple[dict[str, str], str | None]:
    """The prompts a folder declares (name -> text) and its default_prompt_name."""
    cfg = st_config(folder)
    prompts = cfg.get("prompts") or {}
    if not isinstance(prompts, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in prompts.items()):
        raise DistillError(f"{Path(folder) / 'config_sentence_transformers.json'}: prompts must map names to texts")
    return dict(prompts), cfg.get("default_prompt_name")


def role_prompt_name(role: str | None, prompts: dict[str, str], default_prompt_name: str | None) -> str | None:
    """The prompt name sentence-transformers picks for a role, by its own rule:
    encode_query takes "query"; encode_document the first of "document", "passage", "corpus";
    plain encode (role None) the folder's default_prompt_name."""
    if role == "query":
        return "query" if "query" in prompts else None
    if role == "document":
        return next((n for n in ("document", "passage", "corpus") if n in prompts), None)
    return default_prompt_name if default_prompt_name in prompts else None


def transformer_folder(folder: Path, modules: list[ModuleEntry]) -> Path:
    """Where the Transformer module's files are (the folder itself for a plain transformers folder)."""
    for mod in modules:
        if mod.short == "Transformer":
            return Path(folder) / mod.path
    return Path(folder)


def declared_max_length(folder: Path, modules: list[ModuleEntry] | None = None) -> int | None:
    """The max_seq_length a folder declares: sentence_bert_config.json (sentence-transformers up to 5),
    else a real model_max_length in tokenizer_config.json (where version 6 writes it)."""
    tdir = transformer_folder(folder, read_modules(folder) if modules is None else modules)
    cfg = read_json(tdir / "sentence_bert_config.json") or {}
    length = cfg.get("max_seq_length") if isinstance(cfg, dict) else None
    if not length:
        tok = read_json(tdir / "tokenizer_config.json") or {}
        tok_max = tok.get("model_max_length") if isinstance(tok, dict) else None
        length = tok_max if isinstance(tok_max, int) and 0 < tok_max < _SANE_MAX_LENGTH else None
    return int(length) if length else None


def st_module_classes():
    """sentence-transformers' module classes (moved in 6.x; the old path still works before)."""
    try:
        from sentence_transformers.sentence_transformer import modules
    except ImportError:
        from sentence_transformers import models as modules
    return modules


def write_st_modules(folder: Path, pooling: str, max_seq_length: int | None) -> None:
    """modules.json + 1_Pooling/ (+ sentence_bert_config.json) for a plain transformers folder:
    Transformer -> Pooling, no Normalize, as the hub repos of such models declare."""
    hidden = json.loads((folder / "config.json").read_text(encoding="utf-8"))["hidden_size"]
    modes = {"mean": "pooling_mode_mean_tokens", "cls_before_pooler": "pooling_mode_cls_token"}
    if pooling not in modes:
        raise DistillError(f"{folder}: cannot write a sentence-transformers Pooling for pooling {pooling!r}")
    (folder / "1_Pooling").mkdir(exist_ok=True)
    pool_cfg = {"word_embedding_dimension": hidden, **{m: m == modes[pooling] for m in modes.values()}}
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pool_cfg, indent=2))
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    (folder / "modules.json").write_text(json.dumps(modules, indent=2))
    if max_seq_length:
        (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq_length, "do_lower_case": False}))


def is_router_folder(folder) -> bool:
    """True for a sentence-transformers folder whose modules.json names a Router (False for a hub id
    or a folder without modules.json; a damaged modules.json is an error naming it, as everywhere)."""
    folder = Path(folder).expanduser()
    return folder.is_dir() and any(m.short == ROUTER_MODULE for m in read_modules(folder))


def is_routed(model) -> bool:
    """True for a SentenceTransformer whose first module is a Router."""
    try:
        return type(model[0]).__name__ == ROUTER_MODULE
    except (TypeError, IndexError, KeyError):
        return False
