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
- ``refused``: a concrete pipeline of a repository-side map's template that changed, but
  whose name ``module_map.allow`` does not admit: nothing starts and no baseline is made.

What selects a pipeline is its :class:`~receiver.modules.Selector`: its own path rules (or a
``{module}`` template) and its flattened dependencies; a decision names in ``via`` each
dependency whose paths selected it.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from providers.base import Diff
from receiver.matcher import PathRules, RuleMatch, match
from receiver.modules import Selector, Template

Verdict = Literal["changed", "unchanged", "contained", "refused"]
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
    (path, include glob) pairs of the pipeline's own paths that selected it; ``via`` each
    dependency whose paths selected it, with its pairs; ``complete`` is False when the
    verdict was reached without a complete list of changed paths.
    """

    verdict: Verdict
    base: str | None
    matches: tuple[RuleMatch, ...] = ()
    reason: str | None = None
    source: Source = "compare"
    complete: bool = True
    via: tuple[tuple[str, tuple[RuleMatch, ...]], ...] = ()

    @property
    def match_count(self) -> int:
        """How many (path, glob) pairs selected the pipeline, its own and its dependencies'."""
        return len(self.matches) + sum(len(hits) for _, hits in self.via)

    def selected(self, limit: int | None = None) -> list[tuple[str, str, str | None]]:
        """(path, glob, dependency name or None) of what selected the pipeline, its own
        paths first, at most ``limit``."""
        out: list[tuple[str, str, str | None]] = [(m.path, m.glob, None)
                                                  for m in self.matches[:limit]]
        for name, hits in self.via:
            if limit is not None and len(out) >= limit:
                break
            room = None if limit is None else limit - len(out)
            out.extend((m.path, m.glob, name) for m in hits[:room])
        return out


def needs_diff(base: Base, head: str) -> bool:
    """Whether :func:`decide` needs the difference from ``base`` to ``head``."""
    return isinstance(base, str) and base != head


def decide(pipelines: Mapping[str, PathRules | Selector], base: Base, head: str,
           diff: Diff | None, *, new_branch: str = "all") -> dict[str, Decision]:
    """The decision for every pipeline (name -> its selector, or just its path rules)
    compared from ``base``.

    ``diff`` is the difference from ``base`` to ``head``, required exactly when
    :func:`needs_diff` says so (ValueError otherwise). ``new_branch`` is the repository's
    policy for a branch with no baseline: every pipeline changed (``all``) or none.

    A template selector not bound to a module (:attr:`Selector.discovers`) is not decided
    under its own name: it adds a ``changed`` decision for each concrete pipeline the
    changed paths select that is not a key of ``pipelines`` itself, and nothing without a
    complete difference (there are no paths to find modules in); one whose name the
    template does not admit (:meth:`Template.admits`) is ``refused`` instead. A
    dependency's paths select a pipeline as its own do; the decision names the dependency
    in ``via``.
    """
    if needs_diff(base, head) != (diff is not None):
        raise ValueError("diff must be given exactly when needs_diff(base, head)")
    selectors = {name: s if isinstance(s, Selector) else Selector(s)
                 for name, s in pipelines.items()}
    names = [name for name, s in selectors.items() if not s.discovers]
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
    return _select(selectors, sorted(diff.paths), base)


def _select(selectors: Mapping[str, Selector], paths: list[str],
            base: str) -> dict[str, Decision]:
    """The verdicts from a complete list of changed paths: one indexed match for every
    pipeline's own rules and every distinct dependency's, one pass per template."""
    rules: dict[str, PathRules] = {name: s.rules for name, s in selectors.items()
                                   if isinstance(s.rules, PathRules)}
    dependency_keys: dict[str, str] = {}  # dependency name -> its key in ``rules``
    by_template: dict[str, dict[str, tuple[RuleMatch, ...]]] = {}
    for s in selectors.values():
        for dep, dep_rules in s.depends:
            if dep not in dependency_keys:
                # a pipeline named as a dependency shares its entry; another name clashing
                # with a pipeline's gets its own key (no pipeline name holds a NUL)
                key = dep if rules.setdefault(dep, dep_rules) is dep_rules else f"\0{dep}"
                rules[key] = dep_rules
                dependency_keys[dep] = key
        if isinstance(s.rules, Template) and s.rules.name not in by_template:
            by_template[s.rules.name] = s.rules.modules(paths)
    hits_by_key = match(paths, rules)
    own = {name: hits_by_key[name] for name in selectors if name in hits_by_key}
    via_hits = {dep: hits_by_key[key] for dep, key in dependency_keys.items()
                if key in hits_by_key}
    out: dict[str, Decision] = {}
    for name, s in selectors.items():
        via = tuple((dep, via_hits[dep]) for dep, _ in s.depends if dep in via_hits)
        if isinstance(s.rules, Template):
            found = by_template[s.rules.name]
            if s.module is None:
                for module, hits in found.items():
                    concrete = s.rules.concrete(module)
                    if concrete in selectors:
                        continue
                    if s.rules.admits(concrete):
                        out[concrete] = Decision("changed", base, hits, via=via)
                    else:
                        out[concrete] = Decision("refused", base, hits, via=via, reason=(
                            f"{concrete!r} is outside module_map.allow "
                            f"({', '.join(s.rules.allow.patterns if s.rules.allow else ())})"))
                continue
            hits = found.get(s.module, ())
        else:
            hits = own.get(name, ())
        out[name] = (Decision("changed", base, hits, via=via) if hits or via
                     else Decision("unchanged", base))
    return out


def _all(names: list[str], verdict: Verdict, base: str | None, reason: str | None,
         source: Source, *, complete: bool = True) -> dict[str, Decision]:
    decision = Decision(verdict, base, reason=reason, source=source, complete=complete)
    return dict.fromkeys(names, decision)
