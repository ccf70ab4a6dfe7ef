"""Hard negatives for a BEIR split's queries, mined by a teacher with sentence-transformers'
`mine_hard_negatives` (sentence_transformers.util; it needs the optional `datasets` package), written
as stage-2 rows in the CoROM / Tevatron JSONL the seed model cards train on:

    {"query_id": "...", "query": "...",
     "positive_passages": [{"docid": "...", "title": "...", "text": "..."}],
     "negative_passages": [{"docid": ..., "title": ..., "text": ...}, ... N of them]}

One row per judged (query, relevant passage) pair (grade > 0), so a query with three relevant
abstracts gives three rows; `stage2.rows` reads the file through the same path as any CoROM file
(distill/data/rows.py). What is kept out of the negatives: every passage judged relevant for the
query in the split's qrels, not only the row's own positive (all of a query's pairs go to the miner
together, and it excludes the positives of every pair of an anchor). The test split is refused, and
a query whose text is also a test query is left out (distill/data/beir_source.py).

The miner's defaults here: the `negatives` best-scored passages ("top" sampling) among the top
10 x negatives + positives, skipping any that score within 5% of the query's weakest positive
(`relative_margin` 0.05: NV-Retriever's TopK-PercPos, the setting sentence-transformers
recommends; SciFact's judgments are sparse, and a passage scored as high as a positive is more
likely an unjudged positive than a negative). A pair whose query has fewer candidates left is
dropped (counted in the stats).
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from distill.data.beir_source import check_training_split, load_training_split
from distill.errors import DistillError


@dataclass
class Mined:
    rows: list[dict]  # the JSONL objects, in (query, positive) pair order
    stats: dict = field(default_factory=dict)


def _need_datasets() -> None:
    try:
        import datasets  # noqa: F401
    except ImportError:
        raise DistillError("distill mine uses sentence-transformers' mine_hard_negatives, which needs the 'datasets' package: "
                           "pip install 'distill[hub]' (or pip install datasets)") from None


def load_sentence_transformer(model, max_length: int | None = None, device=None):
    """A teacher as a SentenceTransformer: a preset (teachers/ first), a folder, a hub id, a PyPI
    model key or a mapping (distill.presets.teacher_spec), resolved like every other model here. It
    must be a sentence-transformers folder (modules.json): its own pooling, normalization and prompts
    (a mapping's prompts replace them; the miner encodes queries with encode_query and passages with
    encode_document), at its own max_seq_length unless `max_length`."""
    from sentence_transformers import SentenceTransformer

    from distill.encoder import best_device
    from distill.model_files import folder_position_limit
    from distill.presets import teacher_spec
    from distill.resolve import resolve_model

    spec = teacher_spec(model)
    folder = resolve_model(spec.hub_id, offline_source=spec.offline_source, revision=spec.revision)
    if not (folder / "modules.json").is_file():
        raise DistillError(f"{model}: {folder} is not a sentence-transformers folder (no modules.json); mining needs the model's "
                           "own pooling: give a sentence-transformers folder or export one with `distill export`")
    st = SentenceTransformer(str(folder), device=str(device or best_device()), trust_remote_code=spec.trust_remote_code,
                             truncate_dim=spec.truncate_dim)
    if spec.prompts is not None:  # the mapping's prompts replace the folder's, as the cache applies them
        st.prompts = {role: text for role, text in spec.prompts.items()}
    if spec.prompt_names:
        st.prompts = {**st.prompts, **{role: st.prompts[name] for role, name in spec.prompt_names.items() if name in st.prompts}}
    max_length = max_length or spec.max_length
    if max_length is not None:
        limit = folder_position_limit(folder)
        if max_length < 3 or (limit is not None and max_length > limit):
            raise DistillError(f"--max-length {max_length}: must be between 3 and {limit or 'the model limit'} for {model}")
        st.max_seq_length = max_length
    return st


def mine_rows(teacher: str, beir: str | Path, split: str = "dev", negatives: int = 4, *, max_length: int | None = None,
              batch_size: int = 64, relative_margin: float | None = 0.05, range_min: int = 0, range_max: int | None = None,
              device=None, embeddings_cache: str | Path | None = None, progress: bool = True) -> Mined:
    """Mine `negatives` hard negatives per judged (query, positive) pair of `split` with `teacher`."""
    check_training_split(split, f"distill mine --split {split}")
    if negatives < 1:
        raise DistillError(f"--negatives {negatives}: must be at least 1")
    _need_datasets()
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives

    data = load_training_split(beir, split)
    pairs = [(qid, doc) for qid in data.queries for doc, grade in data.qrels[qid].items() if grade > 0]
    missing = sorted({doc for _, doc in pairs if doc not in data.passages})
    if missing:
        raise DistillError(f"{beir}: qrels/{split} names passages that are not in the corpus: {', '.join(missing[:5])}")
    if not pairs:
        raise DistillError(f"{beir}: split {split!r} has no judged relevant passage (grade > 0)")
    # texts -> ids: the first passage (in corpus order) with a text, the first pair with a (query, positive)
    doc_of: dict[str, str] = {}
    for doc in data.passages:
        doc_of.setdefault(data.passage_text(doc), doc)
    pair_of: dict[tuple[str, str], int] = {}
    for i, (qid, doc) in enumerate(pairs):
        pair_of.setdefault((data.queries[qid], data.passage_text(doc)), i)

    model = load_sentence_transformer(teacher, max_length=max_length, device=device)
    dataset = Dataset.from_dict({"query": [data.queries[q] for q, _ in pairs], "positive": [data.passage_text(d) for _, d in pairs]})
    miner = mine_hard_negatives if progress else without_progress_bars(mine_hard_negatives)
    mined = miner(
        dataset, model, anchor_column_name="query", positive_column_name="positive",
        corpus=[data.passage_text(d) for d in data.passages], range_min=range_min, range_max=range_max,
        relative_margin=relative_margin, num_negatives=negatives, sampling_strategy="top", output_format="n-tuple",
        output_scores=True, batch_size=batch_size, verbose=progress,
        cache_folder=keyed_embeddings_cache(embeddings_cache, teacher, model),
    )

    def passage(doc: str) -> dict:
        title, text = data.passages[doc]
        return {"docid": doc, "title": title, "text": text}

    rows: list[tuple[int, dict]] = []
    pos_scores, neg_scores = [], []
    for rec in mined:
        i = pair_of[(rec["query"], rec["positive"])]
        qid, doc = pairs[i]
        negs = [doc_of[rec[f"negative_{k}"]] for k in range(1, negatives + 1)]
        if set(negs) & set(data.qrels[qid]):  # the miner's own guarantee, checked: a judged passage is never a negative
            raise DistillError(f"mining returned a judged passage of query {qid} as a negative: {sorted(set(negs) & set(data.qrels[qid]))}")
        rows.append((i, {"query_id": qid, "query": data.queries[qid], "positive_passages": [passage(doc)],
                         "negative_passages": [passage(d) for d in negs]}))
        pos_scores.append(rec["scores"][0])
        neg_scores.extend(rec["scores"][1:])
    rows.sort(key=lambda r: r[0])
    stats = {
        "teacher": str(teacher), "beir": str(beir), "split": split, "negatives": negatives, "max_length": int(model.max_seq_length),
        "relative_margin": relative_margin, "range_min": range_min, "range_max": range_max,
        "queries": len(data.queries), "pairs": len(pairs), "rows": len(rows), "pairs_without_enough_negatives": len(pairs) - len(rows),
        "queries_left_out_as_test_queries": sorted(data.dropped),
        "mean_positive_score": sum(pos_scores) / len(pos_scores) if pos_scores else None,
        "mean_negative_score": sum(neg_scores) / len(neg_scores) if neg_scores else None,
    }
    if not rows:
        raise DistillError(f"no pair of {beir} {split} kept {negatives} negatives: lower --negatives or --relative-margin")
    return Mined([r for _, r in rows], stats)


def write_rows(path: str | Path, rows: list[dict]) -> None:
    """The rows as JSONL (one object a line, UTF-8), written atomically."""
    import json

    from distill.io import write_text_atomic

    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


# --- the embeddings cache (--embeddings-cache DIR) ------------------------------------------------
# sentence-transformers' miner names its cached files by a hash of the texts, the prompts and the
# model's `model_card_data.base_model`, which a local folder leaves empty: a cache filled by one
# teacher, or at one length, was read back for another, and the output named the new teacher. So
# the miner gets DIR/teacher-<hash of `teacher_cache_key`>/, one folder per teacher and length, with
# the key written in it.

CACHE_KEY_FILE = "distill-teacher.json"
_CONFIG_SUFFIXES = (".json", ".txt", ".model")  # configs, tokenizer files, vocabularies, sentencepiece models


def teacher_cache_key(teacher: str, model) -> dict:
    """Everything that makes the teacher's vectors of a text what they are: its folder, its weights
    (`model_revision`), its configuration and tokenizer files (pooling, normalization, prompts,
    vocabulary), and the truncation length. The one place to switch to the loaded model's own
    identity when it has one."""
    from distill.data.cache import model_revision
    from distill.presets import teacher_spec
    from distill.resolve import resolve_model

    spec = teacher_spec(teacher)
    folder = resolve_model(spec.hub_id, offline_source=spec.offline_source, revision=spec.revision).resolve()
    prompts = dict(getattr(model, "prompts", None) or {})  # the prompts it encodes with (a mapping's replace the folder's)
    return {"teacher": str(folder), "weights": model_revision(folder), "config_files": _config_digest(folder),
            "max_length": int(model.max_seq_length), "query_prompt": None, "corpus_prompt": None,
            **({"prompts": prompts} if spec.prompts is not None or spec.prompt_names else {}),
            **({"truncate_dim": spec.truncate_dim} if spec.truncate_dim else {})}


def _config_digest(folder: Path) -> str:
    """sha256 over the folder's configuration and tokenizer files (name and bytes), not its weights."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in _CONFIG_SUFFIXES and "onnx" not in p.parts):
        h.update(f"{path.relative_to(folder)}\0".encode() + path.read_bytes() + b"\0")
    return f"sha256:{h.hexdigest()}"


