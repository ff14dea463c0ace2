"""One real headless Chromium (selenium) per test process, shared by the dashboard's browser tests.

Starting Chromium and rendering its first page cost ~3 s of CPU, more than most of the tests
that use it; a module-scoped browser paid that once per module and worker. Here the ``browser``
fixture hands every test the same live browser, reset after each test (the page's storage and cookies cleared); a browser that cannot be reset (an open alert, a second window) is
quit, and the next test starts a new one. Every test serves its dashboard on a new port, so no
page sees another test's origin. ``pytest_collection_modifyitems`` (conftest) puts the tests that
use it next to each other, and ``pytest_runtest_teardown`` quits the browser as soon as the next
test does not need it, so no idle Chromium runs beside the rest of the suite.

``conftest.py`` imports the fixture and the hook; the test modules import the helpers."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SHOTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "screenshots"
CHROME_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,900",
    # the omnibox's popup is a WebUI page preloaded in a renderer of its own, which headless
    # never shows: ~0.3 s of CPU at start, then ~0.03 s of CPU every second
    "--disable-features=WebUIOmniboxPopup,WebUIOmniboxAimPopup",
]
FIXTURE = "browser"


class _Chromium:
    """The process's browser: started on first use, quit when no test needs it next."""

    def __init__(self) -> None:
        self.driver: Any = None
        self.profile = ""

    def get(self) -> Any:
        if self.driver is None:
            self.driver = _start(self)
        return self.driver

    def reset(self) -> None:
        """Leave no state for the next test; a browser that cannot be reset is quit."""
        if self.driver is None:
            return
        from selenium.common.exceptions import WebDriverException

        try:
            if len(self.driver.window_handles) != 1:  # a test opened a window: start afresh
                self.quit()
                return
            self.driver.execute_script(
                "try { sessionStorage.clear(); localStorage.clear(); } catch (e) {}"
            )
            self.driver.delete_all_cookies()
            # no trip to about:blank (~0.1 s of CPU a test): the next test's get() replaces the
            # page, whose dashboard has closed meanwhile; the last test's page goes with quit()
        except WebDriverException:  # an open alert, a crashed tab: start afresh next time
            self.quit()

    def quit(self) -> None:
        driver, self.driver = self.driver, None
        try:
            if driver is not None:
                driver.quit()
        finally:
            if self.profile:
                shutil.rmtree(self.profile, ignore_errors=True)
                self.profile = ""


_CHROMIUM = _Chromium()


def _start(holder: _Chromium) -> Any:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(p)]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("selenium (pip install -e '.[test]')")
    if missing:
        if os.environ.get("CI"):
            pytest.fail(
                f"browser tests must run in CI; missing: {', '.join(missing)} "
                "(apt-get install chromium chromium-driver)"
            )
        pytest.skip(f"no headless browser here: missing {', '.join(missing)}")
    holder.profile = tempfile.mkdtemp(prefix="taskpipe-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in [*CHROME_FLAGS, f"--user-data-dir={holder.profile}"]:
        opts.add_argument(flag)
    SHOTS.mkdir(parents=True, exist_ok=True)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


@pytest.fixture(scope="session")
def _chromium_session() -> Iterator[_Chromium]:
    """Quits the shared browser at the end of the session, however the session ends."""
    yield _CHROMIUM
    _CHROMIUM.quit()


@pytest.fixture
def browser(_chromium_session: _Chromium) -> Iterator[Any]:
    """The shared headless Chromium, clean: no cookies, no storage, on ``about:blank``."""
    yield _chromium_session.get()
    _chromium_session.reset()


def uses_browser(item: pytest.Item) -> bool:
    return FIXTURE in getattr(item, "fixturenames", ())


def group_browser_tests(items: list[pytest.Item]) -> None:
    """Move the tests that use the browser next to the first one (a stable, deterministic
    order, so every xdist worker collects the same): they then share one Chromium."""
    users = [item for item in items if uses_browser(item)]
    if not users:
        return
    first = items.index(users[0])
    rest = [item for item in items if not uses_browser(item)]
    items[:] = rest[:first] + users + rest[first:]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(
    item: pytest.Item, nextitem: pytest.Item | None
) -> Generator[None, None, None]:
    """After the fixtures' teardown: quit the browser when the next test does not use it."""
    try:
        yield
    finally:
        if nextitem is None or not uses_browser(nextitem):
            _CHROMIUM.quit()


# --- helpers for the tests -------------------------------------------------------------------
# A page-wide MutationObserver counts the DOM's changes; ``wait`` checks again only when the
# count moved (or after WAKE_MS, for a change no mutation shows), not every 100 ms: each check is
# a WebDriver round trip, ~20 ms of CPU across chromedriver and Chromium.
_COUNT_JS = """
if (!window.__tpDom) {
  const dom = (window.__tpDom = {n: 1, wake: null});
  new MutationObserver(() => {
    dom.n += 1;
    const wake = dom.wake;
    dom.wake = null;
    if (wake) wake();
  }).observe(document, {subtree: true, childList: true, attributes: true, characterData: true});
}
return window.__tpDom.n;
"""
_SLEEP_JS = """
const [seen, wakeMs, done] = arguments;
const dom = window.__tpDom;
if (!dom || dom.n !== seen) return done(dom ? dom.n : 0);  // changed already, or a new page
const timer = setTimeout(() => { dom.wake = null; done(dom.n); }, wakeMs);
dom.wake = () => { clearTimeout(timer); done(dom.n); };
"""
WAKE_MS = 500


def wait(driver: Any, check: Callable[[Any], Any], timeout: float = 20) -> Any:
    """``check(driver)`` until it is truthy (a missing or stale element counts as falsy), checked
    again whenever the page's DOM changes; ``TimeoutException`` after ``timeout`` seconds."""
    from selenium.common.exceptions import (
        JavascriptException,
        NoSuchElementException,
        StaleElementReferenceException,
        TimeoutException,
    )

    deadline = time.monotonic() + timeout
    seen = None
    while True:
        try:
            value = check(driver)
        except (NoSuchElementException, StaleElementReferenceException):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutException(f"timed out after {timeout} s waiting for {check}")
        if seen is None:  # the count from before the next check: no change is missed
            seen = driver.execute_script(_COUNT_JS)
        else:  # back when the DOM changed since ``seen`` (at once if it already had)
            try:
                seen = driver.execute_async_script(_SLEEP_JS, seen, WAKE_MS)
            except JavascriptException:  # the page was unloaded meanwhile: check the new one
                seen = None


def css(driver: Any, selector: str) -> Any:
    return driver.find_element("css selector", selector)


def click(driver: Any, selector: str) -> None:
    """Click what ``selector`` finds, again if the live page re-rendered it meanwhile."""
    wait(driver, lambda d: css(d, selector).click() or True)


def text_of(driver: Any, selector: str) -> str:
    return str(wait(driver, lambda d: css(d, selector).text or " ")).strip()


def cell(driver: Any, channel: str, col: str) -> str:
    return text_of(driver, f'tr[data-channel="{channel}"] td[data-col="{col}"]')


def shot(driver: Any, name: str) -> None:
    path = SHOTS / f"{name}.png"
    assert driver.save_screenshot(str(path)) and path.stat().st_size > 0
