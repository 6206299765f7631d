"""Every page of the table of contents as a reader sees it, on a laptop and on a phone.

Each page is opened once, in one tab, and every test below runs on that tab: the fixture
``shown`` is module-scoped and parametrized by page, so pytest runs all of one page's tests
before it opens the next. A page loads offline and shows its figures, math and widgets; every
control on it changes what the reader sees, without a kernel; each explorer starts at the value
its prose discusses; every figure has alt text; and at 1366 x 900 and at 390 x 844 the page is
no wider than the window, no figure's text is smaller than ``reader.MIN_TEXT_PX``, and the
chapter-list and contents drawers open and close. Screenshots of every page at both sizes go
to _build/screenshots/ (``<page>--laptop.png``, ``<page>--phone.png``): the window's worth by
default, the whole page with ``SCREENSHOTS=full`` (about 5 s more per chapter).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import bookmap
import pytest
import reader
import widget_state
from locations import BOOK, SITE, book_config
from playwright.sync_api import Page
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

if TYPE_CHECKING:
    from conftest import Visit

TOC = bookmap.toc_docnames(BOOK / "_toc.yml")
NOTEBOOKS = [doc for doc in TOC if (BOOK / f"{doc}.ipynb").is_file()]
SIZES = reader.SIZES
MIN_FONT_PT = reader.smallest_font_pt(reader.figure_style())  # the figures' smallest text
FULL_PAGE = os.environ.get("SCREENSHOTS") == "full"

IMAGES_JS = """async () => {
  const images = [...document.querySelectorAll('img')];
  await Promise.all(images.map(img => img.decode().catch(() => null)));
  return images.map(img => ({
    src: (img.getAttribute('src') || '(no src)').slice(0, 80), width: img.naturalWidth,
    output: !!img.closest('.cell_output') && !img.closest('.widget-subarea'),
  }));
}"""
MATH_JS = """() => ({
  math: document.querySelectorAll('.math').length,
  untypeset: [...document.querySelectorAll('.math')].filter(m => !m.querySelector('mjx-container'))
    .map(m => m.textContent.slice(0, 60)),
  errors: [...document.querySelectorAll('mjx-merror')].map(e => e.textContent.slice(0, 60)),
})"""
WIDGETS_JS = """selectors => ({
  empty: [...document.querySelectorAll('.widget-subarea')].filter(s => !s.firstElementChild).length,
  counts: Object.fromEntries(selectors.map(s => [s, document.querySelectorAll(s).length])),
  outputImages: [...document.querySelectorAll('.widget-output img')].filter(i => i.naturalWidth)
    .length,
})"""
# marks each slider that sits beside a Stack (a plain widget-box) and returns their captions
EXPLORERS_JS = """() => {
  const found = [];
  for (const slider of document.querySelectorAll('.widget-slider')) {
    const stack = [...slider.parentElement.children].find(child => child !== slider
      && child.matches('.widget-box:not(.widget-vbox):not(.widget-hbox):not(.widget-gridbox)'));
    if (!stack) continue;
    slider.dataset.explorer = `slider-${found.length}`;
    stack.dataset.explorer = `stack-${found.length}`;
    found.push(slider.querySelector('.widget-label').textContent);
  }
  return found;
}"""
# when the page was first painted, and when it asked for the widget manager (null: never)
PAINT_JS = """() => {
  const paint = performance.getEntriesByName('first-paint')[0];
  const manager = performance.getEntriesByType('resource')
    .find(r => r.name.includes('/jupyter-widgets/embed-amd.js'));
  return {paint: paint ? paint.startTime : null, manager: manager ? manager.startTime : null};
}"""
FETCH_JS = "url => fetch(url).then(async r => [r.status, await r.text()])"
# on screen, not merely in the DOM: a drawer off to one side or hidden is not shown
SHOWN_JS = """([selector, want]) => {
  const e = document.querySelector(selector);
  if (!e) return !want;
  const r = e.getBoundingClientRect();
  const shown = getComputedStyle(e).visibility === 'visible' && r.width > 0 && r.left >= 0
    && r.right <= innerWidth + 1;
  return shown === want;
}"""
SETTLE_JS = "() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))"


def _listed(what: str, items: list[str], limit: int = 5) -> list[str]:
    """One failure line per item, the first ``limit`` of them, then how many more."""
    more = [f"... and {len(items) - limit} more {what}"] if len(items) > limit else []
    return [f"{what}: {item}" for item in items[:limit]] + more


def _screenshot_name(doc: str, suffix: str = "") -> str:
    return doc.replace("/", "--") + suffix + ".png"


@dataclass
class Shown:
    """One page of the book, open in its own tab at one of ``SIZES``."""

    doc: str
    visit: Visit
    screenshots: Path
    size: str = "laptop"
    facts: dict[str, dict] = field(default_factory=dict)
    reported: int = 0  # how many of visit.problems a test has already reported

    @property
    def page(self) -> Page:
        return self.visit.page

    def at(self, size: str) -> None:
        """Resize the window (when it is another size) and let the layout settle.

        A closed drawer gives the focus back to its button, whose tooltip then stays open; after
        a resize it can lie over the other button, where a reader's pointer never left it. The
        focus and the pointer leave first, and the tooltip with them."""
        if size != self.size:
            _leave_controls(self.page)
            self.page.set_viewport_size(SIZES[size])
            self.size = size
            self.page.evaluate(SETTLE_JS)

    def facts_at(self, size: str) -> dict:
        """reader.FACTS_JS at ``size``, collected once, with a screenshot."""
        if size not in self.facts:
            self.at(size)
            self.facts[size] = self.page.evaluate(reader.FACTS_JS)
            name = _screenshot_name(self.doc, f"--{size}")
            self.page.evaluate("window.scrollTo(0, 0)")  # the window's worth: the top
            self.page.screenshot(path=self.screenshots / name, full_page=FULL_PAGE)
        return self.facts[size]

    def new_problems(self) -> list[str]:
        """Console errors, failed requests and the like since the last call."""
        new = self.visit.problems[self.reported:]
        self.reported = len(self.visit.problems)
        return new


@pytest.fixture(scope="module", params=TOC)
def shown(request, open_visit, screenshots) -> Iterator[Shown]:
    visit = open_visit(f"{request.param}.html", SIZES["laptop"])
    yield Shown(request.param, visit, screenshots)
    visit.page.close()


def test_page_renders_offline(shown):
    """Loads cleanly and shows its figures, typeset math and widgets."""
    doc, page, failures = shown.doc, shown.page, shown.new_problems()
    title = book_config()["title"]
    if title not in page.title():
        failures.append(f"page title {page.title()!r} does not name the book {title!r}")

    images = page.evaluate(IMAGES_JS)
    failures += _listed("image not decoded", [img["src"] for img in images if not img["width"]])
    if doc in NOTEBOOKS:
        figures = bookmap.figure_outputs(BOOK / f"{doc}.ipynb")
        shown_figures = sum(img["output"] and img["width"] > 0 for img in images)
        if shown_figures < figures:
            failures.append(f"{shown_figures} figures shown, the notebook has {figures}")

    math = page.evaluate(MATH_JS)
    failures += _listed("math not typeset", math["untypeset"])
    failures += _listed("MathJax error", math["errors"])

    state, views = widget_state.page_widgets((SITE / f"{doc}.html").read_text())
    rendered = page.evaluate(WIDGETS_JS, list(widget_state.RENDERED_AS.values()))
    if rendered["empty"]:
        failures.append(f"{rendered['empty']} widget views rendered nothing")
    for selector, count in widget_state.expected_views(state, views).items():
        if rendered["counts"][selector] != count:
            failures.append(
                f"{rendered['counts'][selector]} {selector} rendered, the widget state has {count}"
            )
    if rendered["outputImages"] < widget_state.saved_output_images(state, views):
        failures.append("an Output widget does not show its saved figure")

    source = page.locator(".btn-download-source-button")
    if source.count():
        status, body = page.evaluate(FETCH_JS, source.get_attribute("href"))
        if status != 200 or (doc in NOTEBOOKS and not json.loads(body)["cells"]):
            failures.append(f"download of the source failed: HTTP {status}")
    assert not failures, "\n".join(failures)


def test_widget_manager_loads_after_the_first_paint(shown):
    """The 3.6 MB widget manager never holds up the first paint: a page with widgets asks for it
    after the page is painted (web/static/widgets-setup.js), a page without widgets not at all."""
    _, views = widget_state.page_widgets((SITE / f"{shown.doc}.html").read_text())
    timing = shown.page.evaluate(PAINT_JS)
    if not views:
        assert timing["manager"] is None, "a page without widgets loads the widget manager"
        return
    assert timing["paint"] is not None, "the browser recorded no first paint"
    assert timing["manager"] is not None, "a page with widgets never loaded the widget manager"
    assert timing["manager"] >= timing["paint"], (
        f"the widget manager was requested at {timing['manager']:.0f} ms, before the first "
        f"paint at {timing['paint']:.0f} ms")


def test_every_control_changes_what_the_reader_sees(shown):
    """The site has no kernel: a control works only as a jslinked explorer (a slider that picks
    the shown child of a Stack of precomputed views). Every visible control must be one, and
    moving it must change the view and moving it back restore it; any other control on the
    page is dead (in the notebook its kernel moved it)."""
    doc, page = shown.doc, shown.page
    state, _ = widget_state.page_widgets((SITE / f"{doc}.html").read_text())
    expected = sorted(explorer.description for explorer in widget_state.explorers(state))
    captions = page.evaluate(EXPLORERS_JS)
    failures = []
    if sorted(captions) != expected:
        failures.append(f"explorers in the page {sorted(captions)} differ from the widget state "
                        f"{expected}")
    failures += _listed("a control that changes nothing without a kernel",
                        page.evaluate(reader.DEAD_CONTROLS_JS, reader.CONTROLS), limit=20)
    for i, caption in enumerate(captions):
        failures += _move_explorer(shown, i, caption)
    failures += shown.new_problems()
    assert not failures, "\n".join(failures)


def _move_explorer(shown: Shown, i: int, caption: str) -> list[str]:
    """Move explorer ``i``'s slider one step and back; what went wrong (nothing: []).

    A view is compared by what it shows (reader.VIEW_JS: its text and the pixels of its images), not
    by a screenshot: the views are taller than the window, and a screenshot of an element
    taller than the window is pieced together from scrolled captures that differ by a pixel.
    """
    page = shown.page
    slider = page.locator(f'[data-explorer="slider-{i}"]')
    stack = page.locator(f'[data-explorer="stack-{i}"]')
    handle, readout = slider.locator(".noUi-handle"), slider.locator(".widget-readout")
    at_end = handle.get_attribute("aria-valuenow") == handle.get_attribute("aria-valuemax")
    forward, back = ("ArrowLeft", "ArrowRight") if at_end else ("ArrowRight", "ArrowLeft")
    name = _screenshot_name(shown.doc, f"--explorer-{i}")
    views = []
    for key, shot in ((None, "before"), (forward, "after"), (back, None)):
        if key:
            html = stack.inner_html()
            handle.press(key)
            try:
                page.wait_for_function(
                    "([sel, html]) => document.querySelector(sel).innerHTML !== html",
                    arg=[f'[data-explorer="stack-{i}"]', html], timeout=5_000,
                )
            except PlaywrightTimeoutError:
                return [f"{caption}: pressing {key} on the slider left the view as it was"]
        views.append((readout.inner_text(), stack.evaluate(reader.VIEW_JS)))
        if shot:
            stack.screenshot(path=shown.screenshots / name.replace(".png", f"-{shot}.png"))
    failures = []
    if views[1][0] == views[0][0]:
        failures.append(f"{caption}: {forward} did not move the slider")
    if views[1][1] == views[0][1]:
        failures.append(f"{caption}: the view did not change")
    if views[2] != views[0]:
        failures.append(f"{caption}: moving back did not restore the first view")
    return failures


def test_explorers_start_at_the_value_the_prose_discusses(shown):
    """The slider's starting value, as its readout shows it, appears in the prose of its section
    before the explorer: the reader reads about the view the explorer opens on."""
    shown.page.evaluate(EXPLORERS_JS)  # marks the explorers (again) in case this runs alone
    failures = [
        f"{explorer['caption']!r} starts at {reader.normalize(explorer['readout'])!r}, which the "
        f"prose before it does not mention; it ends: "
        f"...{reader.normalize(explorer['prose'])[-160:]!r}"
        for explorer in shown.page.evaluate(reader.EXPLORER_PROSE_JS)
        if not reader.prose_mentions(explorer["readout"], explorer["prose"])
    ]
    assert not failures, "\n".join(failures)


def test_figures_have_alt_text(shown):
    """Every image of the article (cell outputs, widget images, pasted figures) says what it
    shows; an explorer's Image widgets carry it in their tooltip, also those not yet shown."""
    facts = shown.facts_at(shown.size)
    failures = [f"{img['src']}: {problem}" for img in facts["images"]
                if (problem := reader.alt_problem(img["alt"]))]
    state, _ = widget_state.page_widgets((SITE / f"{shown.doc}.html").read_text())
    images = [m for m in state.values() if m["model_name"] == "ImageModel"]
    silent = [m for m in images if reader.alt_problem(m["state"].get("tooltip"))]
    if silent:
        failures.append(f"{len(silent)} of the page's {len(images)} Image widgets have no alt "
                        "text in their tooltip")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("size", SIZES)
