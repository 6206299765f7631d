"""A chapter as `make lab` shows it: JupyterLab with jupyterlab-myst, offline, no cell run.

`make lab` opens the reading copies that scripts/reading_copies.py writes (glued numbers filled
in, references made links, trusted so that saved widgets display). This test writes the copy of
one chapter into a temporary folder, starts JupyterLab on it as `make lab` does (with a temporary
Jupyter home, so that a reader's settings and trust database play no part), and reads the
chapter top to bottom in the headless Chromium of the other browser tests, without running a
cell: admonitions render as admonitions, no MyST shows raw or unresolved, the numbers the site's
page pastes are in the text, references link to chapters, a term and a citation show their
entries on hover, and the saved explorer shows its slider and picture and switches pictures.
Screenshots: _build/screenshots/lab-*.
"""

import base64
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
import widget_state
from conftest import TIMEOUT_MS
from locations import BOOK, SITE
from playwright.sync_api import BrowserContext, Page

CHAPTER = "02_quantization_math"  # glued numbers, admonitions, references, an explorer of images
START_S = 60  # JupyterLab's start-up, on a busy machine
RAW_MYST = ["{glue", "{ref}`", "{doc}`", "{term}`", "{cite", ":::"]
ADMONITION = re.compile(r"^:{3,}\{(?:admonition|attention|caution|danger|error|hint|important|"
                        r"note|seealso|tip|warning)\}", re.M)
# jupyterlab-myst's marks of a reference it could not resolve (yet: a term links to "#" until
# the glossary entry is found)
UNRESOLVED = '[title="Cross Reference Not Found"], [title="Citation Not Found"], a[href="#"]'
# Scrolls the notebook top to bottom as a reader does (JupyterLab attaches and renders cells as
# they come into view) and returns each markdown cell once jupyterlab-myst rendered it (.myst),
# by cell index; a cell that still shows an unresolved reference is read again (references
# resolve in a second pass) until it settles or PENDING_MS pass.
READ_ALL_JS = """async ([expected, unresolvedSelector, pendingMs]) => {
  const sleep = ms => new Promise(r => setTimeout(r, ms));
  const scroller = document.querySelector('.jp-NotebookPanel .jp-WindowedPanel-outer');
  const seen = {}, firstSeen = {}, asText = new Set(), deadline = Date.now() + 90000;
  scroller.scrollTop = 0;
  while (Date.now() < deadline) {
    await sleep(100);
    for (const cell of document.querySelectorAll('.jp-Notebook .jp-Cell.jp-CodeCell')) {
      if (cell.textContent.includes('VBox(children=')) asText.add(cell.dataset.windowedListIndex);
    }
    for (const cell of document.querySelectorAll('.jp-Notebook .jp-Cell.jp-MarkdownCell')) {
      const index = cell.dataset.windowedListIndex;
      const out = cell.querySelector('.jp-Cell-inputArea .myst');
      if (index === undefined || seen[index] || !out || !out.textContent.trim()) continue;
      const unresolved = out.querySelectorAll(unresolvedSelector).length;
      firstSeen[index] = firstSeen[index] || Date.now();
      if (unresolved && Date.now() - firstSeen[index] < pendingMs) continue;
      seen[index] = {
        text: out.textContent, unresolved,
        admonitions: out.querySelectorAll('aside.myst-admonition').length,
        links: [...out.querySelectorAll('a')].map(a => ({text: a.textContent,
          href: a.getAttribute('href')})),
      };
    }
    const atEnd = scroller.scrollTop + scroller.clientHeight >= scroller.scrollHeight - 2;
    if (atEnd && Object.keys(seen).length >= expected) break;
    if (!atEnd) scroller.scrollTop += Math.round(scroller.clientHeight * 0.9);
  }
  return {seen, asText: [...asText]};
}"""
PENDING_MS = 3000
SCROLL_TO_JS = """async (index) => {
  const scroller = document.querySelector('.jp-NotebookPanel .jp-WindowedPanel-outer');
  const selector = `.jp-Notebook .jp-Cell[data-windowed-list-index="${index}"]`;
  scroller.scrollTop = 0;
  for (let step = 0; step < 500 && !document.querySelector(selector); step++) {
    scroller.scrollTop += Math.round(scroller.clientHeight * 0.7);
    await new Promise(r => setTimeout(r, 50));
  }
}"""
SHOWN_IMAGES_JS = """cell => [...cell.querySelectorAll('img')].filter(img => img.offsetParent)
  .map(img => img.getAttribute('src')).join(' ')"""


