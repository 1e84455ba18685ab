#!/usr/bin/env bash
# Install everything and run every check: lint, types, unit and integration tests.
# In CI (CI=true) a missing component fails the tests instead of skipping them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --dev
.venv/bin/ruff check src tests bench
.venv/bin/mypy
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
