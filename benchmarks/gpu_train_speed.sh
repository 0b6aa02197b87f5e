#!/usr/bin/env bash
# Issue 24 on the GPU host, one call, from the repository root:
#
#   bash benchmarks/gpu_train_speed.sh [train_speed.py options]
#
# with .whl/train_speed carried (made here by benchmarks/prepare_train_speed_wheels.sh: keras,
# keras-rs, namex, optree, pydantic + its three dependencies, fuxictr; ~6 MB). The host has its
# own Python (torch, CUDA jax, pandas, pyarrow, scikit-learn; no TensorFlow, no network): the
# wheels go to /tmp/site, ahead on PYTHONPATH. Writes to $OUT (default benchmarks/results):
#   train_speed.json          the results (rewritten after each part)
#   train_speed.log           this script's output; train_speed_{ours,din_fit,din_best}.log
#   nvidia_smi.txt            the GPU before the run
# Everything ends within LIMIT_S seconds (default 540): the parts have their own limits inside
# it, and what finished is in the JSON whatever stops later.
set -uo pipefail
OUT="${OUT:-benchmarks/results}"
mkdir -p "$OUT"
PY=/opt/torch/.venv/bin/python3
[ -x "$PY" ] || PY="$(command -v python3)"
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/train_speed/*.whl || { echo "wheel install failed"; exit 1; }
export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}" KERAS_BACKEND=jax PYTHONUNBUFFERED=1
nvidia-smi >"$OUT/nvidia_smi.txt" 2>&1 || true
timeout --kill-after=10 "${LIMIT_S:-540}" "$PY" benchmarks/train_speed.py "$@" 2>&1 \
  | tee "$OUT/train_speed.log"
