"""`distill train`: distill a student from a cached frozen teacher. One readable loop.

    recipe -> teacher cache (built if missing) -> student tokens (once) -> length-grouped batches
           -> student forward (bf16 autocast on GPU) -> loss (owns its heads) -> AdamW + warmup/decay
           -> every N steps: STS-B dev, keep the best student, checkpoint
           -> end: the best student on the seven STS sets -> results.json / results.md

One GPU, CPU and torchrun (DDP) share this code path: under DDP each rank takes every
world-th batch and the contrastive losses gather their candidates across ranks.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import nn

from distill.data.cache import TeacherCache, add_pca, build_cache, teacher_identity
from distill.training.callbacks import Callback, JsonlLog, ProgressBar, WandbCallback, ib_summary
from distill.config import Recipe, saved_recipe_with_defaults
from distill.data.corpus import read_corpus
from distill.data.tokens import tokenize_corpus
from distill.data.batches import epoch_batches
from distill.encoder import Encoder
from distill.errors import DistillError
from distill.io import write_json_atomic, write_text_atomic
from distill.lock import folder_lock
from distill.losses import build_loss, loss_class
from distill.presets import load_teacher
from distill.eval.sts_data import load_sts
from distill.eval.sts import evaluate_sts, format_table, resolve_tasks, selection_task
from distill.training.student_folder import StudentEmbedder, save_student


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    step_in_epoch: int = 0
    total_steps: int = 0
    steps_per_epoch: int = 0
    best_score: float = -math.inf
    best_step: int = -1
    init_score: float | None = None  # the untrained student's selection score (collapse warning)
    sentences_seen: int = 0
    train_seconds: float = 0.0
    evals: list = field(default_factory=list)
    run_dir: str = ""


class DistillModule(nn.Module):
    """Stage 1: student + loss in one module, so DDP synchronizes the loss heads' gradients too."""

    def __init__(self, student: Encoder, loss: nn.Module):
        super().__init__()
        self.student, self.loss = student, loss

    def forward(self, input_ids, attention_mask, targets):
        out = self.student(input_ids, attention_mask, output_hidden_states=self.loss.needs_hidden_states)
        out["attention_mask"] = attention_mask
        return self.loss(out, targets)


class TripletModule(nn.Module):
    """Stage 2: one student forward over anchors, positives and negatives stacked (3n rows)."""

    def __init__(self, student: Encoder, loss: nn.Module):
        super().__init__()
        self.student, self.loss = student, loss

    def forward(self, input_ids, attention_mask, n: int):
        out = self.student(input_ids, attention_mask, output_hidden_states=self.loss.needs_hidden_states)

        def part(i):
            rows = slice(i * n, (i + 1) * n)
            d = {"embedding": out["embedding"][rows], "attention_mask": attention_mask[rows]}
            if "hidden_states" in out:
                d["hidden_states"] = tuple(h[rows] for h in out["hidden_states"])
            return d

        return self.loss(part(0), part(1), part(2))


@dataclass
class Stage:
    """What differs between stage 1 (teacher cache) and stage 2 (triplets); the loop is shared."""

    name: str
    run_dir: Path
    module: nn.Module  # DistillModule or TripletModule
    lengths: np.ndarray  # one per training row (a triplet's longest sentence in stage 2)
    make_batch: object  # rows -> (args for module.forward)
    sentences_per_row: int  # sentences per row: 1, or 3 for a triplet
    train: object  # TrainConfig
    meta: dict


