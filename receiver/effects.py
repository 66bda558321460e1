"""Effects as listeners: the typed events the executor and the outcome recorder publish.

Planning decides, the executor acts (starts pipelines, moves baselines) and then
*publishes* what happened; everything else that follows from it — commit statuses, the
reconciler's head notes, notifications — is a listener of these events. The contract:

- A listener is called in the publishing thread and must be quick: it records its work
  (a :class:`~receiver.state.base.Task` in the state store, a head note), it does not
  perform it (no provider or chat call here: the :mod:`receiver.sender` does that in the
  background, so the work survives a restart and is retried with back-off).
- A listener's failure never fails what published the event: :meth:`Bus.publish` logs
  ``listener.failed`` and reports it, so a caller that must see every follow-up applied
  (the outcome recorder: an execution stays *open* until then) tries again later.
- Events carry only the frozen event model and stored records: nothing downstream of a
  provider sees its payload shape.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from receiver.config import RepositoryConfig
from receiver.events import Delivery, PushEvent
from receiver.logging import get_logger
from receiver.state.base import DecisionRecord, Execution, PipelineDecision


@dataclass(frozen=True, slots=True)
class PipelineStarted:
    """A pipeline was started (or found started by an earlier attempt) at ``commit``."""

    repo: RepositoryConfig
    execution: Execution
    decision: PipelineDecision | None = None


@dataclass(frozen=True, slots=True)
class StartFailed:
    """Starting ``pipeline`` at ``commit`` failed for good (``error`` says why)."""

    repo: RepositoryConfig
    branch: str
    pipeline: str
    commit: str
    error: str


@dataclass(frozen=True, slots=True)
class ExecutionChanged:
    """An execution's status changed (``source``: event, poll or dry-run), or its
    follow-ups are applied again (a poll healing an interrupted observation)."""

    repo: RepositoryConfig
    execution: Execution
    source: str


@dataclass(frozen=True, slots=True)
class DeliveryProcessed:
    """A push of a delivery was processed: its decision record says what each pipeline
    did and why (the "why" of a notification)."""

    repo: RepositoryConfig
    delivery: Delivery
    event: PushEvent
    record: DecisionRecord
    missed: bool = False  # the reconciler found this push (no webhook brought it)


@dataclass(frozen=True, slots=True)
class HeadSeen:
    """``sha`` is the branch's head now (a processed push, or the reconciler's read);
    None: the branch is gone. ``etag`` the provider's, when it gave one."""

    repo: RepositoryConfig
    branch: str
    sha: str | None
    etag: str | None = None


@dataclass(frozen=True, slots=True)
class MapInvalid:
    """The repository-side module map at ``commit`` is invalid; ``kept`` is the commit of
    the last valid map used instead (None: the configured pipelines alone)."""

    repo: RepositoryConfig
    commit: str
    path: str
    problems: tuple[str, ...]
    kept: str | None


Event = (PipelineStarted | StartFailed | ExecutionChanged | DeliveryProcessed | HeadSeen
         | MapInvalid)
E = TypeVar("E")
Listener = Callable[[Any], None]


@dataclass
class Bus:
    """Calls each event's listeners in the order they subscribed."""

    _listeners: dict[type, list[tuple[str, Listener]]] = field(default_factory=dict)

    def subscribe(self, kind: type[E], name: str, listener: Callable[[E], None]) -> None:
        """Call ``listener`` with every published event of type ``kind``; ``name`` names it
        in ``listener.failed`` lines."""
        self._listeners.setdefault(kind, []).append((name, listener))

    def publish(self, event: Event) -> bool:
        """Call every listener of ``event``'s type; False when one of them failed (each
        failure is logged ``listener.failed``, and the others still run)."""
        ok = True
        for name, listener in self._listeners.get(type(event), ()):
            try:
                listener(event)
            except Exception as exc:  # a listener never fails the delivery or the outcome
                ok = False
                get_logger().warning("listener.failed", listener=name,
                                     event_type=type(event).__name__,
                                     error=f"{type(exc).__name__}: {exc}")
        return ok
