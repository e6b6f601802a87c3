#!/usr/bin/env bash
# The prepared GPU check: run it as is on a single-GPU machine (H100, H200, A100...) from a checkout of musicssl.
#
#   bash docker/gpu_check.sh                          # the base models on the GPU, one table (a few minutes)
#   bash docker/gpu_check.sh --device cpu --tiny      # the same code on the CPU, tiny models (what CI runs)
#
# Needs Python with PyTorch and numpy (and safetensors), as a GPU machine's image has them; no Ray, MLflow or audio
# libraries. pydantic and PyYAML, when the Python lacks them, are installed from the wheels folder $WHEELS
# (default: .gpu-wheels beside docker/, made by `make gpu-wheels`, about 10 MiB) into a scratch folder, never into
# the machine's Python. Any further arguments go to `python -m musicssl.gpu_check` (--help lists them).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
pythonpath="$root/platform"
if ! "$python" -c "import pydantic, yaml" 2>/dev/null; then
  wheels="${WHEELS:-$root/.gpu-wheels}"
  deps="${TMPDIR:-/tmp}/musicssl-gpu-check-deps"
  if [ ! -d "$wheels" ]; then
    echo "gpu_check: this Python lacks pydantic/PyYAML and there is no wheels folder at $wheels (make gpu-wheels)" >&2
    exit 2
  fi
  "$python" -m pip install -q --no-index --find-links "$wheels" --target "$deps" pydantic pyyaml
  pythonpath="$pythonpath:$deps"
fi
export PYTHONPATH="$pythonpath${PYTHONPATH:+:$PYTHONPATH}"
exec "$python" -m musicssl.gpu_check "$@"