def _distributed() -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    rank = dist.get_rank() if dist.is_initialized() else 0
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    return rank, world, device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def _rng_state() -> dict:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def _set_rng_state(s: dict) -> None:
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def open_or_build_cache(recipe: Recipe, progress: bool = True) -> TeacherCache:
    """The recipe's teacher cache; built when missing (needs data.corpus), refused when it disagrees."""
    spec = load_teacher(recipe.teacher)
    if not recipe.data.cache_dir:
        raise DistillError("data.cache_dir is not set: name the folder of the teacher cache")
    cache_dir = Path(recipe.data.cache_dir)
    if not recipe.data.corpus:
        # no corpus named: trust the cache's own, but still check the teacher
        return TeacherCache.open(cache_dir, expect=teacher_identity(spec))
    corpus = read_corpus(recipe.data.corpus, column=recipe.data.column, max_sentences=recipe.data.max_sentences)
    if (cache_dir / "manifest.json").is_file():
        return TeacherCache.open(cache_dir, expect={**teacher_identity(spec), "corpus_sha256": corpus.sha256}, corpus=corpus)
    targets = loss_class(recipe.loss["name"]).targets(recipe.loss)
    pca = targets[1] if targets != "teacher" else None
    return build_cache(spec, corpus, cache_dir, pca=pca, progress=progress)


def _targets(recipe: Recipe, cache: TeacherCache, device: torch.device) -> torch.Tensor:
    """Teacher vectors as one tensor, on the GPU when they fit in a quarter of its free memory."""
    targets = loss_class(recipe.loss["name"]).targets(recipe.loss)
    if targets != "teacher":  # ("pca", k)
        k = int(targets[1])
        if not cache.has_pca(k):  # missing, another k, or fitted on un-normalized vectors (before 2026-11-25)
            cache = add_pca(cache, k)
        matrix = cache.pca_targets(k)
    else:
        matrix = cache.embeddings
    t = torch.from_numpy(np.array(matrix))  # a private copy: the cache stays read-only
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if t.numel() * t.element_size() < free // 4:
            return t.to(device)
        return t.pin_memory()
    return t.float()


PREPARE_SAMPLE = 2048  # sentences whose untrained embeddings initialise a loss's heads (HPD: 5x its 385 unknowns)


@torch.no_grad()
def _prepare_loss(loss, student: Encoder, tokens, targets: torch.Tensor, seed: int, device: torch.device, batch: int = 256) -> None:
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


def _damaged_checkpoint(path: Path, exc: BaseException) -> DistillError:
    return DistillError(f"{path}: damaged or not this run's checkpoint ({type(exc).__name__}: {str(exc)[:200]}); "
                        f"--resume cannot continue from it: restore it from a copy, or move it away and train again without --resume")


def _load_checkpoint(path: Path) -> dict:
    import pickle

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, AttributeError, ImportError) as exc:
        raise _damaged_checkpoint(path, exc) from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("recipe"), dict):
        raise _damaged_checkpoint(path, ValueError("no recipe in it"))
    return ckpt


def _collapse_warnings(state: TrainState, tcfg) -> list[str]:
    """A run whose best selection score is below the untrained student's made the student worse."""
    if state.init_score is None or not state.best_score < state.init_score:
        return []
    return [f"the best selection score {state.best_score:.2f} (step {state.best_step}) is below the untrained student's "
            f"{state.init_score:.2f}: training made the student worse (a collapse; is train.lr={tcfg.lr:g} too high?)"]


