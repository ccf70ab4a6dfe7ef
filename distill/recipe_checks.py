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
    _check_static_student(recipe)
    _check_corpus_sources(recipe.data.corpus)
    d = recipe.data
    _need(d.batching in BATCHINGS, "data.batching", d.batching, f"one of {', '.join(BATCHINGS)}")
    _need(d.max_sentences is None or d.max_sentences >= 1, "data.max_sentences", d.max_sentences, "unset or >= 1")
    # 2 tokens are the tokenizer's [CLS] and [SEP]; below 2 a tokenizer silently ignores the limit
    _need(d.max_length >= 3, "data.max_length", d.max_length, ">= 3 (two special tokens and one word piece)")
    _need(d.teacher_max_length is None or d.teacher_max_length >= 3, "data.teacher_max_length", d.teacher_max_length,
          "unset (the teacher preset's max_length) or >= 3")
    _need(d.column is None or bool(d.column), "data.column", d.column, "unset or a column name")
    _check_train("train", recipe.train)
    e = recipe.eval
    _need(e.every_steps >= 1, "eval.every_steps", e.every_steps, ">= 1")
    _need(e.batch_size >= 1, "eval.batch_size", e.batch_size, ">= 1")
    _check_retrieval(e)
    # [] is "no STS": allowed when retrieval takes the STS set's place (selecting, reporting)
    stand_in = {"tasks": (bool(e.retrieval.beir) and e.retrieval.select, "a list of STS task names (or [] when eval.retrieval selects)"),
                "final_tasks": (bool(e.final_retrieval.beir), "a list of STS task names (or [] when eval.final_retrieval reports)")}
    for key in ("tasks", "final_tasks"):
        tasks = getattr(e, key)
        may_be_empty, what = stand_in[key]
        _need(bool(tasks) or may_be_empty, f"eval.{key}", tasks, what)
        try:
            resolve_tasks(tasks)
        except DistillError as exc:
            raise DistillError(f"eval.{key}: {exc}") from None
    _need(_widths_ok(e.dims), "eval.dims", e.dims, "a list of widths in descending order, no repeats, each >= 1 ([] = the full vector only)")
    name = recipe.loss["name"]
    loss = loss_class(name)
    loss.check(recipe.loss, "loss")
    _check_prefix_widths(recipe)
    _check_eval_dims(recipe)
    if recipe.train.batch_size < 2 and loss.needs_batch_negatives(recipe.loss):
        raise DistillError(f"train.batch_size {recipe.train.batch_size}: loss {name} is contrastive, its negatives are the other "
                           "sentences of the batch; it needs at least 2 per device (one gives a loss of exactly 0)")
    s2 = recipe.stage2
    what = loss.head_in_embedding(recipe.loss)
    if recipe.loss.get("teacher_space"):
        _check_teacher_space(recipe)
    if s2.rows and what and recipe.loss.get("matryoshka_dims"):  # HPD's head is carried into stage 2 (stages.stage2); this one is not
        raise DistillError(f"stage2.rows with loss {name}: {what} is part of stage 1's embedding and stage 2 does not carry a "
                           "Matryoshka head; train stage 1 without loss.matryoshka_head, or leave stage2.rows empty")
    _need(s2.init in STAGE2_INITS, "stage2.init", s2.init, f"one of {', '.join(STAGE2_INITS)}")
    _check_train("stage2.train", s2.train)
    stage2 = loss_class(s2.loss["name"])
    _need(stage2.stage == 2, "stage2.loss.name", s2.loss["name"], "a stage-2 loss")
    stage2.check(s2.loss, "stage2.loss")
    _need(s2.max_rows is None or s2.max_rows >= 1, "stage2.max_rows", s2.max_rows, "unset or >= 1")
    _need(s2.neg_samples >= 0, "stage2.neg_samples", s2.neg_samples, ">= 0")
    _need(len(s2.columns) >= 2 and all(s2.columns), "stage2.columns", s2.columns,
          "two or more names (anchor, positive, then any negatives)")


def _check_teacher_space(recipe) -> None:
    """loss.teacher_space: a student that stays in the teacher's space (losses/teacher_space.py)."""
    from distill.presets import find_preset

    if recipe.loss.get("matryoshka_dims"):
        raise DistillError("loss.teacher_space with loss.matryoshka_dims: a prefix of the student vector is not in the teacher's "
                           "space; give one of them")
    if recipe.eval.baselines and (recipe.eval.retrieval.doc_model or recipe.eval.final_retrieval.doc_model):
        width, teacher = _student_width(recipe), find_preset(recipe.teacher, "teacher") if isinstance(recipe.teacher, str) else None
        if width is None or teacher is None or width != teacher.dim:
            raise DistillError("eval.baselines with loss.teacher_space and a doc_model: the untrained student has no head into the "
                               "teacher's space to score against the teacher's documents; set eval.baselines: false "
                               "(benchmarks/query_encoder.py scores the teacher in the same run)")
    if recipe.stage2.rows:
        raise DistillError("loss.teacher_space with stage2.rows: stage 2's contrastive fine-tuning moves the student out of the "
                           "teacher's space (its vectors would no longer match the teacher's documents); set stage2.rows=[]")


