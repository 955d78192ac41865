"""The benchmark helpers: worker counts, scaling rows, the loading benchmark on a tiny case."""
import pytest

from bench import loading
from bench.measure import COLUMNS, scaling_rows, table, worker_counts
from tools import dist


@pytest.mark.parametrize("cpus, expected", [(1, [1]), (2, [1, 2]), (12, [1, 2, 4, 8, 12]), (16, [1, 2, 4, 8, 16])])
def test_worker_counts_are_powers_of_two_up_to_the_usable_cpus(monkeypatch, cpus, expected):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(cpus)))
    assert worker_counts() == expected


@pytest.mark.parametrize("cpus, local_world, limit, expected", [
    (16, None, None, 16), (16, "4", None, 4), (16, None, 8, 8), (2, "8", None, 1), (6, "2", 8, 3)])
def test_cpus_per_process_shares_the_cpus_among_local_processes(monkeypatch, cpus, local_world, limit, expected):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(cpus)))
    if local_world is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", local_world)
    assert dist.cpus_per_process(limit) == expected


def test_scaling_rows_set_every_count_against_the_first():
    rows = scaling_rows("x", "size", 40, {1: 8.0, 2: 4.0, 4: 2.5}, "ok")
    assert [row["ours"] for row in rows] == ["2 processes: 4 s, 10 img/s", "4 processes: 2.5 s, 16 img/s"]
    assert [row["time ratio"] for row in rows] == ["2x", "3.2x"]
    assert all(row["baseline"] == "1 process: 8 s, 5 img/s" for row in rows)
    assert table(rows, COLUMNS).count("\n") == 3


def test_loading_benchmark_reads_crops_through_the_training_dataset():
    case = {"files": 3, "samples": 8, "batch": 2, "sides": (30, 40), "crop": 24}
    rows = loading.run(case, workers=(1, 2))
    assert len(rows) == 1
    assert rows[0]["check"] == "24x24 batches" and rows[0]["input"].endswith("24 crops, batch 2")
    assert rows[0]["baseline"].startswith("1 process: ") and rows[0]["ours"].startswith("2 processes: ")
