"""Tests for scripts/reading_copies.py, the chapters as `make lab` opens them in JupyterLab.

A small book in a temporary folder (two chapters, a glossary, a bibliography) pins down each
rewrite against hand-written expectations: glued values formatted as myst-nb's glue roles
format them on the site, roles turned into links, code left alone, and the errors that name
what to fix. The real chapters are converted too, so that a construct the copies cannot show
fails here rather than in front of a reader.
"""

import importlib.util
import json
import re
from pathlib import Path

import nbformat
import pytest
from nbformat.sign import NotebookNotary

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("reading_copies", ROOT / "scripts" /
                                               "reading_copies.py")
rc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rc)

GLOSSARY = """# Glossary

```{glossary}
Scale
  The step between two codes.

Zero point
  The code of the real value 0; it comes with a {term}`scale`.

Perplexity
  How surprised a language model is.
```
"""
BIBLIOGRAPHY = """
@article{solo2020, title = {One Author}, author = {Solo, Han}, journal = {J}, year = {2020}}
@article{pair2021, title = {Two Authors}, author = {Stork, David and Hassibi, Babak},
  journal = {J}, year = {2021}}
@article{crowd2022, title = {Many Authors}, author = {Ka{\\l}a, A. and B, B. and C, C.},
  journal = {J}, year = {2022}}
"""
PREFIX = "application/papermill.record/"  # how myst-nb's glue(display=False) stores a value


def glued(name: str, data: dict[str, str]) -> nbformat.NotebookNode:
    """The output that ``myst_nb.glue(name, value, display=False)`` leaves in a cell."""
    return nbformat.v4.new_output(
        "display_data", data={PREFIX + mime: value for mime, value in data.items()},
        metadata={"scrapbook": {"name": name, "mime_prefix": PREFIX}},
    )


def chapter_notebook(markdown: list[str], outputs: list, tags: tuple = ()) -> nbformat.NotebookNode:
    code = nbformat.v4.new_code_cell("glue(...)", outputs=outputs)
    code.metadata["tags"] = list(tags)
    return nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_markdown_cell(text) for text in markdown] + [code])


@pytest.fixture
def book(tmp_path: Path) -> Path:
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "glossary.md").write_text(GLOSSARY)
    (tmp_path / "book" / "references.bib").write_text(BIBLIOGRAPHY)
    other = chapter_notebook(["# The other chapter\n\n(other-part)=\n## A part over there\n\n"
                              "(other-note)=\nA paragraph, not a heading."], [])
    nbformat.write(other, tmp_path / "notebooks" / "02_other.ipynb")
    write_chapter(tmp_path, ["# First chapter\n\n(here)=\n## Here"], [])
    return tmp_path


def write_chapter(book: Path, markdown: list[str], outputs: list, tags: tuple = ()) -> Path:
    path = book / "notebooks" / "01_first.ipynb"
    nbformat.write(chapter_notebook(markdown, outputs, tags), path)
    return path


def copy_of(book: Path, text: str, outputs: list | None = None, tags: tuple = ()):
    """The reading copy of a chapter whose second cell is ``text``."""
    source = write_chapter(book, ["# First chapter\n\n(here)=\n## Here", text], outputs or [],
                           tags)
    return rc.reading_copy(rc.read_book(book), source, "_build/lab")


def rewritten(book: Path, text: str, outputs: list | None = None) -> str:
    return copy_of(book, text, outputs).cells[2].source


NUMBERS = [glued("pi", {"text/plain": "3.14159"}), glued("vocab", {"text/plain": "30522"}),
           glued("name", {"text/plain": "'int8 * weights_only'"}),
           glued("cpu", {"text/markdown": "AMD EPYC, **no VNNI**", "text/plain": "<Markdown>"}),
           glued("figure", {"image/png": "iVBORw0KGgo=", "text/plain": "<Figure>"})]


@pytest.mark.parametrize("role, shown", [
    ("{glue:text}`pi:.2f`", "3.14"),  # format(3.14159, ".2f")
    ("{glue:text}`pi:.1e`", "3.1e+00"),
    ("{glue:text}`vocab:,`", "30,522"),  # an int, with thousands separators
    ("{glue:text}`pi`", "3.14159"),  # no format: str() of the value
    ("{glue:text}`name`", "int8 \\* weights\\_only"),  # the string itself, escaped for Markdown
    ("{glue:}`name`", "'int8 \\* weights\\_only'"),  # {glue:} pastes text/plain as it is
    ("{glue}`vocab`", "30522"),
    ("{glue:md}`cpu`", "AMD EPYC, **no VNNI**"),  # Markdown stays Markdown
])
def test_glued_values_read_as_on_the_site(book, role, shown):
    assert rewritten(book, f"Value: {role}.", NUMBERS) == f"Value: {shown}."


