"""A BEIR folder as training text: its passages and one split's queries, never a test query.

Used two ways:

- as a distillation corpus source (`data.corpus`, `distill cache --corpus`): `beir:FOLDER` reads
  every passage of FOLDER/corpus.jsonl ("title text", BEIR's join; the document role);
  `beir:FOLDER?queries=SPLIT` adds the queries judged in FOLDER/qrels/SPLIT.tsv after them (the
  query role: a teacher with a query prompt encodes them as queries); `&sentences=query` (or
  `=document`) adds every passage's sentences after those, with that role: short in-domain texts, the
  pseudo-queries of cropping (Contriever, Izacard et al. 2022, trains on spans cut from documents as
  queries). A query encoder sees short texts only, and an index owner has the documents. No file
  is written: the teacher cache's manifest records the source string and the sha256 of what it read.
- by `distill mine` (distill/data/mining.py): the split's (query, positive) pairs.

Test queries never enter training: `queries=test` is refused, and a query of another split (or a
passage's sentence) whose text is also a query judged in qrels/test.tsv is left out (SciFact has
two: dev claims 871 and 1291 are test claims 870 and 1292 word for word, with the same relevant
abstract; three of DuReader-robust's passages hold a test query as a sentence of its own).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from distill.data.readers import is_jsonl, iter_jsonl, join_title
from distill.data.sentence_store import DOCUMENT, QUERY, ROLES
from distill.errors import DistillError

PREFIX = "beir:"
TEST_SPLIT = "test"  # BEIR's reporting split: its queries are never trained on
# Where a sentence ends: full-width and ASCII question and exclamation marks and semicolons (Chinese
# web text often has "?" with no space after it), newlines, the Chinese full stop, and "." before a
# space or a CJK character (so "3.5", "U.S.A" and "e.g." inside a word stay whole).
SENTENCE_END = re.compile(r"[。！？；!?;\n]|\.(?=\s|[\u3400-\u9fff])")
MIN_SENTENCE_CHARS = 4  # shorter pieces ("1、", "OK") are list markers and fragments, not queries


@dataclass(frozen=True)
class BeirSource:
    folder: Path
    queries: str | None  # the split whose queries follow the passages; None: passages only
    sentences: str | None = None  # the role of the passages' sentences added after them; None: none

    def __str__(self) -> str:
        options = [f"{k}={v}" for k, v in (("queries", self.queries), ("sentences", self.sentences)) if v]
        return f"{PREFIX}{self.folder}" + ("?" + "&".join(options) if options else "")


def is_beir_source(source: str) -> bool:
    return source.startswith(PREFIX)


def parse_source(source: str) -> BeirSource:
    """`beir:FOLDER[?queries=SPLIT][&sentences=ROLE]` -> BeirSource; anything else is an error naming the source."""
    usage = "beir:FOLDER, beir:FOLDER?queries=SPLIT, beir:FOLDER?queries=SPLIT&sentences=query"
    if not is_beir_source(source):
        raise DistillError(f"{source!r}: not a BEIR source ({usage})")
    body = source[len(PREFIX):]
    folder, _, query = body.partition("?")
    options: dict[str, str] = {}
    for part in query.split("&") if query else []:
        key, eq, value = part.partition("=")
        if key not in ("queries", "sentences") or not eq or not value.strip():
            raise DistillError(f"corpus source {source!r}: after '?' expected queries=SPLIT and/or sentences=query|document "
                               f"(e.g. beir:{folder}?queries=dev&sentences=query), got {part!r}")
        if key in options:
            raise DistillError(f"corpus source {source!r}: {key} given twice")
        options[key] = value.strip()
    sentences = options.get("sentences")
    if sentences is not None and sentences not in ROLES:
        raise DistillError(f"corpus source {source!r}: sentences={sentences!r}: the role the passages' sentences get, "
                           f"one of {', '.join(ROLES)}")
    if not folder.strip():
        raise DistillError(f"corpus source {source!r}: no folder after 'beir:'")
    return BeirSource(Path(folder).expanduser(), options.get("queries"), sentences)


def split_sentences(text: str) -> list[str]:
    """TEXT's sentences, whitespace-normalized, in order; pieces under MIN_SENTENCE_CHARS left out."""
    pieces = (" ".join(piece.split()) for piece in SENTENCE_END.split(text))
    return [p for p in pieces if len(p) >= MIN_SENTENCE_CHARS]


