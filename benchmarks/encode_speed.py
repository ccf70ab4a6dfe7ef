"""Encode speed, end to end (tokenization included): SentenceTransformer.encode vs our Encoder.encode.

One run measures, on the same sentences and device, four things: SentenceTransformer.encode at
batch 256 (its defaults otherwise: fp32 weights) and `distill.Encoder.encode` (bf16/fp16 autocast
on GPU) for a teacher and a student. It prints sentences/s and the ratios, and appends a row to
BENCHMARKS.md (date, device, command, git commit, numbers).

The target (issue): on an H100 a 3-layer student must run at least 5x its teacher's sentences/s
through our encode path; SentenceTransformer.encode gives all-mpnet-base-v2 9,457 sentences/s and
a 3-layer MiniLM 9,318 there, because tokenization and Python, not the GPU, set its pace.

    python benchmarks/encode_speed.py                                   # mpnet teacher vs 3-layer MiniLM, 50k glosses
    python benchmarks/encode_speed.py --teacher all-minilm-l6-v2 --n 2000 --label CPU   # a quick CPU run

Both models of a pair are built from the same weights for both paths (the SentenceTransformer
copy gets the preset's layer cut and max length), so the two paths embed the same thing; the
script prints the lowest cosine between the two paths' embeddings of a sentence as a check.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_md import add_row, command_line, git_commit  # noqa: E402

DEFAULT_CORPUS = REPO.parent / "shared" / "data" / "corpus" / "wordnet-glosses.txt.gz"
SECTION = "## Encode speed (benchmarks/encode_speed.py)"
COLUMNS = [
    "date", "device", "label", "command", "commit", "sentences", "teacher", "student",
    "ST teacher/s", "ST student/s", "ours teacher/s", "ours student/s",
    "student/teacher ours", "student/teacher ST", "ours student / ST teacher",
]


def read_sentences(path: Path, n: int) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    out: list[str] = []
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if line.strip():
                out.append(line)
                if len(out) >= n:
                    break
    if not out:
        sys.exit(f"{path}: no sentences")
    while len(out) < n:  # a small corpus is cycled to n sentences
        out.extend(out[: n - len(out)])
    return out


def device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = f", load avg {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    return f"CPU {cpu}, {torch.get_num_threads()} threads{load}"


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, sentences, device, repeats: int) -> tuple[float, object]:
    """Best sentences/s over `repeats` runs, and the last output."""
    best, out = 0.0, None
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        out = fn(sentences)
        sync(device)
        best = max(best, len(sentences) / (time.perf_counter() - start))
    return best, out


def build_pair(name: str, device, st_dtype: str):
    """(our Encoder, a SentenceTransformer with the same weights, layer cut and max length)."""
    import torch
    from sentence_transformers import SentenceTransformer

    from distill.encoder import Encoder, keep_layers
    from distill.presets import StudentSpec, find_preset
    from distill.resolve import resolve_model

    enc = Encoder.load(name, device=device)
    preset = find_preset(name)
    path = resolve_model(name, offline_source=preset.offline_source if preset else None)
    # the dtype is always named: from an fp16 folder (the GPU run's staged copies) transformers 5 would keep fp16
    st = SentenceTransformer(str(path), device=str(device), model_kwargs={"dtype": getattr(torch, st_dtype)})
    if isinstance(preset, StudentSpec) and preset.layers is not None:
        keep_layers(st[0].auto_model, preset.layers)
    st.max_seq_length = enc.max_length
    return enc, st


def measure(name: str, sentences: list[str], device, batch_size: int, repeats: int, st_dtype: str) -> dict:
    import numpy as np

    enc, st = build_pair(name, device, st_dtype)
    warm = sentences[: min(len(sentences), 2 * batch_size)]
    st.encode(warm, batch_size=batch_size, show_progress_bar=False)
    enc.encode(warm, batch_size=batch_size, progress=False)
    st_rate, st_out = timed(lambda s: st.encode(s, batch_size=batch_size, show_progress_bar=False, convert_to_numpy=True), sentences, device, repeats)
    ours_rate, ours_out = timed(lambda s: enc.encode(s, batch_size=batch_size, progress=False), sentences, device, repeats)
    a = np.asarray(st_out, dtype=np.float64)
    b = np.asarray(ours_out, dtype=np.float64)
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return {"st": st_rate, "ours": ours_rate, "min_cos": float(cos.min())}


INTRO = (
    "Sentences/s end to end (tokenization included), SentenceTransformer.encode (batch 256, fp32 "
    "unless the command says otherwise) vs distill's Encoder.encode (bf16/fp16 autocast on GPU), "
    "same sentences, same device. Target: ours student/s >= 5 x ours teacher/s on an H100."
)


def record(path: Path, row: dict) -> None:
    """Append a row to the encode-speed table of BENCHMARKS.md (made if missing), atomically."""
    add_row(path, SECTION, INTRO, COLUMNS, row)


def main(argv: list[str] | None = None) -> int:
    run(argv)
    return 0


def run(argv: list[str] | None = None) -> dict:
    """Parse the arguments, measure, record the row (unless --no-record); returns the numbers:
    {"device", "sentences", "teacher": {"st", "ours", "min_cos"}, "student": {...}, "student_over_teacher_ours", ...}."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", default="all-mpnet-base-v2", help="teacher model / preset (default all-mpnet-base-v2)")
    ap.add_argument("--student", default="all-minilm-l3-v2", help="student model / preset (default all-minilm-l3-v2)")
    ap.add_argument("--n", type=int, default=50_000, help="sentences to encode (default 50,000)")
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help=f"text file, one sentence per line, .gz ok (default {DEFAULT_CORPUS})")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per measurement; the best counts")
    ap.add_argument("--device", help="cpu / cuda (default: the GPU when there is one)")
    ap.add_argument("--st-dtype", choices=["float32", "float16", "bfloat16"], default="float32", help="SentenceTransformer weights dtype (default its own: float32)")
    ap.add_argument("--label", default="", help="free text for the table row, e.g. CPU")
    ap.add_argument("--record", type=Path, default=REPO / "BENCHMARKS.md", help="markdown file to append the row to")
    ap.add_argument("--no-record", action="store_true", help="print only")
    args = ap.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

    import torch

    from distill.encoder import best_device

    if not args.corpus.is_file():
        sys.exit(f"{args.corpus}: no such corpus file (give one with --corpus)")
    device = torch.device(args.device) if args.device else best_device()
    sentences = read_sentences(args.corpus, args.n)
    print(f"{len(sentences)} sentences from {args.corpus} on {device_name(device)}", flush=True)
    res = {}
    for role, name in (("teacher", args.teacher), ("student", args.student)):
        res[role] = measure(name, sentences, device, args.batch_size, args.repeats, args.st_dtype)
        r = res[role]
        print(f"{role:8s} {name:24s} ST {r['st']:10,.0f}/s   ours {r['ours']:10,.0f}/s   ours/ST {r['ours'] / r['st']:5.2f}x   min cos(ST, ours) {r['min_cos']:.4f}", flush=True)
    ratio_ours = res["student"]["ours"] / res["teacher"]["ours"]
    ratio_st = res["student"]["st"] / res["teacher"]["st"]
    cross = res["student"]["ours"] / res["teacher"]["st"]
    print(f"student/teacher: ours {ratio_ours:.2f}x, SentenceTransformer {ratio_st:.2f}x; ours student / ST teacher {cross:.2f}x")
    if device.type == "cuda":
        print(f"target (ours student >= 5x ours teacher): {'met' if ratio_ours >= 5 else 'NOT met'}")
    if not args.no_record:
        row = {
            "date": dt.date.today().isoformat(),
            "device": device_name(device),
            "label": args.label or ("GPU" if device.type == "cuda" else "CPU"),
            "command": "`" + command_line("encode_speed.py", argv if argv is not None else sys.argv[1:]) + "`",
            "commit": git_commit(),
            "sentences": len(sentences),
            "teacher": args.teacher,
            "student": args.student,
            "ST teacher/s": f"{res['teacher']['st']:,.0f}",
            "ST student/s": f"{res['student']['st']:,.0f}",
            "ours teacher/s": f"{res['teacher']['ours']:,.0f}",
            "ours student/s": f"{res['student']['ours']:,.0f}",
            "student/teacher ours": f"{ratio_ours:.2f}x",
            "student/teacher ST": f"{ratio_st:.2f}x",
            "ours student / ST teacher": f"{cross:.2f}x",
        }
        record(args.record, row)
        print(f"appended a row to {args.record}")
    return {"device": device_name(device), "sentences": len(sentences), **res, "student_over_teacher_ours": ratio_ours,
            "student_over_teacher_st": ratio_st, "student_ours_over_teacher_st": cross}


if __name__ == "__main__":
    sys.exit(main())
