"""What the two training stages feed the loop: a module (student + loss), row lengths and a batch maker.

    stage 1: teacher cache (built if missing) -> targets (teacher vectors, or their PCA-k when the
             loss asks for it) -> the student's tokens of the cache's sentences (tokenized once)
    stage 2: rows of texts (anchor, positive, negatives...; IBKD's NLI triplets), tokenized once,
             from stage 1's final (or best) student, with a stage-2 loss named in the recipe

The loop (trainer.py) is the same for both: only `Stage` differs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from distill.config import Recipe
from distill.data.cache import TeacherCache, add_pca, build_cache, teacher_identity
from distill.data.corpus import read_corpus
from distill.data.tokens import tokenize_corpus
from distill.errors import DistillError
from distill.losses import build_loss, loss_class
from distill.models import load_student
from distill.presets import TeacherSpec, teacher_spec
from distill.student import EmbeddingModel
from distill.training.distributed import barrier, together, world_size

PREPARE_SAMPLE = 2048  # sentences whose untrained embeddings initialise a loss's heads (HPD: 5x its 385 unknowns)


@dataclass
class Stage:
    """What differs between stage 1 (teacher cache) and stage 2 (rows of texts); the loop is shared."""

    name: str
    run_dir: Path
    module: nn.Module  # DistillModule or RowsModule
    lengths: np.ndarray  # one per training row (in stage 2 its longest text)
    make_batch: object  # rows -> (args for module.forward)
    sentences_per_row: int  # 1 in stage 1; a stage-2 row's width (2 + its negatives)
    train: object  # TrainConfig
    meta: dict


class DistillModule(nn.Module):
    """Stage 1: student + loss in one module, so DDP synchronizes the loss heads' gradients too."""

    def __init__(self, student: EmbeddingModel, loss: nn.Module):
        super().__init__()
        self.student, self.loss = student, loss

    def forward(self, input_ids, attention_mask, targets):
        out = self.student(input_ids, attention_mask, output_hidden_states=self.loss.needs_hidden_states)
        out["attention_mask"] = attention_mask
        return self.loss(out, targets)


class RowsModule(nn.Module):
    """Stage 2: the rows' anchors in one student forward, the other columns (positives, then each
    negative column) stacked column by column in a second, split into `width` parts for the loss.

    Two forwards, each padded to its own longest text, because the anchor column is often much
    shorter than the rest: a retrieval row is a ~30-token query beside five 256-token passages,
    and one forward padded every query to 256 (about a sixth of a SciFact step's tokens). Padding
    does not change a vector (masked attention, masked pooling; test_rows checks it in float64)."""

    def __init__(self, student: EmbeddingModel, loss: nn.Module, width: int):
        super().__init__()
        self.student, self.loss, self.width = student, loss, int(width)

    def forward(self, anchor_ids, anchor_mask, rest_ids, rest_mask, n: int):
        if anchor_ids.shape[0] != n or rest_ids.shape[0] != (self.width - 1) * n:
            raise DistillError(f"stage 2: a batch of {anchor_ids.shape[0]} anchors and {rest_ids.shape[0]} other texts is not "
                               f"{self.width} columns of {n} rows")
        hidden = self.loss.needs_hidden_states
        outs = [self.student(ids, mask, output_hidden_states=hidden) for ids, mask in ((anchor_ids, anchor_mask), (rest_ids, rest_mask))]
        rest = [rows_part(outs[1], rest_mask, slice(i * n, (i + 1) * n)) for i in range(self.width - 1)]
        return self.loss(rows_part(outs[0], anchor_mask), *rest)


def rows_part(out: dict, mask, rows: slice = slice(None)) -> dict:
    """The loss input of some rows of a student forward: their embeddings, mask and hidden states."""
    d = {"embedding": out["embedding"][rows], "attention_mask": mask[rows]}
    if "hidden_states" in out:
        d["hidden_states"] = tuple(h[rows] for h in out["hidden_states"])
    return d


def recipe_teacher(recipe: Recipe) -> TeacherSpec:
    """The teacher (a preset, hub id, folder or mapping) as the recipe's cache encodes with it: at
    data.teacher_max_length when set (the manifest pins the length, so a cache of another length is
    refused, naming max_length)."""
    spec = teacher_spec(recipe.teacher)
    length = recipe.data.teacher_max_length
    return spec if length is None else dataclasses.replace(spec, max_length=length)


