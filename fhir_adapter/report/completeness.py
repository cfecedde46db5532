"""Data completeness per CRF item and visit: from run-report.json ``coverage`` when the run wrote it, else
counted from the CRFs.

From the run report: per item and visit, filled / (filled + quarantined + no-data), the subjects with Day 1
being the denominator (fhir_adapter/export/coverage.py). Counted from the CRFs: for visit V, the
denominator is the subjects with a CRF record of V (the visit took place: at least one result fell in its
window); the numerator of item I is those of them whose record of V holds a value of I. Unscheduled visits are left out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fhir_adapter.numbers import half_up
from fhir_adapter.report.blocks import FigureBlock, Section, TableBlock, percent
from fhir_adapter.report.data import ReportData, as_dict, as_list, num
from fhir_adapter.report.plotting import figure, to_svg

FILLED, QUARANTINED, NO_DATA = "filled", "quarantined", "no-data"


@dataclass
class Coverage:
    cells: dict[str, dict[str, float]]  # item -> visit -> fraction 0..1
    counts: dict[str, tuple[int, int]]  # visit -> (denominator, items with any value)
    source: str
    quarantined: dict[str, int] = field(default_factory=dict)  # item -> cells with quarantined input
    never_filled: list[str] = field(default_factory=list)


def from_run_report(coverage: Any) -> Coverage | None:
    """The run report's ``coverage`` (fhir_adapter/export/coverage.py): per item, per visit the number of
    subjects whose cell is ``filled``, ``quarantined`` or ``no-data``. None when it is not in that shape."""
    cells: dict[str, dict[str, float]] = {}
    denominators: dict[str, int] = {}
    items_with_value: dict[str, int] = {}
    quarantined: dict[str, int] = {}
    for row in as_list(as_dict(coverage).get("items")):
        item = row.get("item")
        if not isinstance(item, str):
            continue
        for visit, cell in as_dict(row.get("visits")).items():
            c = as_dict(cell)
            states = [num(c.get(k)) for k in (FILLED, QUARANTINED, NO_DATA)]
            if any(x is None for x in states):
                continue
            filled, quar, none = (int(x or 0) for x in states)
            n = filled + quar + none
            if not n:
                continue
            cells.setdefault(item, {})[visit] = filled / n
            denominators[visit] = max(denominators.get(visit, 0), n)
            items_with_value[visit] = items_with_value.get(visit, 0) + (1 if filled else 0)
            quarantined[item] = quarantined.get(item, 0) + quar
    if not cells:
        return None
    never = [str(i) for i in as_dict(coverage).get("never_filled") or [] if isinstance(i, str)]
    counts = {v: (denominators[v], items_with_value.get(v, 0)) for v in denominators}
    return Coverage(cells, counts, "run-report.json coverage", {k: v for k, v in quarantined.items() if v}, never)


def from_crfs(data: ReportData) -> Coverage:
    attended: dict[str, int] = {}
    present: dict[str, dict[str, int]] = {}
    for crf in data.crfs.values():
        for v in as_list(crf.get("visits")):
            vid = v.get("visit")
            if v.get("unscheduled") or not isinstance(vid, str):
                continue
            attended[vid] = attended.get(vid, 0) + 1
            for item in as_dict(v.get("values")):
                present.setdefault(item, {})
                present[item][vid] = present[item].get(vid, 0) + 1
    cells = {item: {vid: k / attended[vid] for vid, k in per.items()} for item, per in present.items()}
    counts = {vid: (n, sum(1 for per in present.values() if vid in per)) for vid, n in attended.items()}
    return Coverage(cells, counts, "counted from the CRFs (crf/*.json)")


def coverage(data: ReportData) -> Coverage | None:
    rr = as_dict(data.run_report)
    if "coverage" in rr and (cov := from_run_report(rr["coverage"])) is not None:
        return cov
    if not data.crfs:
        return None
    return from_crfs(data)


def completeness_section(data: ReportData) -> Section:
    sec = Section("completeness", "Data completeness",
                  "Share of subjects with a value of each CRF item at each scheduled visit (%). From the run "
                  "report's coverage: filled / (filled + quarantined + no data) over the subjects with Day 1 "
                  "(visits not yet reached count as no data). Without it, counted from the CRFs: denominator "
                  "= subjects with that visit (at least one result in its window), numerator = those whose "
                  "visit holds a value of the item; blank cells = no value at that visit for anyone.")
    cov = coverage(data)
    if cov is None or not cov.cells:
        sec.no_data("neither run-report.json coverage nor CRF visits to count from")
        return sec
    rr = as_dict(data.run_report)
    if "coverage" in rr and cov.source != "run-report.json coverage":
        sec.note("run-report.json has a coverage entry in a shape this report does not read; counted from the "
                 "CRFs instead.")
    order = [v for v in data.visit_order() if any(v in c for c in cov.cells.values())]
    order += sorted({v for c in cov.cells.values() for v in c} - set(order))
    items = sorted(cov.cells)
    grid = np.full((len(items), len(order)), np.nan)
    for i, item in enumerate(items):
        for j, v in enumerate(order):
            if v in cov.cells[item]:
                grid[i, j] = 100 * cov.cells[item][v]
    with figure(11, 1.2 + 0.17 * len(items)) as fig:
        ax = fig.subplots()
        im = ax.imshow(grid, aspect="auto", cmap="YlGn", vmin=0, vmax=100, interpolation="nearest")
        for i in range(len(items)):
            for j in range(len(order)):
                if not np.isnan(grid[i, j]):
                    ax.text(j, i, f"{half_up(float(grid[i, j]), 0):f}", ha="center", va="center", fontsize=5.5,
                            color="white" if grid[i, j] > 70 else "#222222")
        ax.set_xticks(range(len(order)))
        ax.set_xticklabels(order, fontsize=7)
        ax.xaxis.tick_top()
        ax.set_yticks(range(len(items)))
        ax.set_yticklabels(items, fontsize=6)
        ax.grid(False)
        fig.colorbar(im, ax=ax, fraction=0.02, pad=0.01, label="% of subjects with the visit")
        fig.tight_layout()
        sec.blocks.append(FigureBlock(to_svg(fig, "Data completeness per item and visit"),
                                      f"Completeness per item and visit (%) — {cov.source}"))
    if cov.never_filled:
        sec.note(f"Never filled by this EHR feed ({len(cov.never_filled)} items): {', '.join(cov.never_filled)}.")
    if cov.quarantined:
        sec.blocks.append(TableBlock(["Item", "Subject-visit cells with quarantined input"],
                                     [[k, str(v)] for k, v in sorted(cov.quarantined.items())],
                                     "Cells whose only input was quarantined (see run-report.json quarantine)"))
    rows = []
    for v in order:
        n, n_items = cov.counts.get(v, (0, 0))
        # "those items": the items with any value at the visit (an item no subject has there is not collected
        # at that visit and does not lower the mean)
        vals = [x for i in items if (x := cov.cells[i].get(v)) is not None and x > 0]
        mean = 100 * sum(vals) / len(vals) if vals else None
        rows.append([v, str(n) if n else "–", str(n_items), percent(mean / 100) if mean is not None else "–"])
    sec.blocks.append(TableBlock(["Visit", "Subjects (denominator)", "Items with any value",
                                  "Mean completeness of those items"], rows, f"Completeness per visit — {cov.source}"))
    return sec
