"""Matplotlib set-up shared by every figure: Agg backend, one style, reproducible SVG output.

A figure becomes an inline ``<svg>`` string (text kept as text, no external fonts or images), so the report
is one self-contained file. Every text is drawn as it is (``text.parse_math`` off): a subject ID, arm, visit or
unit from the data holding ``$`` is shown literally, never read as matplotlib mathtext (which would draw
another text, or fail on an unknown macro); log-axis tick labels are plain text for the same reason. Output
is byte-for-byte reproducible: ``svg.hashsalt`` fixes the ids matplotlib generates and the metadata carries no date.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import matplotlib
import matplotlib.style

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatterSciNotation

#: colour per dose level (arms not listed here take the next colour of the cycle)
ARM_COLORS = {"DL1": "#4c78a8", "DL2": "#f58518", "DL3": "#e45756", "EXP": "#54a24b"}
_FALLBACK = ["#72b7b2", "#b279a2", "#9d755d", "#bab0ac", "#eeca3b"]
NO_ARM = "(no arm)"

STYLE: dict[str, Any] = {
    "svg.hashsalt": "fhir-adapter-report",
    "svg.fonttype": "none",
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#dddddd",
    "grid.linewidth": 0.6,
    "legend.frameon": False,
    "figure.dpi": 100,
    "text.parse_math": False,   # every text literal: data (subject IDs, arms, visits, units) may hold '$'
}

_METADATA: dict[str, str | None] = {"Date": None, "Creator": "fhir-adapter report"}


def arm_color(arm: str | None, arms: list[str]) -> str:
    """Stable colour of an arm: fixed for the LCAR-AIO dose levels, by position for any other."""
    if arm in ARM_COLORS:
        return ARM_COLORS[arm]
    others = [a for a in arms if a not in ARM_COLORS]
    idx = others.index(arm) if arm in others else len(others)
    return _FALLBACK[idx % len(_FALLBACK)]


@contextmanager
def figure(width: float, height: float, nrows: int = 1, ncols: int = 1) -> Iterator[Figure]:
    """A new figure in the report style, closed when the block ends."""
    with matplotlib.style.context(STYLE):
        fig = plt.figure(figsize=(width, height))
        try:
            yield fig
        finally:
            plt.close(fig)


_SUPERSCRIPT = str.maketrans("0123456789-\N{MINUS SIGN}", "⁰¹²³⁴⁵⁶⁷⁸⁹⁻⁻")
_MATHDEFAULT = re.compile(r"\$\\mathdefault\{(.*)\}\$")


class LogTicks(LogFormatterSciNotation):
    """Matplotlib's log-axis tick labels as plain text (``10⁴``, ``2×10³``) instead of mathtext, which the
    report does not parse (:data:`STYLE`)."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        label = str(super().__call__(x, pos))
        m = _MATHDEFAULT.fullmatch(label)
        if not m:
            return label
        body = m.group(1).replace("\\times", "×")
        return re.sub(r"\^\{([^}]*)\}", lambda e: e.group(1).translate(_SUPERSCRIPT), body)


def log_y(ax: Axes) -> None:
    """A logarithmic value axis with plain-text tick labels (:class:`LogTicks`)."""
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(LogTicks())
    ax.yaxis.set_minor_formatter(LogTicks(labelOnlyBase=False))


_XML_HEAD = re.compile(r"^.*?(?=<svg)", re.S)


def to_svg(fig: Figure, title: str, *, trim: bool = True) -> str:
    """The figure as an inline ``<svg>`` element with an accessible title (no XML prolog, no DOCTYPE);
    ``trim``: cropped to what is drawn (a figure laid out with fixed margins saves a second layout pass)."""
    buf = io.StringIO()
    with matplotlib.style.context(STYLE):
        fig.savefig(buf, format="svg", metadata=_METADATA, bbox_inches="tight" if trim else None)
    svg = _XML_HEAD.sub("", buf.getvalue(), count=1)
    safe = title.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\"", "&quot;")
    return svg.replace(">", f' role="img" aria-label="{safe}">', 1).strip()
