#!/usr/bin/env bash
# Install everything and run every check: lint, types, then the unit tier, then the
# integration tier (tests under tests/integration, marked `integration` by tests/conftest.py).
#   bash scripts/test.sh [all|unit|integration] [PYTEST_ARGS...]     (default: all)
# e.g. `bash scripts/test.sh unit -x`, `bash scripts/test.sh integration -k mpi`.
# A tier that fails fails the script; so does a tier that runs no test at all (pytest's exit
# 5), unless PYTEST_ARGS narrowed it (then it says so), as long as some tier ran tests.
# In CI (CI=true) a missing component fails the tests instead of skipping them.
set -euo pipefail
cd "$(dirname "$0")/.."

tier=all
case "${1:-}" in
  all|unit|integration) tier=$1; shift ;;
esac
case "$tier" in
  all) tiers=(unit integration) ;;
  *) tiers=("$tier") ;;
esac

bash scripts/install.sh --dev
.venv/bin/ruff check src tests bench
.venv/bin/mypy

failed=()
ran_any=0
for name in "${tiers[@]}"; do
  if [ "$name" = unit ]; then marker="not integration"; else marker="integration"; fi
  echo "== $name tier (pytest -m '$marker' $*)"
  status=0
  .venv/bin/python -m pytest -q -p no:cacheprovider -m "$marker" "$@" || status=$?
  if [ "$status" = 5 ]; then
    if [ "$#" -gt 0 ]; then
      echo "== $name tier: no test matches '$*' here"
    else
      echo "== $name tier: FAILED, it collected no test" >&2
      failed+=("$name")
    fi
  elif [ "$status" != 0 ]; then
    echo "== $name tier: FAILED (pytest exit $status)" >&2
    failed+=("$name")
  else
    ran_any=1
  fi
done

if [ "${#failed[@]}" -gt 0 ]; then
  echo "test.sh: failed: ${failed[*]}" >&2
  exit 1
fi
if [ "$ran_any" = 0 ]; then
  echo "test.sh: no tier ran a test" >&2
  exit 1
fi
echo "test.sh: ${tiers[*]} passed"
