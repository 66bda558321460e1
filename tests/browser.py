"""Headless Chromium (Debian's ``chromium``) driven over the DevTools protocol.

A test that needs the browser fails when it is missing (``.ci/run`` installs it). The
browser gets a fresh profile, the flags that keep it off the network (only the pages the
test opens on 127.0.0.1 are loaded), and a DevTools port chosen by itself, read back from
the profile's ``DevToolsActivePort`` file; commands go over that websocket
(``websocket-client``), one page session at a time.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websocket

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--remote-debugging-port=0"]
TIMEOUT = 30.0


class Page:
    """One tab, attached in flat mode: every command carries its session id."""

    def __init__(self, ws: websocket.WebSocket, session: str) -> None:
        self.ws = ws
        self.session = session
        self.ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []
        self.status: int | None = None  # the HTTP status of the page last opened

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Send a command and wait for its answer (events seen meanwhile are kept)."""
        return _call(self.ws, self.ids, self.events, method, params, self.session)

    def open(self, url: str, width: int, height: int = 900,
             headers: dict[str, str] | None = None) -> None:
        """Load ``url`` in a ``width`` x ``height`` CSS-pixel viewport (a phone's below 600,
        as a phone lays it out: the page's viewport meta applies), sending ``headers``."""
        self.send("Network.setExtraHTTPHeaders", headers=headers or {})
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=height,
                  deviceScaleFactor=1, mobile=width < 600)
        self.events.clear()
        self.send("Page.navigate", url=url)
        deadline = time.monotonic() + TIMEOUT
        while not any(e.get("method") == "Page.loadEventFired" for e in self.events):
            assert time.monotonic() < deadline, f"{url} did not load"
            self.events.append(json.loads(self.ws.recv()))
        self.status = next((e["params"]["response"]["status"] for e in self.events
                            if e.get("method") == "Network.responseReceived"
                            and e["params"].get("type") == "Document"), None)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (DevTools evaluates it; the
        page's own policy allows no script)."""
        answer = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in answer, answer
        return answer["result"].get("value")

    def screenshot(self, path: Path) -> bytes:
        """A PNG of the whole page (beyond the viewport), written to ``path``."""
        size = self.send("Page.getLayoutMetrics")["cssContentSize"]
        data = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                         clip={"x": 0, "y": 0, "width": size["width"],
                               "height": size["height"], "scale": 1})["data"]
        png = base64.b64decode(data)
        path.write_bytes(png)
        return png


def _call(ws: websocket.WebSocket, ids: Iterator[int], events: list[dict[str, Any]],
          method: str, params: dict[str, Any], session: str | None = None) -> dict[str, Any]:
    number = next(ids)
    message: dict[str, Any] = {"id": number, "method": method, "params": params}
    if session:
        message["sessionId"] = session
    ws.send(json.dumps(message))
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        answer = json.loads(ws.recv())
        if answer.get("id") == number:
            assert "error" not in answer, (method, answer["error"])
            return dict(answer.get("result", {}))
        events.append(answer)
    raise AssertionError(f"no answer to {method}")


@contextlib.contextmanager
def chromium(workdir: Path) -> Iterator[Page]:
    """A headless Chromium with one page open; the browser is ended afterwards."""
    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail("chromium is not installed (Debian: apt-get install chromium; .ci/run "
                    "installs it)")
    profile = workdir / "chromium-profile"
    profile.mkdir()
    log = (workdir / "chromium.log").open("wb")
    proc = subprocess.Popen([executable, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        active = profile / "DevToolsActivePort"
        deadline = time.monotonic() + TIMEOUT
        while not (active.exists() and len(active.read_text().splitlines()) >= 2):
            assert proc.poll() is None, (workdir / "chromium.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "chromium did not open its DevTools port"
            time.sleep(0.1)
        port, path = active.read_text().splitlines()[:2]
        # no Origin header: Chromium refuses DevTools websockets from web origins
        ws = websocket.create_connection(f"ws://127.0.0.1:{port}{path}", timeout=TIMEOUT,
                                         suppress_origin=True)
        try:
            ids, events = itertools.count(1_000_000), []
            target = _call(ws, ids, events, "Target.createTarget", {"url": "about:blank"})
            session = _call(ws, ids, events, "Target.attachToTarget",
                            {"targetId": target["targetId"], "flatten": True})["sessionId"]
            page = Page(ws, session)
            page.send("Page.enable")
            page.send("Network.enable")
            yield page
        finally:
            ws.close()
    finally:
        # the browser's own process group (its renderers and helpers too)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
