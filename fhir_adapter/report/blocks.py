"""The pieces a report section is made of: figures (inline SVG), tables and notes."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

from fhir_adapter.numbers import half_up


@dataclass(frozen=True)
class FigureBlock:
    svg: str
    caption: str
    kind: str = "figure"


@dataclass(frozen=True)
class TableBlock:
    columns: list[str]
    rows: list[list[str]]
    caption: str
    kind: str = "table"


@dataclass(frozen=True)
class NoteBlock:
    text: str
    nodata: bool = False
    kind: str = "note"


Block = FigureBlock | TableBlock | NoteBlock


@dataclass
class Section:
    id: str
    title: str
    intro: str
    blocks: list[Block] = field(default_factory=list)

    def no_data(self, what: str) -> None:
        """Say that a part of this section has nothing to show (never a made-up number)."""
        self.blocks.append(NoteBlock(f"No data: {what}", nodata=True))

    def note(self, text: str) -> None:
        self.blocks.append(NoteBlock(text))


def fmt(value: float | int | None, digits: int = 1) -> str:
    """A number for a table cell; '–' when missing."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) or (float(value).is_integer() and digits == 0):
        return f"{int(value)}"
    if abs(value) >= 1000:
        return f"{half_up(value, 0):,f}"
    if 0 < abs(value) < 10 ** -digits:
        return f"{value:.2g}"
    # half up on the number as study.json shows it (1.15 -> 1.2, 0.45 -> 0.5): formatting the binary float
    # rounded 1.15 down and 0.45 up, as their nearest doubles happen to lie
    return f"{half_up(value, digits):f}"


def percent(share: float) -> str:
    """A share (0.125) in whole percent, rounded half up as every shown number ("13%")."""
    return f"{half_up(100 * share, 0):f}%"


def pct(k: int, n: int) -> str:
    """``k (p%)`` (1 of 8: "1 (13%)")."""
    return f"{k} ({percent(k / n)})" if n else "–"


def describe(values: list[float]) -> tuple[int, float | None, float | None, float | None, float | None,
                                           float | None]:
    """n, mean, SD, median, min, max of the values (None where undefined)."""
    n = len(values)
    if not n:
        return 0, None, None, None, None, None
    sd = statistics.stdev(values) if n > 1 else None
    return n, statistics.fmean(values), sd, statistics.median(values), min(values), max(values)


def quartiles(values: list[float]) -> tuple[float, float, float] | None:
    """(Q1, median, Q3) by the inclusive method; None with fewer than two values."""
    if len(values) < 2:
        return None
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3
