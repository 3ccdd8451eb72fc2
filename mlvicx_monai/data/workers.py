"""A pool of worker processes in which a dead worker costs one task, never the run.

``concurrent.futures.ProcessPoolExecutor`` breaks for good when one worker dies (``BrokenProcessPool``: the
out-of-memory killer, a segfault in a codec, a SIGKILL), losing every result in flight. :func:`run_supervised` gives
each worker one task at a time over its own pipe and watches its process sentinel: when a worker dies, the task it
held is reported to ``on_failure`` (the caller records it, e.g. as ``worker_died``, so a rerun does not retry it
forever), a fresh worker takes its place and the run goes on. Workers ask the kernel to prefer them to the parent
when it must kill something for memory (``oom_score_adj``), ignore Ctrl-C (the parent stops them), and report
their peak RSS with every result.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import resource
import signal
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["WorkerStats", "describe_exit", "run_supervised"]

logger = logging.getLogger(__name__)

_GRACE_S = 0.2  # a whole process group killed at once must not be mistaken for one dead worker
_MAX_START_FAILURES = 3


@dataclass
class WorkerStats:
    """What the pool did: tasks completed, workers that died, and each worker's peak RSS in MiB."""

    completed: int = 0
    died: int = 0
    peak_rss_mib: list[float] = field(default_factory=list)


def describe_exit(exitcode: int | None) -> str:
    """How a worker ended, in words (``killed by SIGKILL (...)``, ``exited with status 3``)."""
    if exitcode is None:
        return "stopped without an exit status"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        note = " (most often the out-of-memory killer)" if -exitcode == signal.SIGKILL else ""
        return f"was killed by {name}{note}"
    return f"exited with status {exitcode}"


def _worker_main(conn, initializer: Callable | None, initargs: tuple, work: Callable) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:  # let the kernel's OOM killer pick a worker (one file) rather than the parent (the run)
        with open("/proc/self/oom_score_adj", "w") as handle:
            handle.write("1000")
    except OSError:
        pass
    if initializer is not None:
        initializer(*initargs)
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        if task is None:
            return
        try:
            result: Any = ("ok", work(task))
        except BaseException as err:  # the work function should not raise; if it does, the task fails, not the run
            result = ("error", type(err).__name__)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB
        conn.send((result, rss))


@dataclass
class _Slot:
    process: Any
    conn: Any
    task: Any = None
    busy: bool = False
    peak: float = 0.0
    done: int = 0


def run_supervised(
    tasks: Sequence[Any],
    work: Callable[[Any], Any],
    *,
    workers: int,
    on_result: Callable[[Any, Any], None],
    on_failure: Callable[[Any, str], None],
    initializer: Callable | None = None,
    initargs: tuple = (),
) -> WorkerStats:
    """Run ``work(task)`` for every task in ``workers`` spawned processes.

    Args:
        tasks: picklable tasks.
        work, initializer: importable (top-level) functions; ``initializer(*initargs)`` runs once per worker.
        on_result: ``(task, result)`` in the parent, as results arrive.
        on_failure: ``(task, description)`` in the parent when the worker holding ``task`` died (description:
            :func:`describe_exit`) or ``work`` raised.

    Raises:
        RuntimeError: workers die before completing any task, :data:`_MAX_START_FAILURES` times in a row.
    """
    context = multiprocessing.get_context("spawn")  # no fork of a process that may hold threads
    queue = deque(tasks)
    stats = WorkerStats()
    slots: list[_Slot] = []
    start_failures = 0

    def start() -> _Slot:
        parent, child = context.Pipe()
        process = context.Process(target=_worker_main, args=(child, initializer, initargs, work), daemon=True)
        process.start()
        child.close()
        slot = _Slot(process, parent)
        slots.append(slot)
        return slot

    def dispatch(slot: _Slot) -> None:
        if not queue:
            slot.busy = False
            try:
                slot.conn.send(None)
            except OSError:
                pass
            return
        slot.task, slot.busy = queue.popleft(), True
        try:
            slot.conn.send(slot.task)
        except OSError:  # died before taking it: the task was not started, give it to another worker
            queue.appendleft(slot.task)
            slot.busy = False

    def retire(slot: _Slot) -> None:
        slot.process.join(timeout=5)
        stats.peak_rss_mib.append(round(slot.peak, 1))
        slot.conn.close()
        slots.remove(slot)

    try:
        for _ in range(max(1, min(workers, len(queue)))):
            dispatch(start())
        while any(s.busy for s in slots) or (queue and slots):
            busy = [s for s in slots if s.busy]
            if not busy:  # every worker died before taking its task: start one for what is left
                dispatch(start())
                continue
            waitables = {s.conn: s for s in busy} | {s.process.sentinel: s for s in busy}
            for ready in multiprocessing.connection.wait(list(waitables)):
                slot = waitables[ready]
                if not slot.busy or slot not in slots:
                    continue
                message = None
                if slot.conn.poll():
                    try:
                        message = slot.conn.recv()
                    except (EOFError, OSError):
                        message = None
                if message is not None:
                    (kind, value), rss = message
                    slot.peak, slot.done = max(slot.peak, rss), slot.done + 1
                    stats.completed += 1
                    start_failures = 0
                    if kind == "ok":
                        on_result(slot.task, value)
                    else:
                        on_failure(slot.task, f"raised {value}")
                    dispatch(slot)
                    continue
                slot.process.join(timeout=1.0)
                if slot.process.exitcode is None:
                    continue  # a spurious wake-up: the worker is still at work
                time.sleep(_GRACE_S)  # if the whole run is being killed, this process goes too: nothing recorded
                stats.died += 1
                if slot.done == 0:
                    start_failures += 1
                    if start_failures >= _MAX_START_FAILURES:
                        raise RuntimeError(
                            f"{start_failures} worker processes died before finishing a task (the last "
                            f"{describe_exit(slot.process.exitcode)}); run with --workers 0 to see the error"
                        )
                task = slot.task
                slot.busy = False
                retire(slot)
                on_failure(task, describe_exit(slot.process.exitcode))
                if queue:
                    dispatch(start())
        for slot in list(slots):
            retire(slot)
    finally:
        for slot in slots:
            if slot.process.is_alive():
                slot.process.kill()
            slot.process.join(timeout=5)
    return stats

