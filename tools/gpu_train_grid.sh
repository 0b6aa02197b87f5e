#!/usr/bin/env bash
# Train ranker variants x seeds on a GPU host (KERAS_BACKEND=jax), several processes per GPU,
# from a run's training set; the CPU machine then evaluates, exports and reports:
#
#   # on the GPU host, from the repository root, with the run's lake/training and models/rqvae:
#   OUT=/path/out SEEDS="0 1 2" PER_GPU=4 bash tools/gpu_train_grid.sh CONFIG VARIANT...
#   # back on the CPU machine, with OUT/ranker.tar unpacked into the repository root:
#   saviorrec run --config CONFIG --full-grid --only evaluate --only export --only report
#
# CONFIG may be several configs joined by commas (e.g. a learning-rate sweep, each with its own
# run.root): every config trains every variant and seed. Each (config, variant, seed) is one
# `saviorrec train` process (compilation is CPU-bound, so processes in parallel keep the GPUs
# busy); jobs go round-robin over the visible GPUs, PER_GPU at a time on each, with JAX's memory
# preallocation off so they share a GPU. Writes OUT/ranker.tar (each run's models/ranker with
# what evaluation reads: each run's meta, history and predictions (saviorrec.lake.RankerFiles);
# the model only for KEEP_MODEL, default full/seed<first seed>, the one the export stage reads;
# no checkpoints), OUT/train_grid.json (per-job seconds and exit codes) and logs. SPLIT_MB=N
# splits ranker.tar into parts of N MiB (OUT/ranker.tar.part.aa, ...; join them with
# `cat ranker.tar.part.* > ranker.tar`) for hosts that return files up to a size.
# The host needs the project with its [ranker] extra and a JAX build
# (pip install ".[ranker]" "jax[cuda12]"); PY is the Python that has them (default: python3).
set -uo pipefail

IFS=, read -r -a CONFIGS <<<"$1"; shift
VARIANTS=("$@")
OUT="${OUT:-/tmp/train_grid}"
SEEDS="${SEEDS:-0 1 2}"
PER_GPU="${PER_GPU:-4}"
PY="${PY:-python3}"
mkdir -p "$OUT/logs"
NGPU="$(nvidia-smi -L 2>/dev/null | wc -l)"
[ "$NGPU" -ge 1 ] || NGPU=1
START=$(date +%s)

jobs_file="$OUT/jobs.txt"; : >"$jobs_file"
i=0
for c in "${CONFIGS[@]}"; do
  for v in "${VARIANTS[@]}"; do
    for s in $SEEDS; do
      echo "$((i % NGPU)) $c $v $s" >>"$jobs_file"; i=$((i + 1))
    done
  done
done
echo "[train_grid] $i jobs on $NGPU GPU(s), $PER_GPU per GPU"

run_job() {  # run_job GPU CONFIG VARIANT SEED
  local gpu="$1" config="$2" v="$3" s="$4" t0 rc ms log
  t0=$(date +%s%N)
  CUDA_VISIBLE_DEVICES="$gpu" KERAS_BACKEND=jax XLA_PYTHON_CLIENT_PREALLOCATE=false \
    "$PY" -m saviorrec.cli train --config "$config" --variant "$v" --seed "$s" \
    >"$OUT/logs/$(basename "$config" .yaml)-$v-seed$s.log" 2>&1
  rc=$?
  ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  printf '{"config": "%s", "variant": "%s", "seed": %s, "gpu": %s, "ms": %s, "exit": %s}\n' \
    "$config" "$v" "$s" "$gpu" "$ms" "$rc" >>"$OUT/jobs.jsonl"
  echo "[train_grid] $config $v seed $s on GPU $gpu: exit $rc"
}
export -f run_job
export OUT PY
: >"$OUT/jobs.jsonl"
# GRID_LIMIT_S=N stops jobs still running after N seconds (killed: absent from jobs.jsonl), so
# that what finished is packed before a host's own time limit ends the call.
timeout --kill-after=10 "${GRID_LIMIT_S:-0}" \
  xargs -P "$((NGPU * PER_GPU))" -L 1 bash -c 'run_job "$0" "$1" "$2" "$3"' <"$jobs_file"

KEEP_MODEL="${KEEP_MODEL:-full/seed${SEEDS%% *}}"
files=()
while IFS= read -r f; do files+=("$f"); done < <("$PY" - "$KEEP_MODEL" "${CONFIGS[@]}" <<'EOF'
import sys
from pathlib import Path

from saviorrec.config import load_config
from saviorrec.lake import Lake, RankerFiles

keep, *configs = sys.argv[1:]
for config in configs:
    lake = Lake.from_config(load_config(config))
    for meta in lake.ranker_metas():
        run = RankerFiles(meta.parent)
        wanted = [run.meta, run.history, run.predictions]
        wanted += [run.model] if meta.parent == lake.ranker_root / keep else []
        for path in wanted:
            if path.is_file():
                print(path.relative_to(Path.cwd()))
EOF
)
tar -cf "$OUT/ranker.tar" "${files[@]}"
if [ -n "${SPLIT_MB:-}" ]; then
  split -b "${SPLIT_MB}m" "$OUT/ranker.tar" "$OUT/ranker.tar.part." && rm "$OUT/ranker.tar"
fi
"$PY" - "$OUT" "$START" "$NGPU" "$PER_GPU" <<'EOF'
import json, sys, time
out, start, ngpu, per_gpu = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
jobs = [json.loads(line) for line in open(f"{out}/jobs.jsonl")]
json.dump({"gpus": ngpu, "per_gpu": per_gpu, "wall_s": round(time.time() - start, 1),
           "failed": [j for j in jobs if j["exit"]], "jobs": jobs},
          open(f"{out}/train_grid.json", "w"), indent=2)
print(f"[train_grid] {len(jobs)} jobs, {sum(1 for j in jobs if j['exit'])} failed, "
      f"{time.time() - start:.0f} s")
EOF