@pytest.mark.parametrize("role, message", [
    ("{glue:text}`missing:.2f`", r"notebooks/01_first.ipynb: .*no value 'missing'.*make notebooks"),
    ("{glue:text}`name:.2f`", r"cannot format .*'int8 \* weights_only'.* with '.2f'"),
    ("{glue:text}`02_other.ipynb::pi`", r"pastes from another notebook"),
    ("{glue}`figure`", r"'figure' holds \['image/png', 'text/plain'\].*glue:figure"),
    ("{glue:md}`pi`", r"writes only text/markdown"),
])
def test_glue_errors_say_what_to_fix(book, role, message):
    with pytest.raises(ValueError, match=message):
        rewritten(book, f"Value: {role}.", NUMBERS)


def test_code_is_left_as_it_is(book):
    text = ("Write ``{glue:text}`pi` `` or ``{ref}`here` ``.\n\n```text\n{glue:text}`pi:.2f`\n"
            "```\n\n::::{note}\n{glue:text}`pi:.2f`\n::::")
    assert rewritten(book, text, NUMBERS) == text.replace("::::{note}\n{glue:text}`pi:.2f`",
                                                          "::::{note}\n3.14")


def test_references_to_other_chapters_become_links(book):
    text = ("{ref}`other-part`, {ref}`that part <other-part>`, {ref}`the\nnote <other-note>`, "
            "{doc}`02_other`, {doc}`the other <02_other>`, {ref}`here`, {ref}`this <here>`.")
    assert rewritten(book, text) == (
        "[A part over there](02_other.ipynb#other-part), [that part](02_other.ipynb#other-part), "
        "[the\nnote](02_other.ipynb#other-note), [The other chapter](02_other.ipynb), "
        "[the other](02_other.ipynb), [Here](#here), [this](#here).")


@pytest.mark.parametrize("role, message", [
    ("{ref}`nowhere`", r"no chapter defines the label \(nowhere\)="),
    ("{ref}`other-note`", r"\(other-note\)= is not on a heading.*{ref}`text <label>`"),
    ("{doc}`03_missing`", r"'03_missing' is not a chapter in notebooks/"),
    ("{term}`Entropy`", r"'Entropy' is not in book/glossary.md"),
    ("{cite:p}`nobody2000`", r"'nobody2000' is not in book/references.bib"),
])
def test_reference_errors_say_what_to_fix(book, role, message):
    with pytest.raises(ValueError, match=message):
        rewritten(book, role)


def test_citations_read_as_on_the_site_and_link_to_the_work(book):
    notebook = copy_of(book, "{cite:p}`solo2020`, {cite:p}`pair2021`, {cite:t}`crowd2022`.")
    assert notebook.cells[2].source == (  # the site's author_year style, hand-written
        "\\[[Solo, 2020](#cite-solo2020)\\], \\[[Stork and Hassibi, 2021](#cite-pair2021)\\], "
        "Kała *et al.* \\[[2022](#cite-crowd2022)\\].")
    front = notebook.cells[0].source
    assert re.search(r"\(cite-pair2021\)=\nDavid Stork and Babak Hassibi\\\. Two authors", front)
    assert "(cite-solo2020)=" in front and "(cite-crowd2022)=" in front


def test_terms_stay_roles_and_their_entries_come_first(book):
    notebook = copy_of(book, "A {term}`zero point\n<Zero point>`.")
    assert notebook.cells[2].source == "A {term}`zero point <Zero point>`."  # on one line
    front = notebook.cells[0].source
    assert front.startswith(":::{note} Reading copy\nThis is `_build/lab/01_first.ipynb`")
    # the entry of the term, and of the term its definition uses; not the unused one
    assert ":::{glossary}\nScale\n: The step between two codes.\n\nZero point\n: The code" in front
    assert "Perplexity" not in front


def test_what_the_site_hides_is_collapsed_or_left_out(book):
    code = copy_of(book, "Text.", NUMBERS[:1], tags=("remove-input", "hide-output")).cells[-1]
    assert code.metadata["jupyter"] == {"source_hidden": True, "outputs_hidden": True}
    assert len(code.outputs) == 1
    code = copy_of(book, "Text.", NUMBERS[:1], tags=("remove-output",)).cells[-1]
    assert "jupyter" not in code.metadata and code.outputs == []


