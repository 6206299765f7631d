"""The notebook kit: one call sets a chapter up, one glues its numbers, one shows a table.

Every chapter starts with::

    from quantbook import kit

    kit.setup_chapter()

which filters the known noise of torch and torchao *before* either is imported (the order
matters: torchao logs at import), draws figures as PNG at twice the pixel density, sets the
figure style the book's column needs, and seeds every random generator. Numbers the prose
quotes are glued in one call, ``kit.glue_numbers({"speedup": 2.71}, digits=2)``, and result
tables render as HTML on the site (``kit.table(rows, columns)``) with plain text for a terminal.

Figures follow one rule, derived below :data:`FIGURE_STYLE`: at most
:data:`MAX_FIGURE_WIDTH_IN` wide as saved and no text under :data:`SMALLEST_FONT_PT`, so that
the smallest text stays legible in the site's column; :func:`legibility` measures a figure
against it and :func:`alt_text` drafts a figure's alt text from its titles and axis labels.
"""

from __future__ import annotations

import html
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from quantbook.quiet import silence_known_noise

# Sized for the book's column: text is set in points, figures are FIGURE_WIDTH_IN wide, and
# whatever has more to show grows downwards (stacked panels), never sideways.
FIGURE_STYLE = {
    "figure.figsize": (7.0, 4.0),
    "figure.dpi": 100,  # FIGURE_DPI: 'retina' saves PNGs at twice this
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "legend.title_fontsize": 9,
    "figure.titlesize": 11,
    "savefig.bbox": "tight",
}

# What "legible at the column" means, in numbers. The site's article column is COLUMN_PX CSS px
# wide on a 1366 x 900 laptop (757 px measured in the December build; 730 is the figure the
# browser test holds the site to). A figure W inches wide (as saved, bbox "tight") is a PNG of
# RETINA_DPI * W pixels, and the page shows it across the column, so text of p points is
#     p * RETINA_DPI / 72 * COLUMN_PX / (RETINA_DPI * W) = p * COLUMN_PX / (72 * W)  CSS px
# tall (the browser test's formula: pt * dpi / 72 * displayed width / natural width). The smallest
# font, SMALLEST_FONT_PT = 9, stays at MIN_TEXT_PX = 9 px or more while
#     W <= SMALLEST_FONT_PT * COLUMN_PX / (72 * MIN_TEXT_PX) = 10.1 in;
# with TEXT_MARGIN = 1.1 (a narrower column, a scrollbar, a zoomed page), MAX_FIGURE_WIDTH_IN =
# 9.2 in is the hard limit, and figures are drawn FIGURE_WIDTH_IN = 7.0 in wide (9-pt text shows
# at 13 px, the size of the body's footnotes) so that a legend beside the axes still fits.
COLUMN_PX = 730
MIN_TEXT_PX = 9
TEXT_MARGIN = 1.1
FIGURE_DPI = FIGURE_STYLE["figure.dpi"]
RETINA_DPI = 2 * FIGURE_DPI  # PNG pixels per inch: two per CSS px
FIGURE_WIDTH_IN = FIGURE_STYLE["figure.figsize"][0]
SMALLEST_FONT_PT = min(size for key, size in FIGURE_STYLE.items()
                       if key.endswith("size") and key != "figure.figsize")
MAX_FIGURE_WIDTH_IN = SMALLEST_FONT_PT * COLUMN_PX / (72 * MIN_TEXT_PX * TEXT_MARGIN)


def setup_chapter(seed: int = 0) -> None:
    """Set a chapter up: known noise filtered, PNG figures at 2x, the book's style, seeds.

    Call it in the first code cell, before anything imports ``torch.ao`` or ``torchao``.
    """
    silence_known_noise()
    import matplotlib.pyplot as plt  # activates the inline backend first, then the style

    plt.rcParams.update(FIGURE_STYLE)
    try:
        from IPython import get_ipython
    except ImportError:  # a plain Python script: no figure format to set
        shell = None
    else:
        shell = get_ipython()
    if shell is not None and hasattr(shell, "run_line_magic"):
        shell.run_line_magic("config", "InlineBackend.figure_formats = ['retina']")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass(frozen=True)
