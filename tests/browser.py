"""A real browser for the dashboard's tests: Debian's chromium (the tests image installs it),
driven by playwright's Python client. Never `playwright install`: nothing is downloaded.

`Watched` records what a page does besides drawing (console lines, errors, every request), so
that a test can say it stayed on its origin, failed nothing and logged nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from playwright.sync_api import Browser, ConsoleMessage, Page, Request, Response, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",  # root in the tests container
    "--disable-gpu",
    "--disable-dev-shm-usage",  # the container's /dev/shm is 64 MB
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@contextmanager
def chromium() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Watched:
    """What a page did besides drawing: console lines, errors, requests."""

    origin: str
    console: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def watch(self, page: Page) -> None:
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("request", lambda request: self.requests.append(request.url))
        page.on("requestfailed", self._failed)
        page.on("response", self._response)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            self.console.append(f"{message.type}: {message.text}")

    def _failed(self, request: Request) -> None:
        self.failed.append(f"{request.failure} {request.url}")

    def _response(self, response: Response) -> None:
        if response.status >= 400:
            self.failed.append(f"{response.status} {response.url}")

    def assert_clean(self) -> None:
        assert self.console == []
        assert self.errors == []
        assert self.failed == []
        assert self.requests, "the page made no request at all?"
        strangers = [url for url in self.requests if not url.startswith(self.origin + "/")]
        assert strangers == [], "requests that left the origin"
