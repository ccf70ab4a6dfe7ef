"""Teacher cache build speed vs SentenceTransformer.encode at its best batch size, in one run.

Goal (issue 3): `distill cache` encodes at least twice the sentences/s of
SentenceTransformer.encode at its best batch size, same teacher and GPU (all-mpnet-base-v2 in fp16
on an H100: 8,500 sentences/s through `encode` at batch 512). Ours is timed over the whole build:
corpus read + de-duplication, tokenization, encoding, shards, the final float16 matrix and
manifest. Model loading is left out on both sides (both models are loaded before the clocks).
The SentenceTransformer copy runs in fp16 on GPU (fp32 on CPU) over the same distinct sentences.

    python benchmarks/cache_speed.py                                     # mpnet, 50k glosses, GPU
    python benchmarks/cache_speed.py --teacher all-minilm-l6-v2 --n 2000 --batch-sizes 64,128 --label CPU

Appends a row to BENCHMARKS.md (date, device, command, commit, numbers).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_md import add_row, command_line, git_commit  # noqa: E402
from encode_speed import DEFAULT_CORPUS, device_name, read_sentences, sync  # noqa: E402

SECTION = "## Teacher cache speed (benchmarks/cache_speed.py)"
INTRO = "Goal: cache sentences/s >= 2 x SentenceTransformer.encode at its best batch size, same teacher and GPU."
COLUMNS = ["date", "device", "label", "command", "commit", "teacher", "sentences", "ST best batch", "ST sentences/s", "cache sentences/s", "cache / ST"]


def main(argv: list[str] | None = None) -> int:
    measure(argv)
    return 0


def measure(argv: list[str] | None = None) -> dict:
    """Parse the arguments, time both paths, add the row to --bench-md; returns the row's numbers."""
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    from distill.data.cache import build_cache
    from distill.encoder import best_device
    from distill.presets import teacher_spec
    from distill.resolve import resolve_model
    from distill.sentence_model import SentenceModel

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default="all-mpnet-base-v2", help="a preset, hub id or folder")
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--batch-sizes", default="128,256,512,1024", help="SentenceTransformer batch sizes to try")
    ap.add_argument("--cache-batch-size", type=int, default=512)
    ap.add_argument("--label", default="")
    ap.add_argument("--bench-md", type=Path, default=REPO / "BENCHMARKS.md")
    args = ap.parse_args(argv)

    spec = teacher_spec(args.teacher)
    device = best_device()
    sentences = list(dict.fromkeys(read_sentences(args.corpus, args.n)))  # the cache de-duplicates too
    folder = resolve_model(spec.hub_id, offline_source=spec.offline_source, revision=spec.revision)
    enc = SentenceModel.load(spec, folder=folder, device=device)  # loaded once, outside the clock, like the ST model
    # float32 weights even from an fp16 folder (the GPU run's staged copy), then fp16 on the GPU as before
    st = SentenceTransformer(str(folder), device=str(device), model_kwargs={"dtype": torch.float32})
    st.max_seq_length = enc.max_length
    # exactness first, both fp32: the cache's path (length-sorted batches, prompts by role) against encode_document
    sample = sentences[:512]
    diff = float(np.abs(enc.encode(sample, batch_size=args.cache_batch_size, progress=False, precision="fp32", role="document")
                        - st.encode_document(sample, batch_size=64, convert_to_numpy=True)).max())
    print(f"max |cache path - SentenceTransformer.encode_document| over {len(sample)} sentences, fp32: {diff:.2e}", flush=True)
    if device.type == "cuda":
        st.half()
    st.encode(sentences[:512], batch_size=128)  # warm-up
    best = (0, 0.0)
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        sync(device)
        t0 = time.perf_counter()
        st.encode_document(sentences, batch_size=bs)
        sync(device)
        rate = len(sentences) / (time.perf_counter() - t0)
        print(f"SentenceTransformer.encode batch {bs}: {rate:,.0f} sentences/s", flush=True)
        best = max(best, (bs, rate), key=lambda x: x[1])
    del st
    if device.type == "cuda":
        torch.cuda.empty_cache()

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text("\n".join(sentences) + "\n", encoding="utf-8")
        build_cache(spec, [str(corpus)], Path(tmp) / "warm", max_sentences=512, batch_size=args.cache_batch_size, progress=False, encoder=enc)
        sync(device)
        t0 = time.perf_counter()
        build_cache(spec, [str(corpus)], Path(tmp) / "cache", batch_size=args.cache_batch_size, progress=False, encoder=enc)
        sync(device)
        ours = len(sentences) / (time.perf_counter() - t0)
    print(f"distill cache (whole build, model already loaded): {ours:,.0f} sentences/s; {ours / best[1]:.2f}x SentenceTransformer at batch {best[0]}")

    row = {
        "date": dt.date.today().isoformat(), "device": device_name(device),
        "label": f"{args.label}; max diff vs encode_document (fp32, 512 sentences) {diff:.1e}".lstrip("; "),
        "command": "`" + command_line("cache_speed.py", argv if argv is not None else sys.argv[1:]) + "`",
        "commit": git_commit(), "teacher": spec.name, "sentences": len(sentences), "ST best batch": best[0],
        "ST sentences/s": f"{best[1]:,.0f}", "cache sentences/s": f"{ours:,.0f}", "cache / ST": f"{ours / best[1]:.2f}x",
    }
    add_row(args.bench_md, SECTION, INTRO, COLUMNS, row)
    return {"device": row["device"], "teacher": spec.name, "sentences": len(sentences), "st_best_batch": best[0],
            "st_sentences_per_s": best[1], "cache_sentences_per_s": ours, "cache_over_st": ours / best[1], "max_diff": diff}


if __name__ == "__main__":
    sys.exit(main())
