"""A static student: a token-embedding table, mean-pooled. No transformer at all.

    sentence -> the teacher's tokenizer, without [CLS]/[SEP] -> the table's rows -> their mean

This is what model2vec and sentence-transformers' `StaticEmbedding` serve (an nn.EmbeddingBag in
"mean" mode), at many times the sentences/s of a 3-layer MiniLM on a CPU (BENCHMARKS.md, static students). The export is a plain
sentence-transformers folder whose first module is a `StaticEmbedding`, so `SentenceTransformer(DIR)`
loads it without this package; its tokenizer.json has no truncation and no special tokens, as
`StaticEmbedding` tokenizes (add_special_tokens=False, no length limit), so both give one vector.

Init (`init: distill`, the preset's): the teacher's output for every vocabulary token (the
sentence "[CLS] token [SEP]" through the teacher, pooled as its preset says), PCA to `dim`, then
SIF/Zipf weights, the way model2vec distills (`distill_table`). Written with torch and the teacher
we already load rather than by calling model2vec: the table must use the teacher exactly as the
recipe's preset defines it (pooling, normalization, the offline folder), keep the teacher's token
ids (model2vec rebuilds the vocabulary), and needs no extra dependency; model2vec itself is the
baseline in benchmarks/static_students.py. The table is computed once per (teacher, dim,
weighting) and kept beside the teacher cache. `init: random` starts from N(0, 1/dim).

IBKD's X (the input side of HSIC(X, S)): the mean over the sentence's tokens of a FROZEN random
Gaussian token table (`INPUT_FEATURES` wide, seeded), returned as the one "hidden state". Not the
student's own table: its mean is S itself, and HSIC(S, S) is minimized by collapsing S. Not the
initial table either: penalizing dependence on it would push S away from its distilled start. A
fixed random feature map of the bag of tokens is a faithful stand-in for "the input" (different
token bags get nearly orthogonal features), so HSIC(X, S) measures how much of the surface form S
keeps, which is what the bottleneck term is meant to penalize.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from distill.errors import DistillError
from distill.io import atomic_path
from distill.student import EmbeddingModel, best_device

INPUT_FEATURES = 128  # width of the frozen random token features that stand for the input (IBKD's X)
INPUT_FEATURES_SEED = 0
SIF_COEFFICIENT = 1e-4  # model2vec's default: weight = a / (a + p(token)), p from Zipf's law on the token's rank
# Tokens that never occur in text (BERT's [unusedN] and the specials the tokenizer adds itself): no
# row is distilled for them (a zero vector), as model2vec drops them from its vocabulary.
SKIPPED_TOKEN = re.compile(r"^\[unused\d+\]$")
# "No truncation", as StaticEmbedding tokenizes: a length no line reaches (it was 1,000,000 tokens,
# and a longer line was cut there silently), never a position limit: a table has no positions.
NO_LIMIT = 2**31 - 1
# The length named in a kept init table's key (cached_distill_table): the former NO_LIMIT, so tables
# computed before stay valid; the table does not depend on any length.
_TABLE_KEY_LENGTH = 1_000_000


def static_tokenizer(folder: str | Path):
    """The teacher folder's fast tokenizer without its post-processor (no [CLS]/[SEP]), no
    truncation and no padding: exactly how `StaticEmbedding` tokenizes."""
    from tokenizers import Tokenizer, processors

    file = Path(folder) / "tokenizer.json"
    if not file.is_file():
        raise DistillError(f"{folder}: no tokenizer.json; a static student needs a fast (Rust) tokenizer file")
    backend = Tokenizer.from_file(str(file))
    return _wrap(_plain(backend, processors))


def _plain(backend, processors):
    backend.post_processor = processors.TemplateProcessing(single="$A", pair="$A $B")
    backend.no_truncation()
    backend.no_padding()
    return backend


def _wrap(backend):
    from transformers import PreTrainedTokenizerFast

    vocab = backend.get_vocab()
    pad = next((t for t in ("[PAD]", "<pad>", "<PAD>") if t in vocab), None)
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token=pad, model_max_length=NO_LIMIT)
    if tok.pad_token_id is None:  # the padding id only fills masked positions, which forward never reads
        tok.pad_token_id = 0
    return tok


def _skipped_ids(tokenizer) -> list[int]:
    vocab = tokenizer.get_vocab()
    specials = {t for t in (tokenizer.cls_token, tokenizer.sep_token, tokenizer.mask_token, "[CLS]", "[SEP]", "[MASK]", "<s>", "</s>", "<mask>") if t}
    return sorted(i for t, i in vocab.items() if SKIPPED_TOKEN.match(t) or t in specials)


def input_features(vocab_size: int, width: int = INPUT_FEATURES, seed: int = INPUT_FEATURES_SEED) -> torch.Tensor:
    """The frozen random token table whose per-sentence mean is IBKD's X (module docstring)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(vocab_size, width, generator=g) / width**0.5


