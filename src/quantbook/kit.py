"""The notebook kit: one call sets a chapter up, one glues its numbers, one shows a table.

Every chapter starts with::

    from quantbook import kit

    kit.setup_chapter()

which filters the known noise of torch and torchao *before* either is imported (the order
matters: torchao logs at import), draws figures as PNG at twice the pixel density, sets the
figure style the book's column needs, and seeds every random generator. Numbers the prose
quotes are glued in one call, ``kit.glue_numbers({"speedup": 2.71}, digits=2)``, and result
tables render as HTML on the site (``kit.table(rows, columns)``) with plain text for a terminal.
"""

from __future__ import annotations

import html
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from quantbook.quiet import silence_known_noise

# Sized for the book's column: a 7-inch figure drawn at 2x is 1400 px and is shown about
# 730 px wide, so 10-point text stays about 10 px on the page, the size of a footnote.
FIGURE_STYLE = {
    "figure.figsize": (7.0, 4.0),
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

