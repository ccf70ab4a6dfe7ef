"""Stage 2's step: the anchors padded apart from the passages (RowsModule's two forwards) vs every
text of the batch padded to the longest one (one forward, how stage 2 ran before).

Real rows (a `distill mine` file: a SciFact claim of ~30 tokens beside its abstract and four mined
abstracts, 256 tokens each) and the real student. For each of --batches batches of --rows-per-step
rows, both ways run a forward and a backward of the stage-2 loss on the same texts, in alternating
order; the table gives each way's median seconds a step and padded tokens a step, and checks that
both give the same loss. Appends a row to BENCHMARKS.md (date, device, command, commit) unless
--no-record.

    python benchmarks/stage2_step.py --rows runs/scifact/mined-dev.jsonl
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_md import add_row, command_line, git_commit  # noqa: E402
from encode_speed import device_name  # noqa: E402

SECTION = "## Stage 2's step: anchors padded apart (benchmarks/stage2_step.py)"
INTRO = ("Seconds for the forward and backward of one stage-2 step (median over the batches; both ways on the same rows, "
         "alternating which goes first): every text of the batch padded to the longest (one forward, as before) vs the "
         "anchor column padded apart from the others (two forwards, distill.training.stages.RowsModule). Tokens: padded "
         "tokens a step. Both give the same loss (checked).")
COLUMNS = ["date", "device", "command", "commit", "rows", "student", "max length", "rows a step", "texts a step",
           "one forward s", "anchors apart s", "speed-up", "one forward tokens", "anchors apart tokens"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", required=True, help="a rows file (distill mine's JSONL, or any stage2.rows source)")
    p.add_argument("--student", default="all-minilm-l3-v2")
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--rows-per-step", type=int, default=16, help="stage2.train.batch_size (default 16, the SciFact recipe's)")
    p.add_argument("--neg-samples", type=int, default=4)
    p.add_argument("--batches", type=int, default=5)
    p.add_argument("--loss", default="mnrl", choices=["mnrl", "ibkd_supervised"])
    p.add_argument("--no-record", action="store_true", help="print only; do not add a row to BENCHMARKS.md")
    args = p.parse_args(argv)

    import numpy as np
    import torch

    from distill.data.rows import read_rows
    from distill.losses import IBKDSupervisedLoss, MNRLLoss
    from distill.models import load_student
    from distill.training.stages import RowsModule, rows_part

    rows = read_rows([args.rows], ["anchor", "positive", "negative"], neg_samples=args.neg_samples)
    width, n = len(rows[0]), args.rows_per_step
    student = load_student(args.student, max_length=args.max_length, device=torch.device("cpu")).train()
    loss = MNRLLoss(student.dim) if args.loss == "mnrl" else IBKDSupervisedLoss(student.dim, head="none")
    module = RowsModule(student, loss, width)

    def tokenize(texts):
        t = student.tokenizer(texts, padding=True, truncation=True, max_length=args.max_length, return_tensors="pt")
        return t["input_ids"], t["attention_mask"]

    def one_forward(batch):  # before: all columns in one forward, padded together
        ids, mask = tokenize([row[c] for c in range(width) for row in batch])
        out = student(ids, mask, output_hidden_states=loss.needs_hidden_states)
        return loss(*(rows_part(out, mask, slice(i * n, (i + 1) * n)) for i in range(width)))["loss"], int(ids.numel())

    def anchors_apart(batch):
        a = tokenize([row[0] for row in batch])
        r = tokenize([row[c] for c in range(1, width) for row in batch])
        return module(*a, *r, n)["loss"], int(a[0].numel() + r[0].numel())

    def timed(fn, batch):
        student.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        value, tokens = fn(batch)
        value.backward()
        return time.perf_counter() - t0, tokens

    rng = np.random.default_rng(0)
    times, tokens = {"one": [], "apart": []}, {"one": [], "apart": []}
    for b in range(args.batches):
        batch = [rows[i] for i in rng.choice(len(rows), size=n, replace=False)]
        order = [("one", one_forward), ("apart", anchors_apart)]
        for name, fn in order if b % 2 == 0 else order[::-1]:
            s, t = timed(fn, batch)
            times[name].append(s)
            tokens[name].append(t)
        print(f"batch {b + 1}/{args.batches}: one forward {times['one'][-1]:.2f} s, anchors apart {times['apart'][-1]:.2f} s", flush=True)
    student.eval()
    with torch.no_grad():
        a, _ = one_forward(batch)
        c, _ = anchors_apart(batch)
    if abs(a.item() - c.item()) > 1e-4 * max(1.0, abs(a.item())):
        raise SystemExit(f"the two ways disagree on the loss: {a.item()} vs {c.item()}")

    one, apart = statistics.median(times["one"]), statistics.median(times["apart"])
    row = {"date": dt.date.today().isoformat(), "device": device_name(torch.device("cpu")),
           "command": command_line("stage2_step.py", sys.argv[1:] if argv is None else argv), "commit": git_commit(),
           "rows": f"{Path(args.rows).name} ({len(rows)} rows of {width})", "student": args.student, "max length": args.max_length,
           "rows a step": n, "texts a step": n * width, "one forward s": f"{one:.2f}", "anchors apart s": f"{apart:.2f}",
           "speed-up": f"{one / apart:.2f}x", "one forward tokens": int(statistics.mean(tokens["one"])),
           "anchors apart tokens": int(statistics.mean(tokens["apart"]))}
    for k, v in row.items():
        print(f"{k}: {v}")
    if not args.no_record:
        add_row(REPO / "BENCHMARKS.md", SECTION, INTRO, COLUMNS, row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
