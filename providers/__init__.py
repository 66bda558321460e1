"""Provider registry: the URL segment and config value of each provider, to its class."""

from __future__ import annotations

from providers.base import Diff, Provider
from providers.bitbucket import BitbucketProvider
from providers.bitbucket_server import BitbucketServerProvider
from providers.github import GitHubProvider
from providers.gitlab import GitLabProvider

REGISTRY: dict[str, type[Provider]] = {
    "bitbucket": BitbucketProvider,
    "github": GitHubProvider,
    "gitlab": GitLabProvider,
    "bitbucket-server": BitbucketServerProvider,
}


def build_providers() -> dict[str, Provider]:
    """One instance of every registered provider (they hold per-repository API clients)."""
    return {name: cls() for name, cls in REGISTRY.items()}


__all__ = ["REGISTRY", "Diff", "Provider", "build_providers"]