def keyed_embeddings_cache(cache_dir: str | Path | None, teacher: str, model) -> str | None:
    """The folder under `cache_dir` the miner may cache this teacher's embeddings in (None: no cache).

    DIR/teacher-<16 hex digits of the key>/, made with the key in CACHE_KEY_FILE; an existing one
    whose key file differs (or is unreadable) is refused, naming the field."""
    if not cache_dir:
        return None
    from distill.io import write_json_atomic

    key = teacher_cache_key(teacher, model)
    folder = Path(cache_dir) / f"teacher-{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]}"
    key_file = folder / CACHE_KEY_FILE
    if not key_file.is_file():
        write_json_atomic(key_file, key)
        return str(folder)
    try:
        saved = json.loads(key_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DistillError(f"--embeddings-cache {cache_dir}: {key_file} cannot be read ({exc}); delete {folder} "
                           "(its embeddings are recomputed)") from None
    differ = [k for k in key if not isinstance(saved, dict) or saved.get(k) != key[k]]
    if differ:
        field_name = differ[0]
        raise DistillError(f"--embeddings-cache {cache_dir}: {folder} holds embeddings of another teacher or length "
                           f"({field_name}: {saved.get(field_name) if isinstance(saved, dict) else saved!r} there, {key[field_name]!r} now); "
                           f"delete {folder} (its embeddings are recomputed)")
    return str(folder)


def without_progress_bars(function):
    """`function` with every tqdm bar it opens disabled: the miner opens bars that no argument
    turns off (its encode calls pass show_progress_bar=True, its scoring loop a plain trange), and
    `verbose=False` only silences its statistics. Patched on tqdm's base class for the call's
    duration (every tqdm flavour calls its __init__), and restored after."""

    @functools.wraps(function)
    def quiet(*args, **kwargs):
        from tqdm import std

        original = std.tqdm.__init__

        def disabled(self, *a, **k):
            original(self, *a, **{**k, "disable": True})

        std.tqdm.__init__ = disabled
        try:
            return function(*args, **kwargs)
        finally:
            std.tqdm.__init__ = original

    return quiet
