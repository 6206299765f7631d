"""Widgets that keep working on the static site, where no kernel runs.

A live explorer recomputes on every change, which needs a Python kernel. The rendered book has none,
so each chapter also shows a *precomputed* view per setting and switches among them in the browser:
a slider whose position is linked, in JavaScript, to the visible child of a ``Stack``
(``ipywidgets.jslink``). Both the link and the views are stored in the notebook's widget state, so
the static page needs nothing but the widget manager.

Every figure becomes an :class:`AltImage` (:func:`image_view`, :func:`png_view`): a 2x PNG, as
the cell outputs, that fills the column up to its natural size, with alt text (refused when
empty) in its ``tooltip``. Controls fill a phone's column and stop at CONTROL_MAX_WIDTH.
"""

import io
import struct
from collections.abc import Sequence

import ipywidgets as widgets
import matplotlib.pyplot as plt
from traitlets import Unicode

from quantbook.kit import FIGURE_DPI, RETINA_DPI

# a control fills a phone's column (about 360 CSS px) and stops growing here on a laptop
CONTROL_MAX_WIDTH = "460px"


def control_layout(**extra: str) -> widgets.Layout:
    """The layout of a slider or drop-down: the column's width, at most CONTROL_MAX_WIDTH."""
    return widgets.Layout(width="100%", max_width=CONTROL_MAX_WIDTH, **extra)


def row_layout() -> widgets.Layout:
    """The layout of a row of controls (an ``HBox``): it wraps onto more lines on a phone."""
    return widgets.Layout(flex_flow="row wrap", max_width="100%")


def figure_png(fig: plt.Figure, dpi: int = RETINA_DPI, palette: bool = True) -> bytes:
    """Render a matplotlib figure to PNG bytes and close it.

    Args:
        fig: the figure; it is closed afterwards so that it does not also show inline.
        dpi: pixels per inch of the PNG (written to its pHYs chunk): at least
            :data:`quantbook.kit.RETINA_DPI`, two PNG pixels per CSS px, as the cell outputs.
        palette: store 256 colours at most (no dithering): a chart's flat colours and
            anti-aliased text survive, and the bytes, which live in the notebook's widget state
            and in the page, shrink about 2.5 times.

    Returns:
        The PNG file's bytes.
    """
    if isinstance(dpi, bool) or not isinstance(dpi, int | float) or dpi < RETINA_DPI:
        raise ValueError(f"dpi={dpi!r} is below the site's 2x: use dpi >= {RETINA_DPI} "
                         "(kit.RETINA_DPI), or leave the default")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    if not palette:
        return buffer.getvalue()
    from PIL import Image

    image = Image.open(buffer).convert("RGB").quantize(256, dither=Image.Dither.NONE)
    small = io.BytesIO()
    image.save(small, format="PNG", optimize=True, dpi=(dpi, dpi))
    return small.getvalue()


def png_css_width(png: bytes) -> int:
    """The CSS px width a PNG is shown at, at most: FIGURE_DPI px per inch of its pHYs dpi."""
    width = struct.unpack(">I", png[16:20])[0]  # IHDR comes first
    at = png.find(b"pHYs", 0, 4096)
    dpi = RETINA_DPI
    if at > 0 and png[at + 12] == 1:  # unit 1: pixels per metre
        dpi = round(struct.unpack(">I", png[at + 4: at + 8])[0] * 0.0254)  # 7874 -> 200
    return round(width * FIGURE_DPI / dpi)


def check_alt(alt: str) -> str:
    """``alt`` if it says something, else a ValueError that asks for it."""
    if not isinstance(alt, str) or not alt.strip():
        raise ValueError(f"alt={alt!r} is empty: say what the figure shows, e.g. "
                         "kit.alt_text(fig, 'Bar chart of the perplexity per method')")
    return " ".join(alt.split())


class AltImage(widgets.Image):
    """An ``Image`` whose ``tooltip``, its alt text, reaches the page as the element's ``title``.

    The ipywidgets 8.1.9 front end places a tooltip only where ``description`` is empty and
    reads ``description.length`` to find out, so on a widget without that trait, as ``Image``,
    the view fails ("Could not create a view for model id ...";
    jupyter-widgets/ipywidgets#3860, fix pending in #3921). An empty description, synced,
    lets it set ``title``. The model stays the standard ``ImageModel``: nothing to install.
    """

    description = Unicode("", help="kept empty: see the class docstring").tag(sync=True)


def show_png(image: widgets.Image, png: bytes, alt: str, width_px: int | None = None) -> None:
    """Put a PNG on an ``Image``: its bytes, its alt text and its width on the page.

    The alt text goes to the ``tooltip`` trait, which ipywidgets renders as the element's
    ``title``; the site copies it to ``alt``. The image fills the column up to ``width_px``
    CSS px (by default its natural size, :func:`png_css_width`).
    """
    image.tooltip = check_alt(alt)
    image.value = png
    image.layout.max_width = f"{width_px or png_css_width(png)}px"


def png_view(png: bytes, alt: str, width_px: int | None = None) -> AltImage:
    """An ``Image`` widget of PNG bytes with its alt text (see :func:`show_png`)."""
    image = AltImage(format="png", layout=widgets.Layout(width="100%"))
    show_png(image, png, alt, width_px)
    return image


def image_view(fig: plt.Figure, alt: str, width_px: int | None = None) -> AltImage:
    """Wrap a matplotlib figure as a PNG ``Image`` widget (its bytes live in the widget state).

    Args:
        fig: the figure (closed afterwards).
        alt: what the figure shows, for readers who cannot see it (:func:`quantbook.kit.alt_text`
            builds one from the titles and axis labels); an empty one is refused.
        width_px: the widest it is shown, in CSS px; by default its natural size (FIGURE_DPI px
            an inch), and never wider than the column.
    """
    check_alt(alt)
    return png_view(figure_png(fig), alt, width_px)


def linked_views(
    labels: Sequence[str], views: Sequence[widgets.Widget], description: str, start: int = 0
) -> widgets.VBox:
    """A slider that switches among precomputed views in the browser, without a kernel.

    Args:
        labels: one label per view, in slider order; bit widths ascend (``["2 bits", "3 bits",
            ...]``) in every chapter.
        views: the widgets to show, one per label (:func:`image_view` of a figure,
            ``widgets.HTML``).
        description: the slider's caption.
        start: the index of the view shown first (the one the prose discusses).

    Returns:
        A ``VBox`` holding the slider (as wide as a phone's column, at most CONTROL_MAX_WIDTH)
        and a ``Stack`` of the views, linked by ``jslink`` (the link widget is available as its
        ``link`` attribute).
    """
    labels, views = list(labels), list(views)
    if not labels:
        raise ValueError("labels is empty: pass one label per precomputed view")
    if len(labels) != len(views):
        raise ValueError(
            f"got {len(labels)} labels for {len(views)} views: pass exactly one label per view"
        )
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels={labels} repeats a label: each view needs its own label")
    if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start < len(labels):
        raise ValueError(f"start={start!r} is not an index of labels: choose 0..{len(labels) - 1}")
    slider = widgets.SelectionSlider(
        options=labels, value=labels[start], description=description,
        continuous_update=True, style={"description_width": "initial"},
        layout=control_layout(),
    )
    stack = widgets.Stack(children=views, selected_index=start)
    # jslink runs in the browser: it keeps working on the static page
    link = widgets.jslink((slider, "index"), (stack, "selected_index"))
    box = widgets.VBox([slider, stack])
    box.link = link  # kept for inspection; the link itself lives in the widget state
    return box
