"""The slow, waiting part of saving a checkpoint, done off the training loop's path.

Making a file durable means waiting for the disk (`fsync`), and replacing or deleting a large
file means the kernel freeing its blocks: on a 60 MB checkpoint that is 40 ms of the 80 a
save takes. Neither needs the loop: once the bytes are written to a temporary file, the
weights may change again. So a save writes synchronously and hands the rest to a
`BackgroundWrites` queue, which runs jobs one after another, in the order they came, on
short-lived threads. Each queue belongs to whoever starts the writes (a trainer's run files),
so two trainers in one process never wait on each other's saves. The threads are not
daemons, so the interpreter finishes them before it exits; `fit` waits for its own before
`on_fit_end`. A job's failure is raised on the loop's thread by the owner's next save, log
step or epoch end (`raise_failures`), or by its wait, whichever comes first. A process
killed before a job ran leaves the files as they were before the save (a temporary file is
never renamed half written), so nothing already saved is lost.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable

__all__ = ["BackgroundWrites"]


class BackgroundWrites:
    """One owner's queue of write jobs, run in order on background threads.

    Example:
        >>> writes = BackgroundWrites()
        >>> writes.after_pending(lambda: print("renamed"))
        >>> writes.wait()  # every job queued so far has run; its first failure is raised
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._newest_job: threading.Thread | None = None
        self._failures: list[BaseException] = []

    def after_pending(self, job: Callable[[], None]) -> None:
        """Run `job` on a background thread once every job queued before it has finished."""
        with self._lock:
            previous = self._newest_job

            def run() -> None:
                if previous is not None:
                    previous.join()
                try:
                    job()
                except BaseException as failure:  # raised by the next wait, on the loop's thread
                    with self._lock:
                        self._failures.append(failure)

            self._newest_job = threading.Thread(target=run, name="trainer-checkpoint-writes")
            self._newest_job.start()

    def wait(self, *, raise_failures: bool = True) -> None:
        """Block until every queued job has finished; then raise the first failure, if any.

        With `raise_failures=False` (on the way out of a failed run) failures are printed, so
        they do not hide the error that is already on its way.
        """
        with self._lock:
            newest = self._newest_job
        if newest is not None:
            newest.join()
        self._report_failures(raise_first=raise_failures)

    def raise_failures(self) -> None:
        """Raise the failure of a job that has already finished, without waiting for the rest.

        The loop calls it at log steps and epoch ends, and every save before it writes, so a
        failed save surfaces where training is, not when `fit` ends. With nothing failed it is
        one check of an empty list.
        """
        if self._failures:
            self._report_failures(raise_first=True)

    def _report_failures(self, raise_first: bool) -> None:
        """Raise the first failure (or print it) and print the others; each is told once."""
        with self._lock:
            failures = self._failures[:]
            self._failures.clear()
        for failure in failures[1:] if raise_first else failures:
            print(f"trainer: {failure}", file=sys.stderr)
        if failures and raise_first:
            raise failures[0]
