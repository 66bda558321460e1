"""Fuzzing every webhook path of the service under gunicorn over HTTP with Hypothesis.

Each provider path gets at least ``MIN_REQUESTS`` generated requests over one keep-alive
session: random bytes and JSON, the recorded fixtures mutated structurally and byte by byte,
deep JSON, invalid UTF-8, oversize and chunked bodies, wrong and missing content types,
delivery ids and event headers, and every way of getting the signature wrong (missing,
another secret, truncated, over other bytes, stale or foreign GitLab signatures). A good
share is CORRECTLY signed, so the parsers see the mutants too.

Every answer is checked as it arrives: never a 5xx, the status the request's class calls for
(404 path, 415 type, 413 size, 401 authenticity, in that order), nothing but a rejection for
an unauthentic request, no secret or token in any body. Afterwards the SQLite deliveries
table must hold exactly the deliveries answered 202, each under the repository whose secret
signed it; every call the FakeAPIs saw must be a configured route of that repository with
commits taken from accepted deliveries; the attacker host saw nothing; ``/healthz`` answers;
and the log holds no ``request.error``.

The service's limit is 64 KiB here so oversize bodies stay cheap; ``FUZZ_EXAMPLES`` (per
provider, each a batch of ``BATCH`` requests) scales the run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote_plus, urlencode

import pytest
import requests
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from providers import REGISTRY
from tests.harness import FIXTURES, FakeAPI, Service
from tests.test_hostile_input import (
    GITLAB_SIGNING,
    OTHER_SECRETS,
    OTHER_TOKENS,
    PROVIDERS,
    SECRETS,
    TOKENS,
    WIRES,
    Wire,
    gitlab_signed,
    hub_signature,
    rename,
    retarget,
    service_config,
)

LIMIT = 64 * 1024
DRAIN_CAP = 64 * 1024  # gunicorn's gunicorn.http.parser._DRAIN_MAX_BYTES
BATCH = 10
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "520"))
MIN_REQUESTS = min(5000, EXAMPLES * BATCH)
TOLERANCE = 300  # GitLab's signed-webhook timestamp window
SECRET_VALUES = [*SECRETS.values(), *OTHER_SECRETS.values(), *TOKENS.values(),
                 *OTHER_TOKENS.values(), GITLAB_SIGNING]
FIXTURE_DIRS = {"github": "github", "gitlab": "gitlab", "bitbucket": "bitbucket-cloud",
                "bitbucket-server": "bitbucket-server"}
# webhook bodies only (the API recordings are not deliveries)
FIXTURE_BODIES = {p: [f.read_bytes() for f in sorted((FIXTURES / d).glob("*.json"))
                      if not f.name.startswith(("pygithub-replay-", "jenkins-api-"))]
                  for p, d in FIXTURE_DIRS.items()}
EVENTS = {
    "github": ["push", "ping", "create", "delete", "pull_request"],
    "gitlab": ["Push Hook", "Tag Push Hook", "System Hook", "Merge Request Hook"],
    "bitbucket": ["repo:push", "pullrequest:created", "repo:fork"],
    "bitbucket-server": ["repo:refs_changed", "diagnostics:ping", "mirror:repo_synchronized",
                         "pr:opened"],
}
CONTENT_TYPES = ["text/plain", "application/xml", "application/octet-stream",
                 "multipart/form-data; boundary=b", "application/x-www-form-urlencoded",
                 "application/json; charset=utf-8", "Application/JSON", "application/jsonp",
                 "application/vnd.github+json", "json", "*/*"]
# framing headers are left alone: they are tested in tests/test_hostile_input.py
EXTRA_HEADERS = ["X-Hub-Signature", "X-Hub-Signature-256", "X-GitHub-Event", "X-GitHub-Delivery",
                 "X-Gitlab-Token", "X-Gitlab-Event", "X-Gitlab-Event-UUID", "Idempotency-Key",
                 "webhook-id", "webhook-timestamp", "webhook-signature", "X-Event-Key",
                 "X-Request-UUID", "X-Request-Id", "X-Attempt-Number", "Authorization",
                 "X-Forwarded-For", "Cookie", "X-Anything"]
HEX_RUN = re.compile(r"(?<![0-9a-f])[0-9a-f]{40,64}(?![0-9a-f])")
INVALID_UTF8 = [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf8\x88\x80\x80\x80",
                b"\xe2\x82"]

# --- generated values --------------------------------------------------------------------------


def rare(draw: st.DrawFn, percent: int) -> bool:
    """True about ``percent``% of the time.

    Hypothesis favours the ends of a range, so the window sits in the middle of it.
    """
    return draw(st.integers(0, 999)) in range(500, 500 + 10 * percent)


# visible Latin-1 (what an HTTP header can carry), without the C1 controls
header_text = st.text(st.characters(min_codepoint=0x21, max_codepoint=0xFF,
                                    exclude_characters="".join(map(chr, range(0x7F, 0xA0)))),
                      max_size=80)
hex_sha = st.binary(min_size=20, max_size=20).map(bytes.hex)
json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | \
    st.text(max_size=30)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=12)


def interesting_strings(attacker: str) -> st.SearchStrategy[str]:
    """Values that have broken parsers and URL builders before."""
    return st.sampled_from([
        "", "0" * 40, "0" * 64, "../../../etc/passwd", "..", "a/../b", "%2e%2e%2f",
        f"{attacker}/steal", f"{attacker}/repos/x/y", "refs/heads/main", "refs/tags/v1",
        "refs/heads/", "refs/pull/1/merge", "main", "x" * 2000, "\u202e\u0000\ud800",
        "\U0001f600", "a b\tc\nd", "?access_token=x", "#frag", "@evil.example",
    ]) | hex_sha | hex_sha.map(str.upper) | hex_sha.map(lambda h: h[:7])


# --- one planned request -----------------------------------------------------------------------


@dataclass
class Planned:
    """A request to send and the facts about it that decide its answer."""

    path: str
    body: bytes
    headers: dict[str, str]
    chunked: bool = False
    resend: bool = False
    note: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        # short enough for Hypothesis to print a falsifying batch
        return (f"Planned({self.note}, {self.path!r}, {self.headers!r}, chunked={self.chunked}, "
                f"resend={self.resend}, {len(self.body)} bytes: {self.body[:160]!r})")


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*prefix, i))


def _edit(doc: Any, path: tuple[Any, ...], op: str, value: Any) -> Any:
    """``doc`` with the node at ``path`` replaced, deleted, wrapped or stringified."""
    if not path:
        return value if op == "replace" else doc
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    key = path[-1]
    if op == "delete":
        del parent[key]
    elif op == "wrap":
        parent[key] = [parent[key]]
    elif op == "stringify":
        parent[key] = json.dumps(parent[key])
    else:
        parent[key] = value
    return doc


@st.composite
def mutated_json(draw: st.DrawFn, wire: Wire, attacker: str) -> bytes:
    """A fixture of this provider with structural edits, re-serialized."""
    doc: Any = json.loads(draw(st.sampled_from(FIXTURE_BODIES[wire.provider])))
    if isinstance(doc, dict) and not rare(draw, 5):
        # mostly a configured repository, so the edits reach the parser and the processor
        name = wire.home if not rare(draw, 30) else draw(st.sampled_from(
            [wire.other, wire.home.upper(), wire.home + "/..", "a/b", f"{wire.home}/../x"]))
        with contextlib.suppress(KeyError, TypeError):
            rename(wire, doc, name)
    if not rare(draw, 30):
        # a new branch between new commits: accepted pushes then make compare calls
        with contextlib.suppress(KeyError, TypeError, IndexError, AttributeError):
            retarget(wire, doc, draw(st.sampled_from(["main", "fuzz", "feature/x", "release/1"])),
                     draw(hex_sha), draw(hex_sha))
    for _ in range(draw(st.integers(0, 3))):
        paths = list(_paths(doc))
        path = paths[draw(st.integers(0, len(paths) - 1))]
        op = draw(st.sampled_from(["replace", "replace", "interesting", "sha", "delete",
                                   "wrap", "stringify"]))
        if op == "interesting":
            value: Any = draw(interesting_strings(attacker))
        elif op == "sha":
            value = draw(hex_sha)
        else:
            value = draw(json_values)
        if op == "delete" and not path:
            continue
        doc = _edit(doc, path, "replace" if op in ("interesting", "sha") else op, value)
    indent = draw(st.sampled_from([None, None, 2]))
    # surrogatepass: a lone surrogate (one of the interesting strings) becomes invalid UTF-8
    return json.dumps(doc, indent=indent, ensure_ascii=draw(st.booleans())).encode(
        "utf-8", "surrogatepass")


@st.composite
def mutated_bytes(draw: st.DrawFn, wire: Wire) -> bytes:
    """A fixture's exact bytes with a few bytes flipped, inserted or cut."""
    body = bytearray(draw(st.sampled_from(FIXTURE_BODIES[wire.provider])))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(body)))
        op = draw(st.sampled_from(["flip", "insert", "cut", "truncate"]))
        if op == "flip" and at < len(body):
            body[at] ^= draw(st.integers(1, 255))
        elif op == "insert":
            body[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "cut":
            del body[at:at + draw(st.integers(1, 64))]
        else:
            del body[at:]
    return bytes(body)


@st.composite
def deep_json(draw: st.DrawFn, wire: Wire) -> bytes:
    """Deep nesting on its own, or hung under a real push."""
    depth = draw(st.integers(50, 12_000))
    opening, closing = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
    nested = opening * depth + b"1" + closing * depth
    if draw(st.booleans()):
        return nested
    fixture = draw(st.sampled_from(FIXTURE_BODIES[wire.provider]))
    return b'{"x-deep":' + nested + b"," + fixture.lstrip()[1:] if fixture.lstrip()[:1] == b"{" \
        else nested


@st.composite
def invalid_utf8(draw: st.DrawFn, wire: Wire) -> bytes:
    """A fixture with an invalid UTF-8 sequence put inside one of its strings."""
    body = draw(st.sampled_from(FIXTURE_BODIES[wire.provider]))
    quotes = [m.start() for m in re.finditer(rb'"[A-Za-z]', body)] or [0]
    at = quotes[draw(st.integers(0, len(quotes) - 1))] + 1
    return body[:at] + draw(st.sampled_from(INVALID_UTF8)) + body[at:]


BODY_KINDS = ["mutated_json"] * 8 + ["fixture", "mutated_bytes", "mutated_bytes", "random_bytes",
                                      "random_json", "deep_json", "invalid_utf8", "oversize",
                                      "empty"]


@st.composite
def body_strategy(draw: st.DrawFn, wire: Wire, attacker: str) -> tuple[str, bytes]:
    """(kind, body): every kind of body the fuzz sends, mutated real pushes the most."""
    kind = draw(st.sampled_from(BODY_KINDS))
    fixture = st.sampled_from(FIXTURE_BODIES[wire.provider])
    if kind == "mutated_json":
        body = draw(mutated_json(wire, attacker))
    elif kind == "fixture":
        body = draw(fixture)
    elif kind == "mutated_bytes":
        body = draw(mutated_bytes(wire))
    elif kind == "random_bytes":
        body = draw(st.binary(max_size=512))
    elif kind == "random_json":
        body = json.dumps(draw(json_values)).encode()
    elif kind == "deep_json":
        body = draw(deep_json(wire))
    elif kind == "invalid_utf8":
        body = draw(invalid_utf8(wire))
    elif kind == "oversize":
        base = draw(fixture)
        body = base + b" " * (LIMIT + draw(st.integers(1, 2048)) - len(base))
    else:
        body = b""
    return kind, body


@st.composite
def auth_headers(draw: st.DrawFn, wire: Wire, body: bytes, delivery_id: str) -> dict[str, str]:
    """Signature headers: right about half the time, otherwise wrong in one of many ways."""
    secret = SECRETS[wire.provider]
    if wire.provider == "gitlab":
        if not rare(draw, 45):
            kind = draw(st.sampled_from(["token", "signed"]))
        else:
            kind = draw(st.sampled_from([
                "other_token", "missing", "truncated", "random", "stale", "foreign_key",
                "other_body", "signed_and_wrong_token"]))
        if kind == "token":
            return {"X-Gitlab-Token": secret}
        if kind == "other_token":
            return {"X-Gitlab-Token": OTHER_SECRETS["gitlab"]}
        if kind == "truncated":
            return {"X-Gitlab-Token": secret[:draw(st.integers(0, len(secret) - 1))]}
        if kind == "random":
            return {"X-Gitlab-Token": draw(header_text)}
        if kind == "missing":
            return {}
        now = int(time.time())
        stamp = now + (draw(st.sampled_from([-1, 1])) * draw(st.integers(TOLERANCE + 60, 10**6))
                       if kind == "stale" else draw(st.integers(-60, 60)))
        key = ("whsec_" + "a" * 44) if kind == "foreign_key" else GITLAB_SIGNING
        signed = gitlab_signed(body + (b"x" if kind == "other_body" else b""), delivery_id,
                               stamp, key)
        if kind == "signed_and_wrong_token":
            signed["X-Gitlab-Token"] = secret + "x"
        return signed
    right = hub_signature(body, secret)
    if not rare(draw, 45):
        return {wire.signature_header: right}
    kind = draw(st.sampled_from(["other_secret", "missing", "truncated", "other_body", "random",
                                 "sha1", "upper_hex", "prefix_only"]))
    value = {
        "other_secret": hub_signature(body, OTHER_SECRETS[wire.provider]),
        "truncated": right[:draw(st.integers(0, len(right) - 1))],
        "other_body": hub_signature(body + b"\n", secret),
        "sha1": "sha1=" + right[7:47],
        "upper_hex": "sha256=" + right[7:].upper(),
        "prefix_only": "sha256=",
    }.get(kind)
    if kind == "random":
        value = draw(header_text)
    return {} if value is None else {wire.signature_header: value}


@st.composite
def planned(draw: st.DrawFn, wire: Wire, attacker: str) -> Planned:
    """One request to ``wire``'s path, with its body, headers and framing drawn."""
    kind, body = draw(body_strategy(wire, attacker))
    headers: dict[str, str] = {}
    if wire.provider == "github" and kind in ("fixture", "mutated_json") and rare(draw, 15):
        body = urlencode({"payload": body.decode("utf-8", "surrogatepass")},
                         errors="surrogatepass").encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    elif not rare(draw, 8):
        headers["Content-Type"] = "application/json"
    elif not rare(draw, 10):
        headers["Content-Type"] = draw(st.sampled_from(CONTENT_TYPES))
    delivery_id: str | None = str(uuid.uuid4())
    if rare(draw, 6):
        delivery_id = draw(st.sampled_from([None, "d" * 200, "../x", ""]) | header_text)
    if delivery_id is not None:
        headers[wire.delivery_header] = delivery_id
    if not rare(draw, 6):
        headers[wire.event[0]] = wire.event[1]
    elif not rare(draw, 10):
        headers[wire.event[0]] = draw(st.sampled_from(EVENTS[wire.provider]) | header_text)
    headers.update(draw(auth_headers(wire, body, delivery_id or str(uuid.uuid4()))))
    if rare(draw, 15):
        for _ in range(draw(st.integers(1, 3))):
            headers[draw(st.sampled_from(EXTRA_HEADERS))] = draw(header_text)
    path = f"/webhooks/{wire.provider}"
    if rare(draw, 3):
        path = "/webhooks/x-" + quote(draw(st.text(max_size=12)), safe="")
    return Planned(path, body, {k: v.strip() for k, v in headers.items()},
                   chunked=rare(draw, 12), resend=rare(draw, 4), note=[kind])


# --- what the answer must be -------------------------------------------------------------------


def signer(wire: Wire, headers: dict[str, str], body: bytes) -> str | None:
    """Which configured repository's secret authenticates this request: 'home', 'other', None.

    An independent re-implementation of each provider's check, from the published schemes.
    """
    h = {k.lower(): v for k, v in headers.items()}
    if wire.provider == "gitlab":
        token = h.get("x-gitlab-token")
        if token == SECRETS["gitlab"]:
            return "home"
        if token == OTHER_SECRETS["gitlab"]:
            return "other"
        msg_id, stamp, signature = (h.get("webhook-id"), h.get("webhook-timestamp"),
                                    h.get("webhook-signature"))
        if msg_id and stamp and signature and stamp.isdigit() and msg_id.isascii() and \
                abs(time.time() - int(stamp)) < TOLERANCE - 30:
            expected = gitlab_signed(body, msg_id, int(stamp))["webhook-signature"]
            if expected in signature.split():
                return "home"
        return None
    algo, _, digest = h.get(wire.signature_header.lower(), "").partition("=")
    if algo != "sha256" or len(digest) != 64:
        return None
    try:
        mac = bytes.fromhex(digest)
    except ValueError:
        return None
    for side, secrets in (("home", SECRETS), ("other", OTHER_SECRETS)):
        if mac == bytes.fromhex(hub_signature(body, secrets[wire.provider])[7:]):
            return side
    return None


def expected_statuses(wire: Wire, plan: Planned) -> set[int]:
    """The answers this request may get, in the order the service checks."""
    if plan.path != f"/webhooks/{wire.provider}":
        return {404}
    h = {k.lower(): v for k, v in plan.headers.items()}
    mime = h.get("content-type", "").split(";")[0].strip().lower()
    allowed = ("application/json", "application/x-www-form-urlencoded") \
        if wire.provider == "github" else ("application/json",)
    if mime not in allowed:
        return {415}
    if wire.provider == "bitbucket-server" and h.get("x-event-key") == "diagnostics:ping":
        return {200}
    if not any(h.get(name) for name in REGISTRY[wire.provider].credential_headers):
        return {401}  # from the headers alone, before the body is read
    if len(plan.body) > LIMIT:
        return {413}
    if signer(wire, plan.headers, plan.body) is None:
        return {401}
    # 401 too: a payload naming the other repository is refused under the signer's secret
    return {200, 202, 400, 401, 404}


# --- the run -----------------------------------------------------------------------------------


@dataclass
class FuzzRig:
    """The service, the configured APIs, the attacker host and what the run saw."""

    svc: Service
    api_a: FakeAPI
    api_b: FakeAPI
    attacker: FakeAPI
    db: Path


@pytest.fixture(scope="module")
def fuzz_rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzRig]:
    workdir = tmp_path_factory.mktemp("fuzz")
    api_a, api_b, attacker = FakeAPI(), FakeAPI(), FakeAPI()
    db = workdir / "state.db"
    config, env = service_config(db, api_a, api_b, LIMIT)
    svc = Service(config, workdir, env=env, workers=2).start()
    yield FuzzRig(svc, api_a, api_b, attacker, db)
    svc.stop()
    for api in (api_a, api_b, attacker):
        api.close()


