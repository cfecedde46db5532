"""One subject's export rows of a domain as the cells every export file is written from.

The findings rows come as cells (:meth:`RowBuilder.findings <fhir_adapter.export.cdisc.RowBuilder.findings>`),
the others as dicts keyed by column (:meth:`RowBuilder.rows <fhir_adapter.export.cdisc.RowBuilder.rows>`); the
CSV file, Dataset-JSON and ODM each need the same values in column order, and each needs to know whether a
value must be sanitised or escaped. A :class:`Table` holds each row's cells (of a dict row: read once, ``''``
where it has no value) and tests each row once, on all its cells joined, whether it is *plain* — every cell a
string without a character that XML forbids or must escape in an attribute and without one JSON escapes — and
whether any cell starts like a spreadsheet formula. Plain rows (nearly all) are written without looking at
single cells again; the others take the per-cell path (:mod:`.sanitize`), which gives the same text for plain
values.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from fhir_adapter.export.cdisc import COLUMNS
from fhir_adapter.export.sanitize import csv_safe

#: joins a row's cells for the row tests: itself plain and no formula start, so it changes neither answer
_SEP = "\ue000"
#: every character of the joined row is one XML takes as is in a quoted attribute and JSON in a string
_PLAIN = re.compile('[^&<>"\\\\\x00-\x1f\ud800-\udfff\ufffe\uffff]*')
#: how a cell of a plain row may start a spreadsheet formula (TAB and CR are not plain); export/sanitize.py
#: csv_cell decides what such a cell gets
_FORMULA_FIRST = frozenset("=+-@")
#: a cell after the first that starts with = + @, or with - and is not a number or a negative duration (the
#: cells csv_cell leaves alone: ``-28`` as a study day, ``-PT1H``)
_FORMULA_AFTER_SEP = re.compile("\ue000(?:[=+@]|-(?!(?:(?:\\d+(?:\\.\\d*)?|\\.\\d+)(?:[eE][+-]?\\d+)?"
                                "|P(?=\\d|T\\d)(?:\\d+[WD])?(?:T(?=\\d)(?:\\d+H)?(?:\\d+M)?(?:\\d+S)?)?)(?:\ue000|$)))")
#: a row's cells in column order, from a row that has every column (RowBuilder's rows have)
_CELLS = {domain: itemgetter(*columns) for domain, columns in COLUMNS.items()}


@dataclass(frozen=True)
class Table:
    """Rows of one domain, each row's cells in ``COLUMNS[domain]`` order and its tests."""

    domain: str
    cells: list[Sequence[Any]]
    #: each row's visit id (findings; ``''`` for none) and the reviewer's decision on its value, if any
    visits: list[str]
    decisions: list[dict[str, Any] | None]
    #: the row's cells are all strings that XML attributes and JSON strings take as they are
    plain: list[bool]
    #: no cell of the row may start a spreadsheet formula (all strings, none starting with = + - @ TAB CR)
    formula_free: list[bool]
    #: the row's CSV line is its cells joined by commas: plain, formula-free and without a comma
    csv_simple: list[bool]

    def csv_text(self) -> str:
        """The rows as CSV lines (what ``csv.writer`` writes for the cells :func:`csv_safe` gives)."""
        buf = io.StringIO(newline="")
        writer = csv.writer(buf)
        for cells, formula_free, simple in zip(self.cells, self.formula_free, self.csv_simple, strict=True):
            if simple:
                buf.write(",".join(cells) + "\r\n")
            else:
                writer.writerow(csv_safe(cells, formula_free))
        return buf.getvalue()


def _tests(cells: Sequence[Any]) -> tuple[bool, bool, bool]:
    """(plain, formula-free, CSV-simple) of one row; a row that is not plain takes the per-cell path
    everywhere."""
    try:
        joined = _SEP.join(cells)
    except TypeError:  # a cell that is not a string
        return False, False, False
    if _PLAIN.fullmatch(joined) is None or joined.count(_SEP) != len(cells) - 1:  # (a cell holding _SEP)
        return False, False, False
    formula_free = not (cells and cells[0][:1] in _FORMULA_FIRST) and _FORMULA_AFTER_SEP.search(joined) is None
    return True, formula_free, formula_free and len(cells) > 1 and "," not in joined


def _cells(domain: str, row: dict[str, Any]) -> Sequence[Any]:
    try:
        cells: Sequence[Any] = _CELLS[domain](row)
    except KeyError:  # a row without some column: '' there
        return [row.get(c, "") for c in COLUMNS[domain]]
    return cells


def table_of_cells(domain: str, cells: list[Sequence[Any]], visits: list[str] | None = None,
                   decisions: list[dict[str, Any] | None] | None = None) -> Table:
    """The :class:`Table` of rows given as cells (``visits``: each row's visit id, ``decisions``: each row's
    reviewer's decision; none without them)."""
    tests = [_tests(c) for c in cells]
    return Table(domain, cells, visits if visits is not None else [""] * len(cells),
                 decisions if decisions is not None else [None] * len(cells),
                 [t[0] for t in tests], [t[1] for t in tests], [t[2] for t in tests])


def table(domain: str, rows: list[dict[str, Any]]) -> Table:
    """The :class:`Table` of rows given as dicts keyed by column (``_visit``: the row's visit id,
    ``_decision``: the reviewer's decision on its value)."""
    return table_of_cells(domain, [_cells(domain, r) for r in rows], [r.get("_visit", "") for r in rows],
                          [r.get("_decision") for r in rows])


def tables(rows: Mapping[str, list[dict[str, Any]]]) -> dict[str, Table]:
    """Every domain's :class:`Table` of rows given as dicts keyed by column."""
    return {domain: table(domain, domain_rows) for domain, domain_rows in rows.items()}