def open_or_build_cache(recipe: Recipe, progress: bool = True, device=None) -> TeacherCache:
    """The recipe's teacher cache; built when missing (needs data.corpus), refused when it disagrees.

    Under torchrun every rank calls it: a missing cache is built by all of them, each encoding its
    share of the shards on its `device` (data/cache.py: build_cache), and a complete one is checked
    by rank 0 against the corpus while the others wait (then all open it; nothing is written)."""
    spec = recipe_teacher(recipe)
    if not recipe.data.cache_dir:
        raise DistillError("data.cache_dir is not set: name the folder of the teacher cache")
    cache_dir = Path(recipe.data.cache_dir)
    if not recipe.data.corpus:
        # no corpus named: trust the cache's own, but still check the teacher
        return TeacherCache.open(cache_dir, expect=teacher_identity(spec))
    def open_checked() -> TeacherCache:  # the corpus's identity is enough: counted and hashed, not stored
        corpus = read_corpus(recipe.data.corpus, column=recipe.data.column, max_sentences=recipe.data.max_sentences, keep_text=False,
                             progress=progress)
        return TeacherCache.open(cache_dir, expect={**teacher_identity(spec), **corpus.identity()}, corpus=corpus)

    complete = (cache_dir / "manifest.json").is_file()
    if world_size() > 1:  # rank 0's view decides; a complete cache is only read (it may be on a read-only mount)
        complete = together(lambda: complete, only=0)[0]
        if complete:
            together(lambda: len(open_checked()), only=0)  # rank 0 checks it against the corpus, the others wait
            return TeacherCache.open(cache_dir)
    if complete:
        return open_checked()
    return build_cache(spec, recipe.data.corpus, cache_dir, pca=_pca_dim(recipe), column=recipe.data.column,
                       max_sentences=recipe.data.max_sentences, progress=progress, device=device)


def _pca_dim(recipe: Recipe) -> int | None:
    wanted = loss_class(recipe.loss["name"]).targets(recipe.loss)
    return int(wanted[1]) if wanted != "teacher" else None


def load_targets(recipe: Recipe, cache: TeacherCache, device: torch.device) -> torch.Tensor:
    """What the loss regresses on (teacher vectors or their PCA-k), float16, as one tensor: on the
    GPU when it fits in a quarter of the free memory, else pinned for fast copies; on a CPU the
    cache file itself, memory-mapped (a batch gathers its rows: memory does not grow with the corpus).
    Every user casts the rows it takes to float32 (float16 -> float32 is exact)."""
    k = _pca_dim(recipe)
    if k is not None:
        if not cache.has_pca(k):  # missing, another k, or fitted on un-normalized vectors (before 2026-11-25)
            cache = add_pca(cache, k)
        matrix = cache.pca_targets(k)
    else:
        matrix = cache.embeddings
    if device.type != "cuda":
        # copy-on-write map: writable as torch wants its arrays, the file never written
        return torch.from_numpy(np.load(matrix.filename, mmap_mode="c"))
    t = torch.from_numpy(np.array(matrix))  # a private copy: the cache stays read-only
    free, _ = torch.cuda.mem_get_info(device)
    return t.to(device) if t.numel() * t.element_size() < free // 4 else t.pin_memory()


@torch.no_grad()
def prepare_loss(loss, student: EmbeddingModel, tokens, targets: torch.Tensor, seed: int, device: torch.device, batch: int = 256) -> None:
    """Hand the loss the untrained student's embeddings of a seeded corpus sample (same on every rank)."""
    n = len(tokens.lengths)
    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(n, PREPARE_SAMPLE), replace=False))
    was_training = student.training
    student.eval()
    embs = []
    for i in range(0, len(rows), batch):
        ids, mask = tokens.collate(rows[i : i + batch])
        embs.append(student(ids.to(device), mask.to(device))["embedding"].float().cpu())
    student.train(was_training)
    loss.prepare(torch.cat(embs), targets[torch.from_numpy(rows).to(targets.device)].float().cpu())


