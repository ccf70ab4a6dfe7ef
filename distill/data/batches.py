"""The batches of one epoch: row indices, length-grouped (little padding) but shuffled across the corpus."""

from __future__ import annotations

import numpy as np

from distill.errors import DistillError


def epoch_batches(lengths: np.ndarray, batch_size: int, seed: int, epoch: int, group: int = 64, batching: str = "length") -> list[np.ndarray]:
    """The batches of one epoch, deterministic in (seed, epoch).

    batching (checked when the recipe is read, recipe_checks.BATCHINGS) "length": shuffle all rows, cut into mega-batches of `group` batches, sort each
    mega-batch by length and cut it into batches, then shuffle the batch order. batching="random":
    consecutive slices of one shuffle (every batch mixes lengths, as a plain DataLoader with
    shuffle=True does: IBKD's X from layer 0 depends strongly on length, and a batch of one length
    hides that dependence). The last incomplete batch is dropped (a contrastive loss needs its
    in-batch negatives).
    """
    n = len(lengths)
    if n < batch_size:
        raise DistillError(f"the corpus has {n} sentences, fewer than one batch of {batch_size}")
    rng = np.random.default_rng([seed, epoch])
    perm = rng.permutation(n)
    if batching == "random":
        return [perm[b : b + batch_size] for b in range(0, n - batch_size + 1, batch_size)]
    batches = []
    span = batch_size * group
    for start in range(0, n, span):
        block = perm[start : start + span]
        block = block[np.argsort(-lengths[block], kind="stable")]
        for b in range(0, len(block) - batch_size + 1, batch_size):
            batches.append(block[b : b + batch_size])
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]