class StaticStudent(EmbeddingModel):
    """nn.EmbeddingBag(mean) over the token ids of a sentence (no special tokens)."""

    kind = "static"
    pooling = "mean"  # of its token rows (EmbeddingBag "mean")
    normalize = False  # the pooled vector enters the losses as it is; export appends Normalize

    def __init__(self, tokenizer, table: torch.Tensor | np.ndarray, max_length: int = NO_LIMIT):
        super().__init__()
        table = torch.as_tensor(np.asarray(table, dtype=np.float32)) if not isinstance(table, torch.Tensor) else table.float()
        if table.ndim != 2 or table.shape[0] < len(tokenizer.get_vocab()):
            raise DistillError(f"a static student's table must have a row per token ({len(tokenizer.get_vocab())}), got shape {tuple(table.shape)}")
        self.tokenizer = tokenizer
        self.embedding = nn.EmbeddingBag.from_pretrained(table.clone(), freeze=False, mode="mean")
        # A saved student of an earlier version records max_length 1,000,000, its "no truncation" then.
        self.max_length = NO_LIMIT if int(max_length) >= _TABLE_KEY_LENGTH else int(max_length)
        # X of IBKD's HSIC term; not a parameter, not saved (a seeded function of the vocabulary size)
        self.register_buffer("features", input_features(table.shape[0]), persistent=False)

    # ------------------------------------------------------------------------- the protocol

    @property
    def dim(self) -> int:
        return int(self.embedding.embedding_dim)

    @property
    def max_positions(self) -> int:
        return NO_LIMIT  # no position embeddings: StaticEmbedding does not truncate either

    def forward(self, input_ids, attention_mask, output_hidden_states: bool = False) -> dict:
        mask = attention_mask.bool()
        lengths = mask.sum(1)
        offsets = torch.zeros_like(lengths)
        offsets[1:] = lengths.cumsum(0)[:-1]
        out = {"embedding": self.embedding(input_ids[mask], offsets)}  # an empty sentence: a zero vector
        if output_hidden_states:
            out["hidden_states"] = (self.features[input_ids],)  # masked and mean-pooled by the loss
        return out

    def weights(self) -> dict[str, torch.Tensor]:
        return {"embedding.weight": self.embedding.weight}

    def no_weight_decay(self) -> list[nn.Parameter]:
        # A row gets a gradient only when its token is in the batch; weight decay would shrink the
        # rows of every token the corpus never shows, which must keep their init.
        return [self.embedding.weight]

    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        weight = state.get("embedding.weight")
        if weight is None or tuple(weight.shape) != tuple(self.embedding.weight.shape):
            got = "no embedding.weight" if weight is None else f"shape {tuple(weight.shape)}"
            raise DistillError(f"static student weights: expected embedding.weight of shape {tuple(self.embedding.weight.shape)}, got {got}")
        with torch.no_grad():
            self.embedding.weight.copy_(weight)

    def save(self, folder: Path) -> None:
        """A sentence-transformers folder holding one StaticEmbedding module (modules.json,
        model.safetensors with "embedding.weight", tokenizer.json): it loads in plain
        sentence-transformers, and `load_folder` reads it back."""
        from safetensors.torch import save_file

        folder = Path(folder)
        save_file({"embedding.weight": self.embedding.weight.detach().float().cpu().contiguous()}, str(folder / "model.safetensors"))
        # A copy without the truncation and padding the transformers wrapper set on the backend at
        # its last call (training's data.max_length): StaticEmbedding tokenizes with the file's settings.
        backend = copy.deepcopy(self.tokenizer.backend_tokenizer)
        backend.no_truncation()
        backend.no_padding()
        backend.save(str(folder / "tokenizer.json"))
        (folder / "modules.json").write_text(json.dumps([{"idx": 0, "name": "0", "path": "", "type": ST_STATIC_TYPE}], indent=2) + "\n")

    def st_modules(self, folder: Path, max_seq_length: int) -> list:
        from sentence_transformers.sentence_transformer.modules import StaticEmbedding

        return [StaticEmbedding(self.tokenizer.backend_tokenizer, embedding_weights=self.embedding.weight.detach().float().cpu().clone())]

    # ------------------------------------------------------------------------- building

    @classmethod
    def load_folder(cls, folder: str | Path, max_length: int | None = None, device=None) -> StaticStudent:
        """A sentence-transformers folder whose first module is a StaticEmbedding (ours, or model2vec's
        weights as sentence-transformers reads them: per-token weights and a token mapping folded in)."""
        from safetensors.torch import load_file
        from sentence_transformers.sentence_transformer.modules import StaticEmbedding

        folder = Path(folder)
        module_dir = folder / json.loads((folder / "modules.json").read_text())[0].get("path", "")
        if not (module_dir / "tokenizer.json").is_file():
            raise DistillError(f"{module_dir}: no tokenizer.json; a static model folder needs its tokenizer file")
        weights_file = module_dir / "model.safetensors"
        if not weights_file.is_file():
            raise DistillError(f"{module_dir}: no model.safetensors")
        state = load_file(str(weights_file))
        if "embedding.weight" in state:
            table = state["embedding.weight"]
        elif "embeddings" in state:  # model2vec's own layout
            table = StaticEmbedding._fold_model2vec_weights(state["embeddings"], state.get("mapping"), state.get("weights"))
        else:
            raise DistillError(f"{weights_file}: neither embedding.weight nor embeddings in it (keys: {', '.join(state) or 'none'})")
        from tokenizers import Tokenizer, processors

        tokenizer = _wrap(_plain(Tokenizer.from_file(str(module_dir / "tokenizer.json")), processors))
        student = cls(tokenizer, table.float(), max_length=max_length or NO_LIMIT)
        student.source = str(folder)
        return student.to(device or best_device()).eval()

    @classmethod
    def from_spec(cls, spec, teacher: str, max_length: int | None = None, device=None, cache_dir: str | Path | None = None,
                  progress: bool = True) -> StaticStudent:
        """A new static student as its preset says: the tokenizer of `spec.tokenizer` (or the
        teacher's), the table from `distill_table` (init: distill; computed once and kept in
        `cache_dir`, the teacher cache) or random (init: random)."""
        from distill.presets import model_name, teacher_spec
        from distill.resolve import resolve_model

        t_spec = teacher_spec(teacher)
        teacher = model_name(teacher)
        if spec.tokenizer is None:
            tok_folder = resolve_model(t_spec.hub_id, offline_source=t_spec.offline_source, revision=t_spec.revision)
        else:
            tok_folder = resolve_model(spec.tokenizer)
        tokenizer = static_tokenizer(tok_folder)
        vocab_size = len(tokenizer.get_vocab())
        if spec.init == "random":
            g = torch.Generator().manual_seed(0)
            table = torch.randn(vocab_size, spec.dim, generator=g) / spec.dim**0.5
        else:
            table = torch.from_numpy(cached_distill_table(t_spec, tokenizer, spec.dim, spec.weighting, cache_dir=cache_dir,
                                                          progress=progress))
        student = cls(tokenizer, table, max_length=max_length or NO_LIMIT)
        student.source = f"{spec.name} (from {teacher})"
        return student.to(device or best_device()).eval()


