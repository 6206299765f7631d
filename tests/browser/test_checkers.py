"""The browser test's own readers of the toc, notebooks, links and widget state, on small cases
written out by hand: a checker that cannot see a fault would let the site tests pass anyway."""

import json

import bookmap
import pytest
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
    assert widget_state.saved_output_images(STATE) == 1


def test_explorers_are_slider_to_stack_links():
    assert widget_state.explorers(STATE) == [
        widget_state.Explorer("slider", "stack", "bits", positions=2)
    ]
    reversed_link = dict(STATE, link=_model(
        "LinkModel", source=["IPY_MODEL_stack", "selected_index"],
        target=["IPY_MODEL_slider", "index"]))
    assert widget_state.explorers(reversed_link) == []