def check_training_split(split: str, what: str) -> None:
    """Refuse the test split: its queries are for reporting only."""
    if split.strip().lower() == TEST_SPLIT:
        raise DistillError(f"{what}: split {split!r} is the reporting split; its queries are never trained on or put in a "
                           "training corpus (use the dev split: selection and supervised training)")


def test_query_texts(folder: Path) -> set[str]:
    """The texts of the queries judged in FOLDER/qrels/test.tsv, whitespace-normalized (empty without that file)."""
    from distill.data.beir import find_file, load_qrels, load_texts

    qrels_file = find_file(folder / "qrels", TEST_SPLIT) if (folder / "qrels").is_dir() else None
    if qrels_file is None:
        return set()
    queries = load_texts(find_file(folder, "queries"), "queries")
    return {_words(queries[q]) for q in load_qrels(qrels_file) if q in queries}


def _words(text: str) -> str:
    """Whitespace-normalized text: a query that differs from a test query only in spacing is the same query."""
    return " ".join(text.split())


@dataclass
class TrainingSplit:
    """A split's judged queries without the test-identical ones, the passages, and what was left out."""

    queries: dict[str, str]  # id -> text, in queries-file order
    passages: dict[str, tuple[str, str]]  # id -> (title, text) as in corpus.jsonl
    qrels: dict[str, dict[str, int]]  # of the kept queries
    dropped: dict[str, str]  # id -> text of the queries left out: the same text is a test query

    def passage_text(self, doc_id: str) -> str:
        """What a model reads: "title text" (BEIR's join), the text alone without a title."""
        return join_title(*self.passages[doc_id])


def load_passages(folder: Path) -> dict[str, tuple[str, str]]:
    """id -> (title, text) of FOLDER's corpus file, read like the retrieval loader reads it."""
    from distill.data.beir import ID_KEYS, TEXT_KEYS, find_file, load_texts

    path = find_file(folder, "corpus")
    if path is None:
        raise DistillError(f"{folder}: no corpus.jsonl (expected a BEIR folder: corpus.jsonl, queries.jsonl, qrels/)")
    if not is_jsonl(path):  # a TSV corpus: load_texts has already joined any title column
        return {d: ("", t) for d, t in load_texts(path, "corpus").items()}
    load_texts(path, "corpus")  # every check (ids, texts, duplicates) with its file:line message
    out = {}
    for _, obj in iter_jsonl(path):
        doc_id = str(obj[next(k for k in ID_KEYS if k in obj)]).strip()
        title = obj.get("title")
        out[doc_id] = ("" if title is None else str(title), obj[next(k for k in TEXT_KEYS if k in obj)])
    return out


def load_training_split(folder: str | Path, split: str) -> TrainingSplit:
    """FOLDER's passages and SPLIT's judged queries, minus any query whose text is a test query."""
    from distill.data.beir import load_beir

    folder = Path(folder)
    check_training_split(split, str(folder))
    data = load_beir(folder, split)
    banned = test_query_texts(folder)
    queries, dropped = {}, {}
    for qid, text in data.queries.items():
        if qid in data.qrels:
            (dropped if _words(text) in banned else queries)[qid] = text
    if not queries:
        raise DistillError(f"{folder}: no query of split {split!r} is left once the test queries are taken out")
    return TrainingSplit(queries, load_passages(folder), {q: data.qrels[q] for q in queries}, dropped)


def iter_beir_source(source: str) -> Iterator[tuple[int, str, int]]:
    """(position from 1, text, role): every passage of the folder ("title text", the document
    role), then the split's queries (if named; the query role), then the passages' sentences (if
    asked for; their role), none of them a test query's text."""
    spec = parse_source(source)
    if not spec.folder.is_dir():
        raise DistillError(f"corpus source {source!r}: {spec.folder} is not a folder (expected a BEIR folder: corpus.jsonl, queries.jsonl, qrels/)")
    if spec.queries is None:
        passages, queries = load_passages(spec.folder), {}
    else:
        check_training_split(spec.queries, f"corpus source {source!r}")
        data = load_training_split(spec.folder, spec.queries)
        passages, queries = data.passages, data.queries
    position = 0
    for title, text in passages.values():
        position += 1
        yield position, join_title(title, text), DOCUMENT
    for text in queries.values():
        position += 1
        yield position, text, QUERY
    if spec.sentences is not None:
        banned, role = test_query_texts(spec.folder), ROLES[spec.sentences]
        for title, text in passages.values():  # the title is a sentence of its own
            for sentence in split_sentences(title) + split_sentences(text):
                position += 1
                if sentence not in banned:  # split_sentences normalizes whitespace as test_query_texts does
                    yield position, sentence, role
