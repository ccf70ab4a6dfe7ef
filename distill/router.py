"""One sentence-transformers folder for a query encoder and its teacher: `distill export RUN --asymmetric`.

An index holds the teacher's document vectors; a student trained into the teacher's space
(losses/teacher_space.py) encodes the queries. The folder serves both through
sentence-transformers' `Router` module:

    modules.json           one module: Router
    router_config.json     routes: query -> the student's modules, document -> the teacher's
                           (default route: document, what plain `encode()` takes)
    query_0_*/ ...         the student as `distill export` writes it: Transformer -> Pooling (or
                           StaticEmbedding) [-> Dense, its teacher-space head] -> Normalize
    document_0_*/ ...      the teacher: its own sentence-transformers modules (Transformer ->
                           Pooling -> Normalize for all-MiniLM-L6-v2) at its own max_seq_length
    distill_asymmetric.json  the run, the student's and the teacher's names, widths and lengths

so that plain sentence-transformers (no distill) serves it:

    model = SentenceTransformer(DIR)
    q = model.encode_query(queries)      # the student
    d = model.encode_document(docs)      # the teacher: the vectors already in the index

Refused: a student whose vectors have another width than the teacher's (a run trained without
`loss.teacher_space: true`, whose projection was training-only): the two could not be compared.

distill's own commands serve such a folder by role (distill/embedding.py: encode_query /
encode_document): `encode --role query|document`, `eval-retrieval --model DIR` (queries by the
query route, passages by the document route), and `similarity` / `pipeline(DIR)`, which embed the
source sentence as a query and the candidates as documents.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from distill.errors import DistillError

INFO = "distill_asymmetric.json"


def _teacher_modules(teacher):
    """The teacher's sentence-transformers modules, as training and evaluation serve it
    (`distill.models.load_teacher`: a SentenceModel wraps the real SentenceTransformer, its
    own folder's pipeline or the one assembled for a plain transformers folder), at its length."""
    from distill.embedding import own_max_length
    from distill.models import load_teacher

    model = load_teacher(teacher, device="cpu")
    st, length = model.st, own_max_length(model)  # its declared length, as eval-retrieval encodes documents (not a preset's cache length)
    if length:
        st.max_seq_length = length
    return list(st), int(model.dim), length


def export_asymmetric(run_dir: str | Path, out: str | Path, *, which: str = "best", overwrite: bool = False,
                      teacher: str | None = None) -> Path:
    """Write the run's student (query route) and its recipe's teacher (document route) as one
    sentence-transformers folder with a Router (module docstring). `teacher` overrides the run's."""
    from sentence_transformers import SentenceTransformer

    from distill.export import EXPORT_MARKER, check_out, export_marker, export_student, publish_export, st_module_classes
    from distill.io import atomic_dir, check_writable, write_errors
    from distill.saved_student import META, stage_meta

    run_dir, out = Path(run_dir), Path(os.path.abspath(out))
    if not run_dir.is_dir():
        raise DistillError(f"{run_dir}: no such run folder")
    check_out(run_dir, out, overwrite)
    check_writable(out, "--out")
    stage_dir = run_dir / "stage2" if (run_dir / "stage2" / which / META).is_file() else run_dir
    student_dir = stage_dir / which if (stage_dir / which / META).is_file() else stage_dir
    if not (student_dir / META).is_file():
        raise DistillError(f"{run_dir}: no trained student in it (expected {run_dir / which / META})")
    meta = stage_meta(student_dir)
    from distill.presets import model_name

    trained = meta.get("teacher")
    if teacher and trained and model_name(teacher) != model_name(trained):
        print(f"distill: warning: --teacher {model_name(teacher)}: the student of {run_dir} was distilled from {model_name(trained)}; "
              f"its query vectors are in {model_name(trained)}'s space, not in {model_name(teacher)}'s", file=sys.stderr)
    teacher = teacher or trained

    if not teacher:
        raise DistillError(f"{student_dir / META}: names no teacher; give one")
    with tempfile.TemporaryDirectory(prefix=".distill-asym-", dir=out.parent) as tmp:
        plain = Path(tmp) / "student"
        export_student(run_dir, plain, which=which)  # the student as a plain export: its head, Normalize
        student = SentenceTransformer(str(plain), device="cpu")
        s_dim = (getattr(student, "get_embedding_dimension", None) or student.get_sentence_embedding_dimension)()
        doc_modules, t_dim, t_len = _teacher_modules(teacher)
        if s_dim != t_dim:
            loss = meta.get("loss") or {}
            raise DistillError(
                f"--asymmetric: the student of {run_dir} puts out {s_dim}-d vectors and its teacher {teacher} {t_dim}-d ones, and "
                f"it has no head into the teacher's space (loss {loss.get('name', '?')} without teacher_space: true); "
                "train it with loss.teacher_space: true (docs/keep-your-index.md)")
        router = st_module_classes().Router.for_query_document(query_modules=list(student), document_modules=doc_modules)
        model = SentenceTransformer(modules=[router], device="cpu", similarity_fn_name="cosine")
        info = {"run": str(run_dir.resolve()), "which": which, "student": meta.get("student"), "teacher": model_name(teacher) if isinstance(teacher, dict) else teacher,
                "dim": int(t_dim), "query_max_seq_length": _length(student.max_seq_length),
                "document_max_seq_length": t_len, "loss": meta.get("loss")}
        kept = "; nothing written" + (" (the previous export is kept)" if out.is_dir() and any(out.iterdir()) else "")
        with write_errors(out, "--out", kept), \
                atomic_dir(out, publish=lambda t, target: publish_export(t, target, run_dir, overwrite)) as target:
            model.save(str(target), safe_serialization=True)
            (target / INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
            (target / "README.md").write_text(_card(info), encoding="utf-8")
            (target / EXPORT_MARKER).write_text(json.dumps({**export_marker(run_dir, which, student_dir), "asymmetric": True}, indent=2) + "\n")
    print(f"distill: {out}: query -> {meta.get('student')} (trained from {run_dir}), document -> {teacher}, {t_dim}-d", file=sys.stderr)
    return out


def _length(value) -> int | None:
    """A max_seq_length as a number of tokens; None for none (a static table's is infinite)."""
    import math

    return int(value) if isinstance(value, (int, float)) and math.isfinite(value) and value > 0 else None


def _card(info: dict) -> str:
    return f"""---
library_name: sentence-transformers
tags: [sentence-transformers, sentence-similarity, feature-extraction, distill, asymmetric]
---

# A query encoder in the teacher's space

Written by `distill export --asymmetric` from the run `{info['run']}` ({info['which']}/).

- `encode_query(...)`: the student `{info['student']}`, trained into the vector space of the teacher
  (loss `{(info.get('loss') or {}).get('name')}`{', teacher_space' if (info.get('loss') or {}).get('teacher_space') else ''}),
  {info['dim']}-d, {f"up to {info['query_max_seq_length']} tokens" if info['query_max_seq_length'] else 'no length limit'}.
- `encode_document(...)` (and plain `encode(...)`): the teacher `{info['teacher']}` itself,
  {info['dim']}-d, up to {info['document_max_seq_length']} tokens: the vectors an index built with the
  teacher already holds, so no document is embedded again.

```python
from sentence_transformers import SentenceTransformer

model = SentenceTransformer("PATH")
scores = model.similarity(model.encode_query(["a question"]), model.encode_document(["a passage"]))
```
"""
