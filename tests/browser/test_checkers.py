"""The browser test's own readers of the toc, notebooks, links and widget state, on small cases
written out by hand: a checker that cannot see a fault would let the site tests pass anyway."""

import base64
import json
import struct
import zlib

import bookmap
import pytest
import reader
import widget_state

TOC = """
format: jb-book
root: book/intro
parts:
  - caption: One
    chapters:
      - file: notebooks/01_a.ipynb
        sections:
          - file: notebooks/01_b
      - url: https://example.org
  - caption: Two
    chapters:
      - file: book/glossary.md
"""


def test_toc_docnames_in_reading_order(tmp_path):
    (tmp_path / "_toc.yml").write_text(TOC)
    assert bookmap.toc_docnames(tmp_path / "_toc.yml") == [
        "book/intro", "notebooks/01_a", "notebooks/01_b", "book/glossary",
    ]


def test_toc_glob_is_refused(tmp_path):
    (tmp_path / "_toc.yml").write_text("root: intro\nchapters:\n  - glob: notebooks/*\n")
    with pytest.raises(ValueError, match="glob entries are not supported"):
        bookmap.toc_docnames(tmp_path / "_toc.yml")


def test_figure_outputs_skips_removed_outputs(tmp_path):
    png = {"output_type": "display_data", "data": {"image/png": "iVBOR", "text/plain": "fig"}}
    text = {"output_type": "stream", "name": "stdout", "text": "hi"}
    cells = [
        {"cell_type": "code", "metadata": {}, "outputs": [png, text, png]},
        {"cell_type": "code", "metadata": {"tags": ["remove-output"]}, "outputs": [png]},
        {"cell_type": "code", "metadata": {"tags": ["hide-output"]}, "outputs": [png]},
        {"cell_type": "markdown", "metadata": {}, "source": "no outputs"},
    ]
    (tmp_path / "nb.ipynb").write_text(json.dumps({"cells": cells}))
    assert bookmap.figure_outputs(tmp_path / "nb.ipynb") == 3


def test_broken_links_finds_missing_files_and_anchors(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "index.html").write_text(
        '<a href="a/page.html#here">ok</a> <a href="a/page.html#gone">anchor</a>'
        '<img src="a/missing.png"> <a href="https://example.org/x.html">external</a>'
        '<a href="#top" id="top">self</a> <script src="a/app.js?v=1"></script>'
    )
    (tmp_path / "a" / "page.html").write_text('<h1 id="here">x</h1><a href="../index.html">up</a>')
    (tmp_path / "a" / "app.js").write_text("")
    assert bookmap.broken_links(tmp_path) == [
        "index.html: a/page.html#gone -> no id 'gone' in page.html",
        f"index.html: a/missing.png -> no file {tmp_path.resolve() / 'a' / 'missing.png'}",
    ]


def _model(name: str, **state) -> dict:
    return {"model_name": name, "state": state}


STATE = {
    "box": _model("VBoxModel", children=["IPY_MODEL_slider", "IPY_MODEL_stack"]),
    "slider": _model("SelectionSliderModel", description="bits"),
    "stack": _model("StackModel", children=["IPY_MODEL_img0", "IPY_MODEL_img1"], selected_index=1),
    "img0": _model("ImageModel"),
    "img1": _model("ImageModel"),
    "link": _model("LinkModel", source=["IPY_MODEL_slider", "index"],
                   target=["IPY_MODEL_stack", "selected_index"]),
    "out": _model("OutputModel", outputs=[
        {"output_type": "display_data", "data": {"image/png": "iVBOR"}},
        {"output_type": "display_data",
         "data": {widget_state.VIEW_MIME: {"model_id": "drop", "version_major": 2}}},
    ]),
    "drop": _model("DropdownModel"),
}


def test_page_widgets_reads_state_and_views_from_html():
    html = (
        f'<script type="{widget_state.STATE_MIME}">{{"state": {json.dumps(STATE)}}}</script>'
        f'<script type="{widget_state.VIEW_MIME}">{{"model_id": "box"}}</script>'
        f'<script type="{widget_state.VIEW_MIME}">{{"model_id": "out"}}</script>'
    )
    assert widget_state.page_widgets(html) == (STATE, ["box", "out"])


