#!/usr/bin/env bash
# Create (or complete) the project's virtual environment: the pinned stack of
# requirements.txt, mmcv 2.1.0 with its compiled ops, and gplq_mm (editable).
# Idempotent: each step is skipped when its result is already importable.
#   VENV=path     where the environment lives (default: .venv)
#   PYTHON=exe    interpreter used to create it (default: python3)
#   GPLQ_CACHE    where the built mmcv wheel is kept (default ~/.cache/gplq_mm)
# mmcv's ops are built with CUDA when nvcc is on PATH and torch sees a GPU
# (TORCH_CUDA_ARCH_LIST: the visible GPUs' when unset), else for the CPU; the
# wheel cache is tagged with what they were built for.
#   --print-tag   print that tag (decided with $VENV's torch) and exit
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
CACHE=${GPLQ_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gplq_mm}
MMCV=2.1.0
PY="$VENV/bin/python"
log() { echo "[setup_env] $*"; }
die() { echo "[setup_env] error: $*" >&2; exit 1; }

# One line from the venv's torch: <python>-torch<version>, its CUDA version
# ('-' for a CPU build), 1 when it sees a GPU, and the GPUs' archs as torch's
# extension builder picks them when TORCH_CUDA_ARCH_LIST is unset (each
# capability, clamped to torch's newest, the last one +PTX).
probe() {
  "$PY" - <<'EOF'
import sys
import torch
cuda = torch.version.cuda
gpu = bool(cuda) and torch.cuda.is_available()
archs = '-'
if gpu:
    newest = max(tuple(divmod(int(a[3:]), 10)) for a in torch.cuda.get_arch_list()
                 if a.startswith('sm_') and a[3:].isdigit())
    caps = sorted({min(torch.cuda.get_device_capability(i), newest)
                   for i in range(torch.cuda.device_count())})
    archs = ';'.join('%d.%d' % c for c in caps) + '+PTX'
print(f'py{sys.version_info[0]}{sys.version_info[1]}-torch{torch.__version__}',
      cuda or '-', int(gpu), archs)
EOF
}

# Sets OPS (cuda | cpu), TAG (the wheel cache's), TORCH_CUDA and GPU.
mmcv_target() {
  local line base archs nvcc release
  line=$(probe) || die "cannot import torch with $PY"
  read -r base TORCH_CUDA GPU archs <<<"$line"
  OPS=cpu TAG="$base-cpu"
  if [ "$GPU" != 1 ]; then
    log "mmcv ops: CPU (torch sees no CUDA GPU)" >&2
  elif ! nvcc=$(command -v nvcc); then
    log "mmcv ops: CPU (nvcc is not on PATH)" >&2
  else
    release=$("$nvcc" --version | sed -n 's/.*release \([0-9]*\.[0-9]*\).*/\1/p')
    [ "$release" = "$TORCH_CUDA" ] || die "$nvcc is CUDA ${release:-?}," \
      "torch was built with CUDA $TORCH_CUDA: put nvcc $TORCH_CUDA on PATH"
    export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$archs}
    archs=$(echo "$TORCH_CUDA_ARCH_LIST" | tr -d '.' | tr -s ' ;' '_')
    OPS=cuda TAG="$base-cu${TORCH_CUDA//./}-sm$archs"
    log "mmcv ops: CUDA $TORCH_CUDA ($nvcc, TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST)" >&2
  fi
}

# mmcv $MMCV with ops importable; with a GPU visible, compiled for torch's CUDA.
mmcv_ok() {
  "$PY" - "$MMCV" "$GPU" 2>/dev/null <<'EOF'
import sys
import mmcv
import mmcv.ops
import torch
assert mmcv.__version__ == sys.argv[1]
assert sys.argv[2] != '1' or \
    mmcv.ops.get_compiling_cuda_version() == torch.version.cuda
EOF
}

