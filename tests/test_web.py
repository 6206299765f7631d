"""The site's own Sphinx extensions (web/): run times, notebook figures, bibliography labels."""

import base64
import sys
from pathlib import Path

import pytest
from pybtex.database import parse_string

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "web"))

import bib_labels  # noqa: E402
import landing  # noqa: E402


def _cell(start: str | None, end: str | None, **extra) -> dict:
    stamps = {"iopub.execute_input": start, "shell.execute_reply": end}
    return {"cell_type": "code", "metadata": {"execution": {k: v for k, v in stamps.items() if v}},
            **extra}


def test_cell_seconds_from_nbclient_timestamps():
    assert landing.cell_seconds(_cell("2026-12-02T12:00:00.500000Z",
                                      "2026-12-02T12:00:02.000000Z")) == pytest.approx(1.5)
    assert landing.cell_seconds(_cell(None, "2026-12-02T12:00:02Z")) == 0.0
    assert landing.cell_seconds({"cell_type": "code", "metadata": {}}) == 0.0


def test_notebook_seconds_sums_code_cells_and_refuses_an_untimed_notebook():
    notebook = {"cells": [
        _cell("2026-12-02T12:00:00Z", "2026-12-02T12:00:30Z"),
        _cell("2026-12-02T12:01:00Z", "2026-12-02T12:03:00Z"),
        {"cell_type": "markdown", "metadata": {}, "source": "text"},
    ]}
    assert landing.notebook_seconds(notebook) == pytest.approx(150)
    assert landing.notebook_seconds({"cells": []}) == 0
    untimed = {"cells": [{"cell_type": "code", "metadata": {}}]}
    with pytest.raises(ValueError, match="ch.ipynb: no code cell has execution timestamps"):
        landing.notebook_seconds(untimed, "ch.ipynb")


@pytest.mark.parametrize("seconds, text", [
    (0.2, "1 s"), (8.8, "9 s"), (99.4, "99 s"), (100, "2 min"), (159.8, "3 min"),
    (369.0, "7 min"), (1200, "20 min"),
])
def test_format_duration(seconds, text):
    assert landing.format_duration(seconds) == text


REPORT = {"cells": [
    {"id": "c04", "cell_type": "code", "outputs": [{"output_type": "stream", "text": [
        "CPU                AMD EPYC (2 logical cores, torch uses 2 threads)\n",
        "int8 features      avx2\n"]}]},
]}


def test_machine_line_quotes_one_line_of_the_report():
    assert landing.machine_line(REPORT, "c04", "CPU") == (
        "AMD EPYC (2 logical cores, torch uses 2 threads)")
    assert landing.machine_line(REPORT, "c04", "int8 features") == "avx2"
    with pytest.raises(ValueError, match="printed no line 'GPU'"):
        landing.machine_line(REPORT, "c04", "GPU")
    with pytest.raises(ValueError, match="no cell with id 'c99'"):
        landing.machine_line(REPORT, "c99", "CPU")


def test_cell_figure_and_alt_pick_a_cell_by_id():
    png = b"\x89PNG fake"
    figure = {"output_type": "display_data", "metadata": {"image/png": {"width": 607}},
              "data": {"image/png": base64.b64encode(png).decode(), "text/plain": "<Figure>"}}
    notebook = {"cells": [
        {"id": "a", "cell_type": "code", "metadata": {}, "outputs": []},
        {"id": "b", "cell_type": "code", "outputs": [figure],
         "metadata": {"mystnb": {"image": {"alt": "Bars of size per method"}}}},
    ]}
    assert landing.cell_figure(notebook, "b") == (png, {"width": 607})
    assert landing.cell_alt(notebook, "b") == "Bars of size per method"
    assert landing.cell_alt(notebook, "a") == ""
    with pytest.raises(ValueError, match="cell 'a' shows 0 PNG figures, not 1"):
        landing.cell_figure(notebook, "a")
    with pytest.raises(ValueError, match="cell 'b' shows 1 PNG figures, not 2"):
        landing.cell_figure(notebook, "b", 1)
    with pytest.raises(ValueError, match="no cell with id 'z'"):
        landing.cell_figure(notebook, "z")


BIB = r"""
@misc{one, author = {Krishnamoorthi, Raghuraman}, title = {A}, year = {2018}}
@misc{two, author = {Hassibi, Babak and Stork, David G.}, title = {B}, year = {1993}}
@misc{many, author = {Bengio, Yoshua and L{\'e}onard, Nicholas and Courville, Aaron},
         title = {C}, year = {2013}}
@misc{vanb, author = {van Baalen, Mart and Nagel, Markus}, title = {D}, year = {2021}}
@misc{noyear, author = {Nobody, A.}, title = {E}}
"""


def test_author_year_labels():
    entries = parse_string(BIB, "bibtex").entries
    assert bib_labels.author_year(entries["one"]) == "Krishnamoorthi, 2018"
    assert bib_labels.author_year(entries["two"]) == "Hassibi and Stork, 1993"
    assert bib_labels.author_year(entries["many"]) == "Bengio et al., 2013"
    assert bib_labels.author_year(entries["vanb"]) == "van Baalen and Nagel, 2021"
    with pytest.raises(ValueError, match="'noyear' needs an author and a year"):
        bib_labels.author_year(entries["noyear"])


def test_labels_that_collide_get_letters():
    labels = ["Nagel et al., 2021", "Lee, 2005", "Nagel et al., 2021"]
    assert list(bib_labels.unique(labels)) == [
        "Nagel et al., 2021a", "Lee, 2005", "Nagel et al., 2021b"]


def test_the_book_style_labels_a_formatted_bibliography():
    bib_labels.setup_plugins()
    from pybtex.plugin import find_plugin

    style = find_plugin("pybtex.style.formatting", bib_labels.FORMATTING_STYLE)()
    entries = parse_string(BIB, "bibtex").entries
    del entries["noyear"]
    labels = [entry.label for entry in style.format_entries(entries.values())]
    assert labels == ["Bengio et al., 2013", "Hassibi and Stork, 1993", "Krishnamoorthi, 2018",
                      "van Baalen and Nagel, 2021"]  # sorted by author, year, title
