"""Sphinx extension: the references list labels each work the way the text cites it.

The chapters cite by author and year (``bibtex_reference_style: author_year``), but pybtex's
``plain`` style numbers its list, so "[Frantar et al., 2023]" in the text led to "[14]" on the
references page. This registers a pybtex label style, ``author_year`` ("Vaswani et al., 2017",
"Hassibi and Stork, 1993", "Krishnamoorthi, 2018"; a, b, ... after the year when two works
would share a label), and a formatting style ``book``: ``plain`` (sorted by author, year, title)
with those labels. ``_config.yml`` selects it with ``bibtex_default_style: book``. arXiv papers
carry ``eprint``, which ``plain`` already renders as an https://arxiv.org/abs/ link.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from string import ascii_lowercase
from typing import Any

from pybtex.plugin import register_plugin
from pybtex.richtext import Text
from pybtex.style.formatting.plain import Style as PlainStyle
from pybtex.style.labels import BaseLabelStyle
from sphinx.application import Sphinx

LABEL_STYLE = "author_year"
FORMATTING_STYLE = "book"


def _last_name(person: Any) -> str:
    """A person's last name as plain text (LaTeX accents decoded: L{\\'e}onard -> Léonard)."""
    return Text.from_latex(" ".join(person.prelast_names + person.last_names)).render_as("text")


def author_year(entry: Any) -> str:
    """``Last, 2019``, ``Last and Other, 2019`` or ``Last et al., 2019`` for one entry.

    Raises:
        ValueError: the entry has no author (or editor) or no year: the label would be empty.
    """
    people = entry.persons.get("author") or entry.persons.get("editor")
    year = entry.fields.get("year")
    if not people or not year:
        raise ValueError(f"bibliography entry {entry.key!r} needs an author and a year for its "
                         f"author-year label (author={bool(people)}, year={year!r})")
    names = [_last_name(person) for person in people]
    if len(names) == 1:
        who = names[0]
    elif len(names) == 2:
        who = f"{names[0]} and {names[1]}"
    else:
        who = f"{names[0]} et al."
    return f"{who}, {year}"


def unique(labels: Iterable[str]) -> Iterator[str]:
    """Labels made distinct with a, b, ... in order: two "Nagel et al., 2021" become
    "Nagel et al., 2021a" and "Nagel et al., 2021b"; a label that occurs once is unchanged."""
    labels = list(labels)
    total, seen = Counter(labels), Counter()
    for label in labels:
        if total[label] == 1:
            yield label
        else:
            yield label + ascii_lowercase[seen[label]]
            seen[label] += 1


class AuthorYearLabelStyle(BaseLabelStyle):
    def format_labels(self, sorted_entries: Iterable[Any]) -> Iterator[str]:
        return unique(author_year(entry) for entry in sorted_entries)


class BookStyle(PlainStyle):
    default_label_style = LABEL_STYLE


def setup_plugins() -> None:
    """Register both styles with pybtex (again: the classes of this module's latest import)."""
    register_plugin("pybtex.style.labels", LABEL_STYLE, AuthorYearLabelStyle, force=True)
    register_plugin("pybtex.style.formatting", FORMATTING_STYLE, BookStyle, force=True)


def setup(app: Sphinx) -> dict[str, Any]:
    setup_plugins()
    return {"parallel_read_safe": True, "parallel_write_safe": True}