class _PastedText(HTMLParser):
    """The values the site pasted into a page's text (myst-nb's glue roles)."""

    def __init__(self) -> None:
        super().__init__()
        self.values: list[str] = []
        self._depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        classes = (dict(attrs).get("class") or "").split()
        if tag == "span" and ("pasted-text" in classes or "text_plain" in classes):
            self._depth, self.values = 1, [*self.values, ""]
        elif self._depth:
            self._depth += 1

    def handle_endtag(self, tag: str) -> None:
        self._depth = max(self._depth - 1, 0)

    def handle_data(self, data: str) -> None:
        if self._depth:
            self.values[-1] += data


def site_pasted_values(doc: str) -> list[str]:
    parser = _PastedText()
    parser.feed((SITE / f"{doc}.html").read_text())
    return [value.strip() for value in parser.values]


def _serving(server: subprocess.Popen, info: Path, token: str, log: Path) -> str:
    """The server's URL once it answers. jupyter_server writes its info file before its event
    loop binds the port, so the file alone does not mean it listens: poll until it answers."""
    deadline = time.monotonic() + START_S
    while server.poll() is None and time.monotonic() < deadline:
        try:  # the file may be half written, the port not yet bound
            url = json.loads(info.read_text())["url"].rstrip("/")
            urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=START_S)
            return url
        except urllib.error.HTTPError:
            raise  # it answers, but refuses: not a start-up race
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    server.kill()
    pytest.fail(f"JupyterLab did not answer within {START_S} s (exit code {server.poll()}):\n"
                + log.read_text()[-3000:])