def stage1(recipe: Recipe, run_dir: Path, rank: int, world: int, device: torch.device, resume: bool, progress: bool) -> Stage:
    """Student, loss and batches of stage 1. Every rank builds the teacher cache (its share of the
    shards); rank 0 then makes the other shared files (PCA, tokens) while the others wait."""
    main_process = rank == 0
    cache = open_or_build_cache(recipe, progress=progress and main_process, device=device)
    if not main_process:
        barrier(world)
        cache = TeacherCache.open(cache.path)  # as rank 0 left it (it may have added PCA targets)
    student = load_student(recipe.student, max_length=recipe.data.max_length, device=device, teacher=recipe.teacher,
                         cache_dir=cache.path, progress=progress and main_process)
    targets = load_targets(recipe, cache, device)
    loss = build_loss(recipe.loss, student_dim=student.dim, teacher_dim=int(targets.shape[1])).to(device)
    if loss.wants_all_targets:  # e.g. MSE's z-score statistics over the whole cache
        loss.fit_targets(targets)  # in chunks, each cast to float64
    tokens = tokenize_corpus(student.tokenizer, cache.sentences(), recipe.data.max_length, cache.path, progress=progress and main_process)
    if main_process:
        barrier(world)
    if loss.needs_prepare and not resume:  # on --resume the checkpoint restores the heads
        prepare_loss(loss, student, tokens, targets, recipe.train.seed, device)

    def make_batch(rows):
        ids, mask = tokens.collate(rows)
        tgt = targets[torch.from_numpy(rows).to(targets.device)].to(device, non_blocking=True).float()
        return ids.to(device, non_blocking=True), mask.to(device, non_blocking=True), tgt

    meta = {"teacher": recipe.teacher, "student": recipe.student, "loss": recipe.loss, "cache": str(cache.path),
            "cache_count": len(cache), "recipe": recipe.to_dict()}
    return Stage("stage1", run_dir, DistillModule(student, loss).to(device), tokens.lengths, make_batch, 1, recipe.train, meta)


def stage2(recipe: Recipe, run_dir: Path, meta1: dict, rank: int, world: int, device: torch.device, progress: bool) -> Stage:
    """The supervised stage, from stage 1's final student (IBKD's authors' choice; stage2.init:
    best takes the one selected on the dev task instead), with its own loss, schedule and run folder."""
    from distill.data.rows import read_rows
    from distill.saved_student import load_saved_student

    main_process = rank == 0
    s2 = recipe.stage2
    s2_dir = run_dir / "stage2"
    cls = loss_class(s2.loss["name"])
    if cls.stage != 2:
        raise DistillError(f"stage2.loss.name {cls.name!r}: not a stage-2 loss")
    if not main_process:
        barrier(world)
    student, init_meta, init_heads = load_saved_student(run_dir / s2.init, device=device)
    student.max_length = recipe.data.max_length
    rows = read_rows(s2.rows, s2.columns, s2.subset, s2.max_rows, s2.neg_samples)
    n, width = len(rows), len(rows[0])
    if width == 2 and s2.train.batch_size < 2:
        raise DistillError(f"stage2.train.batch_size {s2.train.batch_size}: rows without negatives contrast with the other "
                           "rows' positives only; a batch of one gives a loss of exactly 0")
    flat = [row[c] for c in range(width) for row in rows]  # column by column: text c of row i is at c * n + i
    s2_dir.mkdir(parents=True, exist_ok=True)
    tokens = tokenize_corpus(student.tokenizer, flat, recipe.data.max_length, s2_dir, progress=progress and main_process)
    if main_process:
        barrier(world)
    lengths = np.maximum.reduce([tokens.lengths[c * n : (c + 1) * n] for c in range(width)])

    def make_batch(batch):
        # anchors (column 0) padded apart from the other columns: RowsModule's two forwards
        anchor = tokens.collate(batch)
        rest = tokens.collate(np.concatenate([batch + c * n for c in range(1, width)]))
        return (*(t.to(device, non_blocking=True) for t in (*anchor, *rest)), len(batch))

    params = {k: v for k, v in s2.loss.items() if k != "name"}
    stage1_loss = init_meta.get("loss") or meta1.get("loss")  # none when stage 1 was not ours: no head to carry
    if stage1_loss and loss_class(stage1_loss["name"]).head_in_embedding(stage1_loss):
        # HPD's k-d head is what stage 1 serves: stage 2 trains on through it, from its stage-1 weights
        params["stage1_head"] = dict(stage1_loss)
    loss = build_loss({"name": cls.name, **params}, student.dim, None)  # builds the carried stage-1 loss too
    if loss.carried is not None:
        loss.carried.load_state_dict(init_heads)
    loss = loss.to(device)
    meta = {**meta1, "loss": {"name": cls.name, **params}, "stage": 2, "init": s2.init, "rows": s2.rows, "row_count": n, "row_width": width}
    return Stage("stage2", s2_dir, RowsModule(student, loss, width).to(device), lengths, make_batch, width, s2.train, meta)
