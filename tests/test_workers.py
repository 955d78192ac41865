"""Worker processes (tools/workers.py): pools that stop at a worker's error or death, and
workers that die with the main process."""
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tools.io import PipelineError, atomic_path
from tools.workers import WorkerPool

ROOT = Path(__file__).resolve().parents[1]


def square(x):
    return x * x


def kill_myself(_):
    os.kill(os.getpid(), signal.SIGKILL)


def sleep_then_touch(path):
    time.sleep(3)
    Path(path).touch()


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie (dead, not yet reaped) counts as gone
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def wait_gone(pids, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(alive(pid) for pid in pids):
        time.sleep(0.05)
    return [pid for pid in pids if alive(pid)]


def test_results_come_back_in_order_with_a_bounded_number_in_flight():
    returned = []
    with WorkerPool(2) as pool:
        for i in range(20):
            returned += pool.submit(square, (i,), tag=i)
            assert len(pool.pending) <= 4  # two per worker
        returned += pool.finish()
    assert returned == [(i, i * i) for i in range(20)]


def test_map_keeps_the_order():
    with WorkerPool(2) as pool:
        assert list(pool.map(square, range(15))) == [i * i for i in range(15)]


def reciprocal(x):
    return 1 / x


def test_a_failed_task_stops_the_caller():
    with pytest.raises(ZeroDivisionError):
        with WorkerPool(2) as pool:
            list(pool.map(reciprocal, [3, 2, 1, 0, 1, 2]))
    with pytest.raises(ZeroDivisionError):
        with WorkerPool(1) as pool:
            pool.submit(divmod, (1, 0))
            pool.finish()


def test_a_killed_worker_stops_the_stage_within_seconds():
    started = time.monotonic()
    with pytest.raises(PipelineError, match="a CRF process died"):
        with WorkerPool(2, "CRF") as pool:
            list(pool.map(kill_myself, range(8)))
    assert time.monotonic() - started < 10


def test_an_error_in_the_main_loop_kills_the_workers_before_they_write(tmp_path):
    with pytest.raises(RuntimeError):
        with WorkerPool(2) as pool:
            pool.submit(sleep_then_touch, (tmp_path / "late",))
            pids = list(pool.executor._processes)
            raise RuntimeError("the main loop failed")
    assert wait_gone(pids, 2) == []
    time.sleep(3.5)
    assert not (tmp_path / "late").exists()


def write_slowly(path):
    """Hold a temporary file of ``path`` open for a long while (atomic_path), as a worker
    compressing a large map does."""
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(b"partial")
        time.sleep(30)


def test_a_stopped_pool_removes_what_its_killed_workers_were_writing(tmp_path):
    with pytest.raises(ZeroDivisionError):
        with WorkerPool(2, writes_to=[tmp_path]) as pool:
            pool.submit(write_slowly, (tmp_path / "a.npy",))
            deadline = time.time() + 30
            while not list(tmp_path.glob(".a.*.tmp*")) and time.time() < deadline:
                time.sleep(0.1)
            assert list(tmp_path.glob(".a.*.tmp*")), "the worker never started writing"
            other = tmp_path / f".b.{os.getpid()}-0.tmp.npy"  # the main process's own: not the pool's to remove
            other.write_bytes(b"")
            1 / 0
    assert not list(tmp_path.glob(".a.*")) and not (tmp_path / "a.npy").exists()
    assert other.exists()


SET_UP = []


def set_up(*state):
    SET_UP[:] = [os.getpid(), *state]


def test_no_processes_no_pool():
    """Without workers the setup and every task run in this process, each task when submitted."""
    with WorkerPool(0, setup=(set_up, ("source",))) as pool:
        assert not pool and SET_UP == [os.getpid(), "source"]
        assert pool.submit(square, (3,), tag="a") == [("a", 9)] and pool.finish() == []
        assert list(pool.map(square, range(4))) == [0, 1, 4, 9]  # computed here, in order
    with pytest.raises(ZeroDivisionError):
        WorkerPool(0).submit(divmod, (1, 0))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("kind", ["pool", "loader"])
def test_workers_die_with_a_killed_main_process(tmp_path, kind):
    """SIGKILL of the main process: its pool or DataLoader workers end at once, and the
    file a worker would have written 3 s later never appears."""
    late = tmp_path / "late"
    program = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(ROOT / 'tests')!r})
        from test_workers import sleep_then_touch
        if {kind!r} == "pool":
            from tools.workers import WorkerPool
            pool = WorkerPool(2)
            pool.submit(sleep_then_touch, ({str(late)!r},))
            pids = list(pool.executor._processes)
        else:
            import torch
            from types import SimpleNamespace
            from engine.stage import loader
            class Slow(torch.utils.data.Dataset):
                def __len__(self):
                    return 4
                def __getitem__(self, i):
                    sleep_then_touch({str(late)!r})
                    return i
            batches = iter(loader(Slow(), SimpleNamespace(device=torch.device("cpu")), 2))
            time.sleep(1)
            import multiprocessing
            pids = [p.pid for p in multiprocessing.active_children()]
        print(*pids, flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", program], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert pids, "the program started no workers"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert wait_gone(pids, 2) == []
        time.sleep(3.5)
        assert not late.exists()
    finally:
        proc.kill()


def wait_for_sleep(_):
    time.sleep(30)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux: the sender's pid")
def test_a_worker_leaves_a_schedulers_stop_signals_to_the_main_process():
    """SIGTERM or SIGUSR1 from elsewhere (a scheduler signals the whole group) leave a worker
    running for the main process to stop; the main process's own SIGTERM (a DataLoader's or
    a pool's last resort) ends it."""
    import multiprocessing

    from tools.workers import die_with_parent

    context = multiprocessing.get_context("fork")
    worker = context.Process(target=lambda: (die_with_parent(os.getppid()), wait_for_sleep(None)))
    worker.start()
    time.sleep(0.5)  # its handlers are set
    for name in ("-USR1", "-TERM"):
        subprocess.run(["kill", name, str(worker.pid)], check=True)  # sent by another process
    worker.join(1)
    assert worker.is_alive()
    worker.terminate()  # SIGTERM from this process
    worker.join(5)
    assert worker.exitcode == 128 + signal.SIGTERM
