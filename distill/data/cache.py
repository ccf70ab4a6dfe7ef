"""The teacher embedding cache: the frozen teacher encodes the corpus once, every run reuses it.

A cache folder holds
  sentences.txt        the de-duplicated corpus, one sentence per line (row i = line i + 1), with
  sentence_offsets.npy its rows' byte offsets and roles.npy their roles (document / query): read
  roles.npy            by row index, never loaded whole (distill/data/sentence_store.py; a cache
                       made before these two files reads as all documents)
  embeddings.npy       float16 N x D, opened memory-mapped
  pca.npz, pca_K.npy   optional: PCA fitted on a sample of the L2-normalized teacher vectors
                       (mean, components, variance) and the N x K targets u @ components.T with
                       u = t / ||t|| (HPD's targets: normalized and uncentered, as its authors')
  manifest.json        teacher, pooling, normalize, dim, max length, corpus sha256, counts...;
                       written last, with "complete": true: a folder without it is not a cache
`distill cache --out DIR` writes only into a folder that is absent, empty, or already a cache
(complete, or an interrupted build): it never overwrites a user's own files. One build at a time
holds DIR/.distill.lock (distill/lock.py).
The corpus is read (streamed, de-duplicated) into .corpus.partial/ under the lock, then moved
into place once build.json agrees with it. While building, shards/NNNNN.npy (one per
`shard_size` rows) are written atomically next to a build.json that pins the build parameters,
so an interrupted build resumes at the first missing shard; the final matrix is assembled from
the shards at the end. A shard is encoded from its rows read by index (`_encode_shard`), so any
process can take any shard.
"""

from __future__ import annotations

import datetime as _dt
import errno
import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from distill.data.corpus import Corpus, read_corpus
from distill.data.sentence_store import ROLES, STORE_FILES, SentenceStore
from distill.errors import DistillError
from distill.io import atomic_path, write_json_atomic
from distill.lock import LOCK_NAME, folder_lock
from distill.presets import TeacherSpec, teacher_spec
from distill.resolve import resolve_model

# 2: the manifest records everything that changes the teacher's vectors (prompts, modules,
# truncate_dim, dtype: `teacher_identity`); a version-1 cache is read when its teacher had none of them
FORMAT_VERSION = 2
# the keys a version-1 manifest recorded of its teacher
V1_IDENTITY_KEYS = ("teacher", "teacher_model", "pooling", "normalize", "dim", "max_length")
STAGING = ".corpus.partial"  # the corpus being read, before build.json says it may replace the cache's
SHARED_CHECK = ".distill.shared"  # under torchrun, rank 0's nonce: every rank must read it back (a folder shared by all nodes)


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    with atomic_path(path, fixed=True) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def reserve_blocks(path: Path) -> None:
    """Allocate a (sparse) file's blocks now: a disk too small for it fails at once, with an OSError
    (ENOSPC) naming the cause, not after the work of filling it. (A memory map of a sparse file
    takes disk space page by page as it is written, and a full disk then kills the process with
    SIGBUS, "Bus error", no message, measured.)"""
    if not hasattr(os, "posix_fallocate"):  # macOS: no such call; the map is written as before
        return
    with open(path, "r+b") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):  # a file system without it: as before
                raise


def _damaged(path: Path, what: Path, exc: BaseException) -> DistillError:
    return DistillError(f"{what}: damaged ({type(exc).__name__}: {str(exc)[:200]}); delete the cache folder {path} "
                        "and build it again with `distill cache` (or point to another folder)")


