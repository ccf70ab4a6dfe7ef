"""How much gradient does IBKD's HSIC term put on the student vector, next to InfoNCE's? The loss's
own `ib_share` (||d lam*HSIC / ds|| / ||d InfoNCE / ds||) on random batches of a recipe's teacher
cache, untrained student, no training step. Explains why `distill compare` can print the same
score for infonce and ibkd: with the default kernel (gamma 1 on raw pooled vectors) the share is
~1e-5, so a seeded run with the term trains (to the printed digits) the same weights as one without.

    python benchmarks/ib_share_probe.py configs/scifact-minilm-l3.yaml --loss-set gamma=0.1

Needs the recipe's teacher cache (any run of the recipe builds it).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from distill.config import load_recipe, parse_override
from distill.data.tokens import tokenize_corpus
from distill.losses import build_loss
from distill.models import load_student
from distill.training.stages import DistillModule, load_targets, open_or_build_cache


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe")
    ap.add_argument("--set", action="append", default=[], help="recipe override KEY=VALUE (as distill train --set)")
    ap.add_argument("--loss-set", action="append", default=[], help="an ibkd parameter KEY=VALUE besides the defaults (one probe each)")
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    recipe = load_recipe(args.recipe, ["loss={name: ibkd}", *args.set])  # ibkd's targets: the full teacher vectors, whatever the recipe trains
    cache = open_or_build_cache(recipe, progress=False)
    student = load_student(recipe.student, max_length=recipe.data.max_length, device="cpu")
    targets = load_targets(recipe, cache, torch.device("cpu"))
    tokens = tokenize_corpus(student.tokenizer, cache.sentences(), recipe.data.max_length, cache.path, progress=False)
    probes = [{}] + [dict([parse_override(kv)]) for kv in args.loss_set]
    print("| ibkd parameters | ib_share (mean) | min | max | hsic | infonce |\n|---|---:|---:|---:|---:|---:|")
    for extra in probes:
        torch.manual_seed(args.seed)  # the decoder's initialisation, as a run with this seed
        loss = build_loss({"name": "ibkd", **extra}, student_dim=student.dim, teacher_dim=int(targets.shape[1]))
        module = DistillModule(student, loss)
        rng = np.random.default_rng(args.seed)  # the same batches for every probe
        seen = []
        for _ in range(args.batches):
            rows = np.sort(rng.choice(len(cache), args.batch_size, replace=False))
            ids, mask = tokens.collate(rows)
            out = module(ids, mask, targets[torch.from_numpy(rows)].float())
            seen.append({k: float(out[k]) for k in ("ib_share", "hsic", "infonce")})
        share = [s["ib_share"] for s in seen]
        print(f"| {loss.get_config_dict()} | {np.mean(share):.2e} | {min(share):.2e} | {max(share):.2e} | "
              f"{np.mean([s['hsic'] for s in seen]):.4f} | {np.mean([s['infonce'] for s in seen]):.3f} |")


if __name__ == "__main__":
    main()
