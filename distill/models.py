"""One way in for models: the registry of model kinds, and the loaders every command calls.

A model is named as a preset, a hub id, a PyPI model key, a folder, or (teachers and students) a
mapping. Its name is resolved once, into a folder, and the folder's kind decides the class:

    kind                   recognized by                          loaded as
    saved-student          distill_student.json (a run's best/)   its own kind, pooling, normalize, head
    static                 modules.json, first module StaticEmbedding  StaticStudent
    sentence-transformers  modules.json                           SentenceModel (served exactly)
    transformers           config.json                            Encoder (+ the spec's pooling)

Teachers are always SentenceModels (`load_teacher`): the cache must hold the vectors
sentence-transformers gives. Students to train are Encoders or StaticStudents (`load_student`):
they need layer cutting and hidden states. Served models (`load_served`: eval, similarity, encode,
retrieval) are what the folder is: a saved student as it was trained and scored, a static folder,
and a sentence-transformers pipeline exactly (a Router folder too); a plain transformers folder as
an Encoder with mean pooling. ONNX is a backend of the same folders (distill/onnx/runtime.py,
chosen by `Embedder(..., backend="onnx")`).

Modelled on sentence-transformers' and model2vec's loaders: the folder says what it is.
"""

from __future__ import annotations

from pathlib import Path

from distill.errors import DistillError
from distill.presets import StaticStudentSpec, StudentSpec, find_preset, student_spec, teacher_spec
from distill.resolve import resolve_model
from distill.st_format import is_st_folder, static_folder

SAVED_STUDENT = "distill_student.json"
KINDS = ("saved-student", "static", "sentence-transformers", "transformers")


def folder_kind(folder: str | Path) -> str:
    """Which of KINDS a model folder is (an error naming the folder when it is none)."""
    folder = Path(folder)
    if (folder / SAVED_STUDENT).is_file():
        return "saved-student"
    if static_folder(folder):
        return "static"
    if is_st_folder(folder):
        return "sentence-transformers"
    if (folder / "config.json").is_file():
        return "transformers"
    raise DistillError(f"{folder}: not a model folder (no {SAVED_STUDENT}, modules.json or config.json)")


def load_teacher(value, *, device=None, folder: str | Path | None = None):
    """A teacher (preset, hub id, folder, mapping or TeacherSpec) as a SentenceModel."""
    from distill.sentence_model import SentenceModel

    return SentenceModel.load(teacher_spec(value), folder=folder, device=device)


def served_student_preset(name: str) -> bool:
    return isinstance(find_preset(name, "student"), StudentSpec)


def load_student(value, *, max_length: int | None = None, device=None, teacher=None, cache_dir: str | Path | None = None,
                 progress: bool = True):
    """The student a run trains: a preset, hub id, mapping ({model, layers, pooling, ...}) or folder.

    `teacher`: the recipe's teacher, which a static student preset builds its table from (init:
    distill) and takes its tokenizer from by default; `cache_dir`: where that table is kept;
    `progress`: the bar of that table's computation (off under --quiet)."""
    from distill.encoder import Encoder

    spec = student_spec(value)
    if isinstance(spec, StaticStudentSpec):
        from distill.static_student import StaticStudent

        if teacher is None:
            raise DistillError(f"student preset {spec.name!r} is a static student: it is built from a teacher (the recipe's), "
                               "not loaded on its own; train it (`distill train`) and use the run's folder")
        return StaticStudent.from_spec(spec, teacher, max_length=max_length, device=device, cache_dir=cache_dir, progress=progress)
    if spec is None:  # a folder: what it holds
        return _load_folder(Path(str(value)).expanduser(), max_length=max_length, device=device, serve=False)
    folder = resolve_model(spec.hub_id, offline_source=spec.offline_source)
    return Encoder.from_folder(folder, pooling=spec.pooling, normalize=spec.normalize, max_length=max_length or spec.max_length,
                               layers=spec.layers, device=device)


def load_served(name: str | Path, *, max_length: int | None = None, device=None):
    """A model to encode with, as its folder serves it (see the module docstring); a preset or hub
    id is resolved first (a teacher preset serves as its teacher, a student preset as that student)."""
    path = Path(str(name)).expanduser()
    if path.is_dir():
        return _load_folder(path, max_length=max_length, device=device, serve=True)
    if isinstance(name, str):
        preset = find_preset(name)
        if preset is not None and not isinstance(preset, (StudentSpec, StaticStudentSpec)):
            return load_teacher(preset, device=device)
        if isinstance(preset, (StudentSpec, StaticStudentSpec)):
            return load_student(name, max_length=max_length, device=device)
    folder = resolve_model(str(name))
    return _load_folder(folder, max_length=max_length, device=device, serve=True)


def _load_folder(folder: Path, *, max_length: int | None, device, serve: bool):
    from distill.encoder import Encoder

    kind = folder_kind(folder)
    if kind == "saved-student":
        from distill.saved_student import load_saved_student

        model, meta, _ = load_saved_student(folder, device=device)
        if serve and meta.get("kind") == "static":  # served, a static student encodes all of a line, as StaticEmbedding does
            from distill.static_student import StaticStudent

            return StaticStudent.load_folder(folder, max_length=max_length, device=device)
        if max_length:
            model.max_length = max_length
        return model
    if kind == "static":
        from distill.static_student import StaticStudent

        return StaticStudent.load_folder(folder, max_length=max_length, device=device)
    if kind == "sentence-transformers" and serve and _needs_sentence_model(folder):
        from distill.presets import TeacherSpec
        from distill.sentence_model import SentenceModel

        return SentenceModel.load(TeacherSpec(name=str(folder), hub_id=str(folder), max_length=max_length), folder=folder, device=device)
    return Encoder.from_folder(folder, max_length=max_length, device=device)


def _needs_sentence_model(folder: Path) -> bool:
    """A sentence-transformers folder the Encoder does not reproduce whole: other modules or poolings
    than Transformer -> mean/CLS Pooling -> Normalize, or prompts (which differ by role)."""
    from distill.encoder import folder_defaults
    from distill.st_format import folder_prompts

    try:
        folder_defaults(folder)
    except DistillError:
        return True
    return any(folder_prompts(folder)[0].values())  # sentence-transformers 6 saves empty query/document prompts