def test_expected_views_count_what_is_visible_on_load():
    counts = widget_state.expected_views(STATE, ["box", "out"])
    # one slider; the Stack shows one of its two images; the Output shows a nested dropdown
    assert counts == {
        ".widget-slider": 1, "img.widget-image": 1, ".widget-output": 1, ".widget-dropdown": 1,
    }
    assert widget_state.saved_output_images(STATE, ["box", "out"]) == 1
    assert widget_state.saved_output_images(STATE, ["box"]) == 0  # the Output is not shown


def test_explorers_are_slider_to_stack_links():
    assert widget_state.explorers(STATE) == [
        widget_state.Explorer("slider", "stack", "bits", positions=2)
    ]
    reversed_link = dict(STATE, link=_model(
        "LinkModel", source=["IPY_MODEL_stack", "selected_index"],
        target=["IPY_MODEL_slider", "index"]))
    assert widget_state.explorers(reversed_link) == []


def test_figure_style_is_read_from_the_source_without_importing_it(tmp_path):
    kit = tmp_path / "kit.py"
    kit.write_text('import torch\nFIGURE_STYLE = {"font.size": 10, "xtick.labelsize": 9,\n'
                   '    "figure.figsize": (7.0, 4.0), "savefig.bbox": "tight"}\n')
    style = reader.figure_style(kit)
    assert style["figure.figsize"] == (7.0, 4.0)
    assert reader.smallest_font_pt(style) == 9
    kit.write_text("FIGURE_STYLE = make_style()\n")
    with pytest.raises(ValueError, match="malformed|literal"):
        reader.figure_style(kit)
    kit.write_text("STYLE = {}\n")
    with pytest.raises(ValueError, match="no literal FIGURE_STYLE"):
        reader.figure_style(kit)
    with pytest.raises(ValueError, match="no numeric font size"):
        reader.smallest_font_pt({"figure.figsize": (7, 4)})


def test_the_book_figure_style_has_a_smallest_font():
    assert 6 <= reader.smallest_font_pt(reader.figure_style()) <= 12


def test_text_px_scales_the_font_by_resolution_and_display():
    assert reader.text_px(9, 200, 700, 1400) == pytest.approx(12.5)
    assert reader.text_px(9, 100, 690, 690) == pytest.approx(12.5)  # a 1x PNG at its own size
    assert reader.text_px(9, 200, 358, 2223) == pytest.approx(4.03, abs=0.01)  # phone, shrunk


@pytest.mark.parametrize("alt, problem", [
    (None, "no alt text"), ("", "no alt text"), ("  ", "no alt text"),
    ("../_images/84beb41922b753c8cb92c982fa6cd77c971903ec.png", "file name"),
    ("figure.PNG", "file name"), ("84beb41922b753c8cb92c982fa6cd77c", "file name"),
    ("<Figure size 700x400 with 1 Axes>", "Python repr"),
    ("Line chart of SQNR in dB against bit width, one line per scheme", None),
])
def test_alt_problem(alt, problem):
    found = reader.alt_problem(alt)
    assert (found is None) if problem is None else (problem in found)


def test_prose_mentions_the_readout_with_spaces_normalized():
    prose = "It starts at a budget of 1\u00a0%, the one\nthe picks use: 8 bits."
    assert reader.prose_mentions("1 %", prose)
    assert reader.prose_mentions(" 8  bits ", prose)
    assert not reader.prose_mentions("0.1 %", prose)
    assert not reader.prose_mentions("8 Bits", prose)  # case kept: the readout as shown
    assert not reader.prose_mentions("", prose)


def _png(width: int, height: int, dpi: float | None, colour: bytes = b"\xff" * 3) -> bytes:
    """A one-colour RGB PNG, with a pHYs chunk for ``dpi`` (none if None)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(b"\x00" + colour * width for _ in range(height))
    phys = (chunk(b"pHYs", struct.pack(">IIB", round(dpi / 0.0254), round(dpi / 0.0254), 1))
            if dpi else b"")
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + phys + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


PAGE = """<html><body style="margin:0"><article class="bd-article">
<p>Explorer. It starts at 4 bits.</p>
<div class="cell"><pre>code that says 2 bits</pre></div>
<div class="cell"><div class="cell_output"><div class="widget-subarea">
  <div class="widget-box widget-vbox">
    <div class="widget-slider" data-explorer="slider-0"><div class="widget-label">bits</div>
      <div class="widget-readout">4 bits</div></div>
    <div class="widget-box" data-explorer="stack-0"></div>
  </div>
  <div class="widget-toggle-buttons"><div class="widget-label">scheme</div>
    <button class="widget-toggle-button">sym</button></div>
  <div class="widget-dropdown" style="display:none"><div class="widget-label">hidden</div></div>
