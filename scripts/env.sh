# Sourced by the quick-start scripts: create or reuse .venv and install requirements.txt
# into it when they changed since the last install. Needs only Python 3.10+.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${WSSS_VENV:-$repo/.venv}"
python_bin="${PYTHON:-python3}"
if ! "$python_bin" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    echo "error: $python_bin is missing or older than Python 3.10 (set PYTHON=/path/to/python3.10+)" >&2
    exit 2
fi
if [ ! -x "$venv/bin/python" ]; then
    echo "creating the virtual environment $venv" >&2
    "$python_bin" -m venv "$venv"
fi
stamp="$venv/.requirements.sha256"
wanted="$(sha256sum "$repo/requirements.txt" | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    echo "installing requirements.txt into $venv (the first time takes a few minutes)" >&2
    "$venv/bin/python" -m pip install --quiet --upgrade pip >&2
    "$venv/bin/python" -m pip install --quiet -r "$repo/requirements.txt" >&2
    echo "$wanted" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
cd "$repo"
