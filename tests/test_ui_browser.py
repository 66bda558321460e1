"""A real browser reads the status page: headless Chromium (tests/browser.py) loads each
page of the service of tests/ui_scene.py with HTTP Basic credentials, and the test asserts
on the DOM the browser built, at 1280 and at 390 CSS pixels wide, keeping screenshots.

Set RECEIVER_UI_SCREENSHOTS to a directory (``docs``) to keep the front page's there too:
docs/ui.md shows the one this test took.
"""

from __future__ import annotations

import os
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.browser import Page, chromium
from tests.test_ui_e2e import PAGES
from tests.ui_scene import ALICE, MARKUP_FILE, USERS, Scene, scene


@pytest.fixture(scope="module")
def shown(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    users = [f"env:{name}" for name in USERS]
    with scene(tmp_path_factory.mktemp("ui"), {"auth": "basic", "basic": {"users": users}}) \
            as running:
        yield running


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    with chromium(tmp_path_factory.mktemp("browser")) as opened:
        yield opened


def png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    return width, height


def keep(shot: Path) -> None:
    """Copy a screenshot to RECEIVER_UI_SCREENSHOTS, when set (docs/ui.md's pictures)."""
    target = os.environ.get("RECEIVER_UI_SCREENSHOTS")
    if target:
        shutil.copyfile(shot, Path(target) / shot.name)


def test_the_browser_shows_each_pipeline_with_its_deployed_commit_and_status(
        shown: Scene, page: Page, tmp_path: Path) -> None:
    page.open(shown.svc.url + "/ui/", 1280, headers=ALICE)
    assert page.status == 200
    rows = page.evaluate("""[...document.querySelectorAll('tr.pipeline')].map(r => [
        r.dataset.pipeline, r.querySelector('.deployed').textContent.trim(),
        r.querySelector('.status').textContent.trim()])""")
    assert rows == [["collections-deploy", shown.c1[:12], "Succeeded"],
                    ["utilities-deploy", shown.root[:12], "Succeeded"],
                    ["web-deploy", shown.root[:12], "InProgress"]]
    # the inline stylesheet applied: the policy's hash is the stylesheet's own
    assert page.evaluate("getComputedStyle(document.querySelector('header')).display") == \
        "flex"
    assert page.evaluate("document.scripts.length") == 0
    assert page.evaluate("document.querySelector('header .reader').textContent") == \
        "signed in as alice"
    shot = tmp_path / "ui.png"
    width, height = png_size(page.screenshot(shot))
    assert width == 1280 and height > 300
    keep(shot)


def test_a_file_name_with_markup_is_text_in_the_browser_not_an_element(
        shown: Scene, page: Page, tmp_path: Path) -> None:
    page.open(f"{shown.svc.url}/ui/deliveries?commit={shown.c1}", 1280, headers=ALICE)
    names = page.evaluate("[...document.querySelectorAll('ul.matched code')]"
                          ".map(c => c.textContent)")
    assert names == [MARKUP_FILE]
    assert page.evaluate("document.querySelectorAll('script').length") == 0
    page.screenshot(tmp_path / "ui-deliveries.png")
    keep(tmp_path / "ui-deliveries.png")


@pytest.mark.parametrize("path", PAGES)
def test_every_page_fits_a_390_pixel_wide_phone(shown: Scene, page: Page, path: str,
                                                tmp_path: Path) -> None:
    page.open(shown.svc.url + path, 390, 844, headers=ALICE)
    assert page.evaluate("window.innerWidth") == 390
    # no horizontal scrolling of the page itself (wide tables scroll in their own box)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    assert page.evaluate("getComputedStyle(document.body).fontSize") == "15px"
    width, _ = png_size(page.screenshot(tmp_path / "ui-390.png"))
    assert width == 390
    if path == "/ui/":
        keep(tmp_path / "ui-390.png")


def test_without_credentials_the_browser_gets_no_status(shown: Scene, page: Page) -> None:
    page.open(shown.svc.url + "/ui/", 1280)
    assert page.status == 401
    assert page.evaluate("document.querySelectorAll('tr.pipeline').length") == 0
    assert shown.c1[:12] not in page.evaluate("document.documentElement.outerHTML")
