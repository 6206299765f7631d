"""Tests for quantbook.kit: chapter set-up, glued numbers and result tables (HTML and text)."""

import random
import warnings

import matplotlib
import numpy as np
import pytest
import torch

from quantbook import kit
from quantbook.quiet import KNOWN_WARNINGS
from quantbook.records import BenchRecord

matplotlib.use("Agg")


# ------------------------------------------------------------------ setup_chapter


@pytest.fixture
def restored():
    """Keep setup_chapter's global changes (style, warning filters) inside the test."""
    with matplotlib.rc_context(), warnings.catch_warnings():
        yield


def test_setup_chapter_seeds_every_generator(restored):
    kit.setup_chapter(seed=5)
    drawn = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    assert drawn == (random.random(), float(np.random.rand()), float(torch.rand(1)))
    kit.setup_chapter()
    first = float(torch.rand(1))
    torch.manual_seed(0)
    assert first == float(torch.rand(1))  # seed 0 by default


def test_setup_chapter_sets_the_books_figure_style(restored):
    kit.setup_chapter()
    import matplotlib.pyplot as plt

    assert tuple(plt.rcParams["figure.figsize"]) == (7.0, 4.0)
    assert plt.rcParams["font.size"] == 10 and plt.rcParams["savefig.bbox"] == "tight"
    assert set(kit.FIGURE_STYLE) <= set(plt.rcParams)
    assert plt.rcParams["figure.dpi"] == kit.FIGURE_DPI == 100  # retina PNGs at 200 dpi


# ------------------------------------------------------------------ figures on the column


def test_the_width_rule_follows_from_the_column_and_the_smallest_font():
    assert kit.SMALLEST_FONT_PT == 9 and kit.RETINA_DPI == 2 * kit.FIGURE_DPI
    # smallest text = pt * dpi / 72 * shown width / PNG width, shown COLUMN_PX wide
    width = kit.MAX_FIGURE_WIDTH_IN
    png_px = width * kit.RETINA_DPI
    text_px = kit.SMALLEST_FONT_PT * kit.RETINA_DPI / 72 * kit.COLUMN_PX / png_px
    assert text_px == pytest.approx(kit.MIN_TEXT_PX * kit.TEXT_MARGIN)
    assert 9.0 < width < 9.5 and kit.FIGURE_WIDTH_IN <= width


@pytest.fixture
def styled():
    import matplotlib.pyplot as plt

    with matplotlib.rc_context(kit.FIGURE_STYLE):
        yield plt
    plt.close("all")


def test_legibility_measures_the_saved_width_and_the_smallest_text(styled):
    fig, ax = styled.subplots(figsize=(7, 3))
    ax.plot([1, 2], [3, 4])
    ax.set(title="t", xlabel="x", ylabel="y")
    reading = kit.legibility(fig)
    assert 5.5 < reading.width_in <= 7.0  # bbox "tight" trims the margins
    assert reading.smallest_font_pt == 9  # the tick labels
    assert reading.smallest_text_px == pytest.approx(9 * 730 / (72 * reading.width_in))
    assert reading.ok
    ax.legend(["a line"], fontsize=7)
    assert kit.legibility(fig).smallest_font_pt == 7 and not kit.legibility(fig).ok
    wide, axes = styled.subplots(1, 3, figsize=(11, 3))  # chapter 04's old three panels
    for ax in axes:
        ax.set(xlabel="quantized Linear groups", ylabel="size (fraction of float32)")
    assert kit.legibility(wide).width_in > kit.MAX_FIGURE_WIDTH_IN
    assert not kit.legibility(wide).ok
    with pytest.raises(ValueError, match="fig has no visible text"):
        kit.legibility(styled.figure())


def test_alt_text_says_what_each_panel_plots(styled):
    fig, (top, bottom) = styled.subplots(2, 1)
    top.set(title="About 6 dB\nper bit", xlabel="bit width (bits)", ylabel="SQNR (dB)")
    bottom.set(ylabel="error")
    fig.suptitle("Quantization error.")
    assert kit.alt_text(fig, "Line charts") == (
        "Line charts. Quantization error. About 6 dB per bit: SQNR (dB) against bit width "
        "(bits). error.")
    with pytest.raises(ValueError, match="fig has no title or axis labels to describe: pass "
                                         "what="):
        kit.alt_text(styled.figure())
    assert kit.alt_text(styled.figure(), "An empty frame") == "An empty frame."


