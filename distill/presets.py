"""Teacher and student specs: presets (YAML files in teachers/ and students/), hub ids, folders, mappings.

Presets are data, not code: adding a teacher means adding a YAML file. Every field is checked,
and an unknown or missing one is an error naming the file and the key. A recipe (or `distill cache
--teacher`) may also name a teacher no preset describes: a hub id, a model folder, or a mapping
(`{model: ..., prompts: ..., max_length: ...}`): `teacher_spec` turns each into a TeacherSpec, and
`student_spec` does the same for students. Fields left unset (None) are the model folder's own.
"""

from __future__ import annotations

import os
from dataclasses import MISSING, dataclass, fields, replace
from pathlib import Path

import yaml

from distill.errors import DistillError
from distill.st_format import POOLINGS, STUDENT_POOLINGS

ROLES_WITH_PROMPTS = ("query", "document")
DTYPES = ("fp32", "bf16", "fp16")


def repo_root() -> Path:
    """Folder that holds teachers/, students/ and configs/ (override with $DISTILL_HOME)."""
    env = os.environ.get("DISTILL_HOME")
    return Path(env) if env else Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class TeacherSpec:
    """A teacher as the cache encodes with it. `hub_id` is the model (`model` in YAML and mappings):
    a hub id or a folder, resolved by distill/resolve.py. None means "the folder's own"."""

    name: str
    hub_id: str
    offline_source: str | None = None  # a PyPI model key (resolve.PYPI_MODELS) for machines without the hub
    pooling: str | None = None  # for a plain transformers folder; a sentence-transformers folder brings its own
    normalize: bool | None = None
    dim: int | None = None  # the width of its sentence vectors (checked against the model when given)
    max_length: int | None = None  # tokens the cache encodes at (None: the folder's max_seq_length)
    prompts: dict | None = None  # role (query / document) -> prompt text; None: the folder's own prompts
    prompt_names: dict | None = None  # role -> the name of one of the folder's prompts
    truncate_dim: int | None = None  # a Matryoshka teacher served at its first k dimensions
    dtype: str = "fp32"  # the teacher's compute precision on a GPU (CPU always runs fp32)
    revision: str | None = None  # a hub commit, branch or tag
    trust_remote_code: bool = False  # run the model's own code (auto_map, custom modules): only when asked

    @property
    def model(self) -> str:
        return self.hub_id


@dataclass(frozen=True)
class StudentSpec:
    name: str
    hub_id: str  # the checkpoint it starts from (hub id or local folder): `model` in YAML and mappings
    offline_source: str | None = None
    layers: int | list[int] | None = None  # None keeps every layer
    pooling: str | None = None  # None: the folder's own (else mean)
    normalize: bool | None = None  # whether the pooled vector is L2-normalized before the loss
    dim: int | None = None  # the width of its pooled vector
    max_length: int | None = None

    @property
    def model(self) -> str:
        return self.hub_id


STUDENT_TYPES = ("transformer", "static")
STATIC_INITS = ("distill", "random")
WEIGHTINGS = ("zipf", "none")


@dataclass(frozen=True)
class StaticStudentSpec:
    """`type: static`: a token-embedding table, mean-pooled (distill/static_student.py)."""

    name: str
    type: str
    dim: int  # the table's width (PCA of the teacher's token vectors to this many dimensions)
    tokenizer: str | None = None  # a model whose tokenizer it uses; None: the recipe's teacher's
    init: str = "distill"  # distill: the teacher's vector of every token, PCA, weights (model2vec's way); random
    weighting: str = "zipf"  # zipf: SIF weights from Zipf's law on the token rank; none

    @property
    def hub_id(self) -> str | None:
        return self.tokenizer


# Student keys of earlier versions, still read: the two specs now name the same things alike.
# `model` is the name shown to users; `hub_id` the field (and the key of earlier presets).
LEGACY_KEYS = {StudentSpec: {"base": "hub_id", "hidden_dim": "dim", "model": "hub_id"}, TeacherSpec: {"model": "hub_id"}}
# keys a preset file must give (the rest default to the model folder's own)
PRESET_REQUIRED = {TeacherSpec: ("name", "hub_id", "pooling", "normalize", "dim", "max_length"),
                   StudentSpec: ("name", "hub_id", "pooling", "normalize", "dim", "max_length")}


def _load(kind: str, cls, name: str):
    folder = repo_root() / kind
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name.startswith("."):
        # a preset is a file of that folder: a name with a path in it would read a YAML file from anywhere
        raise DistillError(f"{kind[:-1]} preset {name!r}: not a preset name (the name of a file in {folder}, without .yaml)")
    path = folder / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(list_presets(kind)) or "(none)"
        raise DistillError(f"unknown {kind[:-1]} preset {name!r}: no {path}. Known {kind}: {known}")
    return parse_preset(path, cls)