</div></div></div>
<img alt="a 2x figure" src="data:image/png;base64,{retina}" style="width:60px">
<img alt="no resolution" src="data:image/png;base64,{bare}">
<div style="overflow-x:auto"><div style="width:2000px">scrolls in its own box</div></div>
{wide}
</article></body></html>"""


def _page_html(wide: str = "") -> str:
    return PAGE.format(retina=base64.b64encode(_png(120, 10, 200)).decode(),
                       bare=base64.b64encode(_png(30, 10, None)).decode(), wide=wide)


def test_page_facts_read_resolution_and_find_what_sticks_out(browser):
    page = browser.new_page()
    page.set_viewport_size({"width": 400, "height": 300})
    try:
        page.set_content(_page_html())
        facts = page.evaluate(reader.FACTS_JS)
        assert facts["scrollWidth"] <= facts["viewport"] == 400  # the wide box scrolls itself
        assert facts["wide"] == []
        retina, bare = facts["images"]
        assert retina["dpi"] == pytest.approx(200, abs=0.01)
        assert (retina["natural"], retina["shown"], retina["alt"]) == (120, 60, "a 2x figure")
        assert bare["dpi"] is None and bare["natural"] == 30

        page.set_content(_page_html('<p><code style="white-space:nowrap">'
                                    + "Float8DynamicActivation" * 40 + "</code></p>"))
        facts = page.evaluate(reader.FACTS_JS)
        assert facts["scrollWidth"] > 400
        assert len(facts["wide"]) == 1 and facts["wide"][0].startswith("<code")  # not its <p>
    finally:
        page.close()


def test_dead_controls_and_explorer_prose(browser):
    page = browser.new_page()
    try:
        page.set_content(_page_html())
        # the explorer slider is accounted for, the hidden dropdown is not shown, and the
        # toggle buttons count once, not once per button
        assert page.evaluate(reader.DEAD_CONTROLS_JS, reader.CONTROLS) == [
            "widget-toggle-buttons: scheme"]
        [explorer] = page.evaluate(reader.EXPLORER_PROSE_JS)
        assert explorer["caption"] == "bits" and explorer["readout"] == "4 bits"
        assert "It starts at 4 bits" in explorer["prose"] and "2 bits" not in explorer["prose"]
    finally:
        page.close()


def test_view_signature_sees_a_changed_image_and_its_return(browser):
    page = browser.new_page()
    red, blue = (base64.b64encode(_png(4, 2, 200, colour)).decode()
                 for colour in (b"\xff\x00\x00", b"\x00\x00\xff"))
    try:
        page.set_content(f'<div id="v"><p>4 bits</p><img src="data:image/png;base64,{red}"></div>')
        view = page.locator("#v")
        first = view.evaluate(reader.VIEW_JS)
        assert first.startswith("4 bits") and "4x2:" in first
        view.evaluate(f"v => v.querySelector('img').src = 'data:image/png;base64,{blue}'")
        assert view.evaluate(reader.VIEW_JS) != first  # same text, other pixels
        view.evaluate(f"v => v.querySelector('img').src = 'data:image/png;base64,{red}'")
        assert view.evaluate(reader.VIEW_JS) == first
    finally:
        page.close()


def test_walk_follows_classed_links_and_stops_at_the_last_page(tmp_path):
    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "intro.html").write_text(
        '<a class="right-next" href="../notebooks/one.html">next</a>')
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "one.html").write_text(
        '<a class="left-prev" href="../book/intro.html">prev</a>'
        '<a class="reference right-next" href="two.html#top">next</a>')
    (tmp_path / "notebooks" / "two.html").write_text('<a class="left-prev" href="one.html">p</a>')
    assert bookmap.walk(tmp_path, "book/intro", "right-next") == [
        "book/intro", "notebooks/one", "notebooks/two"]
    assert bookmap.walk(tmp_path, "notebooks/two", "left-prev") == [
        "notebooks/two", "notebooks/one", "book/intro"]
