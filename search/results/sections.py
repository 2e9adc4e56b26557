"""The parts of a report page: a section holds figures, tables and notes in the order the page shows them.

search/results/report.py builds the search's section and writes the page; search/results/runs.py builds the
final runs' sections.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from matplotlib.figure import Figure

from search.results.tables import Table


@dataclass
class FigureItem:
    name: str  # the file name under figures/, without suffix
    title: str
    caption: str
    figure: Figure


@dataclass
class Note:
    """Where a figure or table is left out (or a reading needs words): a title and a line or two."""

    title: str
    text: str


@dataclass
class Section:
    id: str
    title: str
    intro: str = ""  # HTML: callers escape what they put in
    items: list[FigureItem | Table | Note] = field(default_factory=list)
