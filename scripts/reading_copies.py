"""Write the reading copies of the chapters that `make lab` opens in JupyterLab.

JupyterLab shows the chapters' MyST through jupyterlab-myst, which renders admonitions,
dropdowns, math and `{term}`, but not myst-nb's glue roles, `{doc}`, `{cite:p}`/`{cite:t}` or a
`{ref}` to another chapter: those would show raw or as "not found".
Each copy in _build/lab/ is its chapter with

- every glued value written into the text, formatted by myst-nb's own `format_plain_text` from
  the chapter's stored glue outputs, so it reads as on the site;
- `{doc}` and `{ref}` made Markdown links, to the other copies (which open in JupyterLab) or
  within the chapter (jupyterlab-myst resolves a `{ref}` only once its target has rendered);
- citations written as on the site, [Author et al., year], linked to the full reference;
- a first cell with a note on what the copy is, and, folded, the glossary entries of the
  chapter's terms and the works it cites, which jupyterlab-myst shows when a term or citation
  is hovered (the site links them to the glossary and references pages);
- the code the site hides (`remove-input`) collapsed, the outputs it hides (`remove-output`) out.

The copies are signed, so that JupyterLab trusts them and shows their saved widgets before any
cell runs. A copy is rewritten only when its chapter, the glossary, the bibliography or this
script changed, and a copy the reader edited is then kept beside the new one.

Usage: python scripts/reading_copies.py [--book DIR] [--out DIR] [NN_chapter.ipynb ...]
"""

import argparse
import copy
import datetime
import functools
import hashlib
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from jupyter_core.paths import jupyter_data_dir
from myst_nb.core.variables import format_plain_text
from myst_nb.ext.glue import extract_glue_data_cell
from nbformat.sign import NotebookNotary
from pybtex.database import BibliographyData, parse_file
from pybtex.plugin import find_plugin
from pybtex.richtext import Text

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ".reading-copies.json"  # {chapter: {"inputs": sha256, "cells": sha256 as written}}
ROLE = r"\{(?P<role>[A-Za-z][\w:+.-]*)\}`(?P<content>[^`]+)`"
CODE_SPAN = r"(?P<ticks>`+).+?(?<!`)(?P=ticks)(?!`)"
INLINE = re.compile(f"{ROLE}|{CODE_SPAN}", re.DOTALL)  # code spans are matched to be kept
FENCE = re.compile(r"^\s*(?P<fence>`{3,}|~{3,}|:{3,})\s*(?P<info>.*)$")
HEADING_LABEL = re.compile(  # (label)= and the heading it names, if it names one
    r"^\((?P<label>[^)\s]+)\)=[ \t]*$(?:\n\s*^#{1,6}[ \t]+(?P<title>.+)$)?", re.M)
EXPLICIT = re.compile(r"^(?P<text>.*?)\s*<(?P<target>[^<>]+)>$", re.DOTALL)  # `text <target>`
MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]<>#|$~])")
GLUE_ROLES = {"glue", "glue:", "glue:any", "glue:text", "glue:md"}
TEXT_ROLES = {"glue:text": ("text/plain",), "glue:md": ("text/markdown",)}  # `key:format`
INLINE_MIMES = ("text/markdown", "text/latex", "text/plain")  # what {glue} may paste in text
FIGURE_MIMES = {"image/png": "png", "image/jpeg": "jpg", "image/svg+xml": "svg"}
# code cells the site hides: their input is collapsed (JupyterLab shows a line to expand it);
# their output too, but the output of a `remove-output` cell, which the site never shows, is
# dropped (collapsed, its first line would show, e.g. a live explorer's `VBox(children=...`)
HIDDEN_BY_TAG = {"remove-input": "source_hidden", "hide-input": "source_hidden",
                 "hide-output": "outputs_hidden"}


@dataclass
class Book:
    """What a chapter's roles may point at."""

    titles: dict[str, str]  # chapter stem -> its title
    labels: dict[str, tuple[str, str | None]]  # label -> (chapter stem, its heading or None)
    glossary: dict[str, tuple[str, str]]  # lower-case term -> (term, definition)
    bibliography: BibliographyData


