"""The one planning step: what a push of one branch means for each of its pipelines.

:func:`plan_push` is shared by the service's executor, ``webhook-receiver explain`` and
pull-request validation, so a dry run plans exactly what the service would. It is pure
but for the difference it asks of a :data:`DiffSource` (the provider's compare API or a
git mirror, per repository; ``explain`` passes a local clone), and it neither reads nor
writes state: the stored baselines come in, a :class:`PushPlan` goes out.

The steps (DESIGN.md "State semantics", "Module map"):

1. **Selectors for the branch:** every configured pipeline (a ``{module}`` template
   finds new concrete pipelines in the changed paths), and each concrete pipeline of a
   template that holds a baseline on the branch, bound to its module.
2. **Bases:** a pipeline is compared from its baseline; with none, from the push's
   ``before`` (a new branch: :attr:`NoBase.NEW_BRANCH`); a baseline that fell back to
   "nothing deployed" is :attr:`NoBase.NOTHING_DEPLOYED`.
3. **Grouping:** pipelines sharing a base share one difference (usually one for the whole
   push), then :func:`~receiver.decide.decide` gives each its verdict. A template decided
   from the push's own base adds the concrete pipelines it found that hold no baseline of
   their own (those that do are decided from theirs).
4. **Keep newer:** a head contained in a pipeline's last started commit is not started
   again: an older commit must not overtake a newer one (CodePipeline's SUPERSEDED mode
   goes by start order). Only pipelines whose baseline fell back below their last start
   need that extra difference, one per distinct last started commit.

:func:`plan_pull_request` is the same step for a pull request: every pipeline is decided
from one base, the merge base of the target branch and the request's head (GitHub's
three-dot difference: what the request changes, not what the target did meanwhile), and
nothing is kept newer (a validation moves no baseline).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

from providers.base import Diff
from receiver.decide import Base, Decision, NoBase, decide, needs_diff
from receiver.modules import ModuleMap, Selector
from receiver.state.base import Baseline, PipelineDecision

# (base, head) -> the tree difference; raises ProviderError when it cannot be had now
DiffSource = Callable[[str, str], Diff]
MATCHES_KEPT = 20  # matched files kept per pipeline in a decision record


@dataclass(frozen=True, slots=True)
class PushPlan:
    """The decisions for one push and what they rest on.

    ``decisions``: by pipeline name (concrete names for a template's pipelines).
    ``groups``: each distinct base and the pipelines decided from it, in planning order.
    ``diffs``: every difference asked for, by the commit it was taken from (bases and the
    last started commits of the keep-newer step).
    """

    decisions: Mapping[str, Decision]
    groups: Mapping[Base, tuple[str, ...]]
    diffs: Mapping[str, Diff]

    @property
    def api_calls(self) -> int:
        """The provider requests every difference of this plan took."""
        return sum(d.api_calls for d in self.diffs.values())

    @property
    def changed_files(self) -> int:
        """The most paths one complete difference from a base listed (0 when none did)."""
        return max((len(d.paths) for d in self.diffs.values()
                    if d.paths is not None and not d.contained), default=0)


def decision_entry(name: str, verdict: str, decision: Decision, *,
                   execution_id: str | None = None, error: str | None = None,
                   reason: str | None = None) -> PipelineDecision:
    """The decision record's entry for pipeline ``name``: its verdict (``started``,
    ``unchanged``...) and why (``decision``), with the first MATCHES_KEPT matches;
    ``reason`` replaces the decision's own."""
    return PipelineDecision(
        pipeline=name, verdict=verdict, baseline=decision.base, diff=decision.source,
        complete=decision.complete, reason=reason or decision.reason,
        # (path, glob), or (path, glob, dependency) when a dependency's path selected it
        matched=tuple((path, glob) if via is None else (path, glob, via)
                      for path, glob, via in decision.selected(MATCHES_KEPT)),
        matched_count=decision.match_count, execution_id=execution_id, error=error)


def base_of(baseline: Baseline | None, before: str | None) -> Base:
    """Where a pipeline is compared from: its baseline, else the push's ``before``."""
    if baseline is not None:
        return baseline.commit or NoBase.NOTHING_DEPLOYED
    return before or NoBase.NEW_BRANCH


def plan_push(modules: ModuleMap, baselines: Mapping[str, Baseline], *, before: str | None,
              head: str, diff: DiffSource, new_branch: str = "all",
              only: Collection[str] | None = None) -> PushPlan:
    """Plan a push of ``head`` (``before`` the branch's previous head, None for a new
    branch) for the pipelines of ``modules`` holding ``baselines`` on that branch.

    ``only``: decide just these pipelines (a re-evaluation after lost compare-and-set
    races); None decides every one. ``new_branch`` is the repository's policy for a
    pipeline with nothing to compare from on a new branch. Each difference is asked of
    ``diff`` once; ProviderError from it propagates.
    """
    diffs: dict[str, Diff] = {}

    def difference(base: str) -> Diff:
        if base not in diffs:
            diffs[base] = diff(base, head)
        return diffs[base]

    groups: dict[Base, dict[str, Selector]] = {}
    for name, selector in modules.for_branch(baselines).items():
        if only is None or name in only:
            groups.setdefault(base_of(baselines.get(name), before), {})[name] = selector
    decisions: dict[str, Decision] = {}
    for base, group in groups.items():
        found = None
        if needs_diff(base, head):
            assert isinstance(base, str)
            found = difference(base)
        for name, decision in decide(group, base, head, found, new_branch=new_branch).items():
            # a template found a pipeline that holds a baseline of its own: that
            # baseline's group decides it
            if name in group or name not in baselines:
                decisions[name] = decision
    _keep_newer(decisions, baselines, head, difference)
    return PushPlan(decisions, {base: tuple(group) for base, group in groups.items()}, diffs)


def plan_pull_request(modules: ModuleMap, known: Collection[str], *, merge_base: str | None,
                      head: str, diff: DiffSource, missing: str = "") -> PushPlan:
    """Plan a pull request whose head is ``head``: each pipeline of ``modules`` decided
    from ``merge_base`` (the merge base of the target branch and the head), templates and
    dependencies as for a push.

    ``known``: the concrete pipelines of templates that hold a baseline on the target
    branch (a template whose dependency changed stands for each of them). ``merge_base``
    None: it cannot be had (unrelated histories, a commit the mirror cannot get, a
    provider API that does not say): every pipeline counts as changed, incomplete, for the
    reason ``missing``. A head contained in the merge base changes nothing. ProviderError
    from ``diff`` propagates.
    """
    selectors = modules.for_branch(known)
    if merge_base is None:
        changed = Decision("changed", None, reason=missing, source="compare", complete=False)
        return PushPlan({name: changed for name, s in selectors.items() if not s.discovers},
                        {}, {})
    found = diff(merge_base, head) if needs_diff(merge_base, head) else None
    return PushPlan(decide(selectors, merge_base, head, found), {merge_base: tuple(selectors)},
                    {merge_base: found} if found is not None else {})


def _keep_newer(decisions: dict[str, Decision], baselines: Mapping[str, Baseline], head: str,
                difference: Callable[[str], Diff]) -> None:
    by_last: dict[str, list[str]] = {}
    for name, decision in decisions.items():
        last = baselines[name].last_started_commit if name in baselines else None
        if decision.verdict == "changed" and last and last not in (decision.base, head):
            by_last.setdefault(last, []).append(name)
    for last, names in by_last.items():
        if difference(last).contained:
            for name in names:
                decisions[name] = Decision(
                    "contained", decisions[name].base, source="compare",
                    reason=f"head is contained in the last started commit {last[:12]}")
