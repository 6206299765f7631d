import ipywidgets as widgets
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from quantbook import kit  # noqa: E402
from quantbook.widgets import (  # noqa: E402
    CONTROL_MAX_WIDTH,
    check_alt,
    figure_png,
    image_view,
    linked_views,
    png_css_width,
    png_view,
    show_png,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _figure(y, width_in=2):
    fig, ax = plt.subplots(figsize=(width_in, 2))
    ax.plot([0, 1], [0, y])
    return fig


def _png_dpi(png: bytes) -> int:
    """The dpi in a PNG's pHYs chunk (stored in pixels per metre)."""
    at = png.find(b"pHYs")
    return round(int.from_bytes(png[at + 4: at + 8], "big") * 0.0254)


def test_figure_png_is_a_png_and_closes_the_figure():
    fig = _figure(1)
    data = figure_png(fig)
    assert data.startswith(PNG_MAGIC)
    assert not plt.fignum_exists(fig.number)


def test_figure_png_is_at_the_sites_2x_and_says_so():
    fig = plt.figure(figsize=(3, 1))
    fig.text(0.5, 0.5, "x")
    png = figure_png(fig)
    assert _png_dpi(png) == kit.RETINA_DPI == 200
    with pytest.raises(ValueError, match=r"dpi=80 is below the site's 2x: use dpi >= 200 "
                                         r"\(kit\.RETINA_DPI\), or leave the default"):
        figure_png(_figure(1), dpi=80)
    assert _png_dpi(figure_png(_figure(1), dpi=300)) == 300
    assert png_css_width(figure_png(_figure(1, width_in=4), dpi=300)) in range(350, 420)


def test_the_palette_keeps_the_figure_and_shrinks_the_bytes():
    import io

    import numpy as np
    from PIL import Image

    def figure():
        fig, ax = plt.subplots(figsize=(4, 3))
        ax.bar([0, 1, 2], [3, 1, 2], color=["C0", "C1", "C2"])
        ax.set(title="three bars", xlabel="x", ylabel="y")
        return fig

    full, small = figure_png(figure(), palette=False), figure_png(figure())
    assert len(small) < len(full) / 1.5 and _png_dpi(small) == _png_dpi(full) == 200
    a, b = (np.asarray(Image.open(io.BytesIO(p)).convert("RGB"), dtype=float) for p in
            (full, small))
    assert a.shape == b.shape and np.abs(a - b).mean() < 1.0  # the same picture


def test_image_view_carries_alt_text_and_fills_the_column_up_to_its_size():
    image = image_view(_figure(1, width_in=4), "Line chart   of y\nagainst x")
    assert image.tooltip == "Line chart of y against x"  # the site copies it to alt
    png = bytes(image.value)
    width = int.from_bytes(png[16:20], "big")
    assert image.layout.width == "100%"
    assert image.layout.max_width == f"{round(width * kit.FIGURE_DPI / kit.RETINA_DPI)}px"
    assert image_view(_figure(1), "a line", width_px=300).layout.max_width == "300px"
    show_png(image, figure_png(_figure(2)), "another line")
    assert image.tooltip == "another line" and bytes(image.value) != png


@pytest.mark.parametrize("alt", ["", "   ", None])
def test_an_image_without_alt_text_is_refused(alt):
    fig = _figure(1)
    with pytest.raises(ValueError, match=r"alt=.* is empty: say what the figure shows"):
        image_view(fig, alt)
    with pytest.raises(ValueError, match="is empty"):
        png_view(figure_png(_figure(1)), alt)
    with pytest.raises(ValueError, match="is empty"):
        check_alt(alt)


def test_linked_views_links_slider_index_to_stack_in_the_browser():
    views = [image_view(_figure(y), f"a line up to {y}") for y in (1, 2, 3)]
    box = linked_views(["a", "b", "c"], views, "bits")
    slider, stack = box.children
    assert isinstance(slider, widgets.SelectionSlider)
    # as wide as a phone's column, no wider than CONTROL_MAX_WIDTH on a laptop
    assert (slider.layout.width, slider.layout.max_width) == ("100%", CONTROL_MAX_WIDTH)
    assert isinstance(stack, widgets.Stack)
    assert list(stack.children) == views
    assert box.link.source == (slider, "index")
    assert box.link.target == (stack, "selected_index")
    assert type(box.link).__name__ == "Link"  # jslink: the browser-side link, not a kernel one
    assert all(bytes(v.value).startswith(PNG_MAGIC) for v in views)


def test_linked_views_errors():
    view = widgets.HTML("x")
    with pytest.raises(ValueError, match="labels is empty"):
        linked_views([], [], "bits")
    with pytest.raises(ValueError, match="got 2 labels for 1 views"):
        linked_views(["a", "b"], [view], "bits")
    with pytest.raises(ValueError, match="repeats a label"):
        linked_views(["a", "a"], [view, widgets.HTML("y")], "bits")


def test_linked_views_start_at_the_view_the_prose_discusses():
    views = [widgets.HTML(str(k)) for k in range(3)]
    slider, stack = linked_views(["a", "b", "c"], views, "pick", start=2).children
    assert slider.value == "c" and slider.index == 2 and stack.selected_index == 2
    for bad in (3, -1, True, 1.0):
        with pytest.raises(ValueError, match=r"start=.* is not an index of labels: choose 0\.\.2"):
            linked_views(["a", "b", "c"], views, "pick", start=bad)
