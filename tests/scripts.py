"""Running the stage scripts as a user would, from the tests."""
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(script, *args, check=True, preexec_fn=None, timeout=600, env=None):
    """``python SCRIPT ARGS`` in the repository (``env``: variables added to the environment);
    fails the test on a non-zero exit when ``check``."""
    result = subprocess.run([sys.executable, str(REPO / script), *map(str, args)], cwd=REPO, capture_output=True,
                            text=True, timeout=timeout, preexec_fn=preexec_fn, env={**os.environ, **(env or {})})
    if check and result.returncode != 0:
        raise AssertionError(f"{script} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def assert_error(result, path, problem):
    """Exit status 2 and, as the last line on stderr, ``error: <path>: ...<problem>...``."""
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert re.fullmatch(rf"error: {re.escape(str(path))}: .*{problem}.*", last), last
    assert "Traceback" not in result.stderr and "Logging error" not in result.stderr, result.stderr[-3000:]
