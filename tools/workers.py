"""A process pool for per-image work beside the main loop (the CRF of stages 6 and 7)."""
import multiprocessing
from collections import deque


class StreamingPool:
    """Tasks run in ``processes`` spawned workers and their results come back in submission
    order as they finish, with at most two tasks per worker in flight: memory stays flat
    whatever the split's size, and a worker's error is raised in the main process at the
    next ``submit`` or ``finish``.  With ``processes`` 0 there is no pool (``bool(pool)`` is
    False).  Use it as a context manager: the workers are joined on success and terminated
    on error.
    """

    def __init__(self, processes):
        self.pool = multiprocessing.get_context("spawn").Pool(processes) if processes > 0 else None
        self.limit = 2 * processes
        self.pending = deque()  # (tag, AsyncResult), oldest first

    def __bool__(self):
        return self.pool is not None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if self.pool is None:
            return
        if exc_type is None:
            self.pool.close()
        else:
            self.pool.terminate()
        self.pool.join()

    def submit(self, fn, args, tag=None):
        """Queue ``fn(*args)``; returns the (tag, result) pairs finished by now, oldest first,
        waiting for the oldest while more than the limit are in flight."""
        self.pending.append((tag, self.pool.apply_async(fn, args)))
        for _, result in self.pending:  # a failed task stops the stage now, not when its turn comes
            if result.ready() and not result.successful():
                result.get()
        done = []
        while self.pending and (len(self.pending) > self.limit or self.pending[0][1].ready()):
            tag, result = self.pending.popleft()
            done.append((tag, result.get()))
        return done

    def finish(self):
        """Wait for every task; returns their (tag, result) pairs in submission order (none
        without a pool)."""
        done = [(tag, result.get()) for tag, result in self.pending]
        self.pending.clear()
        return done