class Legibility:
    """How a figure reads in the site's column (the rule above :data:`MAX_FIGURE_WIDTH_IN`)."""

    width_in: float  # as saved, bbox "tight": legends and labels outside the axes included
    smallest_font_pt: float
    smallest_text_px: float  # the smallest text's height shown COLUMN_PX wide, in CSS px

    @property
    def ok(self) -> bool:
        """Narrow enough for the column, and no text below the style's smallest size."""
        return (self.width_in <= MAX_FIGURE_WIDTH_IN
                and self.smallest_font_pt >= SMALLEST_FONT_PT)


def legibility(fig) -> Legibility:
    """Measure a matplotlib figure as the site shows it: saved width and smallest text.

    Example: a 7-inch figure whose smallest text is 9 pt shows that text at
    ``9 * 730 / (72 * 7) = 13.0`` CSS px on a 730 px column.
    """
    import io
    import struct

    from matplotlib.text import Text

    buffer = io.BytesIO()  # at 1x: the same width in inches, a quarter of the pixels to draw
    fig.savefig(buffer, format="png", dpi=FIGURE_DPI, bbox_inches="tight")
    width_px = struct.unpack(">I", buffer.getvalue()[16:20])[0]  # the PNG header's width
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()
             and (t.axes is None or t.axes.get_visible())]
    if not texts:
        raise ValueError("fig has no visible text: a book figure needs a title and axis labels")
    smallest = min(t.get_fontsize() for t in texts)
    width_in = width_px / FIGURE_DPI
    return Legibility(width_in, smallest, smallest * COLUMN_PX / (72 * width_in))


def alt_text(fig, what: str = "") -> str:
    """Alt text for a figure: what it is, then its title and what each panel plots.

    Args:
        fig: a matplotlib figure with titles and axis labels.
        what: the kind of chart and its subject, which the figure itself does not say
            (``"Bar chart of the perplexity increase per method"``).

    Example: a line chart titled ``About 6 dB per bit`` with axes ``bit width (bits)`` and
    ``SQNR (dB)`` gives ``"Line chart. About 6 dB per bit: SQNR (dB) against bit width
    (bits)."`` for ``what="Line chart"``.
    """
    def clean(text: str) -> str:
        return " ".join(text.split()).rstrip(".:")

    parts = [clean(what)] if what else []
    suptitle = fig.get_suptitle()
    if suptitle:
        parts.append(clean(suptitle))
    for ax in (a for a in fig.axes if a.get_visible()):
        x, y = clean(ax.get_xlabel()), clean(ax.get_ylabel())
        plotted = f"{y} against {x}" if x and y else x or y
        panel = ": ".join(p for p in (clean(ax.get_title()), plotted) if p)
        if panel and panel not in parts:
            parts.append(panel)
    if not parts:
        raise ValueError("fig has no title or axis labels to describe: pass what='...', "
                         "saying what the figure shows")
    return ". ".join(parts) + "."


def _rounded(name: str, value: object, digits: int | None) -> object:
    """The value as the prose will print it: a Python int, float or str."""
    if isinstance(value, str | bool):
        return value
    if not isinstance(value, int | float | np.integer | np.floating):
        raise TypeError(f"values[{name!r}] is a {type(value).__name__}: glue numbers or "
                        "strings (use myst_nb.glue for figures and other objects; float() a "
                        "tensor)")
    if isinstance(value, int | np.integer):
        return int(value)  # a NumPy int would print as np.int64(...)
    if not np.isfinite(value):
        raise ValueError(f"values[{name!r}] is {value}: a number the prose quotes must be "
                         "finite; find where it came from")
    return float(value) if digits is None else round(float(value), digits)


def glue_numbers(values: Mapping[str, object], digits: int | None = None) -> None:
    """Glue every value under its name for the prose, floats rounded to ``digits``.

    The prose then quotes ``{glue:text}`name:.2f```. Nothing is displayed.

    Example: ``glue_numbers({"speedup": 2.7148, "n_layers": 6}, digits=2)`` glues 2.71 and 6.
    """
    from myst_nb import glue

    if not isinstance(values, Mapping):
        raise TypeError(f"values is a {type(values).__name__}: pass a dict of name -> number")
    if digits is not None and (isinstance(digits, bool) or not isinstance(digits, int)
                               or digits < 0):
        raise ValueError(f"digits={digits!r} must be a non-negative int or None")
    for name, value in values.items():
        glue(name, _rounded(name, value, digits), display=False)