def test_setup_chapter_filters_the_known_noise_and_nothing_else(restored):
    kit.setup_chapter()
    with warnings.catch_warnings(record=True) as caught:
        for category, pattern in KNOWN_WARNINGS:
            message = pattern.replace("\\", "") + " (and more)"
            warnings.warn(message, category, stacklevel=1)
        warnings.warn("something else is deprecated", DeprecationWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["something else is deprecated"]


def test_setup_chapter_asks_ipython_for_retina_figures(restored, monkeypatch):
    import IPython

    calls = []

    class Shell:
        def run_line_magic(self, *args):
            calls.append(args)

    monkeypatch.setattr(IPython, "get_ipython", lambda: Shell())
    kit.setup_chapter()
    assert calls == [("config", "InlineBackend.figure_formats = ['retina']")]


# ------------------------------------------------------------------ glue


@pytest.fixture
def glued(monkeypatch):
    """What myst_nb's real glue publishes: name -> its text/plain form, hidden or not."""
    import myst_nb.ext.glue as myst_glue

    published = {}

    def display(bundle, raw, metadata):
        name = metadata["scrapbook"]["name"]
        prefix = metadata["scrapbook"]["mime_prefix"]
        published[name] = (bundle[prefix + "text/plain"], bool(prefix))

    monkeypatch.setattr(myst_glue, "ipy_display", display)
    return published


def test_glue_numbers_rounds_floats_only(glued):
    kit.glue_numbers({"speedup": 2.7148, "n_layers": 6, "ratio": np.float32(0.123456),
                      "label": "int8", "flag": True}, digits=2)
    assert glued == {"speedup": ("2.71", True), "n_layers": ("6", True), "ratio": ("0.12", True),
                     "label": ("'int8'", True), "flag": ("True", True)}
    kit.glue_numbers({"exact": 1 / 3})
    assert glued["exact"] == ("0.3333333333333333", True)  # digits=None keeps every digit
    kit.glue_numbers({"rounded": 2.5}, digits=0)
    assert glued["rounded"] == ("2.0", True)  # round half to even, as round()


@pytest.mark.parametrize("values, digits, error, match", [
    ([("a", 1)], 2, TypeError, r"values is a list: pass a dict of name -> number"),
    ({"a": torch.tensor(1.0)}, 2, TypeError, r"values\['a'\] is a Tensor: glue numbers or "
                                             r"strings \(use myst_nb\.glue for figures"),
    ({"a": [1.0]}, 1, TypeError, r"values\['a'\] is a list"),
    ({"a": 1.2}, -1, ValueError, r"digits=-1 must be a non-negative int or None"),
    ({"a": 1.2}, 1.5, ValueError, r"digits=1\.5 must be a non-negative int or None"),
    ({"a": 1.2}, True, ValueError, r"digits=True must be a non-negative int or None"),
])
def test_glue_numbers_refuses_what_is_not_a_number(glued, values, digits, error, match):
    with pytest.raises(error, match=match):
        kit.glue_numbers(values, digits)
    assert glued == {}


def test_glue_numbers_glues_numpy_scalars_as_plain_numbers(glued):
    kit.glue_numbers({"big": np.int64(1234), "ratio": np.float32(0.5)})
    assert glued == {"big": ("1234", True), "ratio": ("0.5", True)}


def test_glue_numbers_refuses_a_tensor_without_digits(glued):
    with pytest.raises(TypeError, match=r"values\['a'\] is a Tensor"):
        kit.glue_numbers({"a": torch.tensor(1.0)})


def test_glue_numbers_refuses_nan(glued):
    with pytest.raises(ValueError, match=r"values\['speedup'\] is nan"):
        kit.glue_numbers({"speedup": float("nan")}, digits=2)


def test_glue_markdown_glues_markdown(glued):
    kit.glue_markdown("method", "*dynamic int8*")
    assert glued == {"method": ("<IPython.core.display.Markdown object>", True)}


# ------------------------------------------------------------------ table


ROWS = [{"method": "float32", "size_bytes": 3_345_617, "ratio": 1.0, "note": None},
        {"method": "int8 <fast>", "size_bytes": 981_318, "ratio": 0.2933, "note": "a & b"}]
COLUMNS = {"method": "method", "size_bytes": "bytes", "ratio": "size", "note": "note"}


def test_table_cells_formats_and_marks():
    table = kit.table(ROWS, COLUMNS, formats={"ratio": ".1%"}, mark=lambda r: r["ratio"] < 0.5,
                      caption="Sizes")
    assert table.headers == ("method", "bytes", "size", "note")
    assert table.cells == (("float32", "3,345,617", "100.0%", ""),
                           ("int8 <fast>", "981,318", "29.3%", "a & b"))
    assert table.marked == (False, True)
    assert table.caption == "Sizes"


def test_table_renders_html_with_the_winners_in_bold():
    table = kit.table(ROWS, COLUMNS, formats={"ratio": ".1%"}, mark=lambda r: r["ratio"] < 0.5,
                      caption="Sizes <MB>")
    assert table._repr_html_() == (
        '<table class="quantbook-table"><caption>Sizes &lt;MB&gt;</caption><thead><tr>'
        "<th>method</th><th>bytes</th><th>size</th><th>note</th></tr></thead><tbody>"
        "<tr><td>float32</td><td>3,345,617</td><td>100.0%</td><td></td></tr>"
        "<tr><td><b>int8 &lt;fast&gt;</b></td><td><b>981,318</b></td><td><b>29.3%</b></td>"
        "<td><b>a &amp; b</b></td></tr></tbody></table>")
    assert "<caption>" not in kit.table(ROWS, COLUMNS)._repr_html_()


def test_table_renders_text_with_the_winners_starred():
    table = kit.table(ROWS, COLUMNS, formats={"ratio": ".1%"}, mark=lambda r: r["ratio"] < 0.5,
                      caption="Sizes")
    assert [line.rstrip() for line in repr(table).splitlines()] == [
        "Sizes",
        "method       bytes      size    note",
        "float32      3,345,617  100.0%",
        "int8 <fast>  981,318    29.3%   a & b  *",
    ]
    assert str(table) == repr(table)
    empty = kit.table([], {"a": "A", "b": "Bee"})
    assert repr(empty) == "A  Bee" and empty.cells == ()


def test_table_of_objects_and_callable_formats():
    record = BenchRecord(model="gpt", method="dynamic int8", family="dynamic (eager)",
                         metric="perplexity", value=4.5012, float_value=4.5, size_bytes=981_318,
                         size_ratio=0.29, speedup=None)
    table = kit.table([record], {"method": "method", "value": "perplexity", "speedup": "x",
                                 "converted": "n"},
                      formats={"value": lambda v: f"{v:.2f} ppl"})
    assert table.cells == (("dynamic int8", "4.50 ppl", "", "0"),)
    flags = kit.table([{"ok": True}], {"ok": "ok"})
    assert flags.cells == (("True",),)  # a bool is not a number with separators


@pytest.mark.parametrize("rows, columns, formats, error, match", [
    (ROWS, ["method"], None, ValueError, r"columns=\['method'\] must be a non-empty dict of "
                                         r"key -> header"),
    (ROWS, {}, None, ValueError, r"columns=\{\} must be a non-empty dict"),
    (ROWS, {"method": "m"}, {"ratio": ".1%"}, ValueError,
     r"formats names \['ratio'\], which are not in columns: choose from \['method'\]"),
    ([{"b": 1}], {"a": "A"}, None, KeyError, r"a row has no 'a': its keys are \['b'\]"),
    ([object()], {"a": "A"}, None, KeyError, r"a object row has no attribute 'a'"),
])
def test_table_errors(rows, columns, formats, error, match):
    with pytest.raises(error, match=match):
        kit.table(rows, columns, formats=formats)


def test_a_format_that_does_not_fit_names_the_column():
    with pytest.raises(ValueError, match=r"formats\['a'\]='\.2f' cannot format 'n/a'"):
        kit.table([{"a": "n/a"}], {"a": "A"}, formats={"a": ".2f"})


def test_one_row_instead_of_a_list_is_refused():
    with pytest.raises(TypeError, match=r"rows is a dict: pass a list of rows"):
        kit.table({"a": 1}, {"a": "A"})