def _optimizer(module: nn.Module, tcfg, device: torch.device) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "LayerNorm" in name or "norm" in name.lower() else decay).append(p)
    groups = [{"params": decay, "weight_decay": tcfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    kwargs = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(groups, lr=tcfg.lr, **kwargs)


def _autocast(tcfg, device: torch.device):
    if device.type != "cuda" or tcfg.precision == "fp32":
        return nullcontext()
    if tcfg.precision == "bf16" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cuda", dtype=torch.float16)


def train(recipe: Recipe, *, resume: bool = False, progress: bool = True, callbacks: list[Callback] | None = None) -> dict:
    """Run a recipe (stage 1, then stage 2 when it names triplets); returns OUTPUT_DIR/results.json's dict.

    The run folder is locked (distill/lock.py) by the main process for the whole run: a second
    run into the same output.dir is refused at once instead of mixing its files with this one's.
    """
    rank = int(os.environ.get("RANK", "0"))
    owns_group = not dist.is_initialized()
    if rank != 0:
        results = _train(recipe, resume=resume, progress=progress, callbacks=callbacks)
    else:
        with folder_lock(recipe.output.dir, "run folder"):
            results = _train(recipe, resume=resume, progress=progress, callbacks=callbacks)
    if owns_group and dist.is_initialized():
        # Leave together, then tear down: a rank that closes its gloo connections while a peer
        # still reads from them aborts that peer ("terminate called", SIGABRT), and a process
        # that exits with the group alive can abort in interpreter shutdown.
        dist.barrier()
        dist.destroy_process_group()
    return results


def _train(recipe: Recipe, *, resume: bool, progress: bool, callbacks: list[Callback] | None) -> dict:
    rank, world, device = _distributed()
    main_process = rank == 0
    run_dir = Path(recipe.output.dir)
    if resume and not (run_dir / "checkpoint.pt").is_file():
        raise DistillError(f"--resume: no checkpoint at {run_dir / 'checkpoint.pt'}")
    if not resume and (run_dir / "checkpoint.pt").is_file():
        raise DistillError(f"{run_dir} already holds a run (checkpoint.pt): pass --resume to continue it, or choose another output.dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    if main_process:
        write_text_atomic(run_dir / "recipe.yaml", yaml.safe_dump(recipe.to_dict(), sort_keys=False))
    seed_everything(recipe.train.seed)

    # Rank 0 builds what is shared on disk (cache, PCA, tokens); the others wait, then read it.
    if not main_process:
        dist.barrier()
    cache = open_or_build_cache(recipe, progress=progress and main_process)
    sentences = cache.sentences()
    student = Encoder.load(recipe.student, max_length=recipe.data.max_length, device=device, role="student")
    targets = _targets(recipe, cache, device)
    loss = build_loss(recipe.loss, student_dim=student.dim, teacher_dim=int(targets.shape[1])).to(device)
    if hasattr(loss, "fit_targets") and recipe.loss.get("standardize") == "zscore":
        loss.fit_targets(targets.float())
    tokens = tokenize_corpus(student.tokenizer, sentences, recipe.data.max_length, cache.path, progress=progress and main_process)
    if main_process and world > 1:
        dist.barrier()
    if loss.needs_prepare and not resume:  # on --resume the checkpoint restores the heads
        _prepare_loss(loss, student, tokens, targets, recipe.train.seed, device)

    def stage1_batch(rows):
        ids, mask = tokens.collate(rows)
        tgt = targets[torch.from_numpy(rows).to(targets.device)].to(device, non_blocking=True).float()
        return ids.to(device, non_blocking=True), mask.to(device, non_blocking=True), tgt

    meta = {"teacher": recipe.teacher, "student": recipe.student, "loss": recipe.loss, "cache": str(cache.path),
            "cache_count": len(cache), "recipe": recipe.to_dict()}
    stage1 = Stage("stage1", run_dir, DistillModule(student, loss).to(device), tokens.lengths, stage1_batch, 1, recipe.train, meta)
    stage1_done = (run_dir / "results.json").is_file() and (run_dir / "stage2").exists()
    results = _run_stage(stage1, recipe, rank, world, device, resume, progress, callbacks) if not stage1_done else json.loads((run_dir / "results.json").read_text())
    if not recipe.stage2.triplets:
        return results

    # Stage 2 starts from stage 1's final student (the authors' choice; stage2.init: best takes the
    # one selected on STS-B dev instead), with its own loss, schedule and run folder.
    from distill.losses import IBKDSupervisedLoss
    from distill.training.student_folder import load_student as _load
    from distill.data.triplets import read_triplets

    s2 = recipe.stage2
    s2_dir = run_dir / "stage2"
    if not main_process:
        dist.barrier()
    student2, _, _ = _load(run_dir / s2.init, device=device)
    student2.max_length = recipe.data.max_length
    triplets = read_triplets(s2.triplets, s2.columns, s2.subset, s2.max_triplets)
    flat = [t[0] for t in triplets] + [t[1] for t in triplets] + [t[2] for t in triplets]
    s2_dir.mkdir(parents=True, exist_ok=True)
    tok2 = tokenize_corpus(student2.tokenizer, flat, recipe.data.max_length, s2_dir, progress=progress and main_process)
    if main_process and world > 1:
        dist.barrier()
    n_trip = len(triplets)
    lengths2 = np.maximum.reduce([tok2.lengths[:n_trip], tok2.lengths[n_trip : 2 * n_trip], tok2.lengths[2 * n_trip :]])

    def stage2_batch(rows):
        ids, mask = tok2.collate(np.concatenate([rows, rows + n_trip, rows + 2 * n_trip]))
        return ids.to(device, non_blocking=True), mask.to(device, non_blocking=True), len(rows)

    loss2 = IBKDSupervisedLoss(student2.dim, None, **s2.loss).to(device)
    meta2 = {**meta, "loss": {"name": "ibkd_supervised", **s2.loss}, "stage": 2, "init": s2.init, "triplets": s2.triplets, "triplet_count": n_trip}
    stage2 = Stage("stage2", s2_dir, TripletModule(student2, loss2).to(device), lengths2, stage2_batch, 3, s2.train, meta2)
    resume2 = resume and (s2_dir / "checkpoint.pt").is_file()
    results2 = _run_stage(stage2, recipe, rank, world, device, resume2, progress, callbacks, baselines=False)
    if main_process:
        results2["stage1"] = {k: results[k] for k in ("best", "best_step", "best_dev", "steps", "train_sentences_per_s")}
        results2["warnings"] = [f"stage 1: {w}" for w in results.get("warnings", [])] + [f"stage 2: {w}" for w in results2.get("warnings", [])]
        if "baselines" in results:
            results2["baselines"] = results["baselines"]
        write_json_atomic(s2_dir / "results.json", results2)
    return results2


def _run_stage(stage: Stage, recipe: Recipe, rank: int, world: int, device: torch.device, resume: bool, progress: bool,
               callbacks: list[Callback] | None, baselines: bool = True) -> dict:
    from transformers import get_linear_schedule_with_warmup

    main_process = rank == 0
    run_dir, tcfg, module = stage.run_dir, stage.train, stage.module
    ckpt_file = run_dir / "checkpoint.pt"
    model = nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None) if world > 1 else module
    bs, accum = tcfg.batch_size, tcfg.grad_accum
    steps_per_epoch = len(epoch_batches(stage.lengths, bs, tcfg.seed, 0, batching=recipe.data.batching)) // world // accum
    if steps_per_epoch < 1:
        raise DistillError(f"{stage.name}: {len(stage.lengths)} rows give no full step of {bs} x {accum} x {world} ranks")
    total = tcfg.max_steps or math.ceil(tcfg.epochs * steps_per_epoch)
    optimizer = _optimizer(module, tcfg, device)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(tcfg.warmup_ratio * total), total)
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" and tcfg.precision == "fp16" else None
    state = TrainState(total_steps=total, steps_per_epoch=steps_per_epoch, run_dir=str(run_dir))
    if resume:
        ckpt = _load_checkpoint(ckpt_file)
        saved = saved_recipe_with_defaults(ckpt["recipe"])  # a key added since the run started takes its default
        if saved != recipe.to_dict():
            diff = [k for k in recipe.to_dict() if saved.get(k) != recipe.to_dict()[k]]
            raise DistillError(f"--resume: the recipe differs from the checkpoint's in {', '.join(diff)}")
        try:
            module.student.transformer.load_state_dict(ckpt["student"])
            module.loss.load_state_dict(ckpt["loss"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            state = TrainState(**{**ckpt["state"], "run_dir": str(run_dir)})
            _set_rng_state(ckpt["rng"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise _damaged_checkpoint(ckpt_file, exc) from None

    dev_tasks = resolve_tasks(recipe.eval.tasks)
    final_tasks = resolve_tasks(recipe.eval.final_tasks)
    sts = {t: load_sts(t, recipe.eval.sts_dir) for t in dict.fromkeys(dev_tasks + final_tasks)} if main_process else {}

    def evaluate(tasks, head: bool = True):
        embed = StudentEmbedder(module.student, module.loss.embedding_head() if head else None)
        scores = evaluate_sts(lambda s: embed(s, batch_size=recipe.eval.batch_size), tasks=tasks, data=sts, progress=False)
        module.train()
        return scores

    def save_checkpoint():
        if not main_process:
            return
        payload = {
            "student": module.student.transformer.state_dict(), "loss": module.loss.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": _rng_state(),
            "state": {k: v for k, v in dataclasses.asdict(state).items() if k != "run_dir"}, "recipe": recipe.to_dict(),
        }
        tmp = ckpt_file.with_name(".checkpoint.pt.tmp")
        torch.save(payload, tmp)
        os.replace(tmp, ckpt_file)  # atomic: a kill leaves the previous checkpoint intact

    def run_eval():
        if not main_process:
            return
        scores = evaluate(dev_tasks)
        key = selection_task(scores)  # STS-B-dev, or STS-B-zh-dev for a Chinese recipe
        state.evals.append({"step": state.step, "epoch": state.epoch, **scores})
        if scores[key] > state.best_score:
            state.best_score, state.best_step = scores[key], state.step
            save_student(run_dir / "best", module.student, module.loss, {**stage.meta, "step": state.step, "selected_by": key, "score": scores[key]})
        for cb in cbs:
            cb.on_evaluate(state, scores)

    cbs: list[Callback] = []
    if main_process:
        cbs += [ProgressBar(progress, desc=stage.name), JsonlLog(run_dir)]
        if recipe.output.wandb:
            cbs.append(WandbCallback(recipe.output.wandb_project, recipe.to_dict(), run_dir, name=f"{run_dir.name}-{stage.name}"))
    cbs += list(callbacks or [])
    for cb in cbs:
        cb.on_train_begin(state)

    baselines_file = run_dir / "baselines.json"
    if main_process and baselines and recipe.eval.baselines and not baselines_file.is_file():
        teacher_enc = Encoder.load(recipe.teacher, device=device, role="teacher")
        scores = {
            "teacher": evaluate_sts(teacher_enc, tasks=final_tasks, data=sts, batch_size=recipe.eval.batch_size, progress=False),
            "init": evaluate(final_tasks, head=False),  # an untrained head (HPD) would only add noise
        }
        del teacher_enc
        write_json_atomic(baselines_file, scores)

    def check_finite(bad: torch.Tensor, since: int):
        # One host sync per check, not per step: the flag accumulates on the device.
        if bool(bad):
            best = run_dir / "best"
            raise DistillError(
                f"{stage.name}: the loss became nan or inf between steps {since + 1} and {state.step}: stopped; "
                + (f"the last good checkpoint is {ckpt_file}" if ckpt_file.is_file() else "no checkpoint was written yet")
                + (f" and the best student is in {best}" if (best / "distill_student.json").is_file() else ", no best student yet")
                + "; try a lower train.lr"
            )

    if main_process and state.step == 0 and state.init_score is None:
        init = evaluate(dev_tasks, head=False)  # the untrained student, to notice a run that makes it worse
        state.init_score = init[selection_task(init)]

    module.train()
    amp = _autocast(tcfg, device)
    log_every = 10
    bad = torch.zeros((), dtype=torch.bool, device=device)
    checked_at = state.step
    sums: dict[str, torch.Tensor] = {}  # loss parts summed on the device since the last log
    summed = 0
    metrics: dict[str, float] = {}
    while state.step < total:
        batches = epoch_batches(stage.lengths, bs, tcfg.seed, state.epoch, batching=recipe.data.batching)[rank::world][: steps_per_epoch * accum]
        while state.step_in_epoch < steps_per_epoch and state.step < total:
            t0 = time.perf_counter()
            for micro in range(accum):
                args = stage.make_batch(batches[state.step_in_epoch * accum + micro])
                sync = nullcontext() if (world == 1 or micro == accum - 1) else model.no_sync()
                with sync:
                    with amp:
                        parts = model(*args)
                    value = parts["loss"]
                    bad |= ~torch.isfinite(value.detach())
                    (scaler.scale(value / accum) if scaler else value / accum).backward()
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + v.detach().float() / accum
            if scaler:
                scaler.unscale_(optimizer)
            if tcfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(module.parameters(), tcfg.grad_clip)
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            summed += 1
            state.step += 1
            state.step_in_epoch += 1
            state.sentences_seen += bs * accum * world * stage.sentences_per_row
            epoch_end = state.step_in_epoch == steps_per_epoch
            evaluating = state.step % recipe.eval.every_steps == 0 or epoch_end or state.step == total
            if state.step % log_every == 0 or evaluating:
                check_finite(bad, checked_at)  # synchronizes with the device: timing is honest here
                checked_at = state.step
                metrics = {k: float(v) / summed for k, v in sums.items()}
                sums.clear()
                summed = 0
            state.train_seconds += time.perf_counter() - t0
            metrics.update(lr=scheduler.get_last_lr()[0], sentences_per_s=state.sentences_seen / max(state.train_seconds, 1e-9))
            for cb in cbs:
                cb.on_step_end(state, metrics)
            if evaluating:
                run_eval()
                if epoch_end:
                    state.epoch += 1
                    state.step_in_epoch = 0
                save_checkpoint()
            if world > 1:
                dist.barrier()

    results = {}
    if main_process:
        save_student(run_dir / "final", module.student, module.loss, {**stage.meta, "step": state.step})
        from distill.training.student_folder import load_student as _load

        best_enc, best_meta, heads = _load(run_dir / "best", device=device)
        head = module.loss.embedding_head()
        if head is not None:  # put the best step's head weights in place
            module.loss.load_state_dict(heads)
        best_scores = evaluate_sts(lambda s: StudentEmbedder(best_enc, head)(s, batch_size=recipe.eval.batch_size), tasks=final_tasks, data=sts, progress=False)
        results = {
            "best": best_scores, "best_step": state.best_step, "best_dev": state.best_score, "steps": state.step,
            "dev_task": selection_task(dev_tasks),
            "train_sentences_per_s": state.sentences_seen / max(state.train_seconds, 1e-9),
            "sentences": len(stage.lengths) * stage.sentences_per_row, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "evals": state.evals, "embedding_dim": best_meta["embedding_dim"],
            "params": sum(p.numel() for p in best_enc.transformer.parameters()) + (sum(p.numel() for p in head.parameters()) if head is not None else 0),
            "peak_gpu_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        }
        if baselines_file.is_file():
            results["baselines"] = json.loads(baselines_file.read_text())
        results["init_dev"] = state.init_score
        results["warnings"] = _collapse_warnings(state, tcfg)
        ib = ib_summary(run_dir / "log.jsonl")  # does the IB term act? (losses with an HSIC term)
        if ib:
            results["ib"] = ib
        write_json_atomic(run_dir / "results.json", results)
        write_text_atomic(run_dir / "results.md", format_table(best_scores, title=f"{recipe.student} ({stage.meta['loss']['name']})") + "\n"
                          + "".join(f"\n**Warning:** {w}\n" for w in results["warnings"]))
        for cb in cbs:
            cb.on_train_end(state, results)
    if world > 1:
        dist.barrier()
    return results
