import ipywidgets as widgets
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from quantbook.widgets import figure_png, image_view, linked_views  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _figure(y):
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [0, y])
    return fig


def test_figure_png_is_a_png_and_closes_the_figure():
    fig = _figure(1)
    data = figure_png(fig)
    assert data.startswith(PNG_MAGIC)
    assert not plt.fignum_exists(fig.number)


def test_linked_views_links_slider_index_to_stack_in_the_browser():
    views = [image_view(_figure(y)) for y in (1, 2, 3)]
    box = linked_views(["a", "b", "c"], views, "bits")
    slider, stack = box.children
    assert isinstance(slider, widgets.SelectionSlider)
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