@pytest.fixture(scope="module")
def lab(offline: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """JupyterLab (the .venv's) on the reading copy of CHAPTER; yields (its URL, the copies)."""
    home = tmp_path_factory.mktemp("jupyter-home")
    copies = home / "lab"
    env = os.environ | {
        "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_DATA_DIR": str(home / "data"),
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
    }
    copies.mkdir()
    # the key that trusts the copy, made before the writer and the server could each make one
    (home / "data").mkdir()
    (home / "data" / "notebook_secret").write_bytes(base64.encodebytes(os.urandom(1024)))
    writer = subprocess.Popen(  # the copy is written while JupyterLab starts
        [sys.executable, str(BOOK / "scripts" / "reading_copies.py"), "--book", str(BOOK),
         "--out", str(copies), f"{CHAPTER}.ipynb"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    log = (home / "lab.log").open("w")
    token = os.urandom(12).hex()
    server = subprocess.Popen(
        # --allow-root: the network namespace maps this user to root
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ip=127.0.0.1",
         "--ServerApp.port=0", f"--IdentityProvider.token={token}", str(copies)],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    written = writer.communicate()[0]
    if writer.returncode:
        server.kill()
        pytest.fail(f"scripts/reading_copies.py failed:\n{written}")
    info = home / "runtime" / f"jpserver-{server.pid}.json"
    url = _serving(server, info, token, home / "lab.log")
    yield f"{url}/lab/tree/{CHAPTER}.ipynb?token={token}&reset", copies
    server.terminate()
    try:
        server.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.kill()
    log.close()


def _read(page: Page, notebook: dict) -> tuple[list[dict | None], list[str]]:
    """Every markdown cell as rendered, top to bottom (None for one that never rendered), and
    the code cells that show a widget as text."""
    indices = [i for i, c in enumerate(notebook["cells"]) if c["cell_type"] == "markdown"]
    read = page.evaluate(READ_ALL_JS, [len(indices), UNRESOLVED, PENDING_MS])
    return [read["seen"].get(str(i)) for i in indices], read["asText"]


def test_chapter_reads_as_on_the_site_before_any_cell_runs(
    lab: tuple[str, Path], browser: BrowserContext, screenshots: Path
) -> None:
    url, copies = lab
    origin = url.split("/lab/")[0]
    page = browser.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"uncaught error: {error}"))
    page.on("request", lambda r: r.url.startswith((origin, "data:", "blob:"))
            or problems.append(f"request outside JupyterLab: {r.url}"))
    try:
        page.goto(url)
        page.locator(".jp-Notebook .jp-MarkdownCell .jp-Cell-inputArea .myst").first.wait_for()
        page.screenshot(path=screenshots / f"lab-{CHAPTER}.png")
        copy = json.loads((copies / f"{CHAPTER}.ipynb").read_text())
        failures = _check_text(page, copy)
        assert not failures, "\n".join(failures + problems)
        _check_cards(page)
        _check_explorer(page, screenshots, copy)
        assert not problems, "\n".join(problems)
    finally:
        page.close()


def _check_text(page: Page, copy: dict) -> list[str]:
    """Read every markdown cell: what in it differs from the site's page of the chapter."""
    cells, widgets_as_text = _read(page, copy)
    failures = [f"markdown cell {i} never rendered" for i, c in enumerate(cells) if c is None]
    failures += [f"cell {i} shows its widgets as text (VBox(children=...))"
                 for i in widgets_as_text]
    rendered = [c for c in cells if c]
    text = "\n".join(c["text"] for c in rendered)
    if not ("Reading copy" in text and "make lab" in text):
        failures.append("the note that says what the copy is is missing")
    failures += [f"raw MyST {raw!r} in the text" for raw in RAW_MYST if raw in text]
    failures += [f"{c['unresolved']} unresolved reference(s) in: {c['text'][:80]!r}"
                 for c in rendered if c["unresolved"]]
    source = (BOOK / "notebooks" / f"{CHAPTER}.ipynb").read_text()
    admonitions = len(ADMONITION.findall("\n".join(
        "".join(c["source"]) for c in json.loads(source)["cells"] if c["cell_type"] == "markdown")))
    shown = sum(c["admonitions"] for c in rendered) - 1  # the copy's own note
    if shown != admonitions:
        failures.append(f"{shown} of the chapter's {admonitions} admonitions render as such")
    failures += [f"glued value {value!r}, shown on the site, is not in the text"
                 for value in site_pasted_values(f"notebooks/{CHAPTER}") if value not in text]
    chapters = {path.name for path in (BOOK / "notebooks").glob("*.ipynb")}
    links = [link for c in rendered for link in c["links"] if ".ipynb" in (link["href"] or "")]
    failures += [f"link {link['text']!r} leads to {link['href']}, not a chapter" for link in links
                 if link["href"].split("?")[0].split("#")[0].rsplit("/", 1)[-1] not in chapters]
    if not links:
        failures.append("no link to another chapter: {doc} and {ref} did not become links")
    return failures


def _hover_card(page: Page, selector: str) -> tuple[str, str]:
    """Hover the first visible link matching ``selector``: (its text, the card jupyterlab-myst
    shows for it)."""
    link = page.locator(f".jp-Notebook .myst {selector}").filter(visible=True).first
    link.hover()
    card = page.locator(".hover-card-content").filter(visible=True).first
    card.wait_for()
    text = card.inner_text()
    page.mouse.move(0, 0)
    card.wait_for(state="hidden")
    return link.text_content(), text


def _check_cards(page: Page) -> None:
    """Hovering a term shows its glossary entry, and a citation the work it cites, where the
    site links them to its glossary and references pages."""
    page.evaluate(SCROLL_TO_JS, 0)
    term, card = _hover_card(page, 'a[href^="#term-"]')
    heading, _, definition = card.partition("\n")
    glossary = (BOOK / "book" / "glossary.md").read_text()
    assert re.search(rf"^{re.escape(heading.strip())}$", glossary, re.M | re.I) and definition, (
        f"hovering the term {term!r} shows {card[:80]!r}, not its glossary entry")
    citation, card = _hover_card(page, 'a[href^="#cite-"]')
    year = re.search(r"\d{4}", citation)
    assert year and year[0] in card and not card.startswith("cite-") and len(card) > 40, (
        f"hovering the citation {citation!r} shows {card[:80]!r}, not the work")


def _explorer_cell(notebook: dict) -> tuple[int, widget_state.Explorer]:
    """The index of the cell that displays the notebook's first explorer, and the explorer."""
    state = widget_state.notebook_state(notebook)
    explorer = widget_state.explorers(state)[0]

    def shows(model_id: str) -> bool:
        children = state[model_id]["state"].get("children", [])
        return model_id == explorer.slider_id or any(
            shows(child.removeprefix("IPY_MODEL_")) for child in children)

    for index, cell in enumerate(notebook["cells"]):
        for output in cell.get("outputs", []):
            view = output.get("data", {}).get(widget_state.VIEW_MIME)
            if view and view["model_id"] in state and shows(view["model_id"]):
                return index, explorer
    raise AssertionError(f"no cell of {CHAPTER} displays the explorer {explorer.description!r}")


def _check_explorer(page: Page, screenshots: Path, notebook: dict) -> None:
    """The saved explorer shows its slider and picture, and the slider switches the picture."""
    index, explorer = _explorer_cell(notebook)
    page.evaluate(SCROLL_TO_JS, index)
    cell = page.locator(f'.jp-Notebook .jp-Cell[data-windowed-list-index="{index}"]')
    cell.scroll_into_view_if_needed()
    assert "VBox(children=" not in cell.text_content(), "the explorer shows as text, not widgets"
    slider = cell.locator(".widget-slider").first
    assert explorer.description in slider.text_content(), "another slider than the explorer's"
    image = cell.locator("img").filter(visible=True).first
    image.wait_for()
    assert image.evaluate("img => img.decode().then(() => img.naturalWidth)") > 0
    cell.screenshot(path=screenshots / f"lab-{CHAPTER}--explorer.png")
    handle = slider.locator(".noUi-handle")
    at_end = handle.get_attribute("aria-valuenow") == handle.get_attribute("aria-valuemax")
    before = cell.evaluate(SHOWN_IMAGES_JS)
    handle.press("ArrowLeft" if at_end else "ArrowRight")
    page.wait_for_function(  # the jslink switches the Stack in the browser: no kernel involved
        f"([cell, before]) => ({SHOWN_IMAGES_JS})(cell) !== before",
        arg=[cell.element_handle(), before], timeout=TIMEOUT_MS,
    )


LATE_SERVER = """
import http.server, json, socket, sys, time
port = socket.create_server(("127.0.0.1", 0)).getsockname()[1]  # free, and not yet listening
with open(sys.argv[1], "w") as f:
    json.dump({"url": f"http://127.0.0.1:{port}/"}, f)
time.sleep(1.0)  # as jupyter_server: the info file first, the port bound later
http.server.HTTPServer(("127.0.0.1", port), http.server.SimpleHTTPRequestHandler).serve_forever()
"""


def test_serving_waits_for_a_port_bound_after_the_info_file(tmp_path: Path) -> None:
    """The race that failed a CI run: the info file names a port nobody listens on yet."""
    (tmp_path / "api").mkdir()
    (tmp_path / "api" / "status").write_text("{}")
    info, log = tmp_path / "info.json", tmp_path / "log"
    log.write_text("")
    server = subprocess.Popen([sys.executable, "-c", LATE_SERVER, str(info)], cwd=tmp_path)
    try:
        assert _serving(server, info, "t", log).startswith("http://127.0.0.1:")
    finally:
        server.kill()
        server.wait()
