"""Static models' encode speed with passes long enough to time: the same 20,000 corpus sentences,
each model in turn, 5 rounds interleaved, best round per model; then the tokenizer alone.

benchmarks/static_students.py times every row on the issue's 2,000 STS sentences, which a static
model encodes in 0.05-0.08 s: too short a pass to rank static models against each other on a
shared 2-core machine (the ratio to the transformer rows is what that benchmark is for). This
script is the tie-breaker between static models.

    python benchmarks/static_speed_check.py --model model2vec=DIR --model ours=runs/static-bench/static-cosine-s42/best
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", required=True, metavar="NAME=DIR", help="a static model folder (repeatable)")
    ap.add_argument("--sentences", default=str(REPO.parent / "shared" / "data" / "corpus" / "sts-family-train.txt.gz"))
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=128)
    args = ap.parse_args(argv)

    import torch

    from distill.cli import quiet_third_party
    from distill.data.readers import read_sentences
    from distill.saved_student import load_saved_student
    from distill.static_student import StaticStudent

    quiet_third_party()
    torch.set_num_threads(os.cpu_count() or 1)
    sentences = list(dict.fromkeys(read_sentences(args.sentences)))[: args.n]
    models = {}
    for item in args.model:
        name, _, folder = item.partition("=")
        # a run's best/ or final/ folder, or any static model folder (ours exported, model2vec's, tokenlearn's)
        models[name] = (load_saved_student(folder, device="cpu")[0] if (Path(folder) / "distill_student.json").is_file()
                        else StaticStudent.load_folder(folder, device="cpu"))
    best = dict.fromkeys(models, 0.0)
    for _ in range(args.rounds):
        for name, model in models.items():
            start = time.perf_counter()
            model.encode(sentences, batch_size=args.batch_size, progress=False)
            best[name] = max(best[name], len(sentences) / (time.perf_counter() - start))
    print(f"{len(sentences):,} sentences, batch {args.batch_size}, best of {args.rounds} interleaved rounds, {os.cpu_count()} cores")
    for name, model in models.items():
        start = time.perf_counter()
        model.tokenizer(sentences, add_special_tokens=False)
        tok = len(sentences) / (time.perf_counter() - start)
        print(f"| {name} | {best[name]:,.0f} sentences/s | tokenizer alone {tok:,.0f}/s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
