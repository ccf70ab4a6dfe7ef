"""Value checks of a recipe, run when it is read (`config.load_recipe`): whatever `distill
config` accepts, `distill train` accepts, and a bad value fails before a model loads, naming the key.

config.py checks the shape and the types (known keys, ints, floats, lists); this module is the
one place for everything else: ranges, and the names a value must be one of (precisions, batching,
stage-2 init, STS tasks, presets). Loss parameters are checked by the loss class's own `rules`,
here and nowhere else (the loss constructors do not re-check them); whether a loss needs in-batch
negatives is the class's `needs_batch_negatives`.
"""

from __future__ import annotations

from pathlib import Path

from distill.errors import DistillError
from distill.model_files import check_recipe_lengths
from distill.precision import PRECISIONS
from distill.tasks import resolve_tasks

# data.batching: "length" groups similar lengths (little padding); "random" is a plain shuffle.
BATCHINGS = ("length", "random")
# stage2.init: stage 1's student that stage 2 starts from (its last step, or the selected one).
STAGE2_INITS = ("final", "best")


def _need(ok: bool, key: str, value, what: str) -> None:
    if not ok:
        raise DistillError(f"{key}: must be {what}, got {value!r}")


def _check_train(prefix: str, t) -> None:
    _need(t.epochs > 0, f"{prefix}.epochs", t.epochs, "> 0")
    _need(t.max_steps is None or t.max_steps >= 1, f"{prefix}.max_steps", t.max_steps, "unset or >= 1")
    _need(t.batch_size >= 1, f"{prefix}.batch_size", t.batch_size, ">= 1")
    _need(t.lr > 0, f"{prefix}.lr", t.lr, "> 0")
    _need(0 <= t.warmup_ratio < 1, f"{prefix}.warmup_ratio", t.warmup_ratio, "between 0 and 1 (1 excluded)")
    _need(t.weight_decay >= 0, f"{prefix}.weight_decay", t.weight_decay, ">= 0")
    _need(t.grad_clip >= 0, f"{prefix}.grad_clip", t.grad_clip, ">= 0 (0 = no clipping)")
    _need(t.grad_accum >= 1, f"{prefix}.grad_accum", t.grad_accum, ">= 1")
    _need(t.precision in PRECISIONS, f"{prefix}.precision", t.precision, f"one of {', '.join(PRECISIONS)}")


def check_values(recipe) -> None:
    from distill.losses import loss_class

    _check_presets(recipe)
    check_recipe_lengths(recipe)  # against models already on this machine: their config.json, read cheaply
    d = recipe.data
    _need(d.batching in BATCHINGS, "data.batching", d.batching, f"one of {', '.join(BATCHINGS)}")
    _need(d.max_sentences is None or d.max_sentences >= 1, "data.max_sentences", d.max_sentences, "unset or >= 1")
    # 2 tokens are the tokenizer's [CLS] and [SEP]; below 2 a tokenizer silently ignores the limit
    _need(d.max_length >= 3, "data.max_length", d.max_length, ">= 3 (two special tokens and one word piece)")
    _need(d.column is None or bool(d.column), "data.column", d.column, "unset or a column name")
    _check_train("train", recipe.train)
    e = recipe.eval
    _need(e.every_steps >= 1, "eval.every_steps", e.every_steps, ">= 1")
    _need(e.batch_size >= 1, "eval.batch_size", e.batch_size, ">= 1")
    for key in ("tasks", "final_tasks"):
        tasks = getattr(e, key)
        _need(bool(tasks), f"eval.{key}", tasks, "a list of STS task names")
        try:
            resolve_tasks(tasks)
        except DistillError as exc:
            raise DistillError(f"eval.{key}: {exc}") from None
    name = recipe.loss["name"]
    loss = loss_class(name)
    loss.check(recipe.loss, "loss")
    if recipe.train.batch_size < 2 and loss.needs_batch_negatives(recipe.loss):
        raise DistillError(f"train.batch_size {recipe.train.batch_size}: loss {name} is contrastive, its negatives are the other "
                           "sentences of the batch; it needs at least 2 per device (one gives a loss of exactly 0)")
    s2 = recipe.stage2
    _need(s2.init in STAGE2_INITS, "stage2.init", s2.init, f"one of {', '.join(STAGE2_INITS)}")
    _check_train("stage2.train", s2.train)
    stage2 = loss_class(s2.loss["name"])
    _need(stage2.stage == 2, "stage2.loss.name", s2.loss["name"], "a stage-2 loss")
    stage2.check(s2.loss, "stage2.loss")
    _need(s2.max_rows is None or s2.max_rows >= 1, "stage2.max_rows", s2.max_rows, "unset or >= 1")
    _need(s2.neg_samples >= 0, "stage2.neg_samples", s2.neg_samples, ">= 0")
    _need(len(s2.columns) >= 2 and all(s2.columns), "stage2.columns", s2.columns,
          "two or more names (anchor, positive, then any negatives)")


def _check_presets(recipe) -> None:
    from distill.presets import list_presets

    for kind, name in (("teachers", recipe.teacher), ("students", recipe.student)):
        if name not in list_presets(kind) and not Path(name).expanduser().is_dir():
            raise DistillError(f"{kind[:-1]} {name!r} is neither a preset ({', '.join(list_presets(kind))}) nor a model folder")