def _widths_ok(dims) -> bool:
    return all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in dims) and all(a > b for a, b in zip(dims, dims[1:]))


def _check_prefix_widths(recipe) -> None:
    """loss.matryoshka_dims against the student preset's width (a folder is checked when the loss is built)."""
    from distill.losses.matryoshka import check_prefix_widths
    from distill.presets import student_spec

    dims = recipe.loss.get("matryoshka_dims")
    if dims is None:
        return
    preset = student_spec(recipe.student)
    if preset is not None and preset.dim is not None:
        check_prefix_widths(dims, preset.dim)


def _student_width(recipe) -> int | None:
    """The width of the student's own vector from its preset or its folder's config.json (None: not
    known without loading it, e.g. a static model folder)."""
    from distill.io import try_read_json_object
    from distill.presets import student_spec
    from distill.st_format import static_folder as is_static_folder

    preset = student_spec(recipe.student)
    if preset is None:  # a folder
        folder = Path(recipe.student).expanduser()
        width = None if is_static_folder(folder) else try_read_json_object(folder / "config.json").get("hidden_size")
        return width if isinstance(width, int) and not isinstance(width, bool) else None
    return preset.dim


def _check_eval_dims(recipe) -> None:
    """eval.dims within the width evaluation scores: the student's vector, or the output of a loss
    head that is part of the embedding (HPD's k-d head), as the trainer computes it."""
    from distill.losses import build_loss, loss_class
    from distill.losses.base import head_out_dim
    from distill.presets import teacher_spec

    dims = recipe.eval.dims
    width = _student_width(recipe) if dims else None
    if width is None:
        return
    what = loss_class(recipe.loss["name"]).head_in_embedding(recipe.loss)
    if what:
        targets = loss_class(recipe.loss["name"]).targets(recipe.loss)
        teacher = teacher_spec(recipe.teacher)
        teacher_dim = targets[1] if isinstance(targets, tuple) else teacher.dim
        head = build_loss(recipe.loss, width, teacher_dim).embedding_head()
        width = head_out_dim(head) if head is not None else width
    wider = [k for k in dims if k > width]
    if wider:
        raise DistillError(f"eval.dims {list(dims)}: {wider[0]} is more than the {width} dimensions of the student's embedding"
                           + (f" ({what})" if what else ""))


def _check_static_student(recipe) -> None:
    """A static student preset as `StaticStudent.from_spec` will build it, from files already here:
    with init: distill, a width at most the teacher's; its tokenizer (the preset's, else the
    teacher's) a folder with tokenizer.json, and with init: distill the teacher's own tokens."""
    from distill.presets import StaticStudentSpec, repo_root, student_spec, teacher_spec
    from distill.resolve import local_model

    spec = student_spec(recipe.student)
    if not isinstance(spec, StaticStudentSpec):
        return
    where = repo_root() / "students" / f"{spec.name}.yaml"
    teacher = teacher_spec(recipe.teacher)
    if spec.init == "distill" and teacher.dim is not None and spec.dim > teacher.dim:
        raise DistillError(f"{where}: dim {spec.dim}: init: distill reduces the teacher's vectors to it, so it must be between 1 and "
                           f"the teacher {teacher.name}'s width {teacher.dim} ({repo_root() / 'teachers' / f'{teacher.name}.yaml'}: dim)")
    teacher_folder = local_model(teacher.hub_id, offline_source=teacher.offline_source)
    tok_folder = teacher_folder
    if spec.tokenizer is not None:
        path = Path(spec.tokenizer).expanduser()
        if not path.is_dir() and (path.is_absolute() or spec.tokenizer.startswith((".", "~"))):
            raise DistillError(f"{where}: tokenizer {spec.tokenizer}: no such folder")
        try:
            tok_folder = local_model(spec.tokenizer)
        except DistillError as exc:
            raise DistillError(f"{where}: tokenizer {spec.tokenizer}: {exc}") from None
    if tok_folder is None:
        return  # fetched when the run starts
    named = f"tokenizer {spec.tokenizer}" if spec.tokenizer is not None else f"tokenizer (the teacher {teacher.name}'s)"
    if not (tok_folder / "tokenizer.json").is_file():
        raise DistillError(f"{where}: {named}: {tok_folder} has no tokenizer.json; a static student needs a fast (Rust) tokenizer file")
    if spec.init == "distill" and spec.tokenizer is not None and teacher_folder is not None and (teacher_folder / "tokenizer.json").is_file():
        if _vocabulary(tok_folder) != _vocabulary(teacher_folder):
            raise DistillError(f"{where}: tokenizer {spec.tokenizer} differs from the teacher {teacher.name}'s: init: distill needs the "
                               "teacher's own tokens (leave the preset's tokenizer unset, or use init: random)")


