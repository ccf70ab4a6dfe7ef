"""How much of HPD's score is its least-squares head alone? STS-B dev of the untrained student,
without and with the head that `loss.init: lstsq` fits before training (no training step).

    python benchmarks/hpd_head_probe.py --cache runs/cache/cpu-minilm-l6-16k --student all-minilm-l3-v2

Needs a teacher cache with PCA-k targets (any HPD run on the cache adds them).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from distill.data.cache import TeacherCache
from distill.encoder import Encoder
from distill.eval.sts import cosine_rows, spearman_x100
from distill.eval.sts_data import load_local
from distill.losses import HPDLoss
from distill.training.stages import PREPARE_SAMPLE


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", required=True, help="teacher cache folder holding pca_K.npy")
    ap.add_argument("--student", default="all-minilm-l3-v2")
    ap.add_argument("--k", type=int, default=128)
    ap.add_argument("--max-length", type=int, default=64, help="the training data.max_length (the fit sees what training sees)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--sts-dir", default="../shared/data/sts")
    args = ap.parse_args(argv)

    cache = TeacherCache.open(args.cache)
    if not cache.has_pca(args.k):
        raise SystemExit(f"{args.cache}: no PCA to {args.k} dims; run an HPD recipe on it first")
    sentences = cache.sentences()
    # the same seeded sample as distill.training.stages.prepare_loss
    rows = np.sort(np.random.default_rng(args.seed).choice(len(sentences), size=min(len(sentences), PREPARE_SAMPLE), replace=False))
    student = Encoder.load(args.student, role="student", max_length=args.max_length)
    s = torch.as_tensor(np.asarray(student.encode(sentences.take(rows), max_length=args.max_length), dtype=np.float32))
    t = torch.from_numpy(np.asarray(cache.pca_targets(args.k))[rows].astype(np.float32))
    loss = HPDLoss(student.dim, None, k=args.k)
    loss.prepare(s, t)

    dev = load_local("STS-B-dev", args.sts_dir)
    full = student.max_positions  # evaluation runs at the model's own limit, as distill eval does
    a = torch.as_tensor(np.asarray(student.encode(dev.sentences1, max_length=full), dtype=np.float32))
    b = torch.as_tensor(np.asarray(student.encode(dev.sentences2, max_length=full), dtype=np.float32))
    with torch.no_grad():
        print(f"STS-B dev, untrained {args.student}, no head:          {spearman_x100(cosine_rows(a.numpy(), b.numpy()), dev.scores):.2f}")
        ha, hb = loss.head(a).numpy(), loss.head(b).numpy()
        print(f"STS-B dev, untrained {args.student}, least-squares head: {spearman_x100(cosine_rows(ha, hb), dev.scores):.2f}")


if __name__ == "__main__":
    main()
