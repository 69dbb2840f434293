#!/usr/bin/env bash
# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
#
# Build the separate virtual environment that the real `monailabel` 0.8.5 package needs, then run
# tests/test_monailabel.py in it (its test_real_monailabel_bundle_tasks runs only where monailabel imports).
#
#   bash scripts/monailabel_env.sh                       # venv at <repo>/.venv-monailabel
#   bash scripts/monailabel_env.sh /tmp/ml-venv          # venv elsewhere
#   bash scripts/monailabel_env.sh /tmp/ml-venv --server-check   # also scripts/monailabel_server_check.py
#
# Why a separate venv: monailabel imports torchvision, which does not import beside the CPU-only torch build of
# requirements.txt, and it needs numpy < 2; pydicom 3 breaks pydicom-seg (used by monailabel), hence pydicom 2.4.4.
# It takes PyPI's default torch/torchvision build (with its CUDA libraries; the venv is about 8 GB; it runs on CPU
# too).
# Idempotent: a venv whose recorded requirement set matches, and in which monailabel imports, is not reinstalled.
# PYTHON chooses the interpreter (default: python3.11, else python3).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ROOT}/.venv-monailabel"
SERVER_CHECK=0
for arg in "$@"; do
    case "$arg" in
        --server-check) SERVER_CHECK=1 ;;
        -h | --help)
            sed -n '5,/^set -euo/p' "${BASH_SOURCE[0]}" | grep '^#' | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        -*)
            echo "unknown option: $arg" >&2
            exit 2
            ;;
        *) VENV="$arg" ;;
    esac
done
mkdir -p "$(dirname "$VENV")"
VENV="$(cd "$(dirname "$VENV")" && pwd)/$(basename "$VENV")"
PY="${VENV}/bin/python"

# The bundle's requirements without its torch, numpy and jsonschema pins: the CPU torch wheel and numpy 2 do not fit
# here, and pydicom-seg 0.4.1 (a monailabel dependency) needs jsonschema < 4 (only verify_metadata uses jsonschema).
mapfile -t BUNDLE_REQS < <(grep -v -E '^\s*(#|$)' "${ROOT}/requirements.txt" |
    grep -v -i -E '^\s*(torch|numpy|jsonschema)\s*([=<>!~;[]|$)')
# torch/torchvision first: sam2 (a monailabel dependency, an sdist) imports torch in its setup.py.
TORCH_REQS=("torch==2.14.1" "torchvision==0.29.1" "numpy<2" "setuptools" "wheel")
ML_REQS=("monailabel==0.8.5" "pydicom==2.4.4" "dicomweb-client==0.59.1" "pynetdicom==2.0.2" "numpy<2" "sam2==1.1.0"
    "jsonschema")
STAMP="${VENV}/.multi-condos-requirements"
WANTED="$(printf '%s\n' "${TORCH_REQS[@]}" "${ML_REQS[@]}" "${BUNDLE_REQS[@]}")"

start=$(date +%s)
if [[ ! -x "$PY" ]]; then
    PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
    echo "== creating the venv ${VENV} with ${PYTHON} ($("$PYTHON" --version 2>&1))"
    "$PYTHON" -m venv "$VENV"
fi
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANTED" ]] && "$PY" -c "import monailabel, torchvision" 2>/dev/null; then
    echo "== ${VENV}: requirements already installed (delete ${STAMP} to reinstall)"
else
    echo "== installing into ${VENV}"
    "$PY" -m pip install --quiet --upgrade pip
    echo "-- pip install ${TORCH_REQS[*]}"
    "$PY" -m pip install "${TORCH_REQS[@]}"
    echo "-- pip install ${ML_REQS[*]} ${BUNDLE_REQS[*]}"
    # no build isolation: sam2's setup.py builds against the torch just installed (no CUDA extension needed)
    SAM2_BUILD_CUDA=0 "$PY" -m pip install --no-build-isolation "${ML_REQS[@]}" "${BUNDLE_REQS[@]}"
    printf '%s\n' "$WANTED" >"$STAMP"
    echo "== installed in $(($(date +%s) - start)) s; venv size: $(du -sh "$VENV" | cut -f1)"
fi
"$PY" - <<'EOF'
import monai, monailabel, numpy, pydicom, torch, torchvision
print(f"monailabel {monailabel.__version__}, monai {monai.__version__}, torch {torch.__version__}, "
      f"torchvision {torchvision.__version__}, numpy {numpy.__version__}, pydicom {pydicom.__version__}")
EOF

cd "$ROOT"
status=0
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
echo "== running: ${PY} -m pytest -q -rfEsp tests/test_monailabel.py"
"$PY" -m pytest -q -rfEsp tests/test_monailabel.py 2>&1 | tee "$log" || status=$?
real="$(grep -E '^(PASSED|FAILED|SKIPPED|ERROR).*test_real_monailabel_bundle_tasks' "$log" || true)"
echo "== tests/test_monailabel.py: exit ${status}; real-monailabel test: ${real:-not run}"
if [[ $status -eq 0 && "$real" != PASSED* ]]; then
    echo "== the real-monailabel test did not pass in ${VENV}" >&2
    status=1
fi
if [[ $SERVER_CHECK -eq 1 ]]; then
    echo "== running: ${PY} scripts/monailabel_server_check.py"
    "$PY" scripts/monailabel_server_check.py || status=$?
fi
exit $status