@dataclass
class Tally:
    """What one provider's run sent and got."""

    sent: int = 0
    waiting: float = 0.0  # seconds spent waiting for answers
    slowest: float = 0.0
    statuses: dict[int, int] = field(default_factory=dict)
    kinds: dict[str, int] = field(default_factory=dict)
    accepted: dict[str, str] = field(default_factory=dict)  # delivery id -> 'home' / 'other'
    commits: dict[str, set[str]] = field(default_factory=lambda: {"home": set(), "other": set()})


def _send(session: requests.Session, rig: FuzzRig, wire: Wire, plan: Planned,
          tally: Tally) -> requests.Response:
    data: Any = plan.body
    if plan.chunked:
        data = iter([plan.body[i:i + 4096] for i in range(0, len(plan.body), 4096)] or [b""])
    headers = plan.headers
    if len(plan.body) > DRAIN_CAP - 4096:
        # gunicorn drains at most 64 KiB of a body the app left unread, then closes the
        # connection while its answer still says keep-alive, and its worker waits up to 2 s
        # for the client to close too. A client that says it will close avoids both.
        headers = {**headers, "Connection": "close"}
    started = time.monotonic()
    answer = session.post(rig.svc.url + plan.path, data=data, headers=headers, timeout=30)
    took = time.monotonic() - started
    tally.waiting += took
    tally.slowest = max(tally.slowest, took)
    tally.sent += 1
    tally.statuses[answer.status_code] = tally.statuses.get(answer.status_code, 0) + 1
    tally.kinds[plan.note[0]] = tally.kinds.get(plan.note[0], 0) + 1
    return answer


