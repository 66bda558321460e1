"""The matcher: glob semantics, excludes, and the pure match function."""

from __future__ import annotations

import pytest

from receiver.matcher import GlobError, PathRules, RuleMatch, match

COLLECTIONS = "cs/Support/CSLiveSupportSrv/Collections/**"


@pytest.mark.parametrize(
    ("globs", "path", "expected"),
    [
        ([COLLECTIONS], "cs/Support/CSLiveSupportSrv/Collections/a.cs", COLLECTIONS),
        ([COLLECTIONS], "cs/Support/CSLiveSupportSrv/Collections/x/y/z.cs", COLLECTIONS),
        ([COLLECTIONS], "cs/Support/CSLiveSupportSrv/CollectionsOld/a.cs", None),
        ([COLLECTIONS], "cs/Support/CSLiveSupportSrv/Utilities/a.cs", None),
        ([COLLECTIONS, "!**/*.md"], "cs/Support/CSLiveSupportSrv/Collections/README.md", None),
        ([COLLECTIONS, "!**/*.md"], "cs/Support/CSLiveSupportSrv/Collections/doc/x.md", None),
        ([COLLECTIONS, "!**/*.md"], "cs/Support/CSLiveSupportSrv/Collections/x.mdx", COLLECTIONS),
        (["src/*.py"], "src/app.py", "src/*.py"),
        (["src/*.py"], "src/pkg/app.py", None),
        (["**/*.py"], "app.py", "**/*.py"),
        (["**/*.py"], "a/b/c/app.py", "**/*.py"),
        (["a/**/b"], "a/b", "a/**/b"),
        (["a/**/b"], "a/x/y/b", "a/**/b"),
        (["a/**/b"], "ab/b", None),
        (["docs/"], "docs/guide/intro.md", "docs/"),
        (["file?.txt"], "file1.txt", "file?.txt"),
        (["file?.txt"], "file10.txt", None),
        (["v[0-9].txt"], "v7.txt", "v[0-9].txt"),
        (["v[!0-9].txt"], "v7.txt", None),
        (["a.b/c+d(e)"], "a.b/c+d(e)", "a.b/c+d(e)"),
        (["a.b"], "axb", None),
        (["Makefile"], "Makefile", "Makefile"),
        (["Makefile"], "sub/Makefile", None),
    ],
)
def test_glob_selects_exactly_the_expected_paths(globs: list[str], path: str,
                                                 expected: str | None) -> None:
    assert PathRules.compile(globs).matching_include(path) == expected


@pytest.mark.parametrize(
    ("glob", "message"),
    [
        ("", "empty pattern"),
        ("/abs/path", "repository-root-relative"),
        ("a/**b", "whole path segment"),
        ("a/b**", "whole path segment"),
        ("a/[bc", "unclosed"),
        ("a//b", "empty"),
        ("../x", "'..'"),
    ],
)
def test_rejects_malformed_glob_naming_the_problem(glob: str, message: str) -> None:
    with pytest.raises(GlobError, match=message.replace("[", r"\[").replace("(", r"\(")):
        PathRules.compile([glob])


def test_rejects_rules_with_only_excludes() -> None:
    with pytest.raises(GlobError, match="at least one include"):
        PathRules.compile(["!**/*.md"])


def test_first_matching_include_is_reported() -> None:
    rules = PathRules.compile(["svc/**", "svc/api/**"])
    assert rules.matching_include("svc/api/x.go") == "svc/**"


def test_match_returns_only_selected_pipelines_with_their_files() -> None:
    rules = {
        "collections": PathRules.compile([COLLECTIONS, "!**/*.md"]),
        "utilities": PathRules.compile(["cs/Support/CSLiveSupportSrv/Utilities/**"]),
        "docs": PathRules.compile(["docs/**"]),
    }
    paths = [
        "cs/Support/CSLiveSupportSrv/Collections/a.cs",
        "cs/Support/CSLiveSupportSrv/Collections/README.md",
        "cs/Support/CSLiveSupportSrv/Utilities/u.cs",
        "cs/Support/CSLiveSupportSrv/Collections/a.cs",  # duplicates count once
    ]
    assert match(paths, rules) == {
        "collections": (RuleMatch("cs/Support/CSLiveSupportSrv/Collections/a.cs", COLLECTIONS),),
        "utilities": (RuleMatch("cs/Support/CSLiveSupportSrv/Utilities/u.cs",
                                "cs/Support/CSLiveSupportSrv/Utilities/**"),),
    }


def test_match_of_no_paths_selects_nothing() -> None:
    assert match([], {"a": PathRules.compile(["**"])}) == {}
