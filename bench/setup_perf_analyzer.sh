#!/usr/bin/env bash
# Make the perf_analyzer binary of the tritonclient==2.41.0 wheel runnable (no GPU needed for
# gRPC): it links libb64.so.0d (Debian: libb64-0d) and libcudart.so.12 (PyPI:
# nvidia-cuda-runtime-cu12). The CUDA runtime goes into bench/.tools/cudart (gitignored),
# never into the project's dependencies; bench/run.py puts it on LD_LIBRARY_PATH itself.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
if ! ldconfig -p | grep -q 'libb64\.so\.0d'; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq libb64-0d
  else
    sudo apt-get update -qq && sudo apt-get install -y -qq libb64-0d
  fi
fi
if [ ! -e bench/.tools/cudart/nvidia/cuda_runtime/lib/libcudart.so.12 ]; then
  "$PY" -m pip install -q --target bench/.tools/cudart nvidia-cuda-runtime-cu12
fi
LD_LIBRARY_PATH=bench/.tools/cudart/nvidia/cuda_runtime/lib ldd .venv/bin/perf_analyzer \
  | grep 'not found' && { echo "perf_analyzer still lacks the libraries above" >&2; exit 1; }
echo "perf_analyzer is ready: $PWD/.venv/bin/perf_analyzer"
