#!/usr/bin/env bash
# The GPU run (issue 37): everything after staging, in one command of at most 9 minutes on an H100.
#
#   on the GPU machine, after the staging calls (benchmarks/gpu_stage.sh prints them):
#     GPU_COMMIT=<commit> bash benchmarks/gpu_run.sh          ($OUT is set there)
#   here, on CPU, at tiny sizes (tests/test_gpu_run.py runs this):
#     GPU_DRY=1 OUT=/tmp/gpu-dry GPU_WORK=/tmp/gpu-dry-work bash benchmarks/gpu_run.sh
#
# Steps (benchmarks/gpu_run.py): 1 facts, 2 correctness (smoke train, kill + --resume), 3 the offline
# benchmark, 4 speed, 5 the decoder-teacher smoke run (when its recipe exists), 6 the targets. Each runs
# under its own budget; results go to $OUT as they are measured, so a timeout still returns what finished:
#   $OUT/rows.jsonl        one JSON object a line, one per measurement (and one per skipped or stopped step)
#   $OUT/offline-sts.json  the offline benchmark's rows (loss, student, seed, avg, the 7 sets, sentences/s, peak GiB)
#   $OUT/offline-sts.md    its BENCHMARKS.md section(s);  $OUT/speed.md: the cache and encode speed rows
#   $OUT/run.log           everything printed, time-stamped per step;  $OUT/nvidia-smi.txt
# (at most 8 files come back from $OUT, so everything else stays under $GPU_WORK).
# Environment: GPU_STAGE or GPU_MODELS_DIR / GPU_CORPUS_DIR / GPU_STS_DIR (where the files are), GPU_WORK,
# GPU_TOTAL_S (540), GPU_COMMIT, PYTHON; GPU_SEEDS (42,43,44), GPU_SEED_LOSSES (infonce,ibkd),
# GPU_OTHER_LOSSES (mse,cosine,crd,hpd), GPU_EXTRA (all-minilm-l6-v2:infonce; empty: none),
# GPU_RESUME_TOL (0.1), GPU_DECODER_RECIPE; a dry run also GPU_TEACHER (all-minilm-l6-v2).
set -u -o pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

# ---- where things are: the staged files (gpu_stage.sh), overridable ------------------------------
STAGE=${GPU_STAGE:-/tmp/stage/files}
GPU_DRY=${GPU_DRY:-0}
if [ "$GPU_DRY" != "0" ]; then
  # CPU dry run: this machine's all-MiniLM-L6-v2 (gpu_run.py links it) and ../shared's data
  GPU_CORPUS_DIR=${GPU_CORPUS_DIR:-$REPO/../shared/data/corpus}
  GPU_STS_DIR=${GPU_STS_DIR:-$REPO/../shared/data/sts}
  GPU_MODELS_DIR=${GPU_MODELS_DIR:-}
  GPU_TOTAL_S=${GPU_TOTAL_S:-3600}  # a CPU is slow: the budgets (x10 in gpu_run.py) must not stop a step
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # two torch threads thrash each other on a busy 2-core machine
else
  GPU_MODELS_DIR=${GPU_MODELS_DIR:-$STAGE/models}      # all-mpnet-base-v2/, all-MiniLM-L6-v2/ (fp16 safetensors)
  GPU_CORPUS_DIR=${GPU_CORPUS_DIR:-$STAGE/data/corpus} # the three corpus files, 164,834 sentences
  GPU_STS_DIR=${GPU_STS_DIR:-$STAGE/data/sts}          # the seven STS sets and STS-B dev
fi
OUT=${OUT:-$REPO/runs/gpu-run-out}
GPU_WORK=${GPU_WORK:-/tmp/gpu-run}
GPU_TOTAL_S=${GPU_TOTAL_S:-540}  # 9 minutes: the command's whole budget; gpu_run.py splits it into steps
PY=${PYTHON:-python3}
if [ "$GPU_DRY" != "0" ] && [ -z "${PYTHON:-}" ] && [ -x "$REPO/.venv/bin/python" ]; then PY=$REPO/.venv/bin/python; fi

export GPU_DRY GPU_MODELS_DIR GPU_CORPUS_DIR GPU_STS_DIR OUT GPU_WORK
export GPU_T0=$(date +%s) GPU_DEADLINE=$(( $(date +%s) + GPU_TOTAL_S ))
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=true
[ -n "${GPU_COMMIT:-}" ] && export DISTILL_COMMIT=$GPU_COMMIT   # the GPU machine's copy has no .git
mkdir -p "$OUT" "$GPU_WORK"
LOG=$OUT/run.log

stamp() { echo "[gpu_run $(date -u +%H:%M:%S) +$(( $(date +%s) - GPU_T0 ))s] $*" | tee -a "$LOG"; }
row() {  # a row written by the shell itself: step, name, status, why
  printf '{"step": %s, "name": "%s", "status": "%s", "utc": "%s", "elapsed_s": %s, "why": "%s"}\n' \
    "$1" "$2" "$3" "$(date -u +%H:%M:%S)" "$(( $(date +%s) - GPU_T0 ))" "$4" >> "$OUT/rows.jsonl"
}

# a run here into an $OUT that holds an earlier run's rows keeps them aside (on the GPU machine $OUT starts empty)
[ -s "$OUT/rows.jsonl" ] && mv "$OUT/rows.jsonl" "$OUT/rows.before-$(date +%Y%m%d-%H%M%S).jsonl"
stamp "start: dry=$GPU_DRY total ${GPU_TOTAL_S}s models=${GPU_MODELS_DIR:-linked from this machine} corpus=$GPU_CORPUS_DIR sts=$GPU_STS_DIR work=$GPU_WORK python=$PY"
rm -f "$GPU_WORK/current-step"
from=1
while :; do
  left=$(( GPU_DEADLINE - $(date +%s) ))
  if [ "$left" -le 5 ]; then row "$from" "driver" "skipped" "no time left for steps $from..6"; break; fi
  # the outer guard: gpu_run.py stops each step itself; `timeout` catches a call that never returns
  timeout -k 10 "$left" "$PY" benchmarks/gpu_run.py --from-step "$from" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  current=$(cat "$GPU_WORK/current-step" 2>/dev/null || echo "0 setup")
  step=${current%% *}; name=${current#* }
  [ "$step" = "done" ] && break
  if [ "$step" = "0" ]; then  # it died before its first step (the staged files missing, say): a restart would too
    stamp "driver failed before step 1 (exit $rc): see the lines above"
    row 0 "setup" "fail" "the driver failed before step 1 (exit $rc): see run.log"
    break
  fi
  if [ "$(( GPU_DEADLINE - $(date +%s) ))" -le 5 ]; then
    stamp "driver stopped by the total budget (exit $rc) during step $step ($name)"
    row "$step" "$name" "stopped" "the whole command's budget of ${GPU_TOTAL_S}s ran out during this step (exit $rc)"
    break
  fi
  stamp "driver died (exit $rc) during step $step ($name); going on at step $(( step + 1 ))"
  row "$step" "$name" "fail" "the process died (exit $rc) during this step; the run went on at the next step"
  from=$(( step + 1 ))
  [ "$from" -gt 6 ] && break
done
stamp "end: $(wc -l < "$OUT/rows.jsonl" 2>/dev/null || echo 0) rows in $OUT/rows.jsonl"
ls -la "$OUT" | tee -a "$LOG"