def _vocabulary(folder: Path) -> dict:
    """The token -> id map of a folder's tokenizer.json (a damaged file: one line naming it)."""
    from tokenizers import Tokenizer

    from distill.model_files import explain_load_error

    try:
        return Tokenizer.from_file(str(folder / "tokenizer.json")).get_vocab()
    except Exception as exc:  # the Rust tokenizer raises a plain Exception
        raise explain_load_error(folder, exc) from None


def _check_corpus_sources(sources: list[str]) -> None:
    """A `beir:` source as the corpus reader takes it: well formed, a folder, and never a test split's queries."""
    from distill.data.beir_source import check_training_split, is_beir_source, parse_source

    for i, source in enumerate(sources):
        if not isinstance(source, str) or not is_beir_source(source):
            continue
        try:
            spec = parse_source(source)
            if spec.queries is not None:
                check_training_split(spec.queries, f"corpus source {source!r}")
        except DistillError as exc:
            raise DistillError(f"data.corpus[{i}]: {exc}") from None
        if not spec.folder.is_dir():
            raise DistillError(f"data.corpus[{i}]: corpus source {source!r}: {spec.folder} is not a folder (expected a BEIR folder: "
                               "corpus.jsonl, queries.jsonl, qrels/)")


def _check_retrieval(e) -> None:
    """eval.retrieval / eval.final_retrieval: a BEIR folder holding the split, a known metric,
    lengths and batch sizes >= 1; never select on a test split."""
    from distill.eval.retrieval.metrics import metric_key

    for key, cfg in (("eval.retrieval", e.retrieval), ("eval.final_retrieval", e.final_retrieval)):
        if cfg.beir is None:
            unset = type(cfg)()
            if cfg != unset:
                given = ", ".join(f"{key}.{f}" for f in vars(cfg) if getattr(cfg, f) != getattr(unset, f))
                raise DistillError(f"{key}.beir: missing (the BEIR folder); {given} given without it (or set {key}: null)")
            continue
        _check_beir(f"{key}.beir", cfg.beir, cfg.split)
        _need(cfg.max_length is None or cfg.max_length >= 3, f"{key}.max_length", cfg.max_length,
              "unset (each model's own length) or >= 3 (two special tokens and one word piece)")
        _need(cfg.batch_size is None or cfg.batch_size >= 1, f"{key}.batch_size", cfg.batch_size, "unset (eval.batch_size) or >= 1")
        _need(cfg.doc_model is None or (isinstance(cfg.doc_model, str) and bool(cfg.doc_model.strip())), f"{key}.doc_model",
              cfg.doc_model, "unset (the student embeds queries and passages), teacher (the recipe's), or a model name or folder")
    r = e.retrieval
    if r.beir is not None:
        try:
            metric_key(r.metric)
        except DistillError as exc:
            raise DistillError(f"eval.retrieval.metric: {exc}") from None
        if r.select and r.split.strip().lower() == "test":
            raise DistillError("eval.retrieval.split: test with select: true would pick the best student on the test set, "
                               "which is for reporting only; select on split: dev and report test with eval.final_retrieval "
                               "(or set eval.retrieval.select: false to only log it)")


def _check_beir(key: str, folder: str, split: str) -> None:
    """The BEIR folder exists and holds the split's qrels (read when the run starts, not now)."""
    from distill.data.beir import find_file

    path = Path(folder).expanduser()
    _need(bool(split.strip()), key.replace(".beir", ".split"), split, "a qrels split name (dev, test...)")
    if not path.is_dir():
        raise DistillError(f"{key}: {folder}: no such folder (expected a BEIR folder: corpus.jsonl, queries.jsonl, qrels/)")
    missing = [name for name in ("corpus", "queries") if find_file(path, name) is None]
    if missing:
        raise DistillError(f"{key}: {folder} has no {' or '.join(m + '.jsonl' for m in missing)}")
    if not (path / "qrels").is_dir() or find_file(path / "qrels", split) is None:
        have = sorted(p.stem for p in (path / "qrels").iterdir()) if (path / "qrels").is_dir() else []
        raise DistillError(f"{key}: {folder} has no qrels/{split}.tsv (splits there: {', '.join(have) or 'none'})")


def _check_presets(recipe) -> None:
    """teacher and student: a preset, a folder, a hub id or a mapping, each key and value checked."""
    from distill.presets import student_spec, teacher_spec

    for key, value, parse in (("teacher", recipe.teacher, teacher_spec), ("student", recipe.student, student_spec)):
        try:
            parse(value)
        except DistillError as exc:
            raise DistillError(f"{key}: {exc}") from None