def parse_preset(path: Path, cls):
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise DistillError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise DistillError(f"{path}: expected a mapping of keys, got {type(data).__name__}")
    if cls is StudentSpec and data.get("type", "transformer") != "transformer":
        return _parse_static(path, data)
    if cls is StudentSpec:
        data.pop("type", None)  # `type: transformer` is the default kind
    for old, new in LEGACY_KEYS.get(cls, {}).items():
        if old in data:
            if new in data:
                raise DistillError(f"{path}: {old!r} is the old name of {new!r}; give one of them")
            data[new] = data.pop(old)
    _check_keys(path, data, cls, required=PRESET_REQUIRED.get(cls))
    _check_values(str(path), data, cls)
    return cls(**data)


def _check_values(where: str, data: dict, cls) -> None:
    """The values of a teacher or student spec's keys (a preset file's, or a mapping's)."""
    allowed = POOLINGS if cls is TeacherSpec else STUDENT_POOLINGS
    if data.get("pooling") is not None and data["pooling"] not in allowed:
        raise DistillError(f"{where}: pooling {data['pooling']!r} is not one of {', '.join(allowed)}")
    layers = data.get("layers")
    if layers is not None and not (
        (isinstance(layers, int) and not isinstance(layers, bool) and layers > 0)
        or (isinstance(layers, list) and layers and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in layers))
    ):
        raise DistillError(f"{where}: layers must be a positive int or a list of layer indices, got {layers!r}")
    for key, least in (("dim", 1), ("max_length", 3), ("truncate_dim", 1)):
        value = data.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
            raise DistillError(f"{where}: {key} must be a whole number of at least {least}, got {value!r}")
    for key in ("normalize", "trust_remote_code"):
        if data.get(key) is not None and not isinstance(data[key], bool):
            raise DistillError(f"{where}: {key} must be true or false, got {data[key]!r}")
    if data.get("dtype") is not None and data["dtype"] not in DTYPES:
        raise DistillError(f"{where}: dtype {data['dtype']!r} is not one of {', '.join(DTYPES)}")
    for key in ("prompts", "prompt_names"):
        value = data.get(key)
        if value is None:
            continue
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise DistillError(f"{where}: {key} must map roles ({', '.join(ROLES_WITH_PROMPTS)}) to texts, got {value!r}")
        unknown = [r for r in value if r not in ROLES_WITH_PROMPTS]
        if unknown:
            raise DistillError(f"{where}: {key}: unknown role {unknown[0]!r} (roles: {', '.join(ROLES_WITH_PROMPTS)})")
    if data.get("prompts") is not None and data.get("prompt_names") is not None:
        raise DistillError(f"{where}: give prompts (texts) or prompt_names (names of the folder's prompts), not both")
    for key in ("hub_id", "revision", "offline_source"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise DistillError(f"{where}: {'model' if key == 'hub_id' else key} must be a string, got {data[key]!r}")


def _check_keys(path: Path, data: dict, cls, required=None) -> None:
    names = [f.name for f in fields(cls)]
    for key in data:
        if key not in names:
            raise DistillError(f"{path}: unknown key {key!r} (allowed: {', '.join(names)})")
    for f in fields(cls):
        if f.name not in data and (f.default is MISSING or (required and f.name in required)):
            raise DistillError(f"{path}: missing key {'model' if f.name == 'hub_id' and cls is TeacherSpec else f.name!r}")
    if data["name"] != path.stem:
        raise DistillError(f"{path}: name {data['name']!r} differs from the file name {path.stem!r}")


def _parse_static(path: Path, data: dict) -> StaticStudentSpec:
    if data["type"] not in STUDENT_TYPES:
        raise DistillError(f"{path}: type {data['type']!r} is not one of {', '.join(STUDENT_TYPES)}")
    _check_keys(path, data, StaticStudentSpec)
    dim = data["dim"]
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise DistillError(f"{path}: dim must be a whole number >= 1, got {dim!r}")
    for key, allowed in (("init", STATIC_INITS), ("weighting", WEIGHTINGS)):
        if key in data and data[key] not in allowed:
            raise DistillError(f"{path}: {key} {data[key]!r} is not one of {', '.join(allowed)}")
    if data.get("tokenizer") is not None and not isinstance(data["tokenizer"], str):
        raise DistillError(f"{path}: tokenizer must be a model name or folder (or null: the teacher's), got {data['tokenizer']!r}")
    return StaticStudentSpec(**data)


def list_presets(kind: str) -> list[str]:
    folder = repo_root() / kind
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def load_teacher(name: str) -> TeacherSpec:
    return _load("teachers", TeacherSpec, name)


def load_student(name: str) -> StudentSpec | StaticStudentSpec:
    return _load("students", StudentSpec, name)


ROLES = ("teacher", "student")


def find_preset(name: str, role: str | None = None) -> TeacherSpec | StudentSpec | StaticStudentSpec | None:
    """The preset of that name for a role, else None.

    A name can exist in both folders with different settings (all-minilm-l6-v2 is a normalized
    teacher and an un-normalized student), so a caller that knows the role must say it:
    role "student" reads only students/, "teacher" only teachers/. Without a role (a model named
    for evaluation or encoding) a teacher preset wins, then a student preset.
    """
    if role is not None and role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    if role in (None, "teacher") and name in list_presets("teachers"):
        return load_teacher(name)
    if role in (None, "student") and name in list_presets("students"):
        return load_student(name)
    return None


# ------------------------------------------------------------------ any teacher, any student

def looks_like_hub_id(name: str) -> bool:
    """owner/name, as the hub spells repository ids (a path that is not a folder is not one)."""
    parts = name.split("/")
    ok = all(p and all(c.isalnum() or c in "-_." for c in p) and not p.startswith(".") for p in parts)
    return len(parts) == 2 and ok


def refuse_file(name: str, what: str) -> None:
    path = Path(name).expanduser()
    if path.exists() and not path.is_dir():
        raise DistillError(f"{what} {name!r}: a file, not a model; a model is a preset name, a hub id (owner/name) or a folder "
                           "(config.json, weights and tokenizer files, or a sentence-transformers folder with modules.json)")


def model_name(value) -> str:
    """How a recipe's teacher or student is shown: its preset name, hub id, folder, or a mapping's model."""
    if isinstance(value, dict):
        return str(value.get("model", "?"))
    return str(getattr(value, "name", value))


def _named_model(value: str, kind: str):
    """A preset of `kind` (teachers / students), or None for a folder or hub id; anything else is an error."""
    if value in list_presets(kind):
        return _load(kind, TeacherSpec if kind == "teachers" else StudentSpec, value)
    path = Path(value).expanduser()
    if path.is_dir() or looks_like_hub_id(value):
        return None
    refuse_file(value, kind[:-1])
    raise DistillError(f"{kind[:-1]} {value!r}: not a preset ({kind}: {', '.join(list_presets(kind)) or '(none)'}), not a model "
                       "folder, not a hub id (owner/name)")


def _model_key(value: str) -> str:
    """A folder as an absolute path (the cache's identity must not depend on the working directory); a hub id as is."""
    path = Path(value).expanduser()
    return str(path.resolve()) if path.is_dir() else value


def _from_mapping(value: dict, cls, kind: str):
    where = f"{kind[:-1]} mapping"
    data = dict(value)
    if "model" not in data:
        raise DistillError(f"{where} {value!r}: missing key 'model' (a preset name, a hub id or a folder)")
    model = data.pop("model")
    if not isinstance(model, str) or not model:
        raise DistillError(f"{where}: model must be a preset name, a hub id or a folder, got {model!r}")
    names = [f.name for f in fields(cls) if f.name not in ("name", "hub_id")]
    for key in data:
        if key not in names:
            raise DistillError(f"{where}: unknown key {key!r} (allowed: model, {', '.join(names)})")
    _check_values(where, data, cls)
    base = _named_model(model, kind)
    if isinstance(base, StaticStudentSpec):
        raise DistillError(f"{where}: {model!r} is a static student preset; name it alone (student: {model})")
    if base is None:
        base = cls(name=model, hub_id=_model_key(model))
    return replace(base, **data)


def teacher_spec(value) -> TeacherSpec:
    """The TeacherSpec of a recipe's `teacher:` (or `distill cache --teacher`): a preset name, a hub
    id, a model folder, or a mapping with `model` and any TeacherSpec field."""
    if isinstance(value, TeacherSpec):
        return value
    if isinstance(value, dict):
        return _from_mapping(value, TeacherSpec, "teachers")
    if not isinstance(value, str) or not value:
        raise DistillError(f"teacher: expected a preset name, a hub id, a folder or a mapping, got {value!r}")
    spec = _named_model(value, "teachers")
    return spec if spec is not None else TeacherSpec(name=value, hub_id=_model_key(value))


def student_spec(value) -> StudentSpec | StaticStudentSpec | None:
    """The spec of a recipe's `student:`: a preset, a hub id or a mapping; None for a model folder
    (a saved student, a static folder or a transformers folder: loaded by what the folder holds)."""
    if isinstance(value, (StudentSpec, StaticStudentSpec)):
        return value
    if isinstance(value, dict):
        return _from_mapping(value, StudentSpec, "students")
    if not isinstance(value, str) or not value:
        raise DistillError(f"student: expected a preset name, a hub id, a folder or a mapping, got {value!r}")
    if value in list_presets("students"):
        return load_student(value)
    if Path(value).expanduser().is_dir():
        return None
    spec = _named_model(value, "students")
    return spec if spec is not None else StudentSpec(name=value, hub_id=value)
