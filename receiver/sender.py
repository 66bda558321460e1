"""The sender: performs the pending effects (tasks) listeners kept in the state store.

One runnable per process claims the tasks that are due (a lease per task, so across
processes and replicas one sender holds each), hands each to the :class:`Handler` of its
``kind`` and records the result. It never sleeps on one task while others wait: a failed
try is rescheduled (``due_at`` moves on by the back-off, ``RETRY_DELAYS``) and the next due
task goes ahead; a target that must be paced (Slack: one message a second) has its task
rescheduled to the time it may be sent, without counting a try. A task that comes after
others (``Handler.after``: an execution's outcome after the push message that announced its
start) waits while any of those is pending, without counting a try either, so one target
gets them in that order even when two processes hold them. Pacing holds across
processes and replicas too: a paced send holds the lease ``pace:<kind>:<target>`` in the
store while it sends and for its pace after, and a target another sender holds waits
(without counting a try either). On stop, the task in hand
finishes and those still claimed are given back, due at once, so another process (or this
one after a restart) sends them: none is lost and none is sent twice.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from receiver.errors import ReceiverError, TerminalError
from receiver.logging import get_logger
from receiver.state.base import StateStore, Task

# seconds after the first, second, ... failed try before the next; the last failure ends it
RETRY_DELAYS = (2.0, 4.0, 8.0, 16.0, 32.0)
BATCH = 20  # tasks claimed at once
LEASE_SECONDS = 120.0  # a claimed task's lease: longer than any one send takes
IDLE_SECONDS = 1.0  # how often an idle sender looks for due tasks (retries come due)
AFTER_WAIT = 0.5  # seconds before a task that comes after a pending one is looked at again


class Handler(Protocol):
    """Performs the tasks of one ``kind``.

    ``send`` does the work (one provider or chat call, with its own time-outs); it raises
    :class:`~receiver.errors.TerminalError` when no later try can succeed (the task is
    marked failed at once) and any other ReceiverError when one may (it is tried again
    after the back-off). ``describe`` gives the log fields of a task (never a secret);
    ``pace`` the seconds between two sends to one ``target`` (0: no pacing). The log
    events are ``<event>.<done>`` and ``<event>.failed``.
    """

    kind: str
    event: str
    done: str

    def send(self, task: Task) -> None:
        """Perform ``task``."""
        ...

    def describe(self, task: Task) -> dict[str, Any]:
        """The fields of ``task``'s log lines."""
        ...

    def pace(self, target: str) -> float:
        """The least time between two sends to ``target``, in seconds."""
        ...

    def after(self, task: Task) -> Sequence[str]:
        """The keys of the tasks that must be finished (sent or given up) before ``task``
        is performed; a key no task has is no obstacle."""
        ...


class Sender:
    """Claims due tasks and performs them through their kind's handler."""

    name = "sender"

    def __init__(self, store: StateStore, handlers: Mapping[str, Handler], owner: str,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.handlers = handlers
        self.owner = owner
        self.clock = clock
        self.log = get_logger()
        self._wake = threading.Event()
        self._next: dict[tuple[str, str], float] = {}  # (kind, target) -> next send allowed

    def notify(self) -> None:
        """A task was enqueued: look now instead of at the next idle check."""
        self._wake.set()

    def run(self, stop: threading.Event) -> None:
        """Send until ``stop`` is set (the runtime's contract, receiver/runtime.py)."""
        while not stop.is_set():
            try:
                sent = self.run_once(stop)
            except ReceiverError as exc:  # the store is down: try again in a moment
                self.log.warning("sender.failed", error=str(exc))
                sent = 0
            if not sent:
                self._wake.wait(IDLE_SECONDS)
                self._wake.clear()

    def run_once(self, stop: threading.Event | None = None) -> int:
        """Claim the due tasks and perform each; how many were claimed."""
        tasks = self.store.claim_tasks(self.owner, self.clock(), LEASE_SECONDS, BATCH)
        for task in tasks:
            if stop is not None and stop.is_set():  # give it back: due now, for another
                self.store.retry_task(task, self.owner, task.due_at, None, failed=False)
                continue
            self._perform(task)
        return len(tasks)

    def _perform(self, task: Task) -> None:
        handler = self.handlers.get(task.kind)
        if handler is None:
            self.store.finish_task(task, self.owner, "failed", self.clock(),
                                   f"no sender for tasks of kind {task.kind!r}")
            return
        now = self.clock()
        if any(self.store.task_pending(key) for key in handler.after(task)):
            # what it comes after is not sent yet (maybe held by another process)
            self.store.retry_task(task, self.owner, now + AFTER_WAIT, None, failed=False)
            return
        allowed = self._next.get((task.kind, task.target), 0.0)
        if now < allowed:  # paced: the same task, later, without counting a try
            self.store.retry_task(task, self.owner, allowed, None, failed=False)
            return
        pace = handler.pace(task.target)
        paced = f"pace:{task.kind}:{task.target}"
        if pace > 0 and not self.store.acquire_lease(paced, self.owner, now + LEASE_SECONDS,
                                                     now):
            # another process sends to this target now: later, without counting a try
            self.store.retry_task(task, self.owner, now + pace, None, failed=False)
            return
        fields = handler.describe(task)
        attempt = task.attempts + 1
        try:
            handler.send(task)
        except Exception as exc:  # a bug in a handler is retried too, then given up
            last = isinstance(exc, TerminalError) or attempt > len(RETRY_DELAYS)
            error = str(exc) if isinstance(exc, ReceiverError) else type(exc).__name__
            self.log.warning(f"{handler.event}.failed", error=error, attempt=attempt,
                             will_retry=not last, **fields)
            if last:
                self.store.finish_task(task, self.owner, "failed", self.clock(), error)
            else:
                self.store.retry_task(task, self.owner,
                                      self.clock() + RETRY_DELAYS[attempt - 1], error)
        else:
            self.log.info(f"{handler.event}.{handler.done}", attempt=attempt, **fields)
            self.store.finish_task(task, self.owner, "done", self.clock())
        finally:
            done = self.clock()
            self._next[(task.kind, task.target)] = done + pace
            if pace > 0:  # held for its pace after the send, for every other process
                self.store.acquire_lease(paced, self.owner, done + pace, done)
