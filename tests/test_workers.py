"""The streaming process pool of the CRF stages (tools/workers.py)."""
import pytest

from tools.workers import StreamingPool


def test_results_come_back_in_order_with_a_bounded_number_in_flight():
    returned = []
    with StreamingPool(2, on_result=lambda tag, result: returned.append((tag, result))) as pool:
        for i in range(20):
            pool.submit(pow, (i, 2), tag=i)
            assert len(pool.pending) <= 4  # two per worker
        pool.finish()
    assert returned == [(i, i * i) for i in range(20)]


def test_a_failed_task_stops_the_caller_at_the_next_call():
    with pytest.raises(ZeroDivisionError):
        with StreamingPool(1, on_result=lambda tag, result: None) as pool:
            pool.submit(pow, (0, -1))
            pool.finish()


def test_no_processes_no_pool():
    returned = []
    with StreamingPool(0, on_result=lambda tag, result: returned.append(tag)) as pool:
        pool.finish()
        assert not pool and returned == []
