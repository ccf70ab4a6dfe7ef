"""CPU serving: sentences/s end to end and the seven-set STS average of teachers and an exported student,
PyTorch fp32 vs ONNX fp32 vs ONNX int8, in one run on one machine.

Rows (all on the same 2,000 STS sentences, drawn once with a fixed seed from the distinct sentences
of the seven STS test sets, tokenization included, every row batched the same way: sorted by
length, --batch-size rows per batch):
  teacher all-mpnet-base-v2 (PyTorch fp32), teacher all-MiniLM-L6-v2 (PyTorch fp32),
  the exported student in PyTorch fp32 (distill's Encoder), ONNX fp32 and ONNX int8 (onnxruntime).
Then the STS table of each (Spearman x100, `evaluate_sts`, each distinct sentence encoded once,
at the model's own length limit) and the ratios the issue sets as targets:
  int8 student / PyTorch fp32 student >= 2.5x, int8 student / mpnet >= 15x,
  STS avg loss int8 vs ONNX fp32 <= 0.5, ONNX fp32 vs PyTorch fp32 <= 0.01.

    python benchmarks/cpu_serving.py --student runs/demo-minilm-l3-export --sts-dir ../shared/data/sts

The student folder must hold onnx/model.onnx and onnx/model_qint8.onnx (`distill export RUN --out DIR
--onnx --quantize int8`, or `distill export-onnx DIR --quantize int8`). Rows go to BENCHMARKS.md with
the date, the device, load averages before and after (`os.getloadavg`), the command and the commit.
Speed: best of --repeats timed passes after one warm-up batch (the machine is shared; the best pass
is the least disturbed one). Results are also written, row by row, to --json.

--profile adds one more pass of each ONNX row under onnxruntime's profiler and splits its kernel
time into matrix products (GEMM_OPS) and everything else, with the CPU's int8 instruction sets:
int8 speeds up only the matrix products, and by how much depends on the instructions (AVX2's
u8 x s8 multiply-add does at most twice fp32's work per cycle; AVX-512 VNNI / AVX-VNNI fuse it,
AMX more). The split says where an int8 target is out of reach and why.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_md import add_row, command_line, git_commit  # noqa: E402
from encode_speed import device_name  # noqa: E402

SECTION = "## CPU serving: PyTorch vs ONNX fp32 vs ONNX int8 (benchmarks/cpu_serving.py)"
INTRO = (
    "Sentences/s end to end (tokenization included) on the same 2,000 STS sentences for every row, one process, "
    "all cores; STS = seven-set average, Spearman x100. Ratios are against the rows of the same run."
)
COLUMNS = ["date", "device", "load avg before -> after", "command", "commit", "model", "backend", "sentences/s",
           "x student PyTorch", "x mpnet", "STS avg", "STS eval s", "notes"]


def sts_sentences(sts_dir, n: int, seed: int):
    from distill.eval.sts_data import TEST_TASKS, load_sts

    data = {t: load_sts(t, sts_dir) for t in TEST_TASKS}
    distinct = sorted({s for p in data.values() for s in (*p.sentences1, *p.sentences2)})
    if n > len(distinct):
        sys.exit(f"--n {n}: only {len(distinct)} distinct STS sentences")
    return random.Random(seed).sample(distinct, n), data


def format_row(scores: dict) -> str:
    return " ".join(f"{k}={v:.2f}" for k, v in scores.items() if k != "Avg")


GEMM_OPS = {"MatMul", "FusedMatMul", "Gemm", "MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QGemm"}
INT8_ISA = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_int8")


def cpu_int8_isa() -> str:
    """The int8-relevant instruction sets /proc/cpuinfo lists (Linux), e.g. 'avx2' or 'avx2 avx512f avx512_vnni'."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return " ".join(f for f in INT8_ISA if f in flags) or "none of " + ", ".join(INT8_ISA)
    except OSError:
        pass
    return "unknown"


def profile_onnx(model, sentences: list[str], batch_size: int, threads: int | None) -> dict:
    """Kernel seconds by op type for one pass of `model` (an OnnxEncoder) under onnxruntime's profiler."""
    import json
    import tempfile

    import onnxruntime as ort

    from distill.onnx.runtime import session_options

    opts = session_options(threads)  # the serving session's options, plus the profiler
    opts.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        opts.profile_file_prefix = str(Path(tmp) / "ort")
        model.session = ort.InferenceSession(str(model.file), opts, providers=["CPUExecutionProvider"])
        start = time.perf_counter()
        model.encode(sentences, batch_size=batch_size, progress=False)
        wall = time.perf_counter() - start
        events = json.loads(Path(model.session.end_profiling()).read_text())
    by_op: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            op = e["args"]["op_name"]
            by_op[op] = by_op.get(op, 0.0) + e["dur"] / 1e6
    gemm = sum(v for k, v in by_op.items() if k in GEMM_OPS)
    return {"wall_s": wall, "gemm_s": gemm, "other_s": sum(by_op.values()) - gemm,
            "by_op": dict(sorted(by_op.items(), key=lambda kv: -kv[1]))}


