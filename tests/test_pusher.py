"""Who pushed, and the commit's web page: what each provider adds for notifications.

Every payload is a published sample (origins in tests/fixtures/README.md); the pusher is
whatever that sample names in the field the provider documents (GitHub ``pusher.name``,
GitLab ``user_username``, Bitbucket Cloud ``actor.display_name``, Data Center
``actor.displayName``, Gitea/Forgejo ``pusher.login``, Azure DevOps
``resource.pushedBy.displayName``).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from providers import build_providers
from providers.base import PUSHER_MAX
from receiver import config
from receiver.events import Delivery, PushEvent
from tests.harness import fixture_bytes

PROVIDERS = build_providers()


@pytest.mark.parametrize(("provider", "fixture", "headers", "pusher"), [
    ("github", "github/go-playground-push.json", {"x-github-event": "push"}, "binkkatal"),
    ("gitlab", "gitlab/go-gitlab-webhooks-push.json", {"x-gitlab-event": "Push Hook"}, "jsmith"),
    # an older payload with no user_username: the display name instead
    ("gitlab", "gitlab/go-playground-push-event.json", {"x-gitlab-event": "Push Hook"},
     "John Smith"),
    ("bitbucket", "bitbucket-cloud/jenkins-cloud-push-updatePayload.json",
     {"x-event-key": "repo:push"}, "Stephen Connolly"),
    ("bitbucket-server", "bitbucket-server/jenkins-server-pushPayload.json",
     {"x-event-key": "repo:refs_changed"}, "Antonio Muniz"),
    ("gitea", "gitea/woodpecker-gitea-HookPush.json", {"x-gitea-event": "push"}, "gordon"),
    ("gitea", "gitea/packit-forgejo-push_with_one_commit.json", {"x-forgejo-event": "push"},
     "mfocko"),
    ("azure-devops", "azure-devops/go-playground-git.push.json", {}, "Jamal Hartnett"),
])
def test_each_provider_names_who_pushed_from_its_payload(
        provider: str, fixture: str, headers: dict[str, str], pusher: str) -> None:
    events = PROVIDERS[provider].parse({"content-type": "application/json", **headers},
                                       fixture_bytes(fixture))
    assert {e.pusher for e in events} == {pusher}


def _without(doc: Any, key: str) -> Any:
    if isinstance(doc, dict):
        return {k: _without(v, key) for k, v in doc.items() if k != key}
    if isinstance(doc, list):
        return [_without(v, key) for v in doc]
    return doc


@pytest.mark.parametrize(("provider", "fixture", "headers", "field"), [
    ("github", "github/go-playground-push.json", {"x-github-event": "push"}, "pusher"),
    ("bitbucket", "bitbucket-cloud/jenkins-cloud-push-updatePayload.json",
     {"x-event-key": "repo:push"}, "actor"),
    ("azure-devops", "azure-devops/go-playground-git.push.json", {}, "pushedBy"),
])
def test_a_payload_that_names_no_pusher_gives_none(
        provider: str, fixture: str, headers: dict[str, str], field: str) -> None:
    doc = _without(json.loads(fixture_bytes(fixture)), field)
    if provider == "github":
        doc.pop("sender", None)
    events = PROVIDERS[provider].parse({"content-type": "application/json", **headers},
                                       json.dumps(doc).encode())
    assert {e.pusher for e in events} == {None}


def test_a_hostile_pusher_name_is_made_printable_and_bounded() -> None:
    doc = json.loads(fixture_bytes("github/go-playground-push.json"))
    doc["pusher"]["name"] = "\x1b[31mevil\u202e\n" + "x" * 100_000
    (event,) = PROVIDERS["github"].parse({"x-github-event": "push"}, json.dumps(doc).encode())
    assert event.pusher is not None and len(event.pusher) == PUSHER_MAX
    assert event.pusher.startswith("?[31mevil??x") and event.pusher.isprintable()


def test_the_pusher_is_kept_with_the_recorded_delivery_and_not_part_of_its_identity() -> None:
    event = PushEvent("github", "acme/mono", "branch", "main", "a" * 40, "b" * 40,
                      pusher="octocat")
    delivery = Delivery("d1", "github", "acme/mono", (event,))
    (stored,) = Delivery.events_from_json(delivery.events_json())
    assert stored.pusher == "octocat"
    assert stored == PushEvent("github", "acme/mono", "branch", "main", "a" * 40, "b" * 40)


def test_a_recorded_event_with_a_key_this_version_does_not_know_is_still_read() -> None:
    text = json.dumps([{"provider": "github", "repository": "acme/mono", "ref_type": "branch",
                        "ref_name": "main", "before": None, "after": "b" * 40,
                        "forced": False, "pusher": None, "added_later": 1}])
    (event,) = Delivery.events_from_json(text)
    assert event.after == "b" * 40


SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize(("provider", "name", "api_url", "url"), [
    ("github", "acme/mono", None, f"https://github.com/acme/mono/commit/{SHA}"),
    ("github", "acme/mono", "https://ghe.example.com/api/v3",
     f"https://ghe.example.com/acme/mono/commit/{SHA}"),
    ("gitlab", "group/sub/mono", None, f"https://gitlab.com/group/sub/mono/-/commit/{SHA}"),
    ("bitbucket", "ws/mono", None, f"https://bitbucket.org/ws/mono/commits/{SHA}"),
    ("bitbucket-server", "PROJ/mono", "https://bitbucket.example.com",
     f"https://bitbucket.example.com/projects/PROJ/repos/mono/commits/{SHA}"),
    ("gitea", "acme/mono", "https://gitea.example.com/api/v1",
     f"https://gitea.example.com/acme/mono/commit/{SHA}"),
    ("azure-devops", "org/Fabrikam Fiber/mono", None,
     f"https://dev.azure.com/org/Fabrikam%20Fiber/_git/mono/commit/{SHA}"),
])
def test_each_provider_links_a_commit_to_its_web_page(
        provider: str, name: str, api_url: str | None, url: str) -> None:
    raw: dict[str, Any] = {"provider": provider, "name": name, "webhook_secrets": ["env:S"],
                           "branches": ["main"], "pipelines": [{"name": "p", "paths": ["**"]}]}
    if api_url:
        raw["api_url"] = api_url
    repo = config.parse({"repositories": [raw]}).repositories[0]
    assert PROVIDERS[provider].commit_url(repo, SHA) == url