def glue_markdown(name: str, text: str) -> None:
    """Glue a short markdown fragment (a method's name in italics, say) for the prose."""
    from IPython.display import Markdown
    from myst_nb import glue

    glue(name, Markdown(text), display=False)


@dataclass(frozen=True)
class Table:
    """A small result table: HTML on the site and in Jupyter, fixed-width text elsewhere."""

    headers: tuple[str, ...]
    cells: tuple[tuple[str, ...], ...]
    marked: tuple[bool, ...]
    caption: str = ""

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.headers)
        body = []
        for row, mark in zip(self.cells, self.marked, strict=True):
            cells = "".join(f"<td>{'<b>' if mark else ''}{html.escape(c)}{'</b>' if mark else ''}"
                            "</td>" for c in row)
            body.append(f"<tr>{cells}</tr>")
        caption = f"<caption>{html.escape(self.caption)}</caption>" if self.caption else ""
        return (f'<table class="quantbook-table">{caption}<thead><tr>{head}</tr></thead>'
                f"<tbody>{''.join(body)}</tbody></table>")

    def __repr__(self) -> str:
        widths = [max(len(h), *(len(r[i]) for r in self.cells)) if self.cells else len(h)
                  for i, h in enumerate(self.headers)]
        lines = [self.caption] if self.caption else []
        lines.append("  ".join(h.ljust(w) for h, w in zip(self.headers, widths,
                                                          strict=True)).rstrip())
        for row, mark in zip(self.cells, self.marked, strict=True):
            text = "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True))
            lines.append((text + "  *" if mark else text).rstrip())
        return "\n".join(lines)


def _cell(value: object, spec: str | Callable[[object], str] | None, key: str) -> str:
    if value is None:
        return ""
    if callable(spec):
        return spec(value)
    if spec is None:
        is_int = isinstance(value, int) and not isinstance(value, bool)
        return f"{value:,}" if is_int else str(value)
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        raise ValueError(f"formats[{key!r}]={spec!r} cannot format {value!r} (a "
                         f"{type(value).__name__}) in column {key!r}") from None


def table(rows: Iterable[Mapping[str, object] | object], columns: Mapping[str, str],
          formats: Mapping[str, str | Callable[[object], str]] | None = None,
          mark: Callable[[object], bool] | None = None, caption: str = "") -> Table:
    """Build a :class:`Table` from dicts or objects (dataclasses such as ``BenchRecord``).

    Args:
        rows: one mapping (keys) or object (attributes) per row.
        columns: key -> header, in display order.
        formats: key -> a format spec (``".2f"``, ``".1%"``) or a callable returning text;
            ints get thousands separators by default, ``None`` shows as an empty cell.
        mark: ``mark(row)`` is true for the rows to set in bold (the winners).
        caption: a line above the table.
    """
    if not isinstance(columns, Mapping) or not columns:
        raise ValueError(f"columns={columns!r} must be a non-empty dict of key -> header")
    if isinstance(rows, Mapping | str):
        raise TypeError(f"rows is a {type(rows).__name__}: pass a list of rows")
    formats = dict(formats or {})
    unknown = sorted(set(formats) - set(columns))
    if unknown:
        raise ValueError(f"formats names {unknown}, which are not in columns: "
                         f"choose from {list(columns)}")
    rows = list(rows)

    def get(row: object, key: str) -> object:
        if isinstance(row, Mapping):
            if key not in row:
                raise KeyError(f"a row has no {key!r}: its keys are {sorted(row)}")
            return row[key]
        if not hasattr(row, key):
            raise KeyError(f"a {type(row).__name__} row has no attribute {key!r}")
        return getattr(row, key)

    cells = tuple(tuple(_cell(get(row, key), formats.get(key), key) for key in columns)
                  for row in rows)
    marked = tuple(bool(mark(row)) if mark is not None else False for row in rows)
    return Table(tuple(columns.values()), cells, marked, caption)

