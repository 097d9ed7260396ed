#!/usr/bin/env bash
# Create (or complete) the project's virtual environment: the pinned stack of
# requirements.txt, mmcv 2.1.0 with its compiled ops, and gplq_mm (editable).
# Idempotent: each step is skipped when its result is already importable.
#   VENV=path     where the environment lives (default: .venv)
#   PYTHON=exe    interpreter used to create it (default: python3)
#   GPLQ_CACHE    where the built mmcv wheel is kept (default ~/.cache/gplq_mm)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
CACHE=${GPLQ_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gplq_mm}
MMCV=2.1.0
log() { echo "[setup_env] $*"; }

[ -x "$VENV/bin/python" ] || { log "creating $VENV"; ${PYTHON:-python3} -m venv "$VENV"; }
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check -q)

log "installing requirements.txt"
"${PIP[@]}" install -r requirements.txt
# Some dependencies pull a newer setuptools; mmcv's setup.py needs pkg_resources.
"${PIP[@]}" install "setuptools<81" wheel

if ! "$PY" -c "import mmcv, mmcv.ops; assert mmcv.__version__ == '$MMCV'" 2>/dev/null; then
  TAG=$("$PY" -c "import sys, torch; print(f'py{sys.version_info[0]}{sys.version_info[1]}-torch{torch.__version__}')")
  WHEELS="$CACHE/mmcv-$MMCV-$TAG"
  if ! ls "$WHEELS"/mmcv-*.whl >/dev/null 2>&1; then
    log "building mmcv $MMCV with ops for $TAG (about 7 min on 2 cores)"
    SRC=$(mktemp -d)
    "${PIP[@]}" download --no-deps --no-build-isolation --no-binary :all: \
      "mmcv==$MMCV" -d "$SRC"
    tar xzf "$SRC/mmcv-$MMCV.tar.gz" -C "$SRC"
    # torch 2.14 headers need C++20.
    sed -i 's/-std=c++1[47]/-std=c++20/g' "$SRC/mmcv-$MMCV/setup.py"
    MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} "${PIP[@]}" wheel \
      --no-build-isolation --no-deps -w "$WHEELS.tmp" "$SRC/mmcv-$MMCV"
    mv "$WHEELS.tmp" "$WHEELS"
    rm -rf "$SRC"
  fi
  log "installing mmcv from $WHEELS"
  "${PIP[@]}" install --no-deps --force-reinstall "$WHEELS"/mmcv-*.whl
fi

"${PIP[@]}" install --no-deps --no-build-isolation -e .
"$PY" -c "import mmcv.ops, mmdet, mmpretrain, timm, gplq_mm; print('[setup_env] ok: mmcv', mmcv.__version__, 'torch', __import__('torch').__version__)"