def test_a_glued_figure_becomes_an_attached_figure(book):
    notebook = copy_of(book, "```{glue:figure} figure\n:figwidth: 300px\n:name: fig-x\n\n"
                             "The caption.\n```", NUMBERS)
    assert notebook.cells[2].source == (":::{figure} attachment:figure.png\n:width: 300px\n"
                                        ":name: fig-x\n\nThe caption.\n:::")
    assert notebook.cells[2].attachments == {"figure.png": {"image/png": "iVBORw0KGgo="}}
    with pytest.raises(ValueError, match=r"no glued image 'pi'"):
        copy_of(book, "```{glue:figure} pi\n```", NUMBERS)
    with pytest.raises(ValueError, match=r"\{glue:math\} pi: .*glue:figure\} blocks only"):
        copy_of(book, ":::{glue:math} pi\n:::", NUMBERS)


def test_a_glossary_entry_without_definition_is_refused(book):
    (book / "book" / "glossary.md").write_text("```{glossary}\nScale\nStep\n  Two terms.\n```\n")
    with pytest.raises(ValueError, match=r"'Scale' is not one term followed by its indented"):
        rc.read_book(book)


@pytest.fixture
def notary(tmp_path: Path) -> NotebookNotary:
    (tmp_path / "jupyter-data").mkdir()
    return NotebookNotary(data_dir=str(tmp_path / "jupyter-data"))


def test_copies_are_trusted_and_rewritten_only_when_the_chapter_changes(book, notary):
    out = book / "_build" / "lab"
    assert rc.write_copies(book, out, notary=notary) == [
        "wrote _build/lab/01_first.ipynb", "wrote _build/lab/02_other.ipynb"]
    copy = nbformat.read(out / "01_first.ipynb", as_version=4)
    assert notary.check_signature(copy)  # JupyterLab shows its saved widgets
    assert rc.write_copies(book, out, notary=notary) == []  # up to date

    copy.cells[1].source += "\n\nMy note."  # the reader edits the copy...
    nbformat.write(copy, out / "01_first.ipynb")
    assert rc.write_copies(book, out, notary=notary) == []  # ...which stays
    write_chapter(book, ["# First chapter, revised"], [])  # then the chapter changes
    done = rc.write_copies(book, out, notary=notary)
    kept = next(out.glob("01_first.edited-*.ipynb"))
    assert done == [f"01_first.ipynb changed: your edited copy is kept as _build/lab/{kept.name}",
                    "wrote _build/lab/01_first.ipynb"]
    assert "My note." in kept.read_text()
    assert "revised" in (out / "01_first.ipynb").read_text()


def test_a_copy_jupyterlab_saved_unchanged_is_not_kept(book, notary):
    out = book / "lab"
    rc.write_copies(book, out, notary=notary)
    copy = nbformat.read(out / "01_first.ipynb", as_version=4)
    copy.metadata["widgets"] = {"saved": "by JupyterLab"}  # an autosave, outputs of a run
    copy.cells[-1].outputs = [nbformat.v4.new_output("stream", text="ran\n")]
    nbformat.write(copy, out / "01_first.ipynb")
    write_chapter(book, ["# First chapter, revised"], [])
    assert rc.write_copies(book, out, notary=notary) == ["wrote lab/01_first.ipynb"]
    assert not list(out.glob("*.edited-*"))


def test_copies_of_chosen_chapters(book, notary):
    out = book / "lab"
    assert rc.write_copies(book, out, ["02_other.ipynb"], notary) == ["wrote lab/02_other.ipynb"]
    with pytest.raises(ValueError, match=r"chapters=\['2_other.ipynb'\] are not in .*file name"):
        rc.write_copies(book, out, ["2_other.ipynb"], notary)


def test_the_command_line_reports_an_error_as_a_usage_error(book, capsys):
    with pytest.raises(SystemExit) as exit_:
        rc.main(["--book", str(book), "--out", str(book / "lab"), "09_nothing.ipynb"])
    assert exit_.value.code == 2
    assert "chapters=['09_nothing.ipynb'] are not in" in capsys.readouterr().err


def test_every_chapter_of_the_book_has_a_reading_copy():
    """Each chapter converts, and keeps no role but {term}, which jupyterlab-myst renders."""
    book = rc.read_book(ROOT)
    for source in sorted((ROOT / "notebooks").glob("[0-9]*.ipynb")):
        notebook = rc.reading_copy(book, source, "_build/lab")
        for cell in notebook.cells:
            if cell.cell_type != "markdown":
                continue
            for match in rc.INLINE.finditer(cell.source):
                role, content = match["role"], match["content"]
                if role is None:
                    continue
                assert role == "term" and "\n" not in content, (
                    f"{source.name}: the copy leaves {{{role}}}`{content}` as it is: rewrite "
                    "it in scripts/reading_copies.py, or, if jupyterlab-myst renders it in "
                    "JupyterLab, allow it here")
        written = json.loads(nbformat.writes(notebook))  # valid nbformat
        assert "".join(written["cells"][0]["source"]).startswith(":::{note} Reading copy")
