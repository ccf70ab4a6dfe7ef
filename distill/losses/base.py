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
- `matryoshka`: True when the objective compares student vectors, so that it can be trained on
  every prefix s[:k] of the student vector (losses/matryoshka.py): its recipe parameters then
  also hold `matryoshka_dims` and `matryoshka_weights` (MATRYOSHKA_DEFAULTS), which `build_loss`
  turns into a `MatryoshkaLoss` over one instance of the class per prefix; False, with
  `matryoshka_refusal` saying why, for the others.
"""

from __future__ import annotations

import inspect
import math
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
BOOL: Rule = (lambda v: isinstance(v, bool), "true or false")


def one_of(*values: str) -> Rule:
    return (lambda v: v in values, "one of " + ", ".join(values))


def whole_number(minimum: int) -> Rule:
    return (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= minimum, f"a whole number >= {minimum}")


def _is_whole(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _descending_widths(v) -> bool:
    return v is None or (isinstance(v, list) and len(v) > 0 and all(_is_whole(d) and d >= 1 for d in v)
                         and all(a > b for a, b in zip(v, v[1:])))


def _prefix_weights(v) -> bool:
    return v is None or (isinstance(v, list) and len(v) > 0 and all(isinstance(w, (int, float)) and not isinstance(w, bool)
                                                                    and math.isfinite(w) and w >= 0 for w in v) and any(w > 0 for w in v))


# The Matryoshka parameters of every class with `matryoshka = True` (unset: the plain objective).
MATRYOSHKA_DEFAULTS: dict[str, Any] = {"matryoshka_dims": None, "matryoshka_weights": None, "matryoshka_head": "none",
                                       "matryoshka_detach": False}
MATRYOSHKA_RULES: dict[str, Rule] = {
    "matryoshka_dims": (_descending_widths, "unset, or a list of widths in descending order, no repeats, each >= 1, "
                                            "the first the student's own (e.g. [384, 256, 128, 64])"),
    "matryoshka_weights": (_prefix_weights, "unset (all 1), or one number >= 0 per matryoshka_dims entry, not all 0"),
    # none: prefixes of the student's own vector; pca: of a trained d x d layer on it, started at
    # the PCA of the untrained student's vectors (losses/matryoshka.py says why)
    "matryoshka_head": (lambda v: v in ("none", "pca"), "none (prefixes of the student's own vector) or pca"),
    # true: the smaller prefixes' gradients stop at the head's input (the student learns from the full width)
    "matryoshka_detach": (lambda v: isinstance(v, bool), "true or false"),
}



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
    # Trainable on every prefix s[:k] of the student vector (losses/matryoshka.py); if not, why not.
    matryoshka: ClassVar[bool] = False
    matryoshka_refusal: ClassVar[str] = "it does not compare the student's vectors with a teacher's"

    # ---------------------------------------------------------------- what a recipe may set

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """The recipe parameters and their defaults: the constructor's keywords after
        (student_dim, teacher_dim), minus `internal`; plus MATRYOSHKA_DEFAULTS when the class is
        `matryoshka` (those two are taken by `build_loss`'s MatryoshkaLoss, not the constructor)."""
        params = list(inspect.signature(cls.__init__).parameters.values())[3:]  # self, student_dim, teacher_dim
        out = {}
        for p in params:
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name in cls.internal:
                continue
            if p.default is p.empty:
                raise TypeError(f"{cls.__name__}: recipe parameter {p.name!r} needs a default")
            out[p.name] = p.default
        return {**out, **MATRYOSHKA_DEFAULTS} if cls.matryoshka else out

    @classmethod
    def check(cls, params: dict[str, Any], prefix: str = "loss") -> None:
        """Value rules of `params` (a recipe's loss section); a bad value is a DistillError naming the key.
        A Matryoshka key given to a class that is not `matryoshka` is refused with the class's reason."""
        rules = {**cls.rules, **MATRYOSHKA_RULES} if cls.matryoshka else cls.rules
        for key, value in params.items():
            if key in MATRYOSHKA_DEFAULTS and not cls.matryoshka:
                raise DistillError(f"{prefix}.{key}: loss {cls.name} cannot be trained on prefixes of the student vector: "
                                   f"{cls.matryoshka_refusal}")
            rule = rules.get(key)
            if rule is None or key == "name":
                continue
            try:
                ok = bool(rule[0](value))
            except TypeError:  # e.g. a string where a number belongs (Python callers skip the recipe's type check)
                ok = False
            if not ok:
                raise DistillError(f"{prefix}.{key}: must be {rule[1]}, got {value!r}")
        dims, weights = params.get("matryoshka_dims"), params.get("matryoshka_weights")
        if weights is not None and dims is None:
            raise DistillError(f"{prefix}.matryoshka_weights: given without {prefix}.matryoshka_dims (the widths they weigh)")
        if params.get("matryoshka_head", "none") != "none" and dims is None:
            raise DistillError(f"{prefix}.matryoshka_head: {params['matryoshka_head']!r} given without {prefix}.matryoshka_dims "
                               "(the head orders the vector for its prefixes)")
        if params.get("matryoshka_detach") and params.get("matryoshka_head", "none") == "none":
            raise DistillError(f"{prefix}.matryoshka_detach: true needs {prefix}.matryoshka_head: pca (without a head, prefixes whose "
                               "gradient stops at the student are the plain student truncated)")
        if weights is not None and len(weights) != len(dims):
            raise DistillError(f"{prefix}.matryoshka_weights: {len(weights)} weights for {len(dims)} matryoshka_dims {dims}: "
                               "give one per width")

    @classmethod
    def needs_batch_negatives(cls, params: dict[str, Any]) -> bool:
        """True when, with these parameters, the only negatives are the batch's other sentences."""
        return cls.contrastive

    @classmethod
    def head_in_embedding(cls, params: dict[str, Any]) -> str | None:
        """What, with these parameters, is a head that is part of the embedding (evaluation and
        export apply it; stage 2, which trains the student's own vector, would drop it), or None."""
        if cls.matryoshka and params.get("matryoshka_head", "none") != "none":
            return "the Matryoshka head (loss.matryoshka_head)"
        return None

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


def head_out_dim(head: nn.Module) -> int | None:
    """The width of what an embedding head puts out: its last Linear's out_features (None: a head
    without a Linear, whose width only an output tells; every caller takes None as "not known yet")."""
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    return int(linears[-1].out_features) if linears else None
