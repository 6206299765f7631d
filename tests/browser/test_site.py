"""The rendered book as a reader sees it, in headless Chromium with the network cut off.

Run by `make browser` after `make build`: every page of the table of contents loads from
127.0.0.1 alone, shows its figures, math and widgets, and the site's navigation, search, links
and buttons work. Screenshots of every page go to _build/screenshots/.
"""

import datetime
import json
import re
import socket

import bookmap
import netns
import pytest
import widget_state
from locations import BOOK, SITE, book_config
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

TOC = bookmap.toc_docnames(BOOK / "_toc.yml")
NOTEBOOKS = [doc for doc in TOC if (BOOK / f"{doc}.ipynb").is_file()]
EXPLORER_CHAPTERS = [
    doc for doc in NOTEBOOKS
    if widget_state.explorers(widget_state.notebook_state(json.loads(
        (BOOK / f"{doc}.ipynb").read_text())))
]
# texts of Jupyter Book's templates that a finished book replaces
DEFAULT_TEXTS = ["My sample book", "My Jupyter Book", "The Jupyter Book Community",
                 "executablebooks/jupyter-book", "Copyright 2023"]

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
FETCH_JS = "url => fetch(url).then(async r => [r.status, await r.text()])"


def _listed(what: str, items: list[str], limit: int = 5) -> list[str]:
    """One failure line per item, the first ``limit`` of them, then how many more."""
    more = [f"... and {len(items) - limit} more {what}"] if len(items) > limit else []
    return [f"{what}: {item}" for item in items[:limit]] + more


def _screenshot_name(doc: str, suffix: str = "") -> str:
    return doc.replace("/", "--") + suffix + ".png"


def test_network_is_cut_off(offline):
    assert netns.interfaces() == ["lo"]
    with pytest.raises(OSError):
        socket.create_connection(("1.1.1.1", 443), timeout=5)


def test_every_toc_page_was_built():
    missing = [doc for doc in TOC if not (SITE / f"{doc}.html").is_file()]
    assert not missing, f"in _toc.yml but not in {SITE}: {missing}"


@pytest.mark.parametrize("doc", TOC)
def test_page_renders_offline(doc, visit, screenshots):
    """Loads cleanly and shows its figures, typeset math and widgets; saves a screenshot."""
    view = visit(f"{doc}.html")
    page, failures = view.page, view.problems
    title = book_config()["title"]
    if title not in page.title():
        failures.append(f"page title {page.title()!r} does not name the book {title!r}")

    images = page.evaluate(IMAGES_JS)
    failures += _listed("image not decoded", [img["src"] for img in images if not img["width"]])
    if doc in NOTEBOOKS:
        figures = bookmap.figure_outputs(BOOK / f"{doc}.ipynb")
        shown = sum(img["output"] and img["width"] > 0 for img in images)
        if shown < figures:
            failures.append(f"{shown} figures shown, the notebook has {figures}")

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
    if rendered["outputImages"] < widget_state.saved_output_images(state):
        failures.append("an Output widget does not show its saved figure")

    source = page.locator(".btn-download-source-button")
    if source.count():
        status, body = page.evaluate(FETCH_JS, source.get_attribute("href"))
        if status != 200 or (doc in NOTEBOOKS and not json.loads(body)["cells"]):
            failures.append(f"download of the source failed: HTTP {status}")

    page.screenshot(path=screenshots / _screenshot_name(doc), full_page=True)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("doc", EXPLORER_CHAPTERS)