# Whether the mmcv wheels in $1 have CPU ops only (no CUDA library linked).
cpu_wheels() {
  "$PY" - "$1"/mmcv-*.whl <<'EOF'
import sys
import zipfile
for path in sys.argv[1:]:
    with zipfile.ZipFile(path) as z:
        if any(b'libc10_cuda' in z.read(n) for n in z.namelist()
               if n.startswith('mmcv/_ext')):
            sys.exit(1)
EOF
}

if [ "${1:-}" = --print-tag ]; then
  [ -x "$PY" ] || die "--print-tag needs $VENV with torch installed"
  mmcv_target
  echo "$TAG"
  exit 0
fi

[ -x "$PY" ] || { log "creating $VENV"; ${PYTHON:-python3} -m venv "$VENV"; }
PIP=("$PY" -m pip --disable-pip-version-check -q)

log "installing requirements.txt"
"${PIP[@]}" install -r requirements.txt
# Some dependencies pull a newer setuptools; mmcv's setup.py needs pkg_resources.
"${PIP[@]}" install "setuptools<81" wheel

mmcv_target
if ! mmcv_ok; then
  # mmcv would build CUDA ops without nvcc (it asks torch for a GPU), and
  # CPU ops fail on CUDA tensors: refuse before a 7-minute build.
  [ "$GPU" != 1 ] || [ "$OPS" = cuda ] || die "torch sees a GPU (CUDA" \
    "$TORCH_CUDA) but nvcc is not on PATH: mmcv's ops need nvcc $TORCH_CUDA"
  WHEELS="$CACHE/mmcv-$MMCV-$TAG"
  # A cache from before the tag had its CUDA marker: reuse a CPU build.
  LEGACY="$CACHE/mmcv-$MMCV-${TAG%-cpu}"
  if [ "$OPS" = cpu ] && ! ls "$WHEELS"/mmcv-*.whl >/dev/null 2>&1 &&
     ls "$LEGACY"/mmcv-*.whl >/dev/null 2>&1 && cpu_wheels "$LEGACY"; then
    WHEELS=$LEGACY
  fi
  if ! ls "$WHEELS"/mmcv-*.whl >/dev/null 2>&1; then
    log "building mmcv $MMCV with ops for $TAG (about 7 min on 2 cores)"
    SRC=$(mktemp -d)
    "${PIP[@]}" download --no-deps --no-build-isolation --no-binary :all: \
      "mmcv==$MMCV" -d "$SRC"
    tar xzf "$SRC/mmcv-$MMCV.tar.gz" -C "$SRC"
    # torch 2.14 headers need C++20.
    sed -i 's/-std=c++1[47]/-std=c++20/g' "$SRC/mmcv-$MMCV/setup.py"
    FORCE_CUDA=$([ "$OPS" = cuda ] && echo 1 || echo 0) \
    MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} "${PIP[@]}" wheel \
      --no-build-isolation --no-deps -w "$WHEELS.tmp" "$SRC/mmcv-$MMCV"
    mv "$WHEELS.tmp" "$WHEELS"
    rm -rf "$SRC"
  fi
  log "installing mmcv from $WHEELS"
  "${PIP[@]}" install --no-deps --force-reinstall "$WHEELS"/mmcv-*.whl
fi
# With a GPU, the ops must be CUDA ones of torch's CUDA (a CPU build imports
# fine, then RoIAlign / NMS fail on CUDA tensors).
[ "$GPU" != 1 ] || "$PY" - "${WHEELS:-$CACHE}" <<'EOF'
import sys
import mmcv.ops
import torch
got = mmcv.ops.get_compiling_cuda_version()
if got != torch.version.cuda:
    sys.exit(f'[setup_env] error: torch sees a GPU (CUDA {torch.version.cuda}) '
             f'but mmcv {mmcv.__version__} ops are compiled for CUDA {got!r}: '
             f'remove {sys.argv[1]} and rerun with nvcc {torch.version.cuda} '
             'on PATH')
EOF

"${PIP[@]}" install --no-deps --no-build-isolation -e .
"$PY" -c "import mmcv.ops, mmdet, mmpretrain, timm, gplq_mm; print('[setup_env] ok: mmcv', mmcv.__version__, 'torch', __import__('torch').__version__)"
