"""What the book should contain, read from its sources and its built HTML without a browser."""

import json
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import yaml

SOURCE_SUFFIXES = (".ipynb", ".md", ".rst")
# attributes that make the browser fetch or navigate to a page of the site
REFERENCE_ATTRS = {
    "a": "href", "link": "href", "img": "src", "script": "src", "source": "src", "iframe": "src",
}
# remove-* tags drop a cell's outputs from the page (MyST-NB); hide-* only fold them
REMOVED_OUTPUT_TAGS = {"remove-cell", "remove-output", "remove_cell", "remove_output"}


def _docname(path: str) -> str:
    for suffix in SOURCE_SUFFIXES:
        if path.endswith(suffix):
            return path[: -len(suffix)]
    return path


def toc_docnames(toc_path: Path) -> list[str]:
    """The documents of a jb-book ``_toc.yml`` in reading order, the root first.

    Raises:
        ValueError: the toc uses ``glob:``, whose order only Sphinx knows.
    """
    toc = yaml.safe_load(toc_path.read_text())
    order = [_docname(toc["root"])]

    def walk(entries: list[dict]) -> None:
        for entry in entries:
            if "glob" in entry:
                raise ValueError(f"{toc_path}: glob entries are not supported: {entry}")
            if "file" in entry:
                order.append(_docname(entry["file"]))
            for key in ("parts", "chapters", "sections"):
                walk(entry.get(key, []))

    walk([toc])  # the root entry holds the parts (or chapters); its own file is toc["root"]
    return order


def figure_outputs(notebook: Path) -> int:
    """How many PNG/JPEG/SVG outputs of a notebook a reader should see on its page."""
    cells = json.loads(notebook.read_text())["cells"]
    count = 0
    for cell in cells:
        if REMOVED_OUTPUT_TAGS & set(cell.get("metadata", {}).get("tags", [])):
            continue
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if any(mime in data for mime in ("image/png", "image/jpeg", "image/svg+xml")):
                count += 1
    return count


@dataclass
class HtmlPage:
    """The ids a page defines (link targets) and the local URLs it references."""

    ids: set[str] = field(default_factory=set)
    references: list[str] = field(default_factory=list)
    classed_links: dict[str, str] = field(default_factory=dict)  # class -> href of <a class=...>


class _PageParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.page = HtmlPage()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        for key in ("id", "name") if tag == "a" else ("id",):
            if values.get(key):
                self.page.ids.add(values[key])
        url = values.get(REFERENCE_ATTRS.get(tag, ""))
        if url:
            self.page.references.append(url)
            if tag == "a":
                for name in (values.get("class") or "").split():
                    self.page.classed_links.setdefault(name, url)


def parse_page(path: Path) -> HtmlPage:
    parser = _PageParser()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser.page


def walk(site: Path, start: str, link_class: str) -> list[str]:
    """The docnames met by following ``<a class=link_class>`` (the theme's ``right-next`` or
    ``left-prev``) from the page ``start`` until a page has none."""
    site, docs = site.resolve(), [start]
    while (url := parse_page(site / f"{docs[-1]}.html").classed_links.get(link_class)):
        target = (site / docs[-1]).parent / unquote(urlsplit(url).path)
        docs.append(target.resolve().relative_to(site).with_suffix("").as_posix())
        if len(docs) > 1000:
            raise AssertionError(f"{link_class} links go round in a circle: {docs[-5:]}")
    return docs


def _is_external(url: str) -> bool:
    parts = urlsplit(url)
    return bool(parts.scheme) or url.startswith("//")


def broken_links(site: Path) -> list[str]:
    """Every local link, image or script of the built site whose file or anchor is missing.

    Returns:
        One line per broken reference: ``page: url -> what is missing``.
    """
    site = site.resolve()
    # _static/*.html are theme template fragments copied as static files, not pages
    pages = {
        path: parse_page(path)
        for path in sorted(site.rglob("*.html"))
        if "_static" not in path.relative_to(site).parts
    }
    broken = []
    for path, page in pages.items():
        for url in page.references:
            if _is_external(url) or url == "#":
                continue
            parts = urlsplit(url)
            target = (path.parent / unquote(parts.path)).resolve() if parts.path else path
            if parts.path.endswith("/") or target.is_dir():
                target = target / "index.html"
            where = f"{path.relative_to(site)}: {url}"
            if not target.is_relative_to(site) or not target.is_file():
                broken.append(f"{where} -> no file {target}")
            elif parts.fragment and target.suffix == ".html":
                target_ids = pages[target].ids if target in pages else parse_page(target).ids
                if unquote(parts.fragment) not in target_ids:
                    broken.append(f"{where} -> no id {parts.fragment!r} in {target.name}")
    return broken