ST_STATIC_TYPE = "sentence_transformers.sentence_transformer.modules.static_embedding.StaticEmbedding"


def cached_distill_table(teacher_spec, tokenizer, dim: int, weighting: str, cache_dir: str | Path | None = None,
                         batch_size: int = 512, progress: bool = True) -> np.ndarray:
    """`distill_table`, kept: from `cache_dir/static/<key>.npy` when an identical one was computed
    before (key: teacher identity, tokenizer, dim, weighting), else computed and kept there."""
    from distill.data.cache import V1_IDENTITY_KEYS, teacher_identity
    from distill.data.tokens import tokenizer_fingerprint

    ident = teacher_identity(teacher_spec)
    # the table is the teacher's vector of each bare token (no prompt, full width): keyed on what changes
    # that, with the keys of tables kept before the identity grew (prompts, modules...) when those are the defaults
    if not ident["truncate_dim"] and ident["teacher_dtype"] == "fp32" and "Dense" not in ident["modules"]:
        ident = {k: ident[k] for k in V1_IDENTITY_KEYS}
    key = hashlib.sha256(json.dumps([ident, tokenizer_fingerprint(tokenizer, _TABLE_KEY_LENGTH), dim, weighting],
                                    sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir) / "static" / f"{key}.npy" if cache_dir else None
    if path is not None and path.is_file():
        table = _load_table(path)
        if table.shape == (len(tokenizer.get_vocab()), dim):
            return table
    table = distill_table(teacher_spec, tokenizer, dim, weighting, batch_size=batch_size, progress=progress)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, table)
    return table


