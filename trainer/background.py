"""The slow, waiting part of saving a checkpoint, done off the training loop's path.

Making a file durable means waiting for the disk (`fsync`), and replacing or deleting a large
file means the kernel freeing its blocks: on a 60 MB checkpoint that is 40 ms of the 80 a
save takes. Neither needs the loop: once the bytes are written to a temporary file, the
weights may change again. So a save writes synchronously and hands the rest to
`after_pending_writes`, which runs jobs one after another, in the order they came, on
short-lived threads. The threads are not daemons, so the interpreter finishes them before
it exits; `fit` waits for them before `on_fit_end`. A job's failure is raised on the loop's
thread by the next save, log step or epoch end (`raise_pending_failures`), or by that wait,
whichever comes first. A process killed before a job ran
leaves the files as they were before the save (a temporary file is never renamed half
written), so nothing already saved is lost.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable

__all__ = ["after_pending_writes", "raise_pending_failures", "wait_for_pending_writes"]

_lock = threading.Lock()
_newest_job: threading.Thread | None = None
_failures: list[BaseException] = []


def after_pending_writes(job: Callable[[], None]) -> None:
    """Run `job` on a background thread once every job queued before it has finished."""
    global _newest_job
    with _lock:
        previous = _newest_job

        def run() -> None:
            if previous is not None:
                previous.join()
            try:
                job()
            except BaseException as failure:  # raised by the next wait, on the loop's thread
                with _lock:
                    _failures.append(failure)

        _newest_job = threading.Thread(target=run, name="trainer-checkpoint-writes")
        _newest_job.start()


def wait_for_pending_writes(*, raise_failures: bool = True) -> None:
    """Block until every queued job has finished; then raise the first failure, if any.

    With `raise_failures=False` (on the way out of a failed run) failures are printed, so
    they do not hide the error that is already on its way.
    """
    with _lock:
        newest = _newest_job
    if newest is not None:
        newest.join()
    with _lock:
        failures = _failures[:]
        _failures.clear()
    for failure in failures[1:] if raise_failures else failures:
        print(f"trainer: {failure}", file=sys.stderr)
    if failures and raise_failures:
        raise failures[0]


def raise_pending_failures() -> None:
    """Raise the failure of a job that has already finished, without waiting for the rest.

    The loop calls it at log steps and epoch ends, and every save before it writes, so a
    failed save surfaces where training is, not when `fit` ends. With nothing failed it is
    one check of an empty list.
    """
    if not _failures:
        return
    with _lock:
        failures = _failures[:]
        _failures.clear()
    for failure in failures[1:]:
        print(f"trainer: {failure}", file=sys.stderr)
    if failures:
        raise failures[0]
