"""`DistillLoss`, the base class of every loss: the training interface (forward, heads, prepare)
and what the rest of the toolkit asks a loss instead of testing its name.

A loss class declares:

- `name`: its name in recipes (`loss: {name: ...}`) and in `distill compare --losses`.
- its recipe parameters as keyword-only constructor arguments with defaults: `defaults()` reads
  them from the signature (every keyword after student_dim, teacher_dim, minus `internal`), so a
  recipe's loss section, `--set loss.KEY=...` and `distill compare --loss-set NAME.KEY=...` take
  exactly those keys.
- `rules`: parameter -> (test, what it must be), checked when a recipe is read (`check`).
- `contrastive`: its negatives are the other rows of the batch (see `needs_batch_negatives`).
- `stage`: 1 for distillation from teacher vectors (compared by `distill compare`), 2 for the
  supervised stage that follows (rows of anchor, positive and negatives; IBKD's NLI triplets).
- `targets(params)`: what the training targets are: the teacher's cached vectors, or their PCA.
- `embedding_head()` / `export_head()`: what evaluation and `distill export` append.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from torch import Tensor, nn

from distill.errors import DistillError
from distill.losses.functional import precise

# A value rule: (test, what the value must be), e.g. (lambda v: v > 0, "a number > 0").
Rule = tuple[Callable[[Any], bool], str]

POSITIVE: Rule = (lambda v: v > 0, "a number > 0")
NON_NEGATIVE: Rule = (lambda v: v >= 0, "a number >= 0")
OPTIONAL_BOOL: Rule = (lambda v: v is None or isinstance(v, bool), "unset, true or false")


def one_of(*values: str) -> Rule:
    return (lambda v: v in values, "one of " + ", ".join(values))


def whole_number(minimum: int) -> Rule:
    return (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= minimum, f"a whole number >= {minimum}")



class DistillLoss(nn.Module):
    """A distillation objective that owns its trainable heads.

    Call: `loss(student_out, teacher) -> dict`, `student_out` being the student's forward dict
    ("embedding"; plus "hidden_states" and "attention_mask" when `needs_hidden_states`) and
    `teacher` the cached teacher vectors of the same sentences (never trained: detached here).
    The dict holds "loss" (the scalar to backpropagate) and detached 0-dim float tensors for
    logging (`float(v)` turns them into numbers). Give the optimizer the student's parameters and
    this module's.
    """

    name: ClassVar[str] = ""
    citation: ClassVar[str] = ""
    needs_hidden_states: bool = False
    # 1: distillation from the teacher's vectors; 2: a supervised stage after it (not compared).
    stage: ClassVar[int] = 1
    # The negatives are the other sentences of the batch: one sentence per device leaves none.
    contrastive: ClassVar[bool] = False
    # Value rules of the recipe parameters, parameter -> (test, what it must be).
    rules: ClassVar[dict[str, Rule]] = {}
    # Constructor keywords that are not recipe parameters, each with the reason.
    internal: ClassVar[dict[str, str]] = {}

    # ---------------------------------------------------------------- what a recipe may set

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """The recipe parameters and their defaults: the constructor's keywords after
        (student_dim, teacher_dim), minus `internal`."""
        params = list(inspect.signature(cls.__init__).parameters.values())[3:]  # self, student_dim, teacher_dim
        out = {}
        for p in params:
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name in cls.internal:
                continue
            if p.default is p.empty:
                raise TypeError(f"{cls.__name__}: recipe parameter {p.name!r} needs a default")
            out[p.name] = p.default
        return out

    @classmethod
    def check(cls, params: dict[str, Any], prefix: str = "loss") -> None:
        """Value rules of `params` (a recipe's loss section); a bad value is a DistillError naming the key."""
        for key, value in params.items():
            rule = cls.rules.get(key)
            if rule is None or key == "name":
                continue
            try:
                ok = bool(rule[0](value))
            except TypeError:  # e.g. a string where a number belongs (Python callers skip the recipe's type check)
                ok = False
            if not ok:
                raise DistillError(f"{prefix}.{key}: must be {rule[1]}, got {value!r}")

    @classmethod
    def needs_batch_negatives(cls, params: dict[str, Any]) -> bool:
        """True when, with these parameters, the only negatives are the batch's other sentences."""
        return cls.contrastive

    @classmethod
    def targets(cls, params: dict[str, Any]):
        """What the training data must hold for this loss: "teacher" (the cached teacher vectors)
        or ("pca", k) (the teacher vectors reduced to k dimensions by the cache's PCA)."""
        return "teacher"

    # ---------------------------------------------------------------- heads

    def embedding_head(self) -> nn.Module | None:
        """Module to append to the student at evaluation/export time (None: the student's own
        pooled vector is the sentence embedding and the heads are training-only)."""
        return None

    def export_head(self) -> tuple[str, nn.Module, str] | None:
        """The training-only student-side head `distill export --keep-projection` may append:
        (its state-dict prefix, the module, what it maps into, for the model card); None if none."""
        return None

    def get_config_dict(self) -> dict[str, Any]:
        """Hyper-parameters, for logs and sentence-transformers model cards."""
        return {}

    def run_summary(self, log_file: Path) -> dict[str, Any]:
        """Keys this loss adds to a run's results.json, read from its log.jsonl at the end of training
        (IBKD: "ib", whether its HSIC term acted); {} for most losses. The trainer merges them without
        knowing which loss it trains."""
        return {}

    # Losses whose heads start from data (HPD's least-squares head) set this and implement
    # `prepare`; training calls it once, before the first step, with the untrained student's
    # embeddings of a sample of the corpus and the matching teacher targets.
    needs_prepare: bool = False

    @property
    def wants_all_targets(self) -> bool:
        """True when the loss needs statistics of every training target before step 1 (then stage
        1's setup, training/stages.py, calls `fit_targets(all_targets)` once)."""
        return False

    def prepare(self, student_embeddings: Tensor, teacher: Tensor) -> None:
        """Initialise heads from data before training (see `needs_prepare`)."""

    @staticmethod
    def _teacher(teacher: Tensor, like: Tensor) -> Tensor:
        # The teacher is frozen: cut any graph a caller might have attached; compute in the
        # (float32 or float64) precision of the student side.
        return teacher.detach().to(device=like.device, dtype=precise(like).dtype)
