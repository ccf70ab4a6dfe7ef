"""Experiment recipes: YAML files in configs/ naming a teacher, a student, a loss, data, schedule.

Every value can be overridden from the command line (`--set loss.lam=0.2`). Unknown keys, in the
file or in an override, are an error that names the key: a typo must never silently fall back
to a default.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distill.errors import DistillError
from distill.recipe_checks import check_values
from distill.strict_yaml import parse_override, read_yaml, yaml11_float  # noqa: F401 (parse_override: also imported from here)

# The stage-2 loss of a recipe without stage2.loss.name: IBKD's, the only one before names existed.
STAGE2_LOSS = "ibkd_supervised"
# Old names of stage2 keys, still read: a recipe or a checkpoint's recipe holding one reads as the new key.
STAGE2_RENAMED = {"triplets": "rows", "max_triplets": "max_rows"}


@dataclass
class DataConfig:
    corpus: list[str] = field(default_factory=list)  # text/.gz files or hub dataset names
    cache_dir: str | None = None  # teacher cache (built by `distill cache` or on demand)
    max_sentences: int | None = None  # take only the first N distinct sentences
    max_length: int = 128
    # tokens the teacher cache encodes at; unset: the teacher preset's max_length. Long passages
    # (retrieval) need the teacher's own length, e.g. 256 for all-MiniLM-L6-v2's abstracts.
    teacher_max_length: int | None = None
    column: str | None = None  # text column of JSONL/CSV/hub corpora (default: text, sentence, ...)
    # length: batches of similar length (little padding; the default); random: plain shuffled
    # batches (the authors'), so in-batch negatives and HSIC batches mix lengths.
    batching: str = "length"


@dataclass
class TrainConfig:
    epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int = 256
    lr: float = 1e-4
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    grad_accum: int = 1
    seed: int = 42
    precision: str = "bf16"  # auto | bf16 | fp16 | fp32 (distill/precision.py; CPU always runs fp32)


@dataclass
class RetrievalEvalConfig:
    """eval.retrieval: a BEIR folder's split scored at every evaluation point (unset beir: none).

    With select (the default) its `metric` picks RUN/best instead of the STS selection set.
    """

    beir: str | None = None  # BEIR folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv
    split: str = "dev"  # a selection split; test is refused with select (never select on test)
    metric: str = "ndcg@10"  # ndcg@10, mrr@10 or recall@K (any case)
    select: bool = True
    max_length: int | None = None  # tokens per query / passage; default: each model's own length
    batch_size: int | None = None  # default: eval.batch_size
    # passages embedded by this model (teacher: the recipe's teacher), queries by the student:
    # a query encoder for the teacher's index (eval/retrieval/asymmetric.py); unset: the student embeds both
    doc_model: str | None = None


@dataclass
class FinalRetrievalConfig:
    """eval.final_retrieval: the best student's nDCG@10, MRR@10 and Recall@100 on a BEIR split,
    reported beside the STS table (and the baselines' with eval.baselines)."""

    beir: str | None = None
    split: str = "test"
    max_length: int | None = None
    batch_size: int | None = None
    doc_model: str | None = None  # as eval.retrieval.doc_model


@dataclass
class EvalConfig:
    sts_dir: str | None = None  # local folder laid out like ../shared/data/sts; None = hub
    every_steps: int = 500
    # selection metric; [] (none) only when eval.retrieval selects
    tasks: list[str] = field(default_factory=lambda: ["STS-B-dev"])
    # reported at the end; [] (none) only when eval.final_retrieval reports
    final_tasks: list[str] = field(default_factory=lambda: ["all"])
    batch_size: int = 256
    baselines: bool = False  # also score the teacher and the untrained student on final_tasks (and final_retrieval)
    retrieval: RetrievalEvalConfig = field(default_factory=RetrievalEvalConfig)
    final_retrieval: FinalRetrievalConfig = field(default_factory=FinalRetrievalConfig)
    # widths the STS sets are also scored at (the vector truncated to its first k coordinates, then
    # L2-normalized), logged as "STS-B-dev@128"...; the first selects; [] = the full vector only
    dims: list[int] = field(default_factory=list)


@dataclass
class OutputConfig:
    dir: str = "runs/default"
    wandb: bool = False
    wandb_project: str = "distill"


@dataclass
class Stage2Config:
    """The supervised stage 2: fine-tuning of the stage-1 student on rows of texts (anchor,
    positive, negatives...; IBKD's are NLI triplets) with a stage-2 loss."""

    rows: list[str] = field(default_factory=list)  # CSV/TSV/JSONL files or a hub dataset; empty = no stage 2
    # Stage 1's student that stage 2 starts from: "final" (its last step, as the authors do) or
    # "best" (the one selected on STS-B dev).
    init: str = "final"
    subset: str | None = None  # hub dataset configuration, e.g. "triplet" for sentence-transformers/all-nli
    # named columns: anchor, positive, then any number of negatives (the same for every row)
    columns: list[str] = field(default_factory=lambda: ["anchor", "positive", "negative"])
    neg_samples: int = 4  # negatives per row of a retrieval JSONL (query, positive_passages, negative_passages)
    max_rows: int | None = None
    # {"name": a stage-2 loss (default STAGE2_LOSS), its parameters (defaults: the loss's own)}
    loss: dict[str, Any] = field(default_factory=lambda: {"name": STAGE2_LOSS})
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=3, batch_size=128, lr=1e-6, warmup_ratio=0.0))