def test_page_is_no_wider_than_the_window(shown, size):
    """Nothing makes the page scroll sideways: long code wraps or scrolls in its own box, and so
    do equations, tables, figures and widgets (web/static/book.css)."""
    facts = shown.facts_at(size)
    assert facts["scrollWidth"] <= facts["viewport"], "\n".join(
        [f"the page is {facts['scrollWidth']} px wide in a {facts['viewport']} px window"]
        + _listed("sticks out", facts["wide"]))


@pytest.mark.parametrize("size", SIZES)
def test_figure_text_is_legible(shown, size):
    """No figure shows its smallest text (``MIN_FONT_PT``, the smallest font of the chapters'
    figure style) below ``reader.MIN_TEXT_PX`` CSS px at this window size: from the PNG's
    resolution (its pHYs chunk), its pixel width and the width the page shows it at."""
    failures = []
    for img in shown.facts_at(size)["images"]:
        if not (img["natural"] and img["shown"]):
            continue  # not decoded (test_page_renders_offline says so) or folded away
        what = f"{img['src']} ({(img['alt'] or 'no alt')[:50]!r})"
        if not img["dpi"]:
            failures.append(f"{what}: no resolution (pHYs) in the image, so its text size is "
                            "unknown; save figures with matplotlib")
            continue
        px = reader.text_px(MIN_FONT_PT, img["dpi"], img["shown"], img["natural"])
        if px < reader.MIN_TEXT_PX:
            failures.append(
                f"{what}: {MIN_FONT_PT:g}-pt text shows {px:.1f} px high (minimum "
                f"{reader.MIN_TEXT_PX:g}): a {img['natural']} px PNG at {img['dpi']:.0f} dpi "
                f"shown {img['shown']:.0f} px wide")
    assert not failures, "\n".join(failures)


