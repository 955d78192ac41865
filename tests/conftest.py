"""Shared test set-up.

Under pytest-xdist (``-n N``, as the README's test command runs) each worker and the
scripts it starts use one torch thread, so that N workers share the CPUs instead of
oversubscribing them.  Set here, before any test module imports torch.

Markers: ``slow`` (the test runs stage scripts, in this process or another, or drivers, or
trains a network: seconds to minutes; ``pytest -m "not slow"`` runs the unit tests alone),
``gpu`` (needs CUDA; skipped without it) and xdist's ``xdist_group`` (the modules that read
the shared ``reference`` run keep their tests on one worker, which makes it once).
"""
import os

import pytest

if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: runs stage scripts or drivers, or trains a network (seconds to minutes)")
    config.addinivalue_line("markers", "gpu: needs a CUDA device; skipped without one")
    config.addinivalue_line("markers", "xdist_group(name): pytest-xdist runs the group's tests on one worker")


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def make_toy(tmp_path_factory):
    """A factory of toy datasets in VOC layout (``data.toy.generate``), each made once per
    session: ``make_toy(num_train, num_val, size, seed)`` -> its root folder."""
    from data.toy import generate

    made = {}

    def make(num_train, num_val, size, seed):
        key = (num_train, num_val, tuple(size), seed)
        if key not in made:
            made[key] = tmp_path_factory.mktemp("toy")
            generate(made[key], num_train=num_train, num_val=num_val, size=size, seed=seed)
        return made[key]
    return make


@pytest.fixture(scope="session")
def reference(make_toy, tmp_path_factory):
    """The toy set and run directory of ``tests/reference.py``: every stage run once,
    unbroken.  The toy lists its val images as a test split too."""
    from tests.reference import TOY, make_reference

    toy = make_toy(**TOY)
    lists = toy / "ImageSets" / "Segmentation"
    (lists / "test.txt").write_text((lists / "val.txt").read_text())
    return toy, make_reference(toy, tmp_path_factory.mktemp("reference"))


@pytest.fixture(scope="session")
def toy(reference):
    """The reference run's toy set (tests/reference.py); its test split lists the val images.
    A module that runs on a toy set of its own defines its own ``toy`` fixture, which
    pytest then uses instead of this one."""
    return reference[0]
