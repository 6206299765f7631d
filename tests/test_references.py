"""The references page: its chapter table lists exactly what each chapter cites."""

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CITE = re.compile(r"\{cite(?::\w+)?\}`([^`]+)`")
ROW = re.compile(r"^\| \{doc\}`/notebooks/(\w+)` \| (.+) \|$", re.M)


def cited(text: str) -> set[str]:
    return {key.strip() for group in CITE.findall(text) for key in group.split(",")}


def chapter_citations() -> dict[str, set[str]]:
    out = {}
    for path in sorted((ROOT / "notebooks").glob("[0-9]*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        keys = cited("\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown"))
        if keys:
            out[path.stem] = keys
    return out


def test_the_table_lists_what_each_chapter_cites():
    page = (ROOT / "book" / "references.md").read_text()
    table = {doc: cited(cells) for doc, cells in ROW.findall(page)}
    assert table == chapter_citations()


def test_every_bibliography_entry_is_cited_and_every_citation_has_an_entry():
    bib = (ROOT / "book" / "references.bib").read_text()
    entries = set(re.findall(r"^@\w+\{([^,]+),", bib, re.M))
    used = set().union(*chapter_citations().values())
    used |= cited((ROOT / "book" / "intro.md").read_text())
    assert used <= entries, f"cited without an entry: {sorted(used - entries)}"
    assert entries <= used, f"entries no chapter cites: {sorted(entries - used)}"
