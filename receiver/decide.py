"""The verdict rules: what one push means for each pipeline. Pure: no I/O.

The processor and ``explain`` both call :func:`decide`, so a dry run reports exactly what
the service would do. The inputs are where each pipeline is compared from (its *base*),
the pushed head and, when a comparison was needed (:func:`needs_diff`), the provider's
difference between the two.

A base is a commit id, or one of two :class:`NoBase` markers for pipelines with nothing to
compare from. Verdicts:

- ``changed``: at least one changed path selects the pipeline, or nothing is known to be
  deployed, or the difference is incomplete (a missed deployment is worse than an extra
  one): the pipeline starts.
- ``unchanged``: the difference is complete and selects nothing: the baseline moves on.
- ``contained``: the head is already part of the base (a repeated or out-of-order
  delivery): nothing starts and nothing moves.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from providers.base import Diff
from receiver.matcher import PathRules, RuleMatch, match

Verdict = Literal["changed", "unchanged", "contained"]
# where a verdict came from, as decision records and `history` name it
Source = Literal["compare", "identical", "new-branch", "nothing-deployed", "tag"]


class NoBase(enum.Enum):
    """Why a pipeline has no commit to compare from."""

    NEW_BRANCH = "new-branch"  # no baseline, and the push created the branch
    NOTHING_DEPLOYED = "nothing-deployed"  # a baseline row, but no deployed commit is known


Base = str | NoBase


@dataclass(frozen=True, slots=True)
class Decision:
    """The verdict for one pipeline and why.

    ``base`` is the commit compared from (None when there was none); ``matches`` the
    (path, include glob) pairs that selected the pipeline; ``complete`` is False when the
    verdict was reached without a complete list of changed paths.
    """

    verdict: Verdict
    base: str | None
    matches: tuple[RuleMatch, ...] = ()
    reason: str | None = None
    source: Source = "compare"
    complete: bool = True


def needs_diff(base: Base, head: str) -> bool:
    """Whether :func:`decide` needs the difference from ``base`` to ``head``."""
    return isinstance(base, str) and base != head


def decide(pipelines: Mapping[str, PathRules], base: Base, head: str, diff: Diff | None, *,
           new_branch: str = "all") -> dict[str, Decision]:
    """The decision for every pipeline (name -> its path rules) compared from ``base``.

    ``diff`` is the difference from ``base`` to ``head``, required exactly when
    :func:`needs_diff` says so (ValueError otherwise). ``new_branch`` is the repository's
    policy for a branch with no baseline: every pipeline changed (``all``) or none.
    """
    if needs_diff(base, head) != (diff is not None):
        raise ValueError("diff must be given exactly when needs_diff(base, head)")
    names = list(pipelines)
    if base is NoBase.NOTHING_DEPLOYED:
        why = "no deployed commit is known (an earlier first start failed)"
        return _all(names, "changed", None, why, "nothing-deployed", complete=False)
    if base is NoBase.NEW_BRANCH:
        if new_branch == "all":
            return _all(names, "changed", None, "new branch with no baseline", "new-branch",
                        complete=False)
        return _all(names, "unchanged", None, "new branch (new_branch: none)", "new-branch",
                    complete=False)
    if diff is None:  # base == head
        return _all(names, "contained", base, "head is the baseline", "identical")
    if diff.contained:
        return _all(names, "contained", base, f"head is {diff.status} the baseline", "compare")
    if diff.paths is None:
        return _all(names, "changed", base, diff.reason, "compare", complete=False)
    matched = match(sorted(diff.paths), pipelines)
    return {name: Decision("changed", base, matched[name]) if name in matched
            else Decision("unchanged", base) for name in names}


def _all(names: list[str], verdict: Verdict, base: str | None, reason: str | None,
         source: Source, *, complete: bool = True) -> dict[str, Decision]:
    decision = Decision(verdict, base, reason=reason, source=source, complete=complete)
    return dict.fromkeys(names, decision)
