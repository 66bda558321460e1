"""Each provider's ``file_content`` (the repository-side module map's read), against a
``responses``-mocked API: the documented URL, the raw bytes, None for a missing file,
ProviderError for a refusal or a file over the cap."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import responses

from providers.azure_devops import AzureDevOpsProvider
from providers.base import MAX_FILE_BYTES
from providers.bitbucket import BitbucketProvider
from providers.bitbucket_server import BitbucketServerProvider
from providers.gitea import GiteaProvider
from providers.github import GitHubProvider
from providers.gitlab import GitLabProvider
from receiver.config import RepositoryConfig
from receiver.errors import FileTooLarge, ProviderError
from receiver.matcher import PathRules
from receiver.secrets import SecretRef

SHA = "c" * 40
FILE = "ci/.webhook-receiver.yaml"
TEXT = b"pipelines:\n  - name: acme-jobs\n    paths: [jobs/**]\n"

# provider, api_url, repository, the URL its file API answers on
CASES: list[tuple[str, Any, str, str, str]] = [
    ("github", GitHubProvider, "https://api.github.com", "acme/mono",
     f"https://api.github.com/repos/acme/mono/contents/{FILE}?ref={SHA}"),
    ("gitlab", GitLabProvider, "https://gitlab.example.com", "acme/mono",
     "https://gitlab.example.com/api/v4/projects/acme%2Fmono/repository/files/"
     f"ci%2F.webhook-receiver.yaml/raw?ref={SHA}"),
    ("bitbucket", BitbucketProvider, "https://api.bitbucket.org", "acme/mono",
     f"https://api.bitbucket.org/2.0/repositories/acme/mono/src/{SHA}/{FILE}"),
    ("bitbucket-server", BitbucketServerProvider, "https://bitbucket.example.com", "ACME/mono",
     f"https://bitbucket.example.com/rest/api/latest/projects/ACME/repos/mono/raw/{FILE}"
     f"?at={SHA}"),
    ("gitea", GiteaProvider, "https://gitea.example.com/api/v1", "acme/mono",
     f"https://gitea.example.com/api/v1/repos/acme/mono/raw/{FILE}?ref={SHA}"),
    ("azure-devops", AzureDevOpsProvider, "https://dev.azure.com", "acme/Platform Team/mono",
     "https://dev.azure.com/acme/Platform%20Team/_apis/git/repositories/mono/items"
     f"?path=%2F{FILE.replace('/', '%2F')}&versionDescriptor.version={SHA}"
     "&versionDescriptor.versionType=commit&download=true&%24format=octetStream"
     "&api-version=6.0"),
]
# the Authorization header each provider's file read sends for the token "file-token"
AUTHORIZATION = {"gitea": "token file-token", "azure-devops": "Basic OmZpbGUtdG9rZW4="}


def repo(provider: str, api_url: str, name: str) -> RepositoryConfig:
    return RepositoryConfig(
        provider=provider, name=name, api_url=api_url, webhook_secrets=(),
        api_token=SecretRef("env:TOKEN", ("file-token",)),
        branches=PathRules.compile(["main"]), pipelines=())


@pytest.fixture
def api() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


@pytest.mark.parametrize(("provider", "cls", "api_url", "name", "url"), CASES,
                         ids=[c[0] for c in CASES])
def test_reads_the_raw_file_at_the_commit(api: responses.RequestsMock, provider: str, cls: Any,
                                          api_url: str, name: str, url: str) -> None:
    api.add(responses.GET, url, body=TEXT, match=[responses.matchers.query_string_matcher(
        url.partition("?")[2])] if "?" in url else [])
    assert cls(sleep=lambda _s: None).file_content(repo(provider, api_url, name), FILE,
                                                   SHA) == TEXT
    sent = api.calls[0].request
    assert sent.headers["Authorization"] == AUTHORIZATION.get(provider, "Bearer file-token")
    if provider == "github":
        assert sent.headers["Accept"] == "application/vnd.github.raw+json"


@pytest.mark.parametrize(("provider", "cls", "api_url", "name", "url"), CASES,
                         ids=[c[0] for c in CASES])
def test_a_missing_file_is_none(api: responses.RequestsMock, provider: str, cls: Any,
                                api_url: str, name: str, url: str) -> None:
    api.add(responses.GET, url.partition("?")[0], status=404, json={"message": "Not Found"})
    assert cls(sleep=lambda _s: None).file_content(repo(provider, api_url, name), FILE,
                                                   SHA) is None


@pytest.mark.parametrize(("provider", "cls", "api_url", "name", "url"), CASES,
                         ids=[c[0] for c in CASES])
def test_a_refusal_is_a_provider_error(api: responses.RequestsMock, provider: str, cls: Any,
                                       api_url: str, name: str, url: str) -> None:
    api.add(responses.GET, url.partition("?")[0], status=403, json={"message": "no access"})
    with pytest.raises(ProviderError, match="403"):
        cls(sleep=lambda _s: None).file_content(repo(provider, api_url, name), FILE, SHA)


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
@pytest.mark.parametrize(("provider", "cls", "api_url", "name", "url"), CASES,
                         ids=[c[0] for c in CASES])
def test_a_file_over_the_cap_is_refused_as_too_large(api: responses.RequestsMock,
                                                     provider: str, cls: Any, api_url: str,
                                                     name: str, url: str,
                                                     declared: bool) -> None:
    # with a Content-Length the size is known before the body; without, reading stops one
    # byte past the cap
    api.add(responses.GET, url.partition("?")[0], body=b"x" * (MAX_FILE_BYTES + 1),
            auto_calculate_content_length=declared)
    with pytest.raises(FileTooLarge) as caught:
        cls(sleep=lambda _s: None).file_content(repo(provider, api_url, name), FILE, SHA)
    assert (caught.value.size, caught.value.limit) == (
        MAX_FILE_BYTES + 1 if declared else None, MAX_FILE_BYTES)


def test_a_file_at_the_cap_is_read_whole(api: responses.RequestsMock) -> None:
    provider, cls, api_url, name, url = CASES[0]
    api.add(responses.GET, url.partition("?")[0], body=b"x" * MAX_FILE_BYTES)
    assert cls(sleep=lambda _s: None).file_content(repo(provider, api_url, name), FILE,
                                                   SHA) == b"x" * MAX_FILE_BYTES


def test_a_short_commit_id_is_refused_before_any_request() -> None:
    with pytest.raises(ValueError, match="full lower-case commit id"):
        GitHubProvider().file_content(repo("github", "https://api.github.com", "acme/mono"),
                                      FILE, "abc123")


# the web page of the same file, a webhook-receiver/config status's link
WEB_PAGES = {
    "github": f"https://github.com/acme/mono/blob/{SHA}/{FILE}",
    "gitlab": f"https://gitlab.example.com/acme/mono/-/blob/{SHA}/{FILE}",
    "bitbucket": f"https://bitbucket.org/acme/mono/src/{SHA}/{FILE}",
    "bitbucket-server": f"https://bitbucket.example.com/projects/ACME/repos/mono/browse/{FILE}"
                        f"?at={SHA}",
    "gitea": f"https://gitea.example.com/acme/mono/src/commit/{SHA}/{FILE}",
    "azure-devops": f"https://dev.azure.com/acme/Platform%20Team/_git/mono?path=/{FILE}"
                    f"&version=GC{SHA}",
}


@pytest.mark.parametrize(("provider", "cls", "api_url", "name", "url"), CASES,
                         ids=[c[0] for c in CASES])
def test_a_file_links_to_its_page_on_the_providers_website(
        provider: str, cls: Any, api_url: str, name: str, url: str) -> None:
    assert cls().file_url(repo(provider, api_url, name), FILE, SHA) == WEB_PAGES[provider]


def test_a_github_enterprise_file_links_to_its_host_not_its_api() -> None:
    enterprise = repo("github", "https://ghe.example.com/api/v3", "acme/mono")
    assert GitHubProvider().file_url(enterprise, FILE, SHA) == \
        f"https://ghe.example.com/acme/mono/blob/{SHA}/{FILE}"