def _check(wire: Wire, plan: Planned, answer: requests.Response, tally: Tally,
           first: requests.Response | None) -> None:
    context = f"{plan.note} {plan.path} {plan.headers} {plan.body[:200]!r}: {answer.text[:300]}"
    assert answer.status_code < 500, context
    assert answer.status_code in expected_statuses(wire, plan), context
    body = answer.json()
    assert set(body) in ({"error", "message"}, {"status", "delivery_id"},
                         {"status", "reason"}), context
    for value in SECRET_VALUES:
        assert value not in answer.text, context
    side = signer(wire, plan.headers, plan.body)
    if answer.status_code == 202:
        assert side is not None and body["status"] == "accepted", context
        assert first is None, context  # a resend of an accepted delivery is a duplicate
        tally.accepted[body["delivery_id"]] = side
        # unquoted: a form body's %22 would glue a '22' onto the commit ids
        tally.commits[side] |= set(HEX_RUN.findall(unquote_plus(plan.body.decode("latin-1"))))
    if body.get("status") == "duplicate":
        assert side is not None, context
    if first is not None and first.status_code == 202:
        assert (answer.status_code, body) == (200, {"status": "duplicate",
                                                    "delivery_id": first.json()["delivery_id"]})


def _wait_processed(db: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with sqlite3.connect(db) as conn:
            pending = conn.execute("SELECT COUNT(*) FROM deliveries WHERE status != 'done'") \
                .fetchone()[0]
        if not pending:
            return
        assert time.monotonic() < deadline, f"{pending} deliveries still pending"
        time.sleep(0.2)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_fuzzed_requests_never_5xx_and_unauthentic_ones_leave_no_trace(
        fuzz_rig: FuzzRig, provider: str) -> None:
    wire = WIRES[provider]
    tally = Tally()
    session = requests.Session()
    started = time.monotonic()

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              phases=[Phase.explicit, Phase.generate, Phase.shrink],
              suppress_health_check=list(HealthCheck))
    @given(batch=st.lists(planned(wire, fuzz_rig.attacker.url), min_size=BATCH,
                          max_size=BATCH))
    def run(batch: list[Planned]) -> None:
        for plan in batch:
            answer = _send(session, fuzz_rig, wire, plan, tally)
            _check(wire, plan, answer, tally, None)
            if plan.resend:
                again = _send(session, fuzz_rig, wire, plan, tally)
                _check(wire, plan, again, tally, answer)

    run()
    elapsed = time.monotonic() - started
    print(f"\n{provider}: {tally.sent} requests in {elapsed:.1f}s ({tally.waiting:.1f}s "
          f"waiting for answers, slowest {tally.slowest:.2f}s), statuses "
          f"{dict(sorted(tally.statuses.items()))}, accepted {len(tally.accepted)}, "
          f"bodies {dict(sorted(tally.kinds.items()))}")
    assert tally.sent >= MIN_REQUESTS
    assert not [s for s in tally.statuses if s >= 500]
    # the run must have exercised every outcome, parsing included
    assert {202, 400, 401, 404, 413, 415} <= set(tally.statuses)

    _wait_processed(fuzz_rig.db)
    with sqlite3.connect(fuzz_rig.db) as conn:
        rows = conn.execute("SELECT delivery_id, repository FROM deliveries WHERE provider = ?",
                            (provider,)).fetchall()
    assert {d for d, _ in rows} == set(tally.accepted)
    names = {"home": wire.home.casefold(), "other": wire.other.casefold()}
    assert all(repo.casefold() == names[tally.accepted[d]] for d, repo in rows)

    for side, api in (("home", fuzz_rig.api_a), ("other", fuzz_rig.api_b)):
        root = wire.api_root(wire.home if side == "home" else wire.other)
        token = (TOKENS if side == "home" else OTHER_TOKENS)[provider]
        calls = [r for r in api.requests if r.path.startswith(root + "/")]
        for call in calls:
            assert re.fullmatch(wire.routes, call.path[len(root):]), call.path
            assert call.headers.get("authorization") == f"Bearer {token}"
            used = set(HEX_RUN.findall(call.path + json.dumps(call.query)))
            assert used <= tally.commits[side], (call.path, call.query)
        if side == "home":
            assert calls, "no accepted delivery reached the compare API"
    # and every call any run so far caused went to a configured repository's routes (or
    # to the repository itself, which a compare's 404 is checked against)
    for api, side in ((fuzz_rig.api_a, "home"), (fuzz_rig.api_b, "other")):
        repositories = {w.api_root(getattr(w, side)) for w in WIRES.values()}
        roots = tuple(root + "/" for root in repositories)
        assert all(r.path.startswith(roots) or r.path in repositories for r in api.requests)
    assert fuzz_rig.attacker.requests == []
    assert requests.get(fuzz_rig.svc.url + "/healthz", timeout=5).json() == {"status": "ok"}
    assert fuzz_rig.svc.events("request.error") == []
    log = fuzz_rig.svc.log_path.read_text(errors="replace")
    assert "Traceback" not in log
    for value in SECRET_VALUES:
        assert value not in log

