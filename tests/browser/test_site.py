"""The rendered book as a whole, in headless Chromium with the network cut off.

Run by `make browser` after `make build`: the network is cut, every page of the table of
contents was built, links resolve, previous/next walk the book, search finds, and the title,
logo, favicon, footer and buttons are there. Each page on its own, at a laptop and a phone
size, is tested by test_pages.py.
"""

import datetime
import re
import socket

import bookmap
import netns
import pytest
from locations import BOOK, SITE, book_config

TOC = bookmap.toc_docnames(BOOK / "_toc.yml")
NOTEBOOKS = [doc for doc in TOC if (BOOK / f"{doc}.ipynb").is_file()]
# texts of Jupyter Book's templates that a finished book replaces
DEFAULT_TEXTS = ["My sample book", "My Jupyter Book", "The Jupyter Book Community",
                 "executablebooks/jupyter-book", "Copyright 2023"]

FETCH_JS = "url => fetch(url).then(async r => [r.status, await r.text()])"


def test_network_is_cut_off(offline):
    assert netns.interfaces() == ["lo"]
    with pytest.raises(OSError):
        socket.create_connection(("1.1.1.1", 443), timeout=5)


def test_every_toc_page_was_built():
    missing = [doc for doc in TOC if not (SITE / f"{doc}.html").is_file()]
    assert not missing, f"in _toc.yml but not in {SITE}: {missing}"


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


def test_next_and_previous_walk_the_toc_in_order():
    """The theme's next and previous links, in the built HTML (a walk in the browser took 28 s;
    test_pages opens every page and fails on any link that does not load)."""
    assert bookmap.walk(SITE, TOC[0], "right-next") == TOC
    assert bookmap.walk(SITE, TOC[-1], "left-prev") == TOC[::-1]
    refresh = (SITE / "index.html").read_text()
    assert f"url={TOC[0]}.html" in refresh, f"index.html does not open {TOC[0]}: {refresh!r}"


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


def test_figures_follow_the_page_into_dark_mode(visit):
    """In dark mode the figures are inverted, hue kept (web/static/book.css), not left as white
    cards on a dark page; in light mode they are shown as drawn."""
    view = visit(f"{TOC[0]}.html")  # the landing page shows a chapter's figure
    page = view.page
    figure = page.locator(".bd-article figure img").first
    assert figure.evaluate("img => getComputedStyle(img).filter") == "none"
    page.emulate_media(color_scheme="dark")  # the theme follows the system in its "auto" mode
    page.wait_for_function("() => document.documentElement.dataset.theme === 'dark'")
    assert "invert" in figure.evaluate("img => getComputedStyle(img).filter")
    page.emulate_media(color_scheme="light")
    assert not view.problems, "\n".join(view.problems)
