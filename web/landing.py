"""Sphinx extension: the computed parts of the landing page, read from the notebooks' stored runs.

- ``{run-time}`../notebooks/03_weight_quantization``` prints how long that notebook's cells took
  when it was last executed (the sum of the per-cell timestamps nbclient stores in
  ``cell.metadata.execution``), e.g. "3 min"; ``{run-time}`*``` prints the total of every
  notebook of the book.
- ``{run-machine}`cpu``` quotes the "CPU" line of the machine report that chapter 00 printed in
  the same run, so that the times above come with the machine they were measured on.
- ``{notebook-figure}`` shows a figure that a notebook's cell drew, picked by the cell's id (a
  stable name in the .ipynb file), with the cell's alt text unless ``:alt:`` is given, and an
  optional caption as its content::

      ```{notebook-figure} ../notebooks/09_choosing_a_method.ipynb
      :cell: c13
      The caption.
      ```

MyST-NB's ``{glue:figure}`` cannot paste from another document (only ``{glue}`` with ``:doc:``
can, and then without alt text or caption, and only if the chapter shows the same bytes), hence
this directive. Every page that uses these depends on the notebooks it reads: Sphinx rebuilds it
when one of them changes. Enabled from _config.yml (``sphinx: local_extensions``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective, SphinxRole

# where chapter 00 prints the machine report (quantbook.machine.format_report)
MACHINE_REPORT = ("notebooks/00_setup.ipynb", "c04")
EVERY_NOTEBOOK = "*"


def cell_seconds(cell: dict[str, Any]) -> float:
    """Seconds a code cell ran, from the timestamps nbclient stored in its metadata (0 if none).

    Example: ``iopub.execute_input`` at 12:00:00.5 and ``shell.execute_reply`` at 12:00:02.0
    give 1.5.
    """
    stamps = cell.get("metadata", {}).get("execution", {})
    start, end = stamps.get("iopub.execute_input"), stamps.get("shell.execute_reply")
    if not (start and end):
        return 0.0
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def notebook_seconds(notebook: dict[str, Any], name: str = "notebook") -> float:
    """Seconds all code cells of a notebook ran when it was last executed.

    Raises:
        ValueError: no code cell carries timestamps (the notebook was not run by nbclient, or
            its metadata was stripped), naming the notebook and the fix.
    """
    code = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    timed = [cell_seconds(cell) for cell in code if cell.get("metadata", {}).get("execution")]
    if code and not timed:
        raise ValueError(f"{name}: no code cell has execution timestamps "
                         "(cell.metadata.execution); re-execute it with `make notebooks`")
    return sum(timed)


def format_duration(seconds: float) -> str:
    """A run time as the page prints it: whole seconds under 100 s, else minutes rounded up.

    Example: 8.8 -> "9 s", 159.8 -> "3 min", 369.0 -> "7 min".
    """
    if seconds < 100:
        return f"{max(1, round(seconds))} s"
    return f"{math.ceil(seconds / 60)} min"


def _read_notebook(env: Any, target: str) -> tuple[str, dict[str, Any]]:
    """A notebook named relative to the current document (``.ipynb`` optional), and its JSON."""
    target = target if target.endswith(".ipynb") else target + ".ipynb"
    relative, absolute = env.relfn2path(target, env.docname)
    if not os.path.isfile(absolute):
        raise ValueError(f"no notebook {target!r} (looked for {absolute})")
    env.note_dependency(absolute)  # rebuild this page when the notebook changes
    return relative, json.loads(Path(absolute).read_text(encoding="utf-8"))


def _book_notebooks(env: Any) -> list[str]:
    """The notebooks of the book: documents built from an .ipynb file, relative to the srcdir."""
    return sorted(
        f"/{doc}.ipynb" for doc in env.found_docs
        if os.path.isfile(env.doc2path(doc)) and str(env.doc2path(doc)).endswith(".ipynb")
    )


class RunTimeRole(SphinxRole):
    """``{run-time}`path``` -> how long that notebook's cells ran; ``*`` for the whole book."""

    def run(self) -> tuple[list[nodes.Node], list[nodes.system_message]]:
        target = self.text.strip()
        targets = _book_notebooks(self.env) if target == EVERY_NOTEBOOK else [target]
        try:
            seconds = sum(notebook_seconds(nb, name) for name, nb in
                          (_read_notebook(self.env, t) for t in targets))
        except ValueError as error:
            message = self.inliner.reporter.error(f"run-time: {error}", line=self.lineno)
            return [self.inliner.problematic(self.rawtext, self.rawtext, message)], [message]
        text = format_duration(seconds)
        return [nodes.inline(text, text, classes=["run-time"])], []