@dataclass
class Chapter:
    """A chapter being rewritten: its glued values, and the terms and works its text uses."""

    stem: str
    glue: dict[str, dict]  # key -> mime bundle (prefixes removed, as myst-nb removes them)
    terms: list[str] = field(default_factory=list)  # lower-case
    cited: list[str] = field(default_factory=list)

    def error(self, message: str) -> ValueError:
        return ValueError(f"notebooks/{self.stem}.ipynb: {message}")


def read_glossary(path: Path) -> dict[str, tuple[str, str]]:
    """The entries of the ```{glossary} block of ``path``: lower-case term -> (term, definition)."""
    match = re.search(r"^```\{glossary\}[^\n]*\n(?P<body>.*?)^```", path.read_text(), re.M | re.S)
    if not match:
        raise ValueError(f"{path} has no ```{{glossary}} block: define the book's terms in one")
    entries = {}
    for block in re.split(r"\n\s*\n(?=\S)", match["body"].strip("\n")):
        term, *lines = block.split("\n")
        if not lines or not lines[0][:1].isspace():
            raise ValueError(f"{path}: the glossary entry {term!r} is not one term followed by "
                             "its indented definition: write one term per entry")
        indent = min(len(line) - len(line.lstrip()) for line in lines if line.strip())
        entries[term.strip().lower()] = (term.strip(), "\n".join(x[indent:] for x in lines))
    return entries


def read_book(book: Path) -> Book:
    titles, labels = {}, {}
    for path in sorted((book / "notebooks").glob("[0-9]*.ipynb")):
        sources = [c.source for c in nbformat.read(path, as_version=4).cells
                   if c.cell_type == "markdown"]
        title = re.search(r"^#[ \t]+(.+)$", "\n".join(sources), re.M)
        titles[path.stem] = title[1].strip() if title else path.stem
        for source in sources:
            labels |= {m["label"]: (path.stem, m["title"]) for m in HEADING_LABEL.finditer(source)}
    return Book(titles, labels, read_glossary(book / "book" / "glossary.md"),
                parse_file(str(book / "book" / "references.bib")))


def glue_data(notebook: nbformat.NotebookNode) -> dict[str, dict]:
    """The values a notebook glued, as myst-nb extracts them (a later key wins, as there)."""
    data = {}
    for cell in notebook.cells:
        if cell.cell_type == "code":
            data |= {key: out["data"] for key, out in extract_glue_data_cell(copy.deepcopy(cell))}
    return data


@functools.cache
def _pybtex(kind: str, name: str):
    """A pybtex plugin (looking one up scans every installed package: once is enough)."""
    return find_plugin(kind, name)()


def _escape(text: str) -> str:
    """Text that Markdown shows as it is (no emphasis, math or link)."""
    return MARKDOWN_SPECIAL.sub(r"\\\1", text)


def _explicit(content: str) -> tuple[str | None, str]:
    """(text, target) of a role's `text <target>`, or (None, target)."""
    match = EXPLICIT.match(content)
    return (match["text"], match["target"].strip()) if match else (None, content.strip())


def _glued(chapter: Chapter, role: str, content: str) -> str:
    if "::" in content:
        raise chapter.error(f"{{{role}}}`{content}` pastes from another notebook, which the "
                            "reading copies cannot: glue the value in this chapter too")
    key, fmt = content.rsplit(":", 1) if ":" in content and role in TEXT_ROLES else (content, "")
    if key not in chapter.glue:
        raise chapter.error(f"{{{role}}}`{content}`: no value {key!r} in the stored glue "
                            "outputs: re-run the chapter (make notebooks) so that it glues it")
    data, wanted = chapter.glue[key], TEXT_ROLES.get(role, INLINE_MIMES)
    mime = next((m for m in wanted if m in data), None)
    if mime is None or (role not in TEXT_ROLES and set(data) - set(INLINE_MIMES)):
        raise chapter.error(f"{{{role}}}`{content}`: {key!r} holds {sorted(data)}; a reading "
                            f"copy writes only {', '.join(wanted)} into text: paste an image "
                            "with a {glue:figure} block")
    if role != "glue:text":
        return _escape(data[mime]) if mime == "text/plain" else data[mime].strip()
    try:
        return _escape(format_plain_text(data[mime], fmt or "s"))
    except (ValueError, TypeError) as error:
        raise chapter.error(f"{{glue:text}}`{content}`: cannot format {data[mime]!r} with "
                            f"{fmt!r}: {error}; fix the format after the colon") from error


