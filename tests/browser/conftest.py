"""Fixtures of the browser test: the network cut, the site on 127.0.0.1, headless Chromium."""

import functools
import http.server
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import netns
import pytest
from locations import CHROMIUM, SCREENSHOTS, SITE
from playwright.sync_api import (
    BrowserContext,
    ConsoleMessage,
    Page,
    Request,
    Response,
    sync_playwright,
)
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",  # containers often have a small /dev/shm
]
TIMEOUT_MS = 30_000  # generous: the machine may be busy with other work


@pytest.fixture(scope="session")
def offline() -> None:
    """Cut the test process (and so the server, the driver and Chromium) off the network."""
    try:
        netns.cut_network()
    except OSError as error:
        pytest.fail(
            f"cannot cut the network off: {error}. Run as root, or allow unprivileged user "
            "namespaces (sysctl kernel.unprivileged_userns_clone=1, and on Ubuntu "
            "kernel.apparmor_restrict_unprivileged_userns=0)"
        )


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass  # failed requests are reported by the browser side


@pytest.fixture(scope="session")
def site_url(offline: None) -> Iterator[str]:
    """The built site, served on 127.0.0.1 by a thread of this process."""
    if not (SITE / "index.html").is_file():
        pytest.fail(f"no built site at {SITE}: run `make build` first")
    handler = functools.partial(_QuietHandler, directory=str(SITE))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def browser(offline: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserContext]:
    """Debian's Chromium, headless, with a fresh profile."""
    if not CHROMIUM.is_file():
        pytest.fail(f"no browser at {CHROMIUM}: run scripts/browser_setup.sh")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            tmp_path_factory.mktemp("chromium-profile"),
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
        )
        context.set_default_timeout(TIMEOUT_MS)
        yield context
        context.close()


@dataclass
class Visit:
    """An open page and what went wrong while it loaded and was used."""

    page: Page
    problems: list[str] = field(default_factory=list)


def _watch(page: Page, site_url: str, problems: list[str]) -> None:
    def console(message: ConsoleMessage) -> None:
        if message.type == "error":
            where = message.location.get("url", "")
            problems.append(f"console error: {message.text} ({where})")

    def request(req: Request) -> None:
        if not req.url.startswith((site_url, "data:", "blob:")):
            problems.append(f"request outside the site: {req.url}")

    def response(resp: Response) -> None:
        if resp.status >= 400:
            problems.append(f"HTTP {resp.status}: {resp.url}")

    def failed(req: Request) -> None:
        # leaving a page aborts what it still loads (the widget manager, which the pages fetch
        # after their first paint, when a test clicks on quickly): not a fault of the site. A
        # missing file is an HTTP error (response above), a refused one another failure
        if req.failure == "net::ERR_ABORTED":
            return
        problems.append(f"request failed: {req.url} ({req.failure})")

    page.on("console", console)
    page.on("pageerror", lambda error: problems.append(f"uncaught error: {error}"))
    page.on("request", request)
    page.on("response", response)
    page.on("requestfailed", failed)


def wait_until_rendered(page: Page, problems: list[str]) -> None:
    """Wait for the widget manager and MathJax to finish, then for the network to go quiet."""
    views = page.locator('script[type="application/vnd.jupyter.widget-view+json"]').count()
    if views:
        try:
            page.wait_for_function(
                "n => document.querySelectorAll('.widget-subarea').length >= n", arg=views
            )
        except PlaywrightTimeoutError:
            problems.append(f"the widget manager rendered no view within {TIMEOUT_MS} ms")
    page.evaluate(
        "() => window.MathJax && MathJax.startup ? MathJax.startup.promise.then(() => true)"
        " : false"
    )
    page.wait_for_load_state("networkidle")


@pytest.fixture(scope="session")
def open_visit(browser: BrowserContext, site_url: str) -> Callable[..., Visit]:
    """Open a page of the site (a path relative to its root), at ``viewport`` if given, and
    watch it for problems; the caller closes it (``visit`` does, after each test)."""

    def open_page(path: str, viewport: dict[str, int] | None = None) -> Visit:
        page = browser.new_page()
        if viewport:
            page.set_viewport_size(viewport)
        result = Visit(page)
        _watch(page, site_url, result.problems)
        page.goto(site_url + path)
        wait_until_rendered(page, result.problems)
        return result

    return open_page


@pytest.fixture
def visit(open_visit: Callable[..., Visit]) -> Iterator[Callable[[str], Visit]]:
    """Open a page of the site (a path relative to its root) and watch it for problems."""
    opened: list[Page] = []

    def open_page(path: str) -> Visit:
        result = open_visit(path)
        opened.append(result.page)
        return result

    yield open_page
    for page in opened:
        page.close()


@pytest.fixture(scope="session")
def screenshots() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS
