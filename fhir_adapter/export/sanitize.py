"""Text from the EHR made safe for the file it goes into.

* **XML** (``odm.xml``): XML 1.0 allows only ``#x9 | #xA | #xD | [#x20-#xD7FF] | [#xE000-#xFFFD] |
  [#x10000-#x10FFFF]`` (https://www.w3.org/TR/xml/#charsets); anything else (NUL, other control characters,
  lone surrogates, U+FFFE/U+FFFF) makes the document not well-formed, so it is removed and counted — the
  run report names the subject.
* **CSV** (``export/*.csv``): a cell beginning with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is
  a formula to a spreadsheet (OWASP "CSV Injection"); such a cell is prefixed with a single quote so it
  reads as text. Numbers stay numbers: ``-2`` and ``-0.5`` (and any int/float value) are left alone, and so
  does a negative ISO 8601 duration (``--ELTM`` = ``-PT1H``), which a spreadsheet cannot evaluate to anything.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

_XML_FORBIDDEN = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
#: text that is its own XML attribute value: nothing to remove, nothing to escape
_XML_PLAIN = re.compile("[^&<>\"\x00-\x1f\ud800-\udfff\ufffe\uffff]*")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_FORMULA_FIRST = frozenset(_FORMULA_START)
_NUMBER_OR_DURATION = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?"
                                 r"|-P(?=\d|T\d)(\d+[WD])?(T(?=\d)(\d+H)?(\d+M)?(\d+S)?)?")


def xml_plain(text: str) -> bool:
    """True when ``text`` needs neither removals (:func:`xml_text`) nor escaping in a quoted attribute."""
    return _XML_PLAIN.fullmatch(text) is not None


def xml_text(text: str) -> tuple[str, int]:
    """``text`` without the characters XML 1.0 forbids, and how many were removed."""
    return _XML_FORBIDDEN.subn("", text)


def csv_cell(value: Any) -> Any:
    """A CSV cell a spreadsheet will not evaluate (OWASP CSV injection); numbers unchanged."""
    if not isinstance(value, str) or not value.startswith(_FORMULA_START) or _NUMBER_OR_DURATION.fullmatch(value):
        return value
    return "'" + value


def csv_row(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: csv_cell(v) if type(v) is str and v and v[0] in _FORMULA_FIRST else v for k, v in row.items()}


def csv_values(row: Mapping[str, Any], columns: Iterable[str]) -> list[Any]:
    """The cells of ``row`` in ``columns`` order ('' where it has none), made safe as :func:`csv_cell` does."""
    return [csv_cell(v) if type(v) is str and v and v[0] in _FORMULA_FIRST else v
            for v in [row.get(c, "") for c in columns]]


def csv_safe(cells: Sequence[Any], formula_free: bool) -> Sequence[Any]:
    """``cells`` made safe as :func:`csv_cell` does; as they are when the row has no cell that starts like a
    formula (``Table.formula_free``, export/table.py)."""
    if formula_free:
        return cells
    return [csv_cell(v) if type(v) is str and v and v[0] in _FORMULA_FIRST else v for v in cells]


def csv_cells(cells: Iterable[Any]) -> list[Any]:
    return [csv_cell(v) for v in cells]