def _cited(book: Book, chapter: Chapter, role: str, content: str) -> str:
    """A citation as the site's author_year style writes it, linked to the full reference."""
    parts = []
    for key in (k.strip() for k in content.split(",")):
        if key not in book.bibliography.entries:
            raise chapter.error(f"{{{role}}}`{content}`: {key!r} is not in book/references.bib")
        chapter.cited += [] if key in chapter.cited else [key]
        entry = book.bibliography.entries[key]
        text = _pybtex("pybtex.backends", "text")
        names = [Text.from_latex(" ".join(p.prelast_names + p.last_names)).render(text)
                 for p in entry.persons.get("author", [])]
        if not names or "year" not in entry.fields:
            raise chapter.error(f"{{{role}}}`{content}`: {key!r} in book/references.bib needs an "
                                "author and a year to be cited by author and year")
        who = " and ".join(names) if len(names) <= 2 else f"{names[0]} *et al.*"
        parts.append((who, entry.fields["year"], f"#cite-{key}"))
    if role == "cite:t":  # Bondarenko et al. [2021]
        return ", ".join(f"{who} \\[[{year}]({link})\\]" for who, year, link in parts)
    return "\\[" + "; ".join(f"[{who}, {year}]({link})" for who, year, link in parts) + "\\]"


def _role(book: Book, chapter: Chapter, role: str, content: str) -> str:
    """What the copy shows for one role: Markdown, or the role where jupyterlab-myst renders it."""
    if role in GLUE_ROLES:
        return _glued(chapter, role, content)
    if role in ("cite", "cite:p", "cite:t"):
        return _cited(book, chapter, role, content)
    text, target = _explicit(content)
    if role == "term":
        if target.lower() not in book.glossary:
            raise chapter.error(f"{{term}}`{content}`: {target!r} is not in book/glossary.md")
        chapter.terms += [] if target.lower() in chapter.terms else [target.lower()]
        return f"{{term}}`{' '.join(content.split())}`"  # jupyterlab-myst's roles are one line
    if role == "ref":  # a link: jupyterlab-myst resolves a {ref} only once its target rendered
        if target not in book.labels:
            raise chapter.error(f"{{ref}}`{content}`: no chapter defines the label ({target})=")
        stem, title = book.labels[target]
        if not (text or title):
            raise chapter.error(f"{{ref}}`{content}`: ({target})= is not on a heading, so the "
                                "reference needs its own text: {ref}`text <label>`")
        return f"[{text or title}]({'' if stem == chapter.stem else stem + '.ipynb'}#{target})"
    if role == "doc":
        stem = Path(target).name
        if stem not in book.titles:
            raise chapter.error(f"{{doc}}`{content}`: {target!r} is not a chapter in notebooks/")
        return f"[{text or book.titles[stem]}]({stem}.ipynb)"
    return f"{{{role}}}`{content}`"


def rewrite_markdown(book: Book, chapter: Chapter, source: str) -> tuple[str, dict]:
    """A markdown cell's source as the copy shows it, and the attachments it needs."""
    lines, out, attachments, code_fence, i = source.split("\n"), [], {}, None, 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if code_fence:  # inside a fenced code block: verbatim up to its closing fence
            closes = match and match["fence"][0] == code_fence[0] and not match["info"]
            code_fence = None if closes and len(match["fence"]) >= len(code_fence) else code_fence
        elif match and match["info"].startswith("{glue"):
            end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == match["fence"]),
                       None)
            if end is None:
                raise chapter.error(f"{match['info']}: no closing {match['fence']}")
            out.append(_glue_figure(chapter, match["info"], lines[i + 1:end], attachments))
            i = end + 1
            continue
        elif match and match["fence"][0] != ":" and not match["info"].startswith("{"):
            code_fence = match["fence"]
        out.append(lines[i])
        i += 1
    return INLINE.sub(lambda m: m[0] if m["ticks"] else _role(book, chapter, m["role"],
                                                                m["content"]),
                      "\n".join(out)), attachments