def test_explorer_slider_switches_views_without_a_kernel(doc, visit, screenshots):
    view = visit(f"{doc}.html")
    page = view.page
    state, _ = widget_state.page_widgets((SITE / f"{doc}.html").read_text())
    expected = sorted(explorer.description for explorer in widget_state.explorers(state))
    captions = page.evaluate(EXPLORERS_JS)
    assert sorted(captions) == expected, "explorers in the page differ from the widget state"
    for i, caption in enumerate(captions):
        slider = page.locator(f'[data-explorer="slider-{i}"]')
        stack = page.locator(f'[data-explorer="stack-{i}"]')
        handle, readout = slider.locator(".noUi-handle"), slider.locator(".widget-readout")
        at_end = handle.get_attribute("aria-valuenow") == handle.get_attribute("aria-valuemax")
        forward, back = ("ArrowLeft", "ArrowRight") if at_end else ("ArrowRight", "ArrowLeft")
        shots = []
        for key in (None, forward, back):
            if key:
                html = stack.inner_html()
                handle.press(key)
                try:
                    page.wait_for_function(
                        "([sel, html]) => document.querySelector(sel).innerHTML !== html",
                        arg=[f'[data-explorer="stack-{i}"]', html], timeout=5_000,
                    )
                except PlaywrightTimeoutError:
                    pytest.fail(f"{caption}: pressing {key} on the slider left the view as it was")
                stack.locator("img").evaluate_all("imgs => Promise.all(imgs.map(i => i.decode()))")
            shots.append((readout.inner_text(), stack.screenshot()))
        name = _screenshot_name(doc, f"--explorer-{i}")
        (screenshots / name.replace(".png", "-before.png")).write_bytes(shots[0][1])
        (screenshots / name.replace(".png", "-after.png")).write_bytes(shots[1][1])
        assert shots[1][0] != shots[0][0], f"{caption}: {forward} did not move the slider"
        assert shots[1][1] != shots[0][1], f"{caption}: the view did not change"
        assert shots[2] == shots[0], f"{caption}: moving back did not restore the first view"
    assert not view.problems, "\n".join(view.problems)


def test_internal_links_resolve():
    broken = bookmap.broken_links(SITE)
    assert not broken, "\n".join(broken)


def test_no_default_template_text():
    found = [
        f"{path.relative_to(SITE)}: {text}"
        for path in SITE.rglob("*.html") if "_static" not in path.relative_to(SITE).parts
        for text in DEFAULT_TEXTS if text.lower() in path.read_text().lower()
    ]
    assert not found, "\n".join(found)


def test_next_and_previous_walk_the_toc_in_order(visit, site_url):
    view = visit(f"{TOC[0]}.html")
    page = view.page
    # the start page redirects to the root document; waiting for the URL waits out that
    # navigation (evaluating a script while it happens fails: the page is being replaced)
    page.goto(f"{site_url}index.html")
    page.wait_for_url(f"{site_url}{TOC[0]}.html")
    page.wait_for_load_state("networkidle")

    def walk(link: str) -> list[str]:
        # the links are in the HTML: each page is parsed, not rendered (test_page_renders_offline
        # renders every page), which keeps this walk of 2 x 17 pages quick
        docs = [page.url.removeprefix(site_url).removesuffix(".html")]
        while page.locator(f"a.{link}").count():
            with page.expect_navigation(wait_until="domcontentloaded"):
                page.locator(f"a.{link}").click()
            docs.append(page.url.removeprefix(site_url).removesuffix(".html"))
        return docs

    assert walk("right-next") == TOC
    assert walk("left-prev") == TOC[::-1]
    assert not view.problems, "\n".join(view.problems)


def test_search_finds_a_known_term(visit, site_url, screenshots):
    view = visit("search.html?q=quantization")
    results = view.page.locator("ul.search li a")
    results.first.wait_for()
    view.page.screenshot(path=screenshots / "search.png")
    pages = {re.sub(r"[?#].*", "", href).removesuffix(".html")
             for href in results.evaluate_all("links => links.map(a => a.getAttribute('href'))")}
    assert pages & set(TOC), f"no result is a page of the book: {sorted(pages)}"
    assert not view.problems, "\n".join(view.problems)