def load_row(kind: str, name: str, quantized: bool = False, threads: int | None = None):
    if kind == "torch":
        import torch

        from distill.encoder import Encoder

        if threads:
            torch.set_num_threads(threads)
        return Encoder.load(name, device="cpu")
    from distill.onnx.runtime import OnnxEncoder

    return OnnxEncoder.load(name, quantized=quantized, threads=threads)


def speed(model, sentences: list[str], batch_size: int, repeats: int) -> float:
    kwargs = {"precision": "fp32"} if not hasattr(model, "session") else {}
    model.encode(sentences[:batch_size], batch_size=batch_size, progress=False, **kwargs)  # warm-up
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        model.encode(sentences, batch_size=batch_size, progress=False, **kwargs)
        best = max(best, len(sentences) / (time.perf_counter() - start))
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--student", required=True, help="exported student folder with onnx/model.onnx and onnx/model_qint8.onnx")
    ap.add_argument("--teachers", default="all-mpnet-base-v2,all-minilm-l6-v2", help="PyTorch teacher rows (comma-separated)")
    ap.add_argument("--sts-dir", default=str(REPO.parent / "shared" / "data" / "sts"))
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, help="threads for torch and onnxruntime alike (default: each one's own default, all cores)")
    ap.add_argument("--no-sts", action="store_true", help="speed only (no STS column)")
    ap.add_argument("--sts-students-only", action="store_true",
                    help="measure STS for the student rows only (a teacher's STS does not depend on the backend; give it with --recorded-sts)")
    ap.add_argument("--recorded-sts", action="append", default=[], metavar="NAME=AVG=SOURCE",
                    help="a teacher's seven-set average measured elsewhere, shown as such (e.g. all-minilm-l6-v2=78.87=BENCHMARKS.md demo row)")
    ap.add_argument("--profile", action="store_true",
                    help="one more pass of each ONNX row under onnxruntime's profiler: kernel time in matrix products vs the rest")
    ap.add_argument("--label", default="", help="a note for every row (e.g. 'shared machine, 4 other jobs')")
    ap.add_argument("--json", default="runs/cpu_serving.json", help="results, written after each row")
    ap.add_argument("--bench-md", default=str(REPO / "BENCHMARKS.md"), help="append the rows here ('' to skip)")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

    from distill.eval.sts import evaluate_sts
    from distill.io import write_json_atomic

    load_before = os.getloadavg()
    isa = cpu_int8_isa()
    sentences, data = sts_sentences(args.sts_dir, args.n, args.seed)
    rows = [(f"teacher {t}", "torch", t, False) for t in args.teachers.split(",") if t]
    rows += [("student", "torch", args.student, False), ("student", "onnx", args.student, False), ("student", "onnx int8", args.student, True)]
    results = []
    for label, kind, name, quantized in rows:  # speed first, all rows close together in time
        model = load_row("torch" if kind == "torch" else "onnx", name, quantized, args.threads)
        sps = speed(model, sentences, args.batch_size, args.repeats)
        results.append({"model": label if label != "student" else f"student {name}", "name": name, "backend": kind, "sentences_per_s": sps})
        print(f"{label:32s} {kind:10s} {sps:8.1f} sentences/s", flush=True)
        write_json_atomic(args.json, {"rows": results})
        del model
    if args.profile:
        for r, (_label, kind, name, quantized) in zip(results, rows):
            if kind == "torch":
                continue
            prof = profile_onnx(load_row("onnx", name, quantized, args.threads), sentences, args.batch_size, args.threads)
            r["profile"] = prof
            top = ", ".join(f"{k} {v:.2f}" for k, v in list(prof["by_op"].items())[:4])
            print(f"{r['model']:32s} {kind:10s} profiled pass {prof['wall_s']:.2f} s: matrix products {prof['gemm_s']:.2f} s, "
                  f"other kernels {prof['other_s']:.2f} s ({top})", flush=True)
        write_json_atomic(args.json, {"rows": results, "cpu_int8_isa": isa})
        fp32_p, int8_p = (r.get("profile") for r in results[-2:])
        if fp32_p and int8_p and int8_p["gemm_s"]:
            print(f"int8 matrix products / fp32 matrix products: {fp32_p['gemm_s'] / int8_p['gemm_s']:.2f}x faster; "
                  f"CPU int8 instructions: {isa}")
    recorded = {}
    for spec in args.recorded_sts:
        name, avg, source = (spec.split("=", 2) + ["", ""])[:3]
        recorded[name] = (float(avg), source)
    if not args.no_sts:
        # ONNX rows first: they are quick, and on a loaded machine the PyTorch row may take long
        for r, (label, kind, name, quantized) in sorted(zip(results, rows), key=lambda rr: rr[1][1] == "torch"):
            if label != "student" and args.sts_students_only:
                if name in recorded:
                    r["sts_recorded"] = {"Avg": recorded[name][0], "source": recorded[name][1]}
                continue
            model = load_row("torch" if kind == "torch" else "onnx", name, quantized, args.threads)
            start = time.perf_counter()
            r["sts"] = evaluate_sts(model, sts_dir=args.sts_dir, data=data, batch_size=args.batch_size, progress=False)
            r["sts_seconds"] = time.perf_counter() - start
            print(f"{r['model']:32s} {kind:10s} STS {format_row(r['sts'])} avg {r['sts']['Avg']:.2f} ({r['sts_seconds']:.0f} s)", flush=True)
            write_json_atomic(args.json, {"rows": results})
            del model
    load_after = os.getloadavg()

    by = {(r["model"].split()[0], r["backend"]): r for r in results}
    student_torch = by[("student", "torch")]
    mpnet = next((r for r in results if "mpnet" in r["name"]), None)
    int8, fp32 = by[("student", "onnx int8")], by[("student", "onnx")]
    ratios = {
        "int8 / student PyTorch (target >= 2.5)": int8["sentences_per_s"] / student_torch["sentences_per_s"],
        "int8 / mpnet (target >= 15)": int8["sentences_per_s"] / mpnet["sentences_per_s"] if mpnet else None,
    }
    if not args.no_sts:
        ratios["STS loss int8 vs ONNX fp32 (target <= 0.5)"] = fp32["sts"]["Avg"] - int8["sts"]["Avg"]
        ratios["STS loss ONNX fp32 vs PyTorch (target <= 0.01)"] = student_torch["sts"]["Avg"] - fp32["sts"]["Avg"]
    for k, v in ratios.items():
        print(f"{k}: {v if v is None else round(v, 3)}")
    write_json_atomic(args.json, {"rows": results, "ratios": ratios, "load_before": load_before, "load_after": load_after,
                                  "cpu_int8_isa": isa})

    if args.bench_md:
        device = device_name(__import__("torch").device("cpu")).split(", load avg")[0] + f" ({isa})"
        command = command_line("cpu_serving.py", argv if argv is not None else sys.argv[1:])
        commit = git_commit()
        for r in results:
            add_row(Path(args.bench_md), SECTION, INTRO, COLUMNS, {
                "date": dt.date.today().isoformat(),
                "device": device,
                "load avg before -> after": f"{load_before[0]:.1f} -> {load_after[0]:.1f}",
                "command": f"`{command}`",
                "commit": commit,
                "model": r["model"],
                "backend": {"torch": "PyTorch fp32", "onnx": "ONNX fp32", "onnx int8": "ONNX int8"}[r["backend"]],
                "sentences/s": f"{r['sentences_per_s']:.0f}",
                "x student PyTorch": f"{r['sentences_per_s'] / student_torch['sentences_per_s']:.2f}x",
                "x mpnet": f"{r['sentences_per_s'] / mpnet['sentences_per_s']:.1f}x" if mpnet else "",
                "STS avg": f"{r['sts']['Avg']:.2f}" if "sts" in r else (
                    f"{r['sts_recorded']['Avg']:.2f} (recorded: {r['sts_recorded']['source']}; not re-measured)" if "sts_recorded" in r else ""),
                "STS eval s": f"{r['sts_seconds']:.0f}" if "sts_seconds" in r else "",
                "notes": "; ".join(x for x in (args.label, (
                    f"profiled: matrix products {r['profile']['gemm_s']:.2f} s, other kernels {r['profile']['other_s']:.2f} s"
                    if "profile" in r else "")) if x),
            })
        print(f"rows appended to {args.bench_md}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