def _glue_figure(chapter: Chapter, info: str, body: list[str], attachments: dict) -> str:
    """A ```{glue:figure} key block as a figure of the glued image, attached to the cell."""
    name, _, key = info.partition("}")
    key = key.strip()
    if name != "{glue:figure":
        raise chapter.error(f"{info}: a reading copy writes in {{glue:figure}} blocks only; "
                            "paste text with the glue roles")
    mime = next((m for m in FIGURE_MIMES if m in chapter.glue.get(key, {})), None)
    if mime is None:
        raise chapter.error(f"{info}: no glued image {key!r} in the stored outputs")
    attachments[f"{key}.{FIGURE_MIMES[mime]}"] = {mime: chapter.glue[key][mime]}
    renamed = {":figwidth:": ":width:", ":figclass:": ":class:"}
    options = [re.sub(r"^:\w+:", lambda m: renamed.get(m[0], m[0]), line)
               for line in body if line.startswith(":")]
    caption = [line for line in body if not line.startswith(":")]
    return "\n".join([f":::{{figure}} attachment:{key}.{FIGURE_MIMES[mime]}", *options,
                      *caption, ":::"])


def front_cell(book: Book, chapter: Chapter, note: str) -> str:
    """The copy's first cell: the note, then, folded, the glossary entries of the chapter's terms
    and the works it cites (first, so that they resolve before the reader reaches a term)."""
    parts, wanted = [f":::{{note}} Reading copy\n{note}\n:::"], list(chapter.terms)
    for term in wanted:  # a definition's own terms need their entries too
        for m in INLINE.finditer(book.glossary[term][1]):
            target = _explicit(m["content"])[1].lower() if m["role"] == "term" else None
            wanted += [target] if target in book.glossary and target not in wanted else []
    if wanted:
        entries = [f"{term}\n: " + definition.replace("\n", "\n  ")
                   for key, (term, definition) in book.glossary.items() if key in wanted]
        parts.append("::::{dropdown} Glossary: the terms this chapter uses\n:::{glossary}\n"
                     + "\n\n".join(entries) + "\n:::\n::::")
    if chapter.cited:
        style = _pybtex("pybtex.style.formatting", "plain")  # the site's bibtex_default_style
        entries = style.format_entries([book.bibliography.entries[k] for k in chapter.cited])
        markdown = _pybtex("pybtex.backends", "markdown")
        parts.append(":::{dropdown} References: the works this chapter cites\n" + "\n\n".join(
            f"(cite-{e.key})=\n" + e.text.render(markdown).replace("\n", " ") for e in entries)
            + "\n:::")
    return rewrite_markdown(book, chapter, "\n\n".join(parts))[0]


def reading_copy(book: Book, source: Path, out: str) -> nbformat.NotebookNode:
    """The reading copy of the chapter ``source``, for the folder ``out``."""
    notebook = nbformat.read(source, as_version=4)
    chapter = Chapter(source.stem, glue_data(notebook))
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            cell.source, attachments = rewrite_markdown(book, chapter, cell.source)
            if attachments:
                cell.attachments = cell.get("attachments", {}) | attachments
        for tag in cell.metadata.get("tags", []) if cell.cell_type == "code" else []:
            if tag in HIDDEN_BY_TAG:
                cell.metadata.setdefault("jupyter", {})[HIDDEN_BY_TAG[tag]] = True
            if tag == "remove-output":
                cell.outputs = []
    note = (f"This is `{out}/{source.name}`, the copy of `notebooks/{source.name}` that "
            "`make lab` writes: glued numbers are filled in, references link to the other "
            "chapters' copies, and hovering a term or a citation shows its entry. Edit and run "
            "it freely: `make lab` replaces it only when the chapter changes, and then keeps "
            f"a copy whose cells you changed as `{source.stem}.edited-<time>.ipynb`.")
    notebook.cells.insert(0, nbformat.v4.new_markdown_cell(front_cell(book, chapter, note)))
    return notebook