def _leave_controls(page: Page) -> None:
    """Move the pointer and the focus off every control and wait for its tooltip to go."""
    page.mouse.move(0, 0)
    page.evaluate("() => document.activeElement && document.activeElement.blur()")
    try:
        page.wait_for_function("() => !document.querySelector('.tooltip')", timeout=3_000)
    except PlaywrightTimeoutError:
        pass  # a tooltip that stays is reported by the click it blocks


def _wait_shown(page: Page, selector: str, want: bool) -> bool:
    try:
        page.wait_for_function(SHOWN_JS, arg=[selector, want], polling="raf", timeout=3_000)
    except PlaywrightTimeoutError:
        return False
    return True


def _wait_closed(page: Page, dialog: str) -> bool:
    try:
        page.wait_for_function("d => !document.querySelector(d).open", arg=dialog,
                               polling="raf", timeout=3_000)
    except PlaywrightTimeoutError:
        return False
    return True


# phone first: the page is at the phone size after the checks above, so one resize is saved
@pytest.mark.parametrize("size", ["phone", "laptop"])
def test_chapter_list_and_contents_open_and_close(shown, size):
    """On a phone the two buttons of the header open the chapter list and the page's contents
    as drawers, and Escape closes them; on a laptop both are shown beside the text and the
    chapter-list button folds its sidebar away and back. With pydata-sphinx-theme 0.17 under
    sphinx-book-theme 1.3 a second, hidden ``.primary-toggle`` took the handler and every
    button did nothing (pydata/pydata-sphinx-theme#2451)."""
    shown.at(size)
    page, failures = shown.page, []
    toggles = page.locator(".primary-toggle:visible")
    assert toggles.count() == 1, f"{toggles.count()} visible chapter-list buttons"
    if page.locator("input[type=search]:visible").count() > 1:
        failures.append("more than one search box is shown")
    has_contents = page.locator("#pst-secondary-sidebar").count() > 0  # pages with sections
    contents_buttons = page.locator(".secondary-toggle:visible").count()
    if size == "phone":
        if contents_buttons != (1 if has_contents else 0):
            failures.append(f"{contents_buttons} contents buttons shown, for "
                            f"{'a' if has_contents else 'no'} contents list")
        drawers = [(".primary-toggle", "#pst-primary-sidebar-modal")]
        if has_contents:
            drawers.append((".secondary-toggle", "#pst-secondary-sidebar-modal"))
        for button, dialog in drawers:
            page.locator(f"{button}:visible").first.click()
            if not _wait_shown(page, f"dialog{dialog}", True):
                failures.append(f"{button} did not open its drawer")
                continue
            if shown.doc == TOC[2]:
                page.screenshot(path=shown.screenshots / f"nav-phone-{button[1:]}.png")
            page.keyboard.press("Escape")
            if not _wait_closed(page, f"dialog{dialog}"):
                failures.append(f"the drawer of {button} did not close")
            _leave_controls(page)  # the closed drawer gave its button the focus and a tooltip
    else:
        if has_contents and not _wait_shown(page, "#pst-secondary-sidebar", True):
            failures.append("the contents sidebar is not shown")
        if not _wait_shown(page, "#pst-primary-sidebar", True):
            failures.append("the chapter list is not shown")
        toggles.first.click()
        if not _wait_shown(page, "#pst-primary-sidebar", False):
            failures.append("the chapter-list button did not fold the chapter list away")
        toggles.first.click()
        if not _wait_shown(page, "#pst-primary-sidebar", True):
            failures.append("the chapter list did not come back")
    failures += shown.new_problems()
    assert not failures, "\n".join(failures)
