"""The frozen event model. Providers produce it; nothing downstream sees a payload."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Literal

import orjson

RefType = Literal["branch", "tag"]
Change = Literal["created", "updated", "deleted"]


@dataclass(frozen=True, slots=True)
class PushEvent:
    """One ref moved by one push.

    ``before`` is None when the ref was created, ``after`` None when it was deleted.
    ``repository`` is in the configured form (GitHub ``owner/repo``, GitLab
    ``group/project``, Bitbucket ``workspace/slug`` or ``PROJECT/slug``).
    """

    provider: str
    repository: str
    ref_type: RefType
    ref_name: str
    before: str | None
    after: str | None
    forced: bool = False
    # who pushed, as the provider's payload names them (printable, bounded; None when the
    # payload does not say, or the reconciler found the push); shown, not compared: the
    # same ref move is the same push whoever the payload says made it
    pusher: str | None = field(default=None, compare=False)

    @property
    def change(self) -> Change:
        """Whether the push created, updated or deleted the ref."""
        if self.after is None:
            return "deleted"
        if self.before is None:
            return "created"
        return "updated"


@dataclass(frozen=True, slots=True)
class Delivery:
    """A verified delivery as recorded: its id, origin and the pushes it carried."""

    delivery_id: str
    provider: str
    repository: str
    events: tuple[PushEvent, ...]
    verified_by: str = ""
    received_at: float = 0.0
    attempts: int = 0

    @property
    def ref_key(self) -> str:
        """The ref this delivery moves (its first, for a multi-ref push), as one string.

        Deliveries with the same key are processed one at a time, oldest first: pushes to
        one branch then never race each other for its baselines or repeat its compares.
        """
        first = self.events[0]
        return f"{self.provider}:{self.repository}#{first.ref_type}:{first.ref_name}"

    def events_json(self) -> str:
        """The events as a JSON array (the stored form)."""
        # not dataclasses.asdict: it deep-copies every value, and this runs per delivery
        return orjson.dumps([{name: getattr(e, name) for name in _EVENT_FIELDS}
                             for e in self.events]).decode()

    @staticmethod
    def events_from_json(text: str) -> tuple[PushEvent, ...]:
        """Inverse of :meth:`events_json`; keys a later version added are ignored (a
        replica of the previous version may read what a newer one recorded)."""
        return tuple(PushEvent(**{k: v for k, v in item.items() if k in _EVENT_FIELDS})
                     for item in orjson.loads(text))


_EVENT_FIELDS = tuple(f.name for f in fields(PushEvent))
