"""Sphinx extension: a one-line "run it yourself" note under the title of every chapter.

The chapters are notebooks, and a reader who lands on one from a search should learn, before
the first paragraph, that it runs live: from a clone of the repository, ``make lab``. The note is
added to every document built from an ``.ipynb`` file (the notebooks stay as they are) and links
to the landing page's section on running the book (label ``RUN_SECTION``), which has the
details. Enabled from _config.yml (``sphinx: local_extensions``); styled by ``.run-note`` in
web/static/book.css.
"""

from __future__ import annotations

from typing import Any

from docutils import nodes
from sphinx import addnodes
from sphinx.application import Sphinx
from sphinx.util import logging

logger = logging.getLogger(__name__)

RUN_SECTION = "run-yourself"  # the (label)= of "Running it yourself" in book/intro.md


def _note() -> nodes.container:
    link = addnodes.pending_xref(
        "", nodes.inline("", "how to set it up"), refdomain="std", reftype="ref",
        reftarget=RUN_SECTION, refexplicit=True, refwarn=True,
    )
    paragraph = nodes.paragraph(
        "", "",
        nodes.Text("Run this chapter yourself: in a clone of the book's repository, "),
        nodes.literal("", "make lab"),
        nodes.Text(" opens it in JupyterLab ("), link, nodes.Text(")."),
    )
    return nodes.container("", paragraph, classes=["run-note"])


def add_run_note(app: Sphinx, doctree: nodes.document) -> None:
    """Insert the note right after the first title of a document read from a notebook."""
    if not str(app.env.doc2path(app.env.docname)).endswith(".ipynb"):
        return
    section = next(iter(doctree.findall(nodes.section)), None)
    if section is None or not isinstance(section.children[0], nodes.title):
        logger.warning("a chapter should open with a title (# ...): no place for the run note",
                       location=app.env.docname)
        return
    section.insert(1, _note())


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("doctree-read", add_run_note)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
