"""Under pytest-xdist (``-n N``, as the README's test command runs) each worker and the
scripts it starts use one torch thread, so that N workers share the CPUs instead of
oversubscribing them.  Set here, before any test module imports torch."""
import os

if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
