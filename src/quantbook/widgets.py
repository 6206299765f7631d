"""Widgets that keep working on the static site, where no kernel runs.

A live explorer recomputes on every change, which needs a Python kernel. The rendered book has none,
so each chapter also shows a *precomputed* view per setting and switches among them in the browser:
a slider whose position is linked, in JavaScript, to the visible child of a ``Stack``
(``ipywidgets.jslink``). Both the link and the views are stored in the notebook's widget state, so
the static page needs nothing but the widget manager.
"""

import io
from collections.abc import Sequence

import ipywidgets as widgets
import matplotlib.pyplot as plt


def figure_png(fig: plt.Figure, dpi: int = 100) -> bytes:
    """Render a matplotlib figure to PNG bytes and close it.

    Args:
        fig: the figure; it is closed afterwards so that it does not also show inline.
        dpi: resolution of the PNG.

    Returns:
        The PNG file's bytes.
    """
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def linked_views(
    labels: Sequence[str], views: Sequence[widgets.Widget], description: str, start: int = 0
) -> widgets.VBox:
    """A slider that switches among precomputed views in the browser, without a kernel.

    Args:
        labels: one label per view, in slider order (e.g. ``["2 bits", "3 bits", ...]``).
        views: the widgets to show, one per label (``widgets.Image`` of a figure, ``widgets.HTML``).
        description: the slider's caption.
        start: the index of the view shown first (the one the prose discusses).

    Returns:
        A ``VBox`` holding the slider and a ``Stack`` of the views, linked by ``jslink``
        (the link widget is available as its ``link`` attribute).
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
        layout=widgets.Layout(width="420px"),
    )
    stack = widgets.Stack(children=views, selected_index=start)
    # jslink runs in the browser: it keeps working on the static page
    link = widgets.jslink((slider, "index"), (stack, "selected_index"))
    box = widgets.VBox([slider, stack])
    box.link = link  # kept for inspection; the link itself lives in the widget state
    return box


def image_view(fig: plt.Figure, width_px: int = 640) -> widgets.Image:
    """Wrap a matplotlib figure as a PNG ``Image`` widget (its bytes live in the widget state)."""
    layout = widgets.Layout(width=f"{width_px}px")
    return widgets.Image(value=figure_png(fig), format="png", layout=layout)