def test_title_logo_favicon_footer_and_buttons(visit, screenshots):
    config = book_config()
    view = visit(f"{TOC[0]}.html")
    page = view.page
    logos = page.locator(".navbar-brand img.logo__image")
    assert logos.count(), "no logo: set `logo:` in _config.yml"
    assert logos.first.evaluate("img => img.naturalWidth") > 0, "the logo does not load"
    icons = page.locator('link[rel="icon"]')
    assert icons.count(), "no favicon: set `html: favicon:` in _config.yml"
    icon_width = page.evaluate(
        "url => { const img = new Image(); img.src = url; return img.decode()"
        ".then(() => img.naturalWidth, () => 0); }", icons.first.get_attribute("href"))
    assert icon_width > 0, "the favicon does not load"
    status, _ = page.evaluate(FETCH_JS, "/favicon.ico")  # asked for by pages that name no icon
    assert status == 200, "no /favicon.ico at the site's root (html_extra_path)"

    footer = page.locator("footer.bd-footer-content").inner_text()
    year = int(config["copyright"])
    assert f"Copyright {year}" in footer and 2026 <= year <= datetime.date.today().year
    assert config["author"] in footer

    launch = config.get("launch_buttons", {})
    services = [key for key in ("binderhub_url", "jupyterhub_url", "colab_url", "deepnote_url")
                if launch.get(key)]
    assert page.locator(".dropdown-launch-buttons").count() == (1 if services else 0)
    repository = config.get("repository", {}).get("url")
    assert page.locator(".btn-source-repository-button").count() == (1 if repository else 0)

    chapter = visit(f"{NOTEBOOKS[-1]}.html") if NOTEBOOKS else view
    notebook = chapter.page
    notebook.locator(".dropdown-download-buttons button.dropdown-toggle").click()
    assert notebook.locator(".btn-download-source-button").is_visible()
    notebook.evaluate("() => { window.print = () => { window.printed = true; }; }")
    notebook.locator(".btn-download-pdf-button").click()
    assert notebook.evaluate("() => window.printed === true"), "the .pdf button does not print"

    mode = page.evaluate("() => document.documentElement.dataset.mode")
    page.locator(".theme-switch-button").first.click()
    assert page.evaluate("() => document.documentElement.dataset.mode") != mode
    page.screenshot(path=screenshots / "site-after-theme-switch.png")
    page.evaluate("() => localStorage.clear()")  # later pages open in the default mode again
    problems = view.problems + (chapter.problems if chapter is not view else [])
    assert not problems, "\n".join(problems)


SIZES = {"laptop": {"width": 1366, "height": 900}, "phone": {"width": 390, "height": 844}}


@pytest.mark.parametrize("size", SIZES)
def test_navigation_buttons_open_and_close_the_sidebars(visit, screenshots, size):
    """The chapter-list button works at both sizes: it opens the drawer on a phone (and the
    contents button the other), and collapses the sidebar on a laptop. With
    pydata-sphinx-theme 0.17 under sphinx-book-theme 1.3 a second, hidden ``.primary-toggle``
    took the handler and every button did nothing (pydata/pydata-sphinx-theme#2451)."""
    view = visit(f"{TOC[2]}.html")
    page = view.page
    page.set_viewport_size(SIZES[size])
    page.wait_for_timeout(400)  # the layout of the new width
    sidebar = page.locator("#pst-primary-sidebar")

    def shown(locator) -> bool:  # on screen, not merely in the DOM
        return locator.evaluate("e => { const r = e.getBoundingClientRect();"
                                " return getComputedStyle(e).visibility === 'visible'"
                                " && r.width > 0 && r.left >= 0 }")

    toggles = page.locator(".primary-toggle:visible")
    assert toggles.count() == 1, f"{toggles.count()} visible chapter-list buttons"
    assert page.locator("input[type=search]:visible").count() <= 1
    assert shown(sidebar) is (size == "laptop")
    if size == "phone":  # the theme moves the sidebar's content into a modal dialog
        for button, dialog in ((".primary-toggle", "#pst-primary-sidebar-modal"),
                               (".secondary-toggle", "#pst-secondary-sidebar-modal")):
            drawer = page.locator(f"dialog{dialog}")
            page.locator(f"{button}:visible").first.click()
            page.wait_for_timeout(400)  # the drawer's CSS transition
            assert drawer.evaluate("d => d.open") and shown(drawer), f"{button} did nothing"
            page.screenshot(path=screenshots / f"nav-phone-{button[1:]}.png")
            page.keyboard.press("Escape")
            page.wait_for_timeout(400)
            assert not drawer.evaluate("d => d.open"), f"the drawer of {button} did not close"
    else:
        toggles.first.click()
        page.wait_for_timeout(400)
        assert not shown(sidebar), "the chapter-list button did nothing"
        page.screenshot(path=screenshots / "nav-laptop-collapsed.png")
        toggles.first.click()
        page.wait_for_timeout(400)
        assert shown(sidebar), "the sidebar did not come back"
    assert not view.problems, "\n".join(view.problems)
