"""Worker processes beside a stage's main loop (docs/method.md §2): process pools that stop the stage
at once when a worker raises or dies, and workers (pool and DataLoader) that die with the
main process, so that nothing is written after it."""
import ctypes
import ctypes.util
import os
import signal
import sys
import threading
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context

from tools.io import PipelineError, remove_temporaries_of

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent, *_):
    """Have the kernel kill this process when its parent, the process ``parent`` (a pid),
    ends (Linux; a no-op elsewhere): the initializer of pool workers and the
    ``worker_init_fn`` of the DataLoaders.  A parent gone already ends this process now.
    The stop signals of a scheduler are the parent's to handle (``leave_stop_signals_to``)."""
    if not sys.platform.startswith("linux"):
        return
    leave_stop_signals_to(parent)
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def leave_stop_signals_to(parent):
    """A scheduler's stop signals (SIGTERM, SIGUSR1, sent to the whole process group) are for
    the process ``parent`` to handle (``engine.stage.StopSignals``), which ends this worker
    when it is done: SIGUSR1 is ignored here, and SIGTERM ends this process only when
    ``parent`` sent it (as a DataLoader or a pool stops a worker that does not end), as a
    thread that waits for it tells from the sender's pid."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # for every thread started from now on too

    def wait():
        while signal.sigwaitinfo({signal.SIGTERM}).si_pid != parent:
            pass
        os._exit(128 + signal.SIGTERM)

    threading.Thread(target=wait, name="stop signals", daemon=True).start()


def _start_worker(parent, setup):
    die_with_parent(parent)
    if setup is not None:
        setup[0](*setup[1])


class WorkerPool:
    """``processes`` spawned workers that run tasks while the main process goes on, with at
    most two tasks per worker in flight, so memory stays flat whatever the split's size.

    A task's exception is raised in the main process at the next call; a worker that dies
    (killed, out of memory) is a PipelineError at the next call, not a wait for a result
    that never comes.  Leaving the ``with`` block on an error kills the workers at once.
    ``setup``, a ``(function, args)`` pair, runs once in each worker as it starts: state
    that every task needs (a dataset source) travels once a worker, not once a task.  With
    ``processes`` 0 there is no pool (``bool(pool)`` is False): ``setup`` runs in this
    process and every task is computed here when it is submitted (the flags' 0: this process).
    ``writes_to``: the folders the tasks write into; the temporary files of workers killed
    mid-write are removed there.
    """

    def __init__(self, processes, what="worker", setup=None, writes_to=()):
        self.what = what
        self.writes_to = list(writes_to)
        self.limit = 2 * processes
        self.executor = (ProcessPoolExecutor(processes, mp_context=get_context("spawn"), initializer=_start_worker,
                                             initargs=(os.getpid(), setup))
                         if processes > 0 else None)
        self.pending = deque()  # (tag, Future), oldest first
        if self.executor is None and setup is not None:
            setup[0](*setup[1])

    def __bool__(self):
        return self.executor is not None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if self.executor is None:
            return
        if exc_type is None:
            self.executor.shutdown(wait=True)
        else:
            self.kill()

    def kill(self):
        """Cancel what is queued and kill the workers now (ProcessPoolExecutor only lets
        running tasks finish: a worker would go on writing after the stage has failed)."""
        processes = list((getattr(self.executor, "_processes", None) or {}).values())  # shutdown forgets them
        self.executor.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.kill()
            process.join()
        for folder in self.writes_to:
            remove_temporaries_of(folder, [process.pid for process in processes])

    def submit(self, fn, args, tag=None):
        """Queue ``fn(*args)``; returns the ``(tag, result)`` pairs finished by now, oldest
        first, waiting for the oldest while more than the limit are in flight.  A failed
        task raises now, not when its turn comes.  Without workers it runs now."""
        if self.executor is None:
            return [(tag, fn(*args))]
        try:
            self.pending.append((tag, self.executor.submit(fn, *args)))
        except BrokenProcessPool as exc:
            raise self._broken(exc) from exc
        for _, future in self.pending:
            if future.done() and future.exception() is not None:
                self._result(future)
        done = []
        while self.pending and (len(self.pending) > self.limit or self.pending[0][1].done()):
            done.append(self._oldest())
        return done

    def finish(self):
        """Wait for every task; returns the ``(tag, result)`` pairs in submission order."""
        return [self._oldest() for _ in range(len(self.pending))]

    def map(self, fn, items):
        """``fn(item)`` of every item, yielded in order as the workers finish them (without
        workers, computed here as they are asked for)."""
        if self.executor is None:
            yield from map(fn, items)
            return
        for item in items:
            yield from (result for _, result in self.submit(fn, (item,)))
        yield from (result for _, result in self.finish())

    def _oldest(self):
        tag, future = self.pending.popleft()
        return tag, self._result(future)

    def _result(self, future):
        try:
            return future.result()
        except BrokenProcessPool as exc:
            raise self._broken(exc) from exc

    def _broken(self, exc):
        return PipelineError(f"a {self.what} process died (killed, or out of memory?); the stage stops ({exc})")
