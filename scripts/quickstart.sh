#!/usr/bin/env bash
# The README's quick start: `bash scripts/quickstart.sh toy` runs the pipeline on the
# embedded toy dataset, `bash scripts/quickstart.sh test` runs the test suite. Both create
# or reuse .venv first. Further arguments go to run_voc.sh or pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
what="${1:-}"
shift || true
case "$what" in
    toy) exec bash run_voc.sh --toy --fully-supervised "$@" ;;
    # one pytest-xdist worker per CPU (at most 4), one torch thread each (tests/conftest.py); each
    # test goes to the next free worker, but the tests of a module that marks an xdist_group share one
    test) exec python -m pytest -q -n auto --maxprocesses 4 --dist loadgroup "$@" ;;
    *) echo "usage: bash scripts/quickstart.sh {toy|test} [args...]" >&2; exit 2 ;;
esac