@dataclass
class Recipe:
    # a preset name, a hub id, a model folder, or a mapping ({model: ..., prompts: ..., ...}):
    # distill.presets.teacher_spec / student_spec read them
    teacher: str | dict[str, Any]
    student: str | dict[str, Any]
    loss: dict[str, Any]
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    stage2: Stage2Config = field(default_factory=Stage2Config)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def teacher_name(self) -> str:
        """The teacher as shown (a mapping's model)."""
        from distill.presets import model_name

        return model_name(self.teacher)

    @property
    def student_name(self) -> str:
        from distill.presets import model_name

        return model_name(self.student)


def _check_value(where: str, value: Any, annotation) -> Any:
    """Light type check with the coercions YAML needs (1 -> 1.0 for floats)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):  # Optional[x] and x | None
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_value(where, value, arg)
            except DistillError as exc:
                errors.append(str(exc))
        raise DistillError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is list:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise DistillError(f"{where}: expected a list, got {value!r}")
        return [_check_value(f"{where}[{i}]", v, args[0]) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise DistillError(f"{where}: expected a mapping, got {value!r}")
        return value
    if annotation is float and isinstance(value, str):
        value = yaml11_float(value)  # PyYAML reads "3e-5" (no dot) as a string
    if annotation is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise DistillError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if annotation is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if annotation is bool and isinstance(value, bool):
        return value
    if annotation is str and isinstance(value, str):
        return value
    if annotation is typing.Any:
        return value
    name = getattr(annotation, "__name__", str(annotation))
    raise DistillError(f"{where}: expected {name}, got {value!r}")


def _build(cls, data: dict, where: str):
    if not isinstance(data, dict):
        raise DistillError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in known:
            raise DistillError(f"unknown key {where}.{key} (known in {where}: {', '.join(known)})".replace("recipe.", ""))
    kwargs = {}
    for name, f in known.items():
        prefix = f"{where}.{name}".replace("recipe.", "")
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise DistillError(f"missing key {prefix}")
            continue
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            given = data[name] or {}
            if not isinstance(given, dict):
                raise DistillError(f"{prefix}: expected a mapping, got {given!r}")
            base = dataclasses.asdict(f.default_factory()) if f.default_factory is not dataclasses.MISSING else {}
            # a nested default (stage2.train) keeps its own defaults for the keys not given
            kwargs[name] = _build(hint, {**{k: v for k, v in base.items() if k not in given}, **given}, prefix)
        else:
            kwargs[name] = _check_value(prefix, data[name], hint)
    return cls(**kwargs)


def loss_defaults(name: str) -> dict[str, Any]:
    """The recipe parameters of loss `name` and their defaults (its constructor's keywords).
    Imports the losses (and torch): `distill --help` does not come here, reading a recipe does."""
    from distill.losses import loss_class

    return loss_class(name).defaults()


def stage2_loss_defaults(name: str = STAGE2_LOSS) -> dict[str, Any]:
    """A stage-2 loss's parameters and their defaults (IBKD stage 2's: the authors' recipe)."""
    return loss_defaults(name)


def _stage_names(stage: int) -> list[str]:
    from distill.losses import LOSSES

    return [name for name, cls in LOSSES.items() if cls.stage == stage]


def _stage1_names() -> list[str]:
    return _stage_names(1)


def check_loss(loss: dict) -> dict:
    if not isinstance(loss, dict) or "name" not in loss:
        raise DistillError("loss: expected a mapping with a 'name' key (one of " + ", ".join(_stage1_names()) + ")")
    name = loss["name"]
    if not isinstance(name, str) or name not in _stage1_names():
        raise DistillError(f"loss.name {name!r} is not one of {', '.join(_stage1_names())}")
    _refuse_matryoshka("loss", name, loss)
    return {"name": name, **_check_params("loss", name, {k: v for k, v in loss.items() if k != "name"}, loss_defaults(name))}


def _refuse_matryoshka(where: str, name: str, given: dict) -> None:
    """matryoshka_dims / _weights on a loss that cannot take them: its own reason, not "unknown key"."""
    from distill.losses import loss_class
    from distill.losses.base import MATRYOSHKA_DEFAULTS

    cls = loss_class(name)
    if not cls.matryoshka:
        cls.check({k: v for k, v in given.items() if k in MATRYOSHKA_DEFAULTS}, where)


def _check_stage2_loss(loss: dict) -> dict:
    """stage2.loss: {"name": a stage-2 loss (default STAGE2_LOSS), its parameters}."""
    names = _stage_names(2)
    name = loss.get("name", STAGE2_LOSS)
    if not isinstance(name, str) or name not in names:
        raise DistillError(f"stage2.loss.name {name!r} is not one of {', '.join(names)}")
    _refuse_matryoshka("stage2.loss", name, loss)
    params = _check_params("stage2.loss", name, {k: v for k, v in loss.items() if k != "name"}, loss_defaults(name))
    return {"name": name, **params}


def _renamed_stage2_keys(stage2: dict, where: str) -> dict:
    """stage2 with its old key names (STAGE2_RENAMED) moved to the new ones; both given is an error."""
    out = dict(stage2)
    for old, new in STAGE2_RENAMED.items():
        if old in out:
            if new in out:
                raise DistillError(f"{where}.{old} is the old name of {where}.{new}: give one of them, not both")
            out[new] = out.pop(old)
    return out


def _check_params(where: str, name: str, given: dict, defaults: dict) -> dict:
    """Loss parameters: known keys only, values of the default's type (None defaults take any)."""
    params = dict(defaults)
    for key, value in given.items():
        if key not in params:
            allowed = ", ".join(params) or "(no parameters)"
            raise DistillError(f"unknown key {where}.{key} for loss {name!r} (it takes: {allowed})")
        default = params[key]
        if isinstance(default, float) and isinstance(value, str):
            value = yaml11_float(value)
        # a None default (e.g. projection: unset = decided by the widths) takes any type; its rule checks it
        if (default is not None and isinstance(default, bool) != isinstance(value, bool)) or (
            not isinstance(default, bool) and isinstance(default, (int, float)) and not isinstance(value, (int, float))
        ) or (isinstance(default, str) and not isinstance(value, str)):
            raise DistillError(f"{where}.{key}: expected a value like {default!r}, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise DistillError(f"{where}.{key}: expected a finite number, got {value!r}")
        params[key] = float(value) if isinstance(default, float) else value
    return params


def _set_path(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        if not isinstance(node.get(k, {}), dict):
            raise DistillError(f"--set {dotted}: {k} is not a section")
        node = node.setdefault(k, {})
    node[keys[-1]] = value


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a recipe, apply `key=value` overrides, validate every key and value, return a Recipe."""
    path = Path(path)
    if not path.is_file():
        raise DistillError(f"recipe not found: {path}")
    raw = read_yaml(path)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise DistillError(f"{path}: a recipe is a mapping of keys (teacher, student, loss, ...), this file holds a {type(raw).__name__}")
    tree = copy.deepcopy(raw)
    for text in overrides or []:
        key, value = parse_override(text)
        if key.split(".")[0] not in {f.name for f in dataclasses.fields(Recipe)}:
            raise DistillError(f"--set {key}: unknown key {key.split('.')[0]!r}")
        _set_path(tree, key, value)
    try:
        tree["loss"] = check_loss(tree.get("loss"))
        if isinstance(tree.get("stage2"), dict):
            tree["stage2"] = _renamed_stage2_keys(tree["stage2"], "stage2")
        recipe = _build(Recipe, tree, "recipe")
        recipe.stage2.loss = _check_stage2_loss(recipe.stage2.loss)
        check_values(recipe)
    except DistillError as exc:
        raise DistillError(f"{path}: {exc}") from None
    return recipe


def saved_recipe_with_defaults(saved: dict) -> dict:
    """A recipe dict saved by an older version (a checkpoint's), with the keys added since then
    filled with their defaults, so `--resume` compares like with like."""
    out = copy.deepcopy(saved)
    if isinstance(out.get("stage2"), dict):  # stage2.triplets -> stage2.rows, ... (a run from before the rename)
        try:
            out["stage2"] = _renamed_stage2_keys(out["stage2"], "stage2")
        except DistillError:
            pass  # both names: compares unequal, as it should
    sections = {"data": DataConfig, "train": TrainConfig, "eval": EvalConfig, "output": OutputConfig, "stage2": Stage2Config}
    for name, cls in sections.items():
        if isinstance(out.get(name), dict):
            out[name] = {**dataclasses.asdict(cls()), **out[name]}
    stage2 = out.get("stage2")
    if isinstance(stage2, dict):
        if isinstance(stage2.get("train"), dict):
            stage2["train"] = {**dataclasses.asdict(Stage2Config().train), **stage2["train"]}
        loss2 = stage2.get("loss")
        if isinstance(loss2, dict) and loss2.get("name", STAGE2_LOSS) in _stage_names(2):
            name = loss2.get("name", STAGE2_LOSS)  # saved before stage2.loss.name existed: IBKD's
            stage2["loss"] = {"name": name, **stage2_loss_defaults(name), **{k: v for k, v in loss2.items() if k != "name"}}
    loss = out.get("loss")
    if isinstance(loss, dict) and loss.get("name") in _stage1_names():
        out["loss"] = {"name": loss["name"], **loss_defaults(loss["name"]), **{k: v for k, v in loss.items() if k != "name"}}
    return out
