"""The verdict rules (receiver.decide), shared by the processor and ``explain``: a table."""

from __future__ import annotations

import pytest

from providers.base import Diff
from receiver.decide import Base, NoBase, decide, needs_diff
from receiver.matcher import PathRules

PIPELINES = {
    "collections": PathRules.compile(["svc/collections/**", "!**/*.md"]),
    "utilities": PathRules.compile(["svc/utilities/**"]),
}
BASE, HEAD = "a" * 40, "b" * 40


def diff(*paths: str, status: str = "ahead") -> Diff:
    return Diff(status, frozenset(paths))  # type: ignore[arg-type]


# (id, base, diff, new_branch, expected verdict per pipeline, expected source, complete)
CASES: list[tuple[str, Base, Diff | None, str, dict[str, str], str, bool]] = [
    ("a change under one module starts only that module", BASE,
     diff("svc/collections/api.py"), "all",
     {"collections": "changed", "utilities": "unchanged"}, "compare", True),
    ("an excluded path starts nothing", BASE, diff("svc/collections/README.md"), "all",
     {"collections": "unchanged", "utilities": "unchanged"}, "compare", True),
    ("changes under both modules start both", BASE,
     diff("svc/collections/a.py", "svc/utilities/b.py"), "all",
     {"collections": "changed", "utilities": "changed"}, "compare", True),
    ("an incomplete difference starts every pipeline", BASE,
     Diff("diverged", None, "compare limit"), "all",
     {"collections": "changed", "utilities": "changed"}, "compare", False),
    ("a head behind the base starts nothing", BASE, Diff("behind", frozenset()), "all",
     {"collections": "contained", "utilities": "contained"}, "compare", True),
    ("a head equal to the base needs no compare and starts nothing", HEAD, None, "all",
     {"collections": "contained", "utilities": "contained"}, "identical", True),
    ("a new branch starts every pipeline", NoBase.NEW_BRANCH, None, "all",
     {"collections": "changed", "utilities": "changed"}, "new-branch", False),
    ("a new branch starts nothing when the repository says none", NoBase.NEW_BRANCH, None,
     "none", {"collections": "unchanged", "utilities": "unchanged"}, "new-branch", False),
    ("nothing deployed starts every pipeline", NoBase.NOTHING_DEPLOYED, None, "none",
     {"collections": "changed", "utilities": "changed"}, "nothing-deployed", False),
]


@pytest.mark.parametrize(("base", "difference", "new_branch", "verdicts", "source", "complete"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_verdicts(base: Base, difference: Diff | None, new_branch: str,
                  verdicts: dict[str, str], source: str, complete: bool) -> None:
    decisions = decide(PIPELINES, base, HEAD, difference, new_branch=new_branch)
    assert {name: d.verdict for name, d in decisions.items()} == verdicts
    assert {d.source for d in decisions.values()} == {source}
    assert {d.complete for d in decisions.values()} == {complete}
    assert {d.base for d in decisions.values()} == {base if isinstance(base, str) else None}


def test_a_changed_pipeline_carries_the_path_and_rule_that_selected_it() -> None:
    decisions = decide(PIPELINES, BASE, HEAD, diff("svc/collections/x.py", "docs/y.md"))
    assert [(m.path, m.glob) for m in decisions["collections"].matches] == [
        ("svc/collections/x.py", "svc/collections/**")]
    assert decisions["utilities"].matches == ()


def test_an_incomplete_difference_says_why() -> None:
    decisions = decide(PIPELINES, BASE, HEAD, Diff("diverged", None, "the baseline is gone"))
    assert {d.reason for d in decisions.values()} == {"the baseline is gone"}


@pytest.mark.parametrize(("base", "expected"), [
    (BASE, True), (HEAD, False), (NoBase.NEW_BRANCH, False), (NoBase.NOTHING_DEPLOYED, False),
])
def test_only_a_commit_other_than_the_head_needs_a_compare(base: Base, expected: bool) -> None:
    assert needs_diff(base, HEAD) is expected


@pytest.mark.parametrize(("base", "difference"), [
    (BASE, None), (HEAD, diff("x")), (NoBase.NEW_BRANCH, diff("x")),
])
def test_refuses_a_difference_given_when_none_is_needed_or_missing_when_one_is(
        base: Base, difference: Diff | None) -> None:
    with pytest.raises(ValueError, match="needs_diff"):
        decide(PIPELINES, base, HEAD, difference)
