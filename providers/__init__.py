"""Provider registry: the only list of providers.

Each key is a provider's name: its URL segment (``/webhooks/<key>``), its config value
(``provider: <key>``), the ``provider`` of its events, log lines and metric dimensions.
Adding a provider is one module plus one entry here.
"""

from __future__ import annotations

from providers.azure_devops import AzureDevOpsProvider
from providers.base import Diff, Provider
from providers.bitbucket import BitbucketProvider
from providers.bitbucket_server import BitbucketServerProvider
from providers.gitea import GiteaProvider
from providers.github import GitHubProvider
from providers.gitlab import GitLabProvider

REGISTRY: dict[str, type[Provider]] = {
    "bitbucket": BitbucketProvider,
    "github": GitHubProvider,
    "gitlab": GitLabProvider,
    "bitbucket-server": BitbucketServerProvider,
    "gitea": GiteaProvider,
    "azure-devops": AzureDevOpsProvider,
}


def build_providers() -> dict[str, Provider]:
    """One instance of every registered provider (they hold per-repository API clients),
    each named by its key: a class registered under another key reports that key."""
    providers: dict[str, Provider] = {}
    for name, cls in REGISTRY.items():
        providers[name] = provider = cls()
        provider.name = name
    return providers


__all__ = ["REGISTRY", "Diff", "Provider", "build_providers"]
