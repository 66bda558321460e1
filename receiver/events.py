"""The frozen event model. Providers produce it; nothing downstream sees a payload.

Two kinds of event: a :class:`PushEvent` (one ref moved) and a :class:`PullRequestEvent`
(a pull or merge request opened, updated, marked ready, closed or merged). A
:class:`Delivery` carries the pushes of one webhook delivery, or one pull request.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Literal

import orjson

RefType = Literal["branch", "tag"]
Change = Literal["created", "updated", "deleted"]
# What happened to a pull request, in every provider's terms: opened (also reopened),
# updated (its source moved), ready (no longer a draft), closed (without merging), merged
PullRequestAction = Literal["opened", "updated", "ready", "closed", "merged"]
PULL_REQUEST = "pull_request"  # the ref type of a pull request in queues and records


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
class PullRequestEvent:
    """One pull (merge) request event, normalized.

    ``number`` is the request's number in its repository (GitHub ``number``, GitLab
    ``iid``, Bitbucket and Azure DevOps ``id``, Gitea ``number``). ``head`` is the source's
    commit (validated lower-case hex; Bitbucket Cloud sends 12 characters, resolved to a
    full id before anything is planned, started or written on it), ``target`` the target
    branch's commit the provider named (None when it names none). ``fork``: the source is
    another repository. ``source_ref`` is the ref that holds the head in the target
    repository (GitHub ``refs/pull/N/head``, GitLab ``refs/merge-requests/N/head``...),
    the source branch when the provider has no such ref. ``merge_base`` when the payload
    gives it (Gitea).
    """

    provider: str
    repository: str
    number: int
    action: PullRequestAction
    source_branch: str
    target_branch: str
    head: str
    target: str | None
    source_ref: str | None
    fork: bool = False
    draft: bool = False
    merge_base: str | None = None

    # the ref this event moves, as queues and decision records name it
    ref_type: ClassVar[str] = PULL_REQUEST

    @property
    def ref_name(self) -> str:
        """The request's number, as text."""
        return str(self.number)

    @property
    def before(self) -> str | None:
        """Nothing: a request has no previous head in this model (records keep its merge
        base there once it is known)."""
        return None

    @property
    def after(self) -> str:
        """The head."""
        return self.head

    @property
    def closing(self) -> bool:
        """The request was closed or merged: nothing is validated any more."""
        return self.action in ("closed", "merged")


@dataclass(frozen=True, slots=True)
class Delivery:
    """A verified delivery as recorded: its id, origin and the pushes it carried, or the
    pull request it is about (then ``events`` is empty)."""

    delivery_id: str
    provider: str
    repository: str
    events: tuple[PushEvent, ...]
    verified_by: str = ""
    received_at: float = 0.0
    attempts: int = 0
    pull_request: PullRequestEvent | None = None

    @property
    def refs(self) -> tuple[PushEvent | PullRequestEvent, ...]:
        """Everything this delivery moves: its pushes, or its pull request."""
        return self.events if self.pull_request is None else (self.pull_request,)

    @property
    def ref_key(self) -> str:
        """The ref this delivery moves (its first, for a multi-ref push; a pull request's
        number), as one string.

        Deliveries with the same key are processed one at a time, oldest first: pushes to
        one branch then never race each other for its baselines or repeat its compares,
        and the events of one pull request are validated in the order they came.
        """
        first = self.refs[0]
        return f"{self.provider}:{self.repository}#{first.ref_type}:{first.ref_name}"

    def events_json(self) -> str:
        """The events as a JSON array (the stored form); a pull request is the one item,
        marked ``"kind": "pull_request"``."""
        # not dataclasses.asdict: it deep-copies every value, and this runs per delivery
        if self.pull_request is not None:
            pr = self.pull_request
            return orjson.dumps([{"kind": PULL_REQUEST, **{name: getattr(pr, name)
                                                           for name in _PR_FIELDS}}]).decode()
        return orjson.dumps([{name: getattr(e, name) for name in _EVENT_FIELDS}
                             for e in self.events]).decode()

    @staticmethod
    def events_from_json(text: str) -> tuple[PushEvent, ...]:
        """The pushes of :meth:`events_json`'s form (none for a pull request)."""
        events: tuple[PushEvent, ...] = Delivery.stored_fields(text)["events"]
        return events

    @staticmethod
    def stored_fields(text: str) -> dict[str, Any]:
        """Inverse of :meth:`events_json`: the ``events`` and ``pull_request`` fields of
        the delivery it was written from."""
        items = orjson.loads(text)
        if items and items[0].get("kind") == PULL_REQUEST:
            item = {k: v for k, v in items[0].items() if k in _PR_FIELDS}
            return {"events": (), "pull_request": PullRequestEvent(**item)}
        # keys a later version added are ignored (a replica of the previous version may
        # read what a newer one recorded)
        return {"events": tuple(PushEvent(**{k: v for k, v in item.items() if k in _EVENT_FIELDS})
                                for item in items), "pull_request": None}


_EVENT_FIELDS = tuple(f.name for f in fields(PushEvent))
_PR_FIELDS = tuple(f.name for f in fields(PullRequestEvent))
