"""The reconciler: a push no delivery brought (a lost webhook, an outage) is caught up.

One process of one replica at a time (the ``reconcile`` lease, receiver/leased.py) reads
the head of each watched branch from the provider every ``reconcile_seconds`` of its
repository and compares it with the last known head in the state store (noted by the
processor after each branch push, and by the reconciler itself):

- the same head (or a GitHub 304): nothing more;
- a different head: a delivery is RECORDED, exactly like a push from the last known head
  to the new one (delivery id :func:`delivery_id`, ``verified_by`` ``reconcile``), and the
  worker processes it as any other: baselines, compare, start intents per (pipeline,
  head). A late webhook for the same head, or a second replica's pass, starts nothing
  twice;
- no known head yet (a fresh install): the head is adopted, nothing starts;
- the branch is gone: its known head is forgotten, nothing starts.

Whether the head was really missed is decided when the recorded delivery is processed
(:func:`caught_up`), not when the pass reads it: a webhook for that head that was already
recorded but not yet processed is queued before it on the same ref (one ref's deliveries
are processed one at a time, oldest first) and notes the head first; the reconciled
delivery then logs ``reconcile.caught_up`` and does nothing, instead of a false
``reconcile.missed``.

Which repository is due is kept in the lease holder's memory: a process that takes the
lease over reconciles every repository at once (one extra read per branch, idempotent),
and no pass costs a store write for its bookkeeping.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from typing import Any

from providers.base import BranchHead, Provider
from receiver.config import Config, RepositoryConfig
from receiver.effects import HeadSeen
from receiver.errors import ProviderError
from receiver.events import Delivery, PushEvent
from receiver.logging import get_logger
from receiver.state.base import Head, StateStore

RECONCILER = "reconcile"  # the verified_by of a delivery the reconciler recorded
DELIVERY_ID_MAX = 128  # providers.base._DELIVERY_ID: the longest delivery id
_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")
_WILDCARDS = frozenset("*?[")


def delivery_id(provider: str, repository: str, branch: str, head: str) -> str:
    """``reconcile:<provider>:<repository>:<branch>:<head>``, deterministic, at most 128
    characters of ``A-Za-z0-9._:{}-`` (the delivery-id alphabet).

    In ``repository`` and ``branch`` every UTF-8 byte outside ``A-Za-z0-9._-`` is written
    ``{xx}`` (two lower-case hex digits: ``acme/mono`` is ``acme{2f}mono``), so distinct
    names never share an id. When the id would be longer than 128 characters, the two
    names are cut and followed by ``{`` 16 hex digits of the SHA-256 of
    ``<repository>\\n<branch>`` ``}``, to exactly 128 characters.
    """
    names = f"{_escape(repository)}:{_escape(branch)}"
    full = f"{RECONCILER}:{provider}:{names}:{head}"
    if len(full) <= DELIVERY_ID_MAX:
        return full
    digest = hashlib.sha256(f"{repository}\n{branch}".encode()).hexdigest()[:16]
    room = DELIVERY_ID_MAX - len(f"{RECONCILER}:{provider}::{head}") - len(digest) - 2
    return f"{RECONCILER}:{provider}:{names[:room]}{{{digest}}}:{head}"


def _escape(name: str) -> str:
    return "".join(chr(b) if chr(b) in _SAFE else f"{{{b:02x}}}" for b in name.encode())


def literal_branches(repo: RepositoryConfig) -> set[str]:
    """The include names of ``repo.branches`` without wildcards that the rules still watch."""
    return {name for name in repo.branches.includes
            if not _WILDCARDS & set(name) and repo.watches_branch(name)}


def note_head(store: StateStore, clock: Callable[[], float]) -> Callable[[HeadSeen], None]:
    """The listener that keeps the reconciler's memory: each branch's last known head, as
    processed pushes report it (``HeadSeen``)."""
    def listener(event: HeadSeen) -> None:
        store.note_head(event.repo.key, event.branch, event.sha, event.etag, clock())
    return listener


def caught_up(store: StateStore, repo: RepositoryConfig, delivery: Delivery,
              event: PushEvent) -> bool:
    """For a delivery the reconciler recorded, on its first attempt: True when a delivery
    already brought its head (the known head is it: nothing is left to do); else logs
    ``reconcile.missed`` (metric MissedPushes) and returns False (it is processed)."""
    if delivery.verified_by != RECONCILER or delivery.attempts > 1:
        return False
    log = get_logger()
    known = store.heads(repo.key).get(event.ref_name)
    if known is not None and known.sha == event.after:
        log.info("reconcile.caught_up", branch=event.ref_name, head=event.after,
                 reason="a delivery brought this head first")
        return True
    log.warning("reconcile.missed", branch=event.ref_name, head=event.after,
                previous=event.before)
    return False


class Reconciler:
    """One reconcile pass over the repositories that are due (``run``, a LeasedLoop task)."""

    def __init__(self, config: Config, store: StateStore, providers: Mapping[str, Provider],
                 notify: Callable[[], None], owner: str,
                 clock: Callable[[], float] = time.time) -> None:
        self.repositories = [r for r in config.repositories if r.reconcile_seconds > 0]
        self.store = store
        self.providers = providers
        self.notify = notify
        self.owner = owner
        self.clock = clock
        self.log = get_logger()
        self._due: dict[str, float] = {}  # repository key -> when its next pass is due
        # branches with baselines, by repository key: read once by the lease holder; every
        # branch processed since has a known head, so later passes find it there
        self._baseline_branches: dict[str, set[str]] | None = None

    @property
    def interval(self) -> float | None:
        """The loop's interval: the shortest ``reconcile_seconds``; None when all are off."""
        return min((r.reconcile_seconds for r in self.repositories), default=None)

    def run(self, now: float) -> None:
        """Reconcile every repository whose ``reconcile_seconds`` have passed since its last
        pass in this process. A ProviderError ends that repository's pass (logged)."""
        started = time.monotonic()
        if self._baseline_branches is None:
            found: dict[str, set[str]] = {}
            for baseline in self.store.all_baselines():
                found.setdefault(baseline.repository, set()).add(baseline.branch)
            self._baseline_branches = found
        tally = {"repositories": 0, "branches": 0, "api_calls": 0, "recorded": 0}
        for repo in self.repositories:
            if now < self._due.get(repo.key, 0.0):
                continue
            self._due[repo.key] = now + repo.reconcile_seconds
            tally["repositories"] += 1
            self._repository(repo, now, tally)
        self.log.info("reconcile.pass", owner=self.owner,
                      duration_ms=round((time.monotonic() - started) * 1000, 1), **tally)

    def _repository(self, repo: RepositoryConfig, now: float, tally: dict[str, int]) -> None:
        provider = self.providers[repo.provider]
        heads = self.store.heads(repo.key)
        assert self._baseline_branches is not None
        branches = sorted(b for b in literal_branches(repo) | set(heads)
                          | self._baseline_branches.get(repo.key, set())
                          if repo.watches_branch(b))
        fields = {"provider": repo.provider, "repository": repo.name}
        for i, branch in enumerate(branches):
            known = heads.get(branch)
            try:
                seen = provider.branch_head(repo, branch, known.etag if known else None)
            except ProviderError as exc:
                self.log.warning("reconcile.failed", branch=branch, error=str(exc), **fields)
                return
            tally["branches"] += 1
            tally["api_calls"] += 1
            if self._compare(repo, branch, known, seen, now):
                tally["recorded"] += 1
            if seen.low_budget and i + 1 < len(branches):
                self.log.warning("reconcile.rate_limited", remaining=seen.remaining,
                                 limit=seen.limit, reset_at=seen.reset_at,
                                 near_limit=seen.near_limit,
                                 skipped=branches[i + 1:], **fields)
                return

    def _compare(self, repo: RepositoryConfig, branch: str, known: Head | None,
                 seen: BranchHead, now: float) -> bool:
        """Act on one branch's read; True when a delivery was recorded."""
        fields: dict[str, Any] = {"provider": repo.provider, "repository": repo.name,
                                  "branch": branch}
        if seen.not_modified:
            return False
        if seen.sha is None:
            if known is not None:
                self.store.note_head(repo.key, branch, None, None, now)
                self.log.info("reconcile.branch_gone", previous=known.sha, **fields)
            return False
        if known is None:
            self.store.note_head(repo.key, branch, seen.sha, seen.etag, now)
            self.log.info("reconcile.adopted", head=seen.sha, **fields)
            return False
        if seen.sha == known.sha:
            if seen.etag != known.etag:  # the next read can be conditional
                self.store.note_head(repo.key, branch, seen.sha, seen.etag, now)
            return False
        event = PushEvent(repo.provider, repo.name, "branch", branch, before=known.sha,
                          after=seen.sha)
        delivery = Delivery(delivery_id=delivery_id(repo.provider, repo.name, branch, seen.sha),
                            provider=repo.provider, repository=repo.name, events=(event,),
                            verified_by=RECONCILER)
        if not self.store.record_delivery(delivery, now):
            return False  # recorded by an earlier pass: it waits to be processed
        self.notify()
        self.log.info("reconcile.recorded", delivery_id=delivery.delivery_id, head=seen.sha,
                      previous=known.sha, **fields)
        return True
