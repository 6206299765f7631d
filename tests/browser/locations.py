"""Where the browser test finds the book, the built site and the browser; where it saves images.

Each can be pointed elsewhere (e.g. at a build made with `jupyter-book build --path-output`):
BOOK_DIR is the folder with _config.yml and _toc.yml (default: the repository), BOOK_HTML the
built site (default: BOOK_DIR/_build/html), CHROMIUM the browser (default: Debian's chromium).
Screenshots go next to the site, in _build/screenshots/.
"""

import os
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
BOOK = Path(os.environ.get("BOOK_DIR", ROOT)).resolve()
SITE = Path(os.environ.get("BOOK_HTML", BOOK / "_build" / "html")).resolve()
SCREENSHOTS = SITE.parent / "screenshots"
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))


def book_config() -> dict:
    """The book's _config.yml."""
    return yaml.safe_load((BOOK / "_config.yml").read_text())