def machine_line(notebook: dict[str, Any], cell_id: str, field: str) -> str:
    """The value of one line of a stored machine report, e.g. ``CPU  AMD EPYC (2 ...)``.

    Raises:
        ValueError: no cell with that id, or no line starting with ``field``.
    """
    for cell in notebook["cells"]:
        if cell.get("id") != cell_id:
            continue
        text = "".join("".join(out.get("text", "")) for out in cell.get("outputs", []))
        for line in text.splitlines():
            if line.split("  ", 1)[0].strip().lower() == field.lower():
                return line.split("  ", 1)[1].strip()
        raise ValueError(f"cell {cell_id!r} printed no line {field!r}: {text[:200]!r}")
    raise ValueError(f"no cell with id {cell_id!r}: point MACHINE_REPORT at the cell that "
                     "prints quantbook.machine.format_report()")


class RunMachineRole(SphinxRole):
    """``{run-machine}`cpu``` -> that line of chapter 00's machine report."""

    def run(self) -> tuple[list[nodes.Node], list[nodes.system_message]]:
        path, cell_id = MACHINE_REPORT
        try:
            _, notebook = _read_notebook(self.env, "/" + path)
            text = machine_line(notebook, cell_id, self.text.strip())
        except ValueError as error:
            message = self.inliner.reporter.error(f"run-machine: {error}", line=self.lineno)
            return [self.inliner.problematic(self.rawtext, self.rawtext, message)], [message]
        return [nodes.inline(text, text, classes=["run-machine"])], []


def cell_figure(notebook: dict[str, Any], cell_id: str, index: int = 0) -> tuple[bytes, dict]:
    """The ``index``-th PNG a cell displayed and its output metadata (``width``, ``height``).

    Raises:
        ValueError: no such cell, or it shows fewer PNGs.
    """
    for cell in notebook["cells"]:
        if cell.get("id") != cell_id:
            continue
        pngs = [out for out in cell.get("outputs", []) if "image/png" in out.get("data", {})]
        if len(pngs) <= index:
            raise ValueError(f"cell {cell_id!r} shows {len(pngs)} PNG figures, not {index + 1}")
        output = pngs[index]
        return (base64.b64decode(output["data"]["image/png"]),
                output.get("metadata", {}).get("image/png", {}))
    raise ValueError(f"no cell with id {cell_id!r} (ids are in the .ipynb file: \"id\": ...)")


def cell_alt(notebook: dict[str, Any], cell_id: str) -> str:
    """The alt text a cell gives its figures (``metadata.mystnb.image.alt``), or ''."""
    for cell in notebook["cells"]:
        if cell.get("id") == cell_id:
            return cell.get("metadata", {}).get("mystnb", {}).get("image", {}).get("alt", "")
    return ""


class NotebookFigure(SphinxDirective):
    """A figure drawn by a notebook's cell, with alt text and an optional caption."""

    required_arguments = 1  # the notebook, relative to this document
    has_content = True
    option_spec = {
        "cell": directives.unchanged_required,
        "image": directives.nonnegative_int,  # which of the cell's PNGs (default 0, the first)
        "alt": directives.unchanged,
        "name": directives.unchanged,
    }

    def run(self) -> list[nodes.Node]:
        if "cell" not in self.options:
            raise self.error("notebook-figure needs :cell: the id of the cell that draws it")
        cell_id = self.options["cell"]
        try:
            path, notebook = _read_notebook(self.env, self.arguments[0])
            png, meta = cell_figure(notebook, cell_id, self.options.get("image", 0))
        except ValueError as error:
            raise self.error(f"notebook-figure {self.arguments[0]}: {error}") from error
        alt = self.options.get("alt") or cell_alt(notebook, cell_id)
        if not alt:
            raise self.error(f"notebook-figure {path} cell {cell_id}: no alt text; give :alt: "
                             "or the cell's metadata mystnb.image.alt")
        image = nodes.image(uri=self._write(png), alt=alt)
        if "width" in meta:  # a 2x PNG is shown at half its pixels, as in the chapter
            image["width"] = f"{meta['width']}px"
        figure = nodes.figure("", image, classes=["notebook-figure"])
        self.set_source_info(figure)
        self.add_name(figure)
        if self.content:
            parsed = nodes.Element()
            self.state.nested_parse(self.content, self.content_offset, parsed)
            first = parsed.children[0]
            if not isinstance(first, nodes.paragraph):
                raise self.error("notebook-figure: the caption must be a paragraph")
            figure += nodes.caption(first.rawsource, "", *first.children)
        return [figure]

    def _write(self, png: bytes) -> str:
        """Write the PNG where MyST-NB writes the chapters' outputs; return its Sphinx URI."""
        folder = Path(self.env.mystnb_config.output_folder) / "notebook-figures"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{hashlib.sha256(png).hexdigest()}.png"
        if not path.exists():
            path.write_bytes(png)
        return "/" + os.path.relpath(path.resolve(), self.env.srcdir)  # "/": from the srcdir


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_role("run-time", RunTimeRole())
    app.add_role("run-machine", RunMachineRole())
    app.add_directive("notebook-figure", NotebookFigure)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
