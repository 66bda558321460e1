"""Slow and many clients (receiver/gunicorn_ext.py ThreadWorker, receiver/app.py early checks).

Driven over real sockets against ``webhook-receiver serve``: clients that send their
request a byte at a time, stall, or never send the body, while health checks and signed
pushes keep being answered. The one timing bound, a second for an answer that takes a few
milliseconds, is the acceptance bound of issue 21.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.harness import FakeAPI, Service, fixture_bytes
from tests.slowloris import Attack, raw_request, timed

SECRETS = {"github": "slow-github-secret", "gitlab": "slow-gitlab-token",
           "bitbucket": "slow-bitbucket-secret", "bitbucket-server": "slow-bbs-secret"}
EVENTS_KEY = "slow-events-key"
PUSH = fixture_bytes("github/go-playground-push.json")  # a real push, about 8 KB
REPO = json.loads(PUSH)["repository"]["full_name"]
READ_TIMEOUT = 2.0  # server.read_timeout_seconds of the attacked service


def _config(tmp_path: Path, api: FakeAPI, read_timeout: float) -> dict[str, object]:
    return {
        "state": {"backend": "sqlite", "path": str(tmp_path / "state.db")},
        "launcher": {"backend": "log"},
        "server": {"read_timeout_seconds": read_timeout},
        "outcomes": {"api_keys": ["env:SLOW_EVENTS_KEY"]},
        "repositories": [{
            "provider": provider, "name": REPO if provider == "github" else f"acme/{provider}",
            "api_url": api.url, "webhook_secrets": [f"env:SLOW_{provider.upper().replace('-', '_')}"],
            "branches": ["**"], "pipelines": [{"name": f"{provider}-app", "paths": ["**"]}],
        } for provider in SECRETS],
    }


def _env() -> dict[str, str]:
    return {"SLOW_EVENTS_KEY": EVENTS_KEY,
            **{f"SLOW_{p.upper().replace('-', '_')}": s for p, s in SECRETS.items()}}


@pytest.fixture
def service(tmp_path: Path, fake_api: FakeAPI) -> Iterator[Service]:
    svc = Service(_config(tmp_path, fake_api, READ_TIMEOUT), tmp_path, env=_env()).start()
    yield svc
    svc.stop()


def _signed_push(svc: Service) -> int:
    signature = "sha256=" + hmac.new(SECRETS["github"].encode(), PUSH, hashlib.sha256).hexdigest()
    return requests.post(svc.url + "/webhooks/github", data=PUSH, timeout=10, headers={
        "Content-Type": "application/json", "X-GitHub-Event": "push",
        "X-GitHub-Delivery": str(uuid.uuid4()), "X-Hub-Signature-256": signature}).status_code


def _healthz(svc: Service) -> int:
    return requests.get(svc.url + "/healthz", timeout=10).status_code


def test_sixty_four_slow_clients_never_delay_healthz_or_a_signed_push_by_a_second(
        service: Service) -> None:
    latencies: dict[str, list[float]] = {"healthz": [], "push": []}
    statuses: dict[str, set[int]] = {"healthz": set(), "push": set()}
    with Attack(service.port, count=64, pause=0.3) as attack:
        time.sleep(1.0)  # every slow connection is open and sending
        end = time.monotonic() + 4 * READ_TIMEOUT  # the attackers are cut and come back
        while time.monotonic() < end:
            for name, probe in (("healthz", _healthz), ("push", _signed_push)):
                seconds, status = timed(lambda probe=probe: probe(service))  # type: ignore[misc]
                latencies[name].append(seconds)
                statuses[name].add(status)
            time.sleep(0.1)
    assert statuses == {"healthz": {200}, "push": {202}}
    assert len(latencies["push"]) >= 10
    slowest = {name: max(values) for name, values in latencies.items()}
    assert slowest["healthz"] < 1.0 and slowest["push"] < 1.0, slowest
    # the slow connections were held to the read deadline, answered 408, and came back
    assert attack.closed_by_server >= 64
    assert attack.opened >= 128
    assert set(attack.answers) == {b"HTTP/1.1 408"}


def _head(path: str, headers: dict[str, str], content_length: int = 1000) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json",
             *(f"{k}: {v}" for k, v in headers.items()), f"Content-Length: {content_length}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _answer_without_sending_the_body(svc: Service, head: bytes) -> tuple[int, bytes, float]:
    """Send ``head`` and one byte of its body, never the rest: the status line and body of
    the answer, whether the server then closed, and how long the answer took."""
    with socket.create_connection(("127.0.0.1", svc.port), timeout=10) as sock:
        t0 = time.monotonic()
        sock.sendall(head + b"{")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        elapsed = time.monotonic() - t0
    head_part, _, body = answer.partition(b"\r\n\r\n")
    status = int(head_part.split(b" ", 2)[1])
    assert b"connection: close" in head_part.lower()  # the body was never read
    return status, body, elapsed


GITHUB = {"X-GitHub-Event": "push", "X-GitHub-Delivery": "early-1"}
EARLY: dict[str, tuple[str, dict[str, str], int, bytes]] = {
    "github_without_x_hub_signature_256": ("/webhooks/github", GITHUB, 401, b"unauthorized"),
    "github_with_only_the_sha1_signature": (
        "/webhooks/github", {**GITHUB, "X-Hub-Signature": "sha1=" + "0" * 40}, 401,
        b"unauthorized"),
    "gitlab_without_token_or_signature": (
        "/webhooks/gitlab", {"X-Gitlab-Event": "Push Hook"}, 401, b"unauthorized"),
    "bitbucket_without_x_hub_signature": (
        "/webhooks/bitbucket", {"X-Event-Key": "repo:push", "X-Request-UUID": str(uuid.uuid4())},
        401, b"unauthorized"),
    "bitbucket_server_without_x_hub_signature": (
        "/webhooks/bitbucket-server",
        {"X-Event-Key": "repo:refs_changed", "X-Request-Id": str(uuid.uuid4())}, 401,
        b"unauthorized"),
    "bitbucket_server_test_connection_ping": (
        "/webhooks/bitbucket-server",
        {"X-Event-Key": "diagnostics:ping", "X-Request-Id": str(uuid.uuid4())}, 200,
        b'"ignored"'),
    "events_without_x_api_key": ("/events/codepipeline", {}, 401, b"missing x-api-key"),
    "events_with_another_x_api_key": (
        "/events/codepipeline", {"x-api-key": "not-" + EVENTS_KEY}, 401, b"does not match"),
}


@pytest.mark.parametrize(("path", "headers", "status", "says"), EARLY.values(), ids=EARLY.keys())
def test_a_request_refused_from_its_headers_is_answered_before_its_body_arrives(
        service: Service, path: str, headers: dict[str, str], status: int,
        says: bytes) -> None:
    answered, body, elapsed = _answer_without_sending_the_body(service, _head(path, headers))
    assert (answered, says in body) == (status, True)
    assert elapsed < READ_TIMEOUT  # answered, not timed out


def test_a_content_length_over_the_limit_is_413_before_the_body_arrives(
        tmp_path: Path, fake_api: FakeAPI) -> None:
    config = {**_config(tmp_path, fake_api, READ_TIMEOUT), "server": {
        "read_timeout_seconds": READ_TIMEOUT, "max_body_bytes": 4096}}
    svc = Service(config, tmp_path, env=_env()).start()
    try:
        head = _head("/webhooks/github", {**GITHUB, "X-Hub-Signature-256": "sha256=" + "0" * 64},
                     content_length=4097)
        status, body, elapsed = _answer_without_sending_the_body(svc, head)
    finally:
        svc.stop()
    assert (status, b"payload_too_large" in body) == (413, True)
    assert elapsed < READ_TIMEOUT


SIGNED_HEAD = _head("/webhooks/github", {**GITHUB, "X-Hub-Signature-256": "sha256=" + "0" * 64})
STALLS: dict[str, tuple[bytes, str]] = {
    "in_the_request_line": (b"POST /webhooks/gi", "headers"),
    "in_the_headers": (SIGNED_HEAD[:-30], "headers"),
    "in_the_body": (SIGNED_HEAD + b'{"ref": "refs/heads/', "body"),
    "in_a_chunked_body": (SIGNED_HEAD.replace(b"Content-Length: 1000",
                                              b"Transfer-Encoding: chunked")
                          + b"20\r\n{\"ref\": \"refs/", "body"),
}


@pytest.mark.parametrize(("sent", "phase"), STALLS.values(), ids=STALLS.keys())
def test_a_request_that_stalls_is_answered_408_at_its_deadline_and_logged(
        service: Service, sent: bytes, phase: str) -> None:
    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
        t0 = time.monotonic()
        sock.sendall(sent)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        elapsed = time.monotonic() - t0
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"request_timeout" in answer
    assert READ_TIMEOUT - 0.1 < elapsed < READ_TIMEOUT + 2
    lines = service.wait_for(lambda logs: any(e.get("event") == "http.timeout" for e in logs))
    (logged,) = [e for e in lines if e.get("event") == "http.timeout"]
    assert (logged["level"], logged["status"], logged["phase"]) == ("info", 408, phase)
    assert logged["received"] == len(sent)
    assert not [e for e in lines if e.get("level") == "error"]


def test_a_client_dripping_a_byte_at_a_time_cannot_extend_its_deadline(
        service: Service) -> None:
    sent = SIGNED_HEAD + b'{"ref": "refs/heads/main", "padding": "' + b"x" * 900
    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
        sock.setblocking(False)
        t0 = time.monotonic()
        answer = b""
        for byte in sent:  # far more bytes than the deadline lets it send
            try:
                sock.send(bytes([byte]))
                answer = sock.recv(65536)
            except BlockingIOError:
                pass
            except OSError:
                break
            if answer or time.monotonic() - t0 > 3 * READ_TIMEOUT:
                break
            time.sleep(0.05)
        elapsed = time.monotonic() - t0
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert elapsed < READ_TIMEOUT + 2


def test_a_connection_that_never_sends_a_byte_is_closed_at_the_deadline_without_an_answer(
        service: Service) -> None:
    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
        t0 = time.monotonic()
        assert sock.recv(65536) == b""
        elapsed = time.monotonic() - t0
    assert READ_TIMEOUT - 0.1 < elapsed < READ_TIMEOUT + 2
    time.sleep(0.5)
    assert service.events("http.timeout") == []


def test_a_signed_push_sent_in_pieces_within_the_deadline_is_accepted_once(
        service: Service) -> None:
    delivery_id = str(uuid.uuid4())
    signature = "sha256=" + hmac.new(SECRETS["github"].encode(), PUSH, hashlib.sha256).hexdigest()
    head = _head("/webhooks/github", {"X-GitHub-Event": "push", "X-GitHub-Delivery": delivery_id,
                                      "X-Hub-Signature-256": signature}, len(PUSH))
    data = head + PUSH
    pieces = [data[i:i + len(data) // 5 + 1] for i in range(0, len(data), len(data) // 5 + 1)]
    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
        for piece in pieces:  # the head alone first: the app runs, and waits for the body
            sock.sendall(piece)
            time.sleep(0.2)
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 202 ")
    lines = service.wait_for(lambda logs: any(
        e.get("event") == "webhook.accepted" and e.get("delivery_id") == delivery_id
        for e in logs))
    assert len([e for e in lines if e.get("delivery_id") == delivery_id
                and e.get("event", "").startswith("webhook.")]) == 1


def test_a_client_that_expects_100_continue_gets_it_and_then_its_answer(
        service: Service) -> None:
    signature = "sha256=" + hmac.new(SECRETS["github"].encode(), PUSH, hashlib.sha256).hexdigest()
    head = _head("/webhooks/github", {"X-GitHub-Event": "push", "Expect": "100-continue",
                                      "X-GitHub-Delivery": str(uuid.uuid4()),
                                      "X-Hub-Signature-256": signature}, len(PUSH))
    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
        sock.sendall(head)
        assert sock.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(PUSH)
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 202 ")


def test_pipelined_requests_on_one_connection_are_each_answered(service: Service) -> None:
    request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
        sock.sendall(request * 3 + b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Connection: close\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.count(b"HTTP/1.1 200 OK") == 4


def test_bad_framing_and_stalls_never_get_a_5xx(service: Service) -> None:
    cases = [SIGNED_HEAD.replace(b"Content-Length: 1000", b"Content-Length: 1000\r\n"
                                 b"Transfer-Encoding: chunked"),
             SIGNED_HEAD.replace(b"Content-Length: 1000", b"Transfer-Encoding: chunked")
             + b"zz\r\n", b"POST /webhooks/github HTTP/1.1\nHost: x\n\n"]
    assert [raw_request(service.port, case) for case in cases] == [400, 400, 400]


def _workers_rss_mib(master: int) -> float:
    total = 0.0
    for task in Path(f"/proc/{master}/task").iterdir():
        for pid in (task / "children").read_text().split():
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
    return total


def test_large_bodies_that_stall_hold_at_most_the_workers_budget_of_memory(
        tmp_path: Path, fake_api: FakeAPI) -> None:
    # one thread a worker: each holds at most 8 MiB (threads x max_body_bytes) of request
    # bytes beyond 64 KiB a connection, so 16 connections stalling after 7 MiB each (112
    # MiB sent) leave the rest unread in the kernel
    limit = 8 * 1024 * 1024
    config = {**_config(tmp_path, fake_api, 5.0), "server": {
        "read_timeout_seconds": 5.0, "max_body_bytes": limit}}
    svc = Service(config, tmp_path, env={**_env(), "RECEIVER_THREADS": "1"}).start()
    socks: list[socket.socket] = []
    try:
        assert svc.proc is not None
        time.sleep(0.5)
        before = _workers_rss_mib(svc.proc.pid)
        head = _head("/webhooks/github", {**GITHUB, "X-Hub-Signature-256": "sha256=" + "0" * 64},
                     content_length=limit - 1)
        sent = [0] * 16
        for _ in range(16):
            sock = socket.create_connection(("127.0.0.1", svc.port), timeout=10)
            sock.sendall(head)
            sock.setblocking(False)
            socks.append(sock)
        piece = b"x" * (256 * 1024)
        end = time.monotonic() + 2.0
        while time.monotonic() < end:  # as much of 7 MiB each as the kernel takes
            for i, sock in enumerate(socks):
                if sent[i] < 7 * 1024 * 1024:
                    with contextlib.suppress(BlockingIOError):
                        sent[i] += sock.send(piece)
            time.sleep(0.01)
        grown = _workers_rss_mib(svc.proc.pid) - before
        seconds, status = timed(lambda: _healthz(svc))
    finally:
        for sock in socks:
            sock.close()
        svc.stop()
    assert sum(sent) > 64 * 1024 * 1024  # the clients did send most of it
    assert grown < 48, f"workers grew {grown:.0f} MiB"
    assert (status, seconds < 1.0) == (200, True)


def test_a_request_after_one_empty_line_waits_for_its_body(service: Service) -> None:
    # RFC 9112 section 2.2 lets a server ignore one empty line before the request line
    signature = "sha256=" + hmac.new(SECRETS["github"].encode(), PUSH, hashlib.sha256).hexdigest()
    head = _head("/webhooks/github", {"X-GitHub-Event": "push",
                                      "X-GitHub-Delivery": str(uuid.uuid4()),
                                      "X-Hub-Signature-256": signature}, len(PUSH))
    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
        sock.sendall(b"\r\n" + head)
        time.sleep(0.3)
        sock.sendall(PUSH)
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 202 ")