def _load_table(path: Path) -> np.ndarray:
    """A kept init table, or one line naming it when it does not read as a float array (written
    atomically, so damage came from elsewhere: a disk error, a copy cut short, another file)."""
    try:
        table = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DistillError(f"{path}: a damaged static init table ({str(exc).splitlines()[0][:200] or type(exc).__name__}); "
                           "delete it and it is computed again") from None
    if not isinstance(table, np.ndarray) or table.ndim != 2 or table.dtype.kind != "f" or not np.isfinite(table).all():
        raise DistillError(f"{path}: a damaged static init table (not a finite 2-d float array); delete it and it is computed again")
    return table


@torch.inference_mode()
def distill_table(teacher_spec, tokenizer, dim: int, weighting: str = "zipf", batch_size: int = 512, progress: bool = True,
                  device=None) -> np.ndarray:
    """model2vec's distillation with our teacher: for every vocabulary token t, the teacher's
    sentence vector of "[CLS] t [SEP]" (its preset's pooling and normalization); PCA (centered, the
    top `dim` components, each component's sign fixed so its largest coordinate is positive) fitted
    on those vectors; with weighting "zipf", row i scaled by a / (a + p_i), p_i = (1 / rank_i) /
    sum_j (1 / rank_j) over the kept tokens in vocabulary order (WordPiece vocabularies are roughly
    frequency-sorted; Zipf's law), a = SIF_COEFFICIENT. Skipped tokens ([unusedN], [CLS], [SEP],
    [MASK]) get zero rows."""
    import dataclasses

    from tqdm.auto import tqdm

    from distill.sentence_model import SentenceModel

    teacher = SentenceModel.load(dataclasses.replace(teacher_spec, max_length=8), device=device)
    t_tok = teacher.tokenizer
    if t_tok.get_vocab() != tokenizer.get_vocab():
        raise DistillError(f"the static student's tokenizer differs from the teacher {teacher_spec.name}'s: init: distill needs "
                           "the teacher's own tokens (leave the preset's tokenizer unset, or use init: random)")
    vocab_size = len(tokenizer.get_vocab())
    if not 1 <= dim <= min(teacher.dim, vocab_size):
        raise DistillError(f"static student dim {dim}: must be between 1 and the teacher's width {teacher.dim}")
    skipped = set(_skipped_ids(t_tok))
    kept = np.array([i for i in range(vocab_size) if i not in skipped])
    cls_id = t_tok.cls_token_id if t_tok.cls_token_id is not None else t_tok.bos_token_id
    sep_id = t_tok.sep_token_id if t_tok.sep_token_id is not None else t_tok.eos_token_id
    vectors = np.zeros((len(kept), teacher.dim), dtype=np.float64)
    bar = tqdm(total=len(kept), desc=f"static init ({teacher_spec.name} over its vocabulary)", unit="tok", disable=not progress, leave=False)
    for start in range(0, len(kept), batch_size):
        ids = torch.as_tensor(kept[start : start + batch_size])[:, None]
        parts = [torch.full_like(ids, cls_id)] if cls_id is not None else []
        parts += [ids] + ([torch.full_like(ids, sep_id)] if sep_id is not None else [])
        batch = torch.cat(parts, 1).to(teacher.device)
        vectors[start : start + len(ids)] = teacher(batch, torch.ones_like(batch))["embedding"].double().cpu().numpy()
        bar.update(len(ids))
    bar.close()
    centered = vectors - vectors.mean(0)
    _, _, vt = np.linalg.svd(centered, full_matrices=False)
    comps = vt[:dim]
    reduced = centered @ comps.T
    reduced *= np.sign(reduced[np.abs(reduced).argmax(0), np.arange(dim)])  # a deterministic sign per component
    if weighting == "zipf":
        p = 1.0 / np.arange(2, len(kept) + 2)  # rank 1.. of the kept tokens, offset as model2vec does
        p /= p.sum()
        reduced *= (SIF_COEFFICIENT / (SIF_COEFFICIENT + p))[:, None]
    table = np.zeros((vocab_size, dim), dtype=np.float32)
    table[kept] = reduced
    return table
