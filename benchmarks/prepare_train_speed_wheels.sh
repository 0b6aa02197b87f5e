#!/usr/bin/env bash
# Fill .whl/train_speed/ (git-ignored through /.whl/) with what benchmarks/gpu_train_speed.sh
# installs on the GPU host: wheels for CPython 3.12 on x86_64, without dependencies (the host
# has numpy, jax, torch, pandas, pyarrow, scikit-learn, h5py, rich, absl-py, ml-dtypes, tqdm).
# FuxiCTR also names polars and ray[data]: imported at its modules' tops, never called by the
# benchmark, stubbed there (benchmarks/ranker_throughput.py FUXICTR_IMPORT_ONLY_MODULES).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
rm -rf .whl/train_speed
mkdir -p .whl/train_speed
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
  -d .whl/train_speed \
  keras==3.15.1 keras-rs==0.4.0 namex==0.1.0 optree==0.20.0 fuxictr==2.3.10 \
  pydantic==2.13.4 pydantic-core==2.46.4 annotated-types==0.7.0 typing-inspection==0.4.5
du -sh .whl/train_speed