def _read_json(path: Path, folder: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise _damaged(folder, path, exc) from None
    if not isinstance(data, dict):
        raise _damaged(folder, path, ValueError(f"expected a JSON object, got {type(data).__name__}"))
    return data


def _load_npy(path: Path, folder: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r")
    except (ValueError, OSError, EOFError) as exc:
        raise _damaged(folder, path, exc) from None


def check_cache_folder(out: Path) -> None:
    """Refuse to write a cache into a folder holding anything but a cache of ours."""
    if out.exists() and not out.is_dir():
        raise DistillError(f"cache folder {out}: exists and is not a folder")
    if not out.is_dir():
        return
    names = {p.name for p in out.iterdir()} - {LOCK_NAME, SHARED_CHECK}
    if names == {STAGING} and {p.name for p in (out / STAGING).iterdir()} <= _STAGED_NAMES:
        return  # only a corpus read that was killed: read again into it
    if not names:
        return
    for marker, keys in (("manifest.json", ("format_version", "corpus_sha256")), ("build.json", ("corpus_sha256", "shard_size"))):
        if marker in names:
            try:
                data = json.loads((out / marker).read_text(encoding="utf-8"))
            except (ValueError, OSError):
                data = None
            if isinstance(data, dict) and all(k in data for k in keys):
                return
            if marker == "manifest.json" and data is None:
                raise _damaged(out, out / marker, ValueError("not valid JSON"))
    raise DistillError(f"cache folder {out}: holds other files ({', '.join(sorted(names)[:5])}) and is not a teacher cache; "
                       "a cache is written only into a new or empty folder: choose another --out / data.cache_dir")


_STAGED_NAMES = set(STORE_FILES) | {f".{name}.tmp" for name in STORE_FILES}


def _corpus_detail(manifest: dict, corpus: Corpus | None) -> str:
    """Why two corpora differ, in words, when the manifest says enough."""
    if corpus is None:
        return ""
    if "max_sentences" in manifest and manifest["max_sentences"] != corpus.max_sentences:
        return f" (max_sentences is {manifest['max_sentences']} in the cache but {corpus.max_sentences} here)"
    if manifest.get("corpus_sources") != corpus.sources:
        return f" (the cache was built from {', '.join(manifest.get('corpus_sources') or ['?'])})"
    if manifest.get("count") != corpus.count:
        return (f" (the cache holds {manifest.get('count')} sentences, this corpus {corpus.count}: "
                "was max_sentences changed, or the files edited?)")
    return " (the files' contents changed)"


def _roles_detail(manifest: dict) -> str:
    """Why the rows' roles differ: a cache made before roles holds documents only."""
    if "corpus_roles_sha256" not in manifest:
        return (" (the cache was made before corpus rows had roles, so all its rows are documents, while this corpus "
                "gives some rows the query role: rebuild it)")
    return " (the same texts with other roles: a query:/document: source prefix or a beir: source's queries changed; rebuild it)"


def torch_device(device):
    import torch

    return device if isinstance(device, torch.device) else torch.device(device)


def model_revision(path: Path) -> str:
    """The hub commit when the folder is a huggingface_hub snapshot, else a hash of the weights."""
    if path.parent.name == "snapshots":
        return f"hub:{path.name}"
    weights = sorted(path.glob("*.safetensors")) or sorted(path.glob("pytorch_model*.bin"))
    h = hashlib.sha256()
    for w in weights:
        with open(w, "rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                h.update(block)
    return f"sha256:{h.hexdigest()}"


def teacher_identity(spec: TeacherSpec, folder: Path | None = None) -> dict:
    """What the teacher's vectors depend on (distill.sentence_model.describe), from its files: model,
    pooling, normalize, dim, max length, prompts by role, modules, truncate_dim, dtype. `folder`: the
    teacher's folder when already resolved."""
    from distill.resolve import local_model
    from distill.sentence_model import describe

    if not isinstance(spec, TeacherSpec):
        spec = teacher_spec(spec)
    if folder is None:
        # nothing is downloaded only to check a cache: a teacher not on this machine is checked on
        # what its spec says (a cache made elsewhere is reused without the teacher's files)
        try:
            folder = None if spec.revision else local_model(spec.hub_id, offline_source=spec.offline_source)
        except DistillError:
            folder = None
        if folder is None:
            return spec_identity(spec)
    return describe(spec, folder)


def spec_identity(spec: TeacherSpec) -> dict:
    """The identity keys a spec itself fixes (its unset fields are the folder's, unknown here)."""
    out = {"teacher": spec.name, "teacher_model": spec.hub_id, "teacher_dtype": spec.dtype, "truncate_dim": spec.truncate_dim}
    for key in ("pooling", "normalize", "dim", "max_length"):
        if getattr(spec, key) is not None:
            out[key] = getattr(spec, key)
    if spec.prompts is not None:
        out["prompts"] = {role: text for role, text in spec.prompts.items() if text}
    return out


def _v1_readable(manifest: dict, expect: dict) -> dict:
    """What a version-1 cache (made before prompts, modules, truncate_dim and dtype were recorded) is
    compared on: its own keys, when this teacher has none of the new settings; else a refusal."""
    new = [k for k in ("prompts", "truncate_dim") if expect.get(k)]
    if expect.get("teacher_dtype", "fp32") != "fp32":
        new.append("teacher_dtype")
    if "Dense" in (expect.get("modules") or []):
        new.append("modules")
    if new:
        raise DistillError(f"teacher cache {manifest.get('_path')}: made by an earlier version that did not record "
                           f"{', '.join(new)}, which this teacher sets; rebuild it (delete the folder, or point to a new one)")
    return {k: v for k, v in expect.items() if k in V1_IDENTITY_KEYS or k not in IDENTITY_KEYS}


# the keys teacher_identity gives
IDENTITY_KEYS = ("teacher", "teacher_model", "pooling", "normalize", "dim", "max_length", "prompts", "include_prompt", "modules",
                 "truncate_dim", "teacher_dtype")


@dataclass
class TeacherCache:
    """An opened, complete cache. `embeddings` is a read-only memory map (float16)."""

    path: Path
    manifest: dict
    embeddings: np.ndarray
    build_stats: dict | None = None  # set by build_cache: shards reused / encoded
    _store: SentenceStore | None = field(default=None, repr=False)

    @classmethod
    def open(cls, path: str | Path, expect: dict | None = None, corpus: Corpus | None = None) -> TeacherCache:
        """Open a complete cache; `expect` (e.g. teacher_identity(spec) + corpus_sha256) must agree.

        `corpus`: the corpus this run reads, to say in words why its sha256 differs.
        """
        path = Path(path)
        manifest_file = path / "manifest.json"
        if not manifest_file.is_file():
            hint = " (a build was interrupted: run `distill cache` again to resume it)" if (path / "build.json").is_file() else ""
            raise DistillError(f"{path}: not a complete teacher cache, no manifest.json{hint}")
        manifest = _read_json(manifest_file, path)
        if not manifest.get("complete"):
            raise DistillError(f"{manifest_file}: the cache is not marked complete")
        if not all(k in manifest for k in ("count", "dim")):
            raise _damaged(path, manifest_file, KeyError("count / dim missing"))
        expect = dict(expect or {})
        if manifest.get("format_version", 1) < 2 and any(k in expect for k in IDENTITY_KEYS):
            expect = _v1_readable({**manifest, "_path": path}, expect)
        for key, value in expect.items():
            if manifest.get(key) != value:
                detail = (_corpus_detail(manifest, corpus) if key == "corpus_sha256" else
                          _roles_detail(manifest) if key == "corpus_roles_sha256" else "")
                raise DistillError(
                    f"teacher cache {path} does not match this run: {key} is {manifest.get(key)!r} in the cache "
                    f"but {value!r} here{detail}; to build a new one, point --out / data.cache_dir to a new folder, "
                    f"or delete {path} (the tool made it) and run again"
                )
        emb = _load_npy(path / "embeddings.npy", path)
        if emb.shape != (manifest["count"], manifest["dim"]):
            raise DistillError(f"{path}/embeddings.npy has shape {emb.shape}, the manifest says {(manifest['count'], manifest['dim'])}")
        return cls(path, manifest, emb)

    def sentences(self) -> SentenceStore:
        """The cache's rows by index (`store[i]`, `store[a:b]`, `len`, `.roles`): read from disk as
        asked, never loaded whole. Row i is the sentence of embeddings[i]."""
        if self._store is None:
            self._store = SentenceStore.open(self.path, self.manifest["count"])
        return self._store

    def has_pca(self, k: int) -> bool:
        """PCA-k targets of the current kind (fitted on L2-normalized vectors) are stored."""
        pca = self.manifest.get("pca") or {}
        return pca.get("k") == k and bool(pca.get("normalized"))

    def pca_targets(self, k: int | None = None) -> np.ndarray:
        pca = self.manifest.get("pca")
        if not pca or (k is not None and not self.has_pca(k)):
            have = f"PCA to {pca['k']} dims" + ("" if pca.get("normalized") else " of un-normalized vectors") if pca else "no PCA"
            raise DistillError(f"teacher cache {self.path} has {have}; HPD asks for k={k}: rebuild with `distill cache --pca {k}`")
        return _load_npy(self.path / pca["targets"], self.path)

    def __len__(self) -> int:
        return int(self.manifest["count"])


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32; a zero row stays zero)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def fit_pca(matrix: np.ndarray, k: int, sample: int = 50_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean (D), components (k x D) and explained variance (k), fitted on a random sample of the
    L2-normalized rows.

    Both the HPD and the IBKD authors L2-normalize the teacher vectors before the PCA, whatever
    the teacher: a raw SimCSE pooler vector has a norm near 32, and its PCA coordinates would fall
    far outside the (-1, 1) range of HPD's tanh head. HPD's targets are `u @ components.T`
    (`pca_projection`): fitted on centered data like sklearn's PCA, but projected without
    subtracting the mean, as the HPD authors' code does (a bias-free linear layer holding
    `pca.components_`). The sample is random because a corpus is often several files in a row.
    """
    n, d = matrix.shape
    if not 0 < k <= min(d, n):
        raise DistillError(f"--pca {k}: must be between 1 and min(dim={d}, sentences={n})")
    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(sample, n), replace=False))
    x = unit_rows(matrix[rows]).astype(np.float64)
    mean = x.mean(0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    var = (s**2) / max(len(x) - 1, 1)
    return mean.astype(np.float32), vt[:k].astype(np.float32), var[:k].astype(np.float32)


def build_cache(
    teacher,
    corpus: list[str] | Corpus,
    out: str | Path,
    *,
    pca: int | None = None,
    column: str | None = None,
    max_sentences: int | None = None,
    batch_size: int = 256,
    shard_size: int = 16384,
    device=None,
    progress: bool = True,
    encoder=None,
    precision: str | None = None,
) -> TeacherCache:
    """Encode the corpus with the teacher exactly as sentence-transformers would; resume an interrupted build.

    `teacher`: a preset name, hub id, folder, mapping or TeacherSpec (distill.presets.teacher_spec,
    read once here); the model folder is resolved once, or taken from `encoder` (an already loaded
    SentenceModel: its `.source`). Each row is encoded with its role's prompt (query / document).

    `precision` is the GPU autocast of the teacher's forward pass: default the spec's dtype, "fp32"
    unless set, as the IBKD authors compute their targets; "bf16" encodes faster on a GPU (the
    stored matrix is float16 either way). The manifest records what ran.

    Under torchrun (a torch.distributed group of more than one process, started before this call)
    it is a collective: every rank calls it with the same arguments, and the ranks share the
    shards (`_build_ranks`); the result is the same bytes as one process's build.
    """
    for name, value in (("shard_size", shard_size), ("batch_size", batch_size), ("pca", pca), ("max_sentences", max_sentences)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise DistillError(f"--{name.replace('_', '-')} {value}: must be a whole number of at least 1")
    spec = teacher_spec(teacher)  # read once: the build uses `spec` only
    if precision is not None and precision != spec.dtype:
        import dataclasses

        spec = dataclasses.replace(spec, dtype=precision)
    out = Path(out)
    from distill.training.distributed import world_size

    if world_size() > 1:
        return _build_ranks(spec, corpus, column, max_sentences, out, pca, batch_size, shard_size, device, progress, encoder)
    with _locked_folder(out):
        plan = _prepare(spec, corpus, column, max_sentences, out, pca, shard_size, device, progress, encoder)
        if isinstance(plan, TeacherCache):  # complete and matching: reused
            return plan
        _announce(spec, plan, 1)
        bar = tqdm(total=plan.count, initial=plan.reused_rows, desc=f"cache {spec.name}", unit="sent", disable=not progress)
        store = SentenceStore.open(out, plan.count)
        _encode_shards(spec, store, plan, plan.todo, encoder, batch_size, bar, plan.model_path, plan.device)
        store.close()
        bar.close()
        return _finish(plan, pca, {"shards": plan.n_shards, "shards_reused": plan.n_shards - len(plan.todo),
                                   "shards_encoded": len(plan.todo)})


@contextmanager
def _locked_folder(out: Path):
    """Hold the cache folder's lock (checked before and under it); a folder this call made and
    left holding nothing but the lock (a corpus that failed to read) is removed on the way out."""
    check_cache_folder(out)  # before reading the corpus: a wrong --out fails at once
    made_folder = not out.exists()
    try:
        with folder_lock(out, "teacher cache"):
            check_cache_folder(out)  # again, under the lock
            yield
    except BaseException:
        if made_folder and out.is_dir() and {p.name for p in out.iterdir()} <= {LOCK_NAME}:
            shutil.rmtree(out, ignore_errors=True)  # nothing but our lock: a failed read leaves no folder behind
        raise


@dataclass
class _Plan:
    """A build set up in its folder (corpus in place, build.json pinned): what a process needs to
    encode shards of it and, at the end, to write the manifest. Picklable: under torchrun rank 0
    makes it and every rank gets a copy."""

    out: Path
    shards: Path
    count: int
    shard_size: int
    identity: dict  # the teacher's and the corpus's, as the manifest records them
    precision: str  # what runs: build.json pins it
    todo: list[int]  # shard numbers not on disk yet
    corpus_meta: dict  # the corpus's fields of the manifest
    summary: str
    model_path: Path  # the teacher's folder (rank 0's under torchrun)
    device: str

    @property
    def n_shards(self) -> int:
        return (self.count + self.shard_size - 1) // self.shard_size

    @property
    def reused_rows(self) -> int:
        return self.count - self.rows(self.todo)

    def rows(self, shards: list[int]) -> int:
        return sum(min(self.shard_size, self.count - i * self.shard_size) for i in shards)


def _prepare(spec, corpus: list[str] | Corpus, column, max_sentences, out: Path, pca, shard_size: int, device, progress: bool,
             encoder) -> TeacherCache | _Plan:
    """Under the folder's lock: a complete cache that matches is reused (PCA added when asked),
    else the corpus is read into the folder and the build started or resumed: its `_Plan`."""
    from distill.encoder import best_device
    from distill.precision import PRECISIONS

    complete = (out / "manifest.json").is_file()
    staged = not isinstance(corpus, Corpus)
    if not staged and corpus.sentences is None and not complete:
        raise DistillError(f"the corpus {', '.join(corpus.sources)} was read for its identity only (keep_text=False): "
                           "a cache needs its rows; pass the sources, or a corpus read with its rows")
    if staged:  # a complete cache needs the corpus's identity only; a build, its rows (read into the folder, then moved)
        corpus = read_corpus(list(corpus), column=column, max_sentences=max_sentences, folder=None if complete else out / STAGING,
                             keep_text=not complete, progress=progress)
    try:
        if not corpus.count:
            raise DistillError(f"the corpus {', '.join(corpus.sources)} holds no sentence after dropping empty lines")
        # The teacher's folder, resolved once from the spec (not again from its name, for the identity,
        # the encoder and the manifest's revision: each lookup re-read the preset and could ask the hub).
        model_path = _model_path(spec, encoder)
        identity = {**teacher_identity(spec, model_path), **corpus.identity()}
        if complete:
            cache = TeacherCache.open(out, expect=identity, corpus=corpus)  # refuses a mismatched one, with the field
            if pca and not cache.has_pca(pca):
                return add_pca(cache, pca)
            print(f"[distill] teacher cache {out} is complete and matches: reused", flush=True)
            return cache
        precision = spec.dtype
        if precision not in PRECISIONS:
            raise DistillError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        run_device = torch_device(encoder.device if encoder is not None else (device or best_device()))
        # What really runs: CPU has no reduced-precision autocast. Pinned in build.json, so a resumed
        # build never mixes shards of two precisions (or of two corpora: the sha256 is in `identity`).
        params = {**identity, "count": corpus.count, "shard_size": shard_size,
                  "precision": precision if run_device.type == "cuda" else "fp32"}
        shards = _start_or_resume(out, params)
        _install_store(corpus.sentences, out, move=staged)
    finally:
        if staged:
            corpus.close()
            shutil.rmtree(out / STAGING, ignore_errors=True)
    meta = {"corpus_sources": corpus.sources, "max_sentences": corpus.max_sentences, "count": corpus.count, "read": corpus.read,
            "dropped_empty": corpus.dropped_empty, "dropped_duplicates": corpus.dropped_duplicates}
    return _Plan(out, shards, corpus.count, shard_size, identity, params["precision"], missing_shards(shards, corpus.count, shard_size),
                 meta, corpus.summary(), model_path, str(run_device))


def _model_path(spec, encoder) -> Path:
    return Path(encoder.source) if encoder is not None else resolve_model(spec.hub_id, offline_source=spec.offline_source,
                                                                          revision=spec.revision)


def _announce(spec, plan: _Plan, ranks: int) -> None:
    reused = plan.n_shards - len(plan.todo)
    if reused:
        print(f"[distill] resuming {plan.out}: {reused} of {plan.n_shards} shards already encoded", flush=True)
    if not plan.todo:
        return
    where = f"{ranks} processes ({plan.device} on rank 0)" if ranks > 1 else plan.device
    # The teacher's pass is the long pole of a run (all-MiniLM-L6-v2 over the 164,834-sentence corpus:
    # about 10 minutes on 2 CPU cores, against about a minute for a static student's epoch): say so up front.
    print(f"[distill] teacher {spec.name} encodes {plan.count - plan.reused_rows:,} sentences on {where}: the slow step, done once "
          "(every later run and loss reuses this cache; an interrupted build resumes from its last shard)", flush=True)


def _finish(plan: _Plan, pca, stats: dict, revision: str | None = None) -> TeacherCache:
    """Every shard is on disk: assemble the matrix, fit the PCA when asked, write the manifest last
    and remove the shards. `revision`: the teacher's, when already computed."""
    left = missing_shards(plan.shards, plan.count, plan.shard_size)
    if left:
        raise DistillError(f"{plan.shards}: shards {', '.join(f'{i:05d}' for i in left[:5])} missing after the encoding; "
                           "run the same command again to encode them")
    out = plan.out
    _assemble(out / "embeddings.npy", plan.shards, plan.count, plan.shard_size, plan.identity["dim"])
    manifest = {
        "format_version": FORMAT_VERSION,
        **plan.identity,
        "teacher_revision": revision or model_revision(plan.model_path),
        **plan.corpus_meta,
        "dtype": "float16",
        "precision": plan.precision,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "pca": None,
        "complete": False,
    }
    cache = TeacherCache(out, manifest, np.load(out / "embeddings.npy", mmap_mode="r"))
    if pca:
        manifest["pca"] = _write_pca(cache, pca)
    # Only now is it a cache: manifest.json with complete=true is written last.
    manifest["complete"] = True
    write_json_atomic(out / "manifest.json", manifest)
    shutil.rmtree(plan.shards)
    (out / "build.json").unlink()
    print(f"[distill] teacher cache {out}: {plan.summary}, {plan.identity['dim']}-d float16", flush=True)
    cache = TeacherCache.open(out)
    cache.build_stats = stats
    return cache




def _build_ranks(spec, corpus, column, max_sentences, out: Path, pca, batch_size: int, shard_size: int, device, progress: bool,
                 encoder) -> TeacherCache:
    """build_cache as a collective of every rank of the torch.distributed group.

    1. every rank: the build's arguments and the teacher's spec, compared with rank 0's (an error
       naming the field, on every rank, before anything is read or encoded);
    2. rank 0: the folder's lock (held to the end), the corpus read into the folder, the build
       started or resumed (build.json), and a nonce file; the others wait;
    3. every rank reads the nonce back (else: the folder is not on a shared filesystem); a
       complete cache is opened by all and returned;
    4. every rank checks its own teacher's files (identity and weights' revision) and device type
       against rank 0's, then encodes the missing shards i with i % world == rank (read by index,
       written atomically: the same function and batches as one process, so the same bytes), adding
       its rows to a counter in the group's store: rank 0's bar shows the sum;
    5. rank 0 assembles the matrix and writes the manifest; every rank opens the cache.
    A rank that fails at any step makes every rank raise (distributed.all_ranks), none waits forever.
    A killed rank makes the others fail at the next collective (torchrun stops them); the shards
    written so far stay, and any number of processes resumes the build.
    """
    import socket
    import time
    from contextlib import ExitStack

    import torch.distributed as dist

    from distill.training.distributed import all_ranks, same_on_every_rank, together

    rank, world = dist.get_rank(), dist.get_world_size()
    sources = list(corpus.sources) if isinstance(corpus, Corpus) else [str(s) for s in corpus]
    same_on_every_rank({**spec_identity(spec), "corpus_sources": sources, "column": column, "max_sentences": max_sentences,
                        "shard_size": shard_size, "batch_size": batch_size, "pca": pca},
                       "every rank must build the same cache: the same teacher, corpus and options")
    lock, model_path, made_folder = ExitStack(), None, rank == 0 and not out.exists()
    try:
        def prepare():
            lock.enter_context(_locked_folder(out))
            lock.callback((out / SHARED_CHECK).unlink, missing_ok=True)  # runs first: the nonce goes, then the lock
            plan = _prepare(spec, corpus, column, max_sentences, out, pca, shard_size, device, progress, encoder)
            nonce = f"{os.urandom(16).hex()} {socket.gethostname()}"
            (out / SHARED_CHECK).write_text(nonce, encoding="utf-8")
            return (None if isinstance(plan, TeacherCache) else plan), nonce

        plan, nonce = together(prepare, only=0)[0]
        together(lambda: _check_shared(out, nonce))
        if rank == 0:
            (out / SHARED_CHECK).unlink(missing_ok=True)
        if plan is None:  # complete and matching (rank 0 checked it against its corpus)
            return TeacherCache.open(out)

        def same_teacher():
            nonlocal model_path
            if rank == 0:
                model_path = plan.model_path
                return model_revision(model_path)
            model_path = _model_path(spec, encoder)
            here = {**teacher_identity(spec, model_path), "teacher_revision": model_revision(model_path),
                    "device": torch_device(encoder.device if encoder is not None else (device or _best_device())).type}
            there = {**plan.identity, "device": torch_device(plan.device).type}
            for key, value in here.items():
                if key != "teacher_revision" and key in there and there[key] != value:
                    raise DistillError(f"rank {rank} disagrees with rank 0 on {key}: {value!r} here, {there[key]!r} on rank 0; "
                                       "every rank must encode with the same teacher files, settings and device type")
            return here["teacher_revision"]

        revisions = together(same_teacher)
        for r, rev in enumerate(revisions):
            if rev != revisions[0]:
                raise DistillError(f"rank {r} disagrees with rank 0 on teacher_revision: {rev!r} there, {revisions[0]!r} on rank 0 "
                                   "(the teacher's weights differ); every rank must encode with the same teacher files")
        if rank == 0:
            _announce(spec, plan, world)
        mine = plan.todo[rank::world]
        key = f"distill/cache/{nonce.split()[0]}/rows"
        bar = _RanksBar(key, tqdm(total=plan.count, initial=plan.reused_rows, desc=f"cache {spec.name}", unit="sent",
                                  disable=not progress) if rank == 0 else None, plan.reused_rows)
        error, started = None, time.perf_counter()
        try:
            if mine:
                store = SentenceStore.open(out, plan.count)
                run_device = encoder.device if encoder is not None else (device or _best_device())
                _encode_shards(spec, store, plan, mine, encoder, batch_size, bar, model_path, run_device)
                store.close()
            print(f"[distill] rank {rank} of {world} ({socket.gethostname()}): encoded {len(mine)} of {plan.n_shards} shards "
                  f"({plan.rows(mine):,} sentences) in {time.perf_counter() - started:.1f} s", flush=True)
        except Exception as exc:  # every rank still meets at the barrier: the error is shared below
            error = exc
        waiting = dist.barrier(async_op=True)
        while not waiting.is_completed():  # rank 0's bar moves with the other ranks' shards meanwhile
            time.sleep(0.2)
            bar.poll()
        waiting.wait()
        bar.close()
        encoded = all_ranks(len(mine), error)
        stats = {"shards": plan.n_shards, "shards_reused": plan.n_shards - len(plan.todo), "shards_encoded": len(plan.todo),
                 "shards_by_rank": encoded}
        together(lambda: _finish(plan, pca, stats, revisions[0]).path, only=0)
        cache = TeacherCache.open(out)
        cache.build_stats = stats
        return cache
    finally:
        lock.close()  # rank 0: its nonce, then its lock
        if made_folder and out.is_dir() and {p.name for p in out.iterdir()} <= {LOCK_NAME}:
            shutil.rmtree(out, ignore_errors=True)  # as one process: a failed read leaves no folder behind


def _best_device():
    from distill.encoder import best_device

    return best_device()


def _check_shared(out: Path, nonce: str) -> None:
    """This rank must read rank 0's nonce in the cache folder: else the folder is not the same one
    on every node. A network filesystem may show a new file late: waited for DISTILL_SHARED_WAIT_S
    seconds (default 30)."""
    import socket
    import time

    deadline = time.monotonic() + float(os.environ.get("DISTILL_SHARED_WAIT_S", "30"))
    while True:
        try:
            if (out / SHARED_CHECK).read_text(encoding="utf-8") == nonce:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
        os.listdir(out) if out.is_dir() else None  # a directory read revalidates a network filesystem's cache
    raise DistillError(f"cache folder {out}: this rank (on {socket.gethostname()}) does not see the file {SHARED_CHECK} that rank 0 "
                       f"(on {nonce.split()[-1]}) wrote there; under torchrun the cache folder must be on a filesystem shared by "
                       "every node (NFS, Lustre, ...), at the same path on each: rank 0 reads the corpus into it and every rank "
                       "writes its shards there")


class _RanksBar:
    """One bar for every rank's rows: each rank adds the rows it encodes to a counter in the
    process group's store (torchrun's TCPStore); rank 0's bar shows `start` + the counter. Without a
    store (a group started without one) rank 0 counts its own rows only."""

    def __init__(self, key: str, bar, start: int):
        from distill.training.distributed import group_store

        self.key, self.bar, self.start = key, bar, start
        self.store = group_store()

    def update(self, n: int) -> None:
        if self.store is None:
            if self.bar is not None:
                self.bar.update(n)
            return
        self._show(self.store.add(self.key, int(n)))

    def poll(self) -> None:
        if self.bar is not None and self.store is not None:
            self._show(self.store.add(self.key, 0))

    def _show(self, total: int) -> None:
        if self.bar is not None and self.start + total > self.bar.n:
            self.bar.update(self.start + total - self.bar.n)

    def close(self) -> None:
        self.poll()
        if self.bar is not None:
            self.bar.close()


def missing_shards(shards: Path, count: int, shard_size: int) -> list[int]:
    """The shard numbers of a `count`-row build whose file is not written yet."""
    return [i for i in range((count + shard_size - 1) // shard_size) if not (shards / f"{i:05d}.npy").is_file()]


def _encode_shards(spec, store: SentenceStore, plan: _Plan, todo: list[int], encoder, batch_size: int, bar, model_path: Path,
                   device) -> None:
    """Encode the shards `todo` of the plan (each written atomically), the teacher loaded from
    `model_path` on `device` unless `encoder` is given; `bar` moves batch by batch."""
    from distill.sentence_model import SentenceModel

    if not todo:
        return
    enc = encoder or SentenceModel.load(spec, folder=model_path, device=torch_device(device))
    for i in todo:
        _encode_shard(enc, store, i, plan.shard_size, plan.shards, batch_size, plan.precision, bar)


def _start_or_resume(out: Path, params: dict) -> Path:
    """The shards folder of this build: resumed when build.json pins the same parameters, refused
    when it pins others (naming them), started empty otherwise."""
    shards, build_file = out / "shards", out / "build.json"
    if build_file.is_file():
        previous = _read_json(build_file, out)
        # a key missing on one side counts as None: a build begun before corpus_roles_sha256 existed resumes
        diff = [k for k in {**previous, **params} if previous.get(k) != params.get(k)]
        if diff:
            why = "; the corpus is not the one this build began with, and shards of two corpora are never mixed" if "corpus_sha256" in diff else ""
            raise DistillError(f"{out} holds an interrupted build with other parameters ({', '.join(diff)} differ){why}: "
                               f"use another --out, or delete {out} (the tool made it) to start over")
    else:
        if shards.exists():
            shutil.rmtree(shards)
        write_json_atomic(build_file, params)
    shards.mkdir(exist_ok=True)
    return shards


def _install_store(store: SentenceStore, out: Path, move: bool) -> None:
    """The corpus store's files into the cache folder: renamed from the staging folder, else copied
    (a corpus read elsewhere), each atomically."""
    for name in STORE_FILES:
        if move:
            os.replace(store.folder / name, out / name)
        else:
            with atomic_path(out / name, fixed=True) as tmp:
                shutil.copyfile(store.folder / name, tmp)


def _encode_shard(encoder, store: SentenceStore, i: int, shard_size: int, shards: Path, batch_size: int, precision: str,
                  bar=None) -> None:
    """Shard i (rows i * shard_size onwards), its rows read by index, encoded, written atomically as float16."""
    start, stop = i * shard_size, min(len(store), (i + 1) * shard_size)
    emb = _encode_chunk(encoder, store.batch(start, stop), store.roles[start:stop], batch_size=batch_size, precision=precision, bar=bar)
    _save_npy_atomic(shards / f"{i:05d}.npy", np.asarray(emb).astype(np.float16))


def _encode_chunk(encoder, texts: list[str], roles: np.ndarray, *, batch_size: int, precision: str, bar=None) -> np.ndarray:
    """The teacher's (n, d) vectors of these rows: the one call through which a cache encodes.

    `roles` (uint8, 0 document / 1 query): each role's rows are encoded with its own prompt and
    route (SentenceModel.encode(role=...)); rows keep their places. The bar moves batch by batch: a
    shard is minutes of CPU, and a 16k corpus is one shard."""
    roles = np.asarray(roles)
    out = None
    serves_roles = getattr(encoder, "kind", "") == "sentence"  # a SentenceModel; another model encodes both alike
    for role, code in ROLES.items():
        rows = np.flatnonzero(roles == code)
        if not len(rows):
            continue
        by_role = {"role": role} if serves_roles else {}
        part = encoder.encode([texts[i] for i in rows], batch_size=batch_size, progress=False, precision=precision, bar=bar, **by_role)
        if out is None:
            out = np.empty((len(texts), part.shape[1]), dtype=np.float32)
        out[rows] = part
    return out


def _assemble(path: Path, shards: Path, n: int, shard_size: int, dim: int) -> None:
    """The N x dim float16 matrix from the shards, each checked for its shape, written atomically.

    Written shard after shard with plain writes, not through a memory map: the pages of a map
    being written stay in the process's resident set (N x dim x 2 bytes, 6 GB for 4M rows of a
    768-d teacher); these writes hold one shard at a time."""
    with atomic_path(path, fixed=True) as tmp, open(tmp, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float16)), "fortran_order": False,
                                                 "shape": (n, dim)})
        start = f.tell()
        f.truncate(start + n * dim * 2)
        f.flush()
        reserve_blocks(tmp)  # a disk too small for the matrix: ENOSPC now, before the shards are read
        for i in range((n + shard_size - 1) // shard_size):
            file = shards / f"{i:05d}.npy"
            try:
                part = np.load(file)
            except (ValueError, OSError, EOFError) as exc:
                raise DistillError(f"{file}: damaged ({exc}); delete it and run again to recompute it") from None
            if part.shape != (min(shard_size, n - i * shard_size), dim) or part.dtype != np.float16:
                raise DistillError(f"{file}: shape {part.shape} ({part.dtype}) does not fit row {i * shard_size}; delete it to recompute")
            f.write(np.ascontiguousarray(part).tobytes())
        f.flush()
        os.fsync(f.fileno())


def pca_projection(teacher: np.ndarray, components: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """HPD targets: the L2-normalized teacher rows times components.T (uncentered), float16, in
    chunks so a million-row cache is never copied to float32 whole."""
    out = np.empty((teacher.shape[0], components.shape[0]), dtype=np.float16)
    for start in range(0, teacher.shape[0], chunk):
        out[start : start + chunk] = unit_rows(teacher[start : start + chunk]) @ components.T
    return out


def _write_pca(cache: TeacherCache, k: int) -> dict:
    mean, comps, var = fit_pca(cache.embeddings, k)
    _save_npy_atomic(cache.path / f"pca_{k}.npy", pca_projection(cache.embeddings, comps))
    with atomic_path(cache.path / "pca.npz", fixed=True) as tmp, open(tmp, "wb") as f:
        np.savez(f, mean=mean, components=comps, explained_variance=var)
    return {"k": k, "file": "pca.npz", "targets": f"pca_{k}.npy", "sample": min(50_000, len(cache)), "normalized": True}


def add_pca(cache: TeacherCache, k: int) -> TeacherCache:
    """Fit and store PCA-k targets in an existing complete cache (HPD asks for them)."""
    with folder_lock(cache.path, "teacher cache"):
        manifest = dict(cache.manifest)
        manifest["pca"] = _write_pca(cache, k)
        write_json_atomic(cache.path / "manifest.json", manifest)
        return TeacherCache.open(cache.path)
