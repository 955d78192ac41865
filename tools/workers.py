"""A process pool for per-image work beside the main loop (the CRF of stages 6 and 7)."""
import multiprocessing
from collections import deque


class StreamingPool:
    """Tasks run in ``processes`` spawned workers and ``on_result(tag, result)`` is called in
    the main process, in submission order, as they finish, with at most two tasks per worker
    in flight: memory stays flat whatever the split's size, and a worker's error is raised
    in the main process at the next ``submit`` or ``finish``.  With ``processes`` 0 there is
    no pool (``bool(pool)`` is False).  Use it as a context manager: the workers are joined
    on success and terminated on error.
    """

    def __init__(self, processes, on_result):
        self.pool = multiprocessing.get_context("spawn").Pool(processes) if processes > 0 else None
        self.on_result = on_result
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
        """Queue ``fn(*args)``; hand on the results finished by now, oldest first, waiting for
        the oldest while more than the limit are in flight."""
        self.pending.append((tag, self.pool.apply_async(fn, args)))
        for _, result in self.pending:  # a failed task stops the stage now, not when its turn comes
            if result.ready() and not result.successful():
                result.get()
        while self.pending and (len(self.pending) > self.limit or self.pending[0][1].ready()):
            self._hand_on_oldest()

    def finish(self):
        """Wait for every task and hand on its result, in submission order."""
        while self.pending:
            self._hand_on_oldest()

    def _hand_on_oldest(self):
        tag, result = self.pending.popleft()
        self.on_result(tag, result.get())