def _cells_sha(notebook: dict) -> str:
    """What the reader may have changed in a copy: its cells' types and sources (JupyterLab
    saves an opened copy on its own, with other metadata; outputs come back by running)."""
    cells = [[cell["cell_type"], "".join(cell["source"])] for cell in notebook["cells"]]
    return hashlib.sha256(json.dumps(cells).encode()).hexdigest()


def write_copies(book_dir: Path, out: Path, chapters: list[str] | None = None,
                 notary: NotebookNotary | None = None) -> list[str]:
    """Bring the reading copies in ``out`` up to date and trust them; returns what was done.

    Args:
        book_dir: the book's root, with notebooks/ and book/.
        out: the folder of the copies (made if missing).
        chapters: file names in notebooks/ to copy; default all.
        notary: signs the copies; default the user's Jupyter notary, the one JupyterLab uses.
    """
    sources = sorted((book_dir / "notebooks").glob("[0-9]*.ipynb"))
    unknown = sorted(set(chapters or []) - {s.name for s in sources})
    if unknown:
        raise ValueError(f"chapters={unknown} are not in {book_dir / 'notebooks'}: name them "
                         f"by file name, e.g. {sources[0].name if sources else 'NN_name.ipynb'}")
    sources = [s for s in sources if not chapters or s.name in chapters]
    if notary is None:  # its signature database must exist before the notary opens it
        Path(jupyter_data_dir()).mkdir(parents=True, exist_ok=True)
        notary = NotebookNotary()
    out.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((out / MANIFEST).read_text()) if (out / MANIFEST).is_file() else {}
    shared = b"".join(path.read_bytes() for path in (
        book_dir / "book" / "glossary.md", book_dir / "book" / "references.bib", Path(__file__)))
    where = out.relative_to(book_dir) if out.is_relative_to(book_dir) else out
    book, done = None, []
    for source in sources:
        target, record = out / source.name, manifest.get(source.name, {})
        inputs = hashlib.sha256(source.read_bytes() + shared).hexdigest()
        current = nbformat.read(target, as_version=4) if target.is_file() else None
        edited = current is not None and _cells_sha(current) != record.get("cells")
        if current is not None and record.get("inputs") == inputs:
            if not edited:  # ours (outputs aside): trust it again, in case the Jupyter data
                notary.sign(current)  # folder, and its signatures, are new
            continue
        book = book or read_book(book_dir)
        notebook = reading_copy(book, source, str(where))
        if edited and _cells_sha(current) != _cells_sha(notebook):
            kept = target.with_name(
                f"{source.stem}.edited-{datetime.datetime.now():%Y%m%d-%H%M%S}.ipynb")
            target.rename(kept)
            done.append(f"{source.name} changed: your edited copy is kept as {where / kept.name}")
        nbformat.write(notebook, target)
        notary.sign(notebook)
        manifest[source.name] = {"inputs": inputs, "cells": _cells_sha(notebook)}
        done.append(f"wrote {where / source.name}")
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return done


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("chapters", nargs="*", help="file names in notebooks/ (default: all)")
    parser.add_argument("--book", type=Path, default=ROOT, help="the book's root (default: repo)")
    parser.add_argument("--out", type=Path, default=ROOT / "_build" / "lab",
                        help="the copies' folder (default: _build/lab)")
    args = parser.parse_args(argv)
    try:
        done = write_copies(args.book.resolve(), args.out.resolve(), args.chapters)
    except ValueError as error:
        parser.error(str(error))
    print("\n".join(done) if done else f"the reading copies in {args.out} are up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
