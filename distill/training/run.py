"""A recipe's run: the run folder (checked, locked, marked), `--resume` matched against the
checkpoint, stage 1 (training/stages.py builds it, training/loop.py's Trainer runs it), then
stage 2 from stage 1's student when the recipe names rows; returns results.json's dict.

    recipe -> run folder + lock -> stage 1: Stage -> Trainer.fit -> RUN/results.json
                                -> stage 2 (stage2.rows): Stage -> Trainer.fit -> RUN/stage2/results.json

One GPU, CPU and torchrun (DDP) share this code path.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

from distill.config import Recipe
from distill.errors import DistillError
from distill.io import write_json_atomic, write_text_atomic
from distill.lock import folder_lock
from distill.model_files import check_recipe_lengths
from distill.saved_student import stage_meta
from distill.training import checkpoint as ckpt_io
from distill.training.distributed import init_distributed, is_main_process_env, teardown
from distill.training.loop import Trainer
from distill.training.run_folder import check_run_folder, mark_run_folder
from distill.training.stages import stage1, stage2

# The recipe sections a finished stage 1 depends on: `--resume` of a run whose stage 1 is over may
# change the others (stage2, eval, output), so one stage 1 serves several stage-2 runs (copy the
# folder without stage2/, resume with another stage2.* or output.dir).
STAGE1_KEYS = ("teacher", "student", "loss", "data", "train")


def train(recipe: Recipe, *, resume: bool = False, progress: bool = True, callbacks: list | None = None) -> dict:
    """Run a recipe (stage 1, then stage 2 when it names rows); returns OUTPUT_DIR/results.json's dict.

    `callbacks`: `Callback`s (see training/callbacks.py, training/evaluators.py) or plain
    `fn(embed) -> dict` evaluators. The run folder is locked (distill/lock.py) by the main process
    for the whole run: a second run into the same output.dir is refused at once. A folder that is
    not new, empty or this tool's run folder is refused before anything is written (run_folder.py).
    """
    owns_group = not torch.distributed.is_initialized()
    check_run_folder(Path(recipe.output.dir), resume)  # every rank: rank 0 writes only after they all meet
    if is_main_process_env():
        # load_recipe checked data.max_length against a student already on this machine; one that
        # was not is fetched now (stage 1 would fetch it next), before the cache or the run folder
        # is made. The main process only: the others wait for its cache in stage 1.
        check_recipe_lengths(recipe, fetch=True)
        with folder_lock(recipe.output.dir, "run folder"):
            results = _train(recipe, resume, progress, callbacks)
    else:
        results = _train(recipe, resume, progress, callbacks)
    if owns_group:
        teardown()
    return results


def _train(recipe: Recipe, resume: bool, progress: bool, callbacks: list | None) -> dict:
    rank, world, device = init_distributed()
    run_dir = Path(recipe.output.dir)
    if resume and not (run_dir / ckpt_io.NAME).is_file():
        raise DistillError(f"--resume: no checkpoint at {run_dir / ckpt_io.NAME}")
    if not resume and (run_dir / ckpt_io.NAME).is_file():
        raise DistillError(f"{run_dir} already holds a run (checkpoint.pt): pass --resume to continue it, or choose another output.dir")
    # Stage 1's finish() writes RUN/results.json last: when it is there, stage 1 is over and a resume
    # goes straight to stage 2 (no cache, tokens or loss setup for a stage that will not train).
    stage1_done = resume and (run_dir / "results.json").is_file()
    if resume:  # read (without unpickling code) and matched before any file is written; a finished stage 1
        # matches only what trained it: stage 2, evaluation and the folder may differ (a copied run)
        ckpt_io.check_resumed_recipe(ckpt_io.load_checkpoint(run_dir / ckpt_io.NAME), recipe, run_dir / ckpt_io.NAME,
                             only=STAGE1_KEYS if stage1_done else None)
    run_dir.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        mark_run_folder(run_dir)
        write_text_atomic(run_dir / "recipe.yaml", yaml.safe_dump(recipe.to_dict(), sort_keys=False))
    ckpt_io.seed_everything(recipe.train.seed)

    if stage1_done:
        results = json.loads((run_dir / "results.json").read_text())
    else:
        first = stage1(recipe, run_dir, rank, world, device, resume, progress)
        results = Trainer(first, recipe, rank, world, device, progress, callbacks).fit(resume)
        del first  # stage 1's student, targets and optimizer: freed before stage 2 loads its own
    if not recipe.stage2.rows:
        return results

    meta1 = stage_meta(run_dir / recipe.stage2.init)  # what stage 1 was (teacher, student, loss, cache)
    second = stage2(recipe, run_dir, meta1, rank, world, device, progress)
    resume2 = resume and (second.run_dir / ckpt_io.NAME).is_file()
    results2 = Trainer(second, recipe, rank, world, device, progress, callbacks, baselines=False).fit(resume2)
    if rank == 0:
        results2["stage1"] = {k: results[k] for k in ("best", "best_step", "best_dev", "steps", "train_sentences_per_s", "retrieval") if k in results}
        results2["warnings"] = [f"stage 1: {w}" for w in results.get("warnings", [])] + [f"stage 2: {w}" for w in results2.get("warnings", [])]
        if "baselines" in results:
            results2["baselines"] = results["baselines"]
        speeds = {role: v for role, v in results.get("sts_sentences_per_s", {}).items() if role != "best"}  # stage 1's baselines
        if speeds or "sts_sentences_per_s" in results2:
            results2["sts_sentences_per_s"] = {**speeds, **results2.get("sts_sentences_per_s", {})}
        write_json_atomic(second.run_dir / "results.json", results2)
    return results2
