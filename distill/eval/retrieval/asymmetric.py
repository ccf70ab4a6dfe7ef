"""Asymmetric retrieval: queries embedded by one model (a student), documents by another (its teacher).

The case of an index that already holds the teacher's document vectors (issue 34,
docs/keep-your-index.md): a student trained into the teacher's space (loss mse / cosine, with
`teacher_space: true` when the widths differ) replaces the teacher for queries only. What is
scored is then student queries against teacher documents:

- `distill eval-retrieval --model STUDENT --doc-model TEACHER`;
- a recipe's `eval.retrieval: {..., doc_model: teacher}` (selection) and
  `eval.final_retrieval: {..., doc_model: teacher}` (the report).

The two must put out vectors of one width (`check_widths`: an error naming both). A student whose
recipe named another teacher than the document model gets a warning naming both
(`trained_teacher`): its vectors are in that other teacher's space.

Document vectors of a fixed model do not change during a run: `doc_vectors` computes them once
per (model, length, corpus file) and hands the same array to every evaluation point, the dev
selection and the final test report alike (they share SciFact's corpus). The corpus is named by
its file's identity (path, size, modification time) when it came from a file, else by a digest
of its contents.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from distill.errors import DistillError
from distill.io import atomic_path, try_read_json_object

TEACHER = "teacher"  # doc_model: teacher = the recipe's own teacher
DOC_MEMO_BYTES = 1024 * 2**20  # document vectors kept at most (least recently used first out)
_doc_memo: OrderedDict = OrderedDict()
doc_memo_stats = {"hits": 0, "misses": 0}


def resolve_doc_model(doc_model: str | None, teacher):
    """A recipe's doc_model: "teacher" is the recipe's teacher (a name, folder or mapping); None stays None (symmetric)."""
    if doc_model is None:
        return None
    if doc_model == TEACHER:
        if not teacher:
            raise DistillError("doc_model: teacher, but no teacher is named")
        return teacher
    return doc_model


def _is_teacher(value) -> bool:
    from distill.presets import TeacherSpec, find_preset

    if isinstance(value, (dict, TeacherSpec)):
        return True
    return isinstance(value, str) and not Path(value).expanduser().is_dir() and find_preset(value, "teacher") is not None


def doc_embedder(doc_model, *, batch_size: int = 128, max_length=None, progress: bool = False, device=None):
    """An Embedder for documents (role "document": the model's document prompt and route). A teacher
    (a teacher preset's name, a mapping) is loaded as training loads it (`distill.models.load_teacher`);
    any other name, folder or object as `Embedder` takes it."""
    from distill.embedding import OWN, Embedder

    length = OWN if max_length is None else max_length
    if _is_teacher(doc_model):
        from distill.models import load_teacher
        from distill.presets import model_name

        model = load_teacher(doc_model, device=device)
        model.source = model_name(doc_model)
        doc_model = model
    return Embedder(doc_model, batch_size=batch_size, progress=progress, device=device, full_length=True, max_length=length,
                    desc="documents", role="document")


def check_widths(query_width: int | None, doc_width: int | None, query_name, doc_name) -> None:
    """Queries and documents must be vectors of one width (None: not known yet, not checked)."""
    if query_width is not None and doc_width is not None and query_width != doc_width:
        raise DistillError(f"the query model {query_name} puts out {query_width}-d vectors and the document model {doc_name} "
                           f"{doc_width}-d ones: they are not in one space. Train the student into the teacher's space "
                           "(loss mse or cosine with teacher_space: true, which adds a head to the teacher's width)")


def trained_teacher(model) -> str | None:
    """The teacher a saved student (distill_student.json) or an export of one (.distill-export.json ->
    its student's folder) was distilled from; None when the folder does not say."""
    if not isinstance(model, (str, Path)):
        return None
    folder = Path(model).expanduser()
    if not folder.is_dir():
        return None
    meta = try_read_json_object(folder / "distill_student.json")
    if not meta:
        student = try_read_json_object(folder / ".distill-export.json").get("student")
        meta = try_read_json_object(Path(student) / "distill_student.json") if isinstance(student, str) else {}
        if not meta:
            return try_read_json_object(folder / "distill_asymmetric.json").get("teacher")
    teacher = meta.get("teacher")
    return str(teacher) if teacher else None


def teacher_warning(model, doc_model) -> str | None:
    """A warning when `model` was distilled from another teacher than `doc_model` names (None: same, or not known)."""
    taught = trained_teacher(model)
    if taught is None or not isinstance(doc_model, (str, Path, dict)):
        return None
    from distill.presets import model_name

    doc = model_name(doc_model) if isinstance(doc_model, dict) else str(doc_model)
    same = taught == doc or (Path(taught).expanduser().is_dir() and Path(doc).expanduser().is_dir()
                             and Path(taught).expanduser().resolve() == Path(doc).expanduser().resolve())
    if same:
        return None
    return (f"{model} was distilled from the teacher {taught}, not from the document model {doc}: its query vectors are in "
            f"{taught}'s space, and scores against {doc}'s documents mean little unless the two share one space")


def corpus_identity(corpus: Mapping, source: str | Path | None = None) -> tuple:
    """The corpus's identity: its file's (path, size, mtime) when `source` names a file or a BEIR
    folder with corpus.jsonl, else a digest of its (id, text) pairs."""
    if source is not None:
        path = Path(source).expanduser()
        if path.is_dir():
            found = [p for p in (path / "corpus.jsonl", path / "corpus.jsonl.gz") if p.is_file()]
            path = found[0] if found else path
        if path.is_file():
            st = path.stat()
            return ("file", str(path.resolve()), st.st_size, st.st_mtime_ns, len(corpus))
    h = hashlib.blake2b(digest_size=20)
    for doc_id, text in corpus.items():
        h.update(repr((doc_id, text)).encode())
    return ("digest", h.hexdigest(), len(corpus))


def _model_identity(embed) -> tuple:
    """A document model by what decides its vectors: its source (name or folder) and length, or for an
    in-memory model one of our torch models' content digest (training/evaluators.model_digest)."""
    source = embed.source
    if isinstance(source, (str, Path)):
        p = Path(source).expanduser()
        return ("named", str(p.resolve()) if p.exists() else str(source), embed.max_length, embed.dims)
    from distill.embedding import model_digest

    digest = model_digest(embed)
    return ("digest", digest, id(embed) if digest is None else None)


STORE_ENV = "DISTILL_DOC_VECTORS"


def _store_file(key: tuple) -> Path | None:
    """Where $DISTILL_DOC_VECTORS keeps the vectors of `key` (None: unset, memory only). Only named
    models and corpora named by their file are kept on disk (an in-memory model changes)."""
    folder = os.environ.get(STORE_ENV)
    if not folder or key[0][0] != "named" or key[1][0] != "file":
        return None
    from distill import __version__

    digest = hashlib.blake2b(repr((key, __version__)).encode(), digest_size=16).hexdigest()
    return Path(folder).expanduser() / f"docs-{digest}.npy"


def doc_vectors(embed, corpus: Mapping, source: str | Path | None = None, batch_size: int | None = None) -> np.ndarray:
    """The corpus's vectors by the document model `embed` (an Embedder), row i for the i-th passage,
    computed once per (model, length, corpus identity) and then reused. With $DISTILL_DOC_VECTORS
    set to a folder, the vectors of a named model over a corpus file are also kept there between
    processes (several runs and a benchmark on one machine: the teacher's documents once), named by
    a digest of the model's name, length and width, the corpus file's path, size and modification
    time, and this package's version; a changed file or model name is a new entry."""
    from distill.eval.retrieval.data import as_text_map

    texts = list(as_text_map(corpus, "corpus").values())
    key = (_model_identity(embed), corpus_identity(corpus, source))
    hit = _doc_memo.get(key)
    if hit is not None:
        doc_memo_stats["hits"] += 1
        _doc_memo.move_to_end(key)
        return hit
    store = _store_file(key)
    if store is not None and store.is_file():
        vectors = np.load(store)
        if vectors.shape[0] == len(texts):
            doc_memo_stats["hits"] += 1
            _remember(key, vectors)
            return vectors
    doc_memo_stats["misses"] += 1
    vectors = np.asarray(embed(texts, batch_size=batch_size), dtype=np.float32)
    if store is not None:
        with atomic_path(store) as tmp:
            np.save(tmp, vectors)
    _remember(key, vectors)
    return vectors


def _remember(key: tuple, vectors: np.ndarray) -> None:
    if vectors.nbytes <= DOC_MEMO_BYTES:
        _doc_memo[key] = vectors
        while sum(v.nbytes for v in _doc_memo.values()) > DOC_MEMO_BYTES:
            _doc_memo.popitem(last=False)


def clear_doc_memo() -> None:
    _doc_memo.clear()
    doc_memo_stats.update(hits=0, misses=0)
