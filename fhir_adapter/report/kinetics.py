"""CAR-T cellular kinetics: each subject's CAR transgene (or CAR+ cell) profile on a log scale, by dose
level and per subject, with Cmax and Tmax from results/study.json marked."""

from __future__ import annotations

import math
from dataclasses import dataclass

from matplotlib.axes import Axes
from matplotlib.ticker import NullLocator

from fhir_adapter.report.blocks import FigureBlock, Section, TableBlock, describe, fmt
from fhir_adapter.report.data import JsonDict, ReportData, arm_of, as_dict, as_list, num
from fhir_adapter.report.plotting import arm_color, figure, log_y, to_svg

#: PC items in preference order (mappings/lcar-aio/items.yaml)
PC_ITEMS = ("car_transgene", "car_cells")


@dataclass(frozen=True)
class Profile:
    subject_id: str
    arm: str
    item: str
    unit: str
    points: list[tuple[float, float, bool]]  # (study day, value, below LLOQ)
    cmax: float | None
    #: the study day of the sample Cmax was measured in (the first with Cmax's value: Tmax is the first time
    #: when tied), where ★ and the Tmax line go — Tmax itself is days after the infusion, not a study day
    cmax_day: float | None


def _item_for(crf: JsonDict, cmax_unit: str | None) -> str | None:
    """The PC item whose unit is the unit of Cmax in the results; else the first PC item with data."""
    present = {str(f.get("item")): str(f.get("unit") or "") for f in as_list(crf.get("findings"))
               if f.get("domain") == "PC" and f.get("item") in PC_ITEMS}
    if cmax_unit:
        for item in PC_ITEMS:
            if present.get(item) == cmax_unit:
                return item
    return next((i for i in PC_ITEMS if i in present), None)


def profiles(data: ReportData) -> tuple[list[Profile], int, list[str]]:
    """Each subject's profile, the number of non-positive values left off the log scale, and the subjects whose
    results have no study day (no Day 1) and so no profile."""
    out: list[Profile] = []
    dropped = 0
    undated: list[str] = []
    results = {str(s.get("subject_id")): s for s in data.subjects}
    for sid in data.subject_ids():
        crf = data.crf(sid)
        if crf is None:
            continue
        res = results.get(sid, {})
        kin = as_dict(res.get("kinetics"))
        item = _item_for(crf, kin.get("cmax_unit") if isinstance(kin.get("cmax_unit"), str) else None)
        if item is None:
            continue
        pts: list[tuple[float, float, bool]] = []
        unit = ""
        no_day = False
        for f in as_list(crf.get("findings")):
            if f.get("item") != item:
                continue
            day, value = num(f.get("study_day")), num(f.get("value"))
            no_day = no_day or (day is None and value is not None)
            if day is None or value is None:
                continue
            if value <= 0:
                dropped += 1
                continue
            unit = str(f.get("unit") or unit)
            pts.append((day, value, f.get("comparator") in ("<", "<=")))
        if not pts:
            if no_day:
                undated.append(sid)
            continue
        pts.sort()
        cmax = num(kin.get("cmax"))
        cmax_day = next((x for x, y, blq in pts if not blq and y == cmax), None)
        out.append(Profile(sid, arm_of(res or crf), item, unit, pts, cmax, cmax_day))
    return out, dropped, undated


def _draw(ax: Axes, p: Profile, color: str, small: bool) -> None:
    xs = [x for x, _, _ in p.points]
    ys = [y for _, y, _ in p.points]
    ax.plot(xs, ys, color=color, linewidth=0.9 if small else 0.8, alpha=0.9 if small else 0.55, zorder=1)
    blq = [(x, y) for x, y, b in p.points if b]
    if blq:
        ax.scatter([x for x, _ in blq], [y for _, y in blq], s=10, facecolors="white", edgecolors=color,
                   linewidths=0.7, zorder=2)
    if p.cmax is not None and p.cmax > 0 and p.cmax_day is not None:
        ax.scatter([p.cmax_day], [p.cmax], marker="*", s=60 if small else 40, color=color, edgecolors="#111111",
                   linewidths=0.5, zorder=3)
        if small:
            ax.axvline(p.cmax_day, color=color, linestyle=":", linewidth=0.8)


def _symlog_days(ax: Axes, small: bool) -> None:
    ax.set_xscale("symlog", linthresh=28, linscale=1.5)
    ticks = [1, 28, 365] if small else [-7, 1, 7, 14, 28, 90, 365]
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(t) for t in ticks])
    ax.grid(True, which="major")


#: the per-subject panels: columns, height of a row and the margins around the grid (inches)
GRID_COLUMNS, ROW_IN, TOP_IN, BOTTOM_IN = 6, 1.9, 0.3, 0.45
#: panels per figure: a larger cohort gets several figures, one after the other, so the memory matplotlib holds
#: for the panels stays that of one figure (3,400 subjects in one figure: gigabytes)
FIGURE_PANELS = 10 * GRID_COLUMNS


def _per_subject(profs: list[Profile], arms: list[str]) -> list[tuple[str, str]]:
    """One small panel per subject, all on the same value axis, :data:`FIGURE_PANELS` to a figure: (SVG,
    which subjects) of each figure. Drawn at a cost linear in the number of subjects: the common value range is
    set on each panel rather than shared between them (matplotlib's shared axes autoscale over every sibling:
    quadratic), major ticks only, and fixed margins instead of a fitted layout."""
    values = [y for p in profs for _, y, _ in p.points] + [p.cmax for p in profs if p.cmax is not None and p.cmax > 0]
    low, high = math.log10(min(values)), math.log10(max(values))
    ylim = (10 ** (low - 0.15), 10 ** (high + 0.15))
    figures = []
    for first in range(0, len(profs), FIGURE_PANELS):
        part = profs[first:first + FIGURE_PANELS]
        which = "" if len(profs) <= FIGURE_PANELS else f"subjects {first + 1}–{first + len(part)} of {len(profs)}"
        figures.append((_panels(part, arms, ylim, which), which))
    return figures


def _panels(profs: list[Profile], arms: list[str], ylim: tuple[float, float], which: str) -> str:
    nrows = math.ceil(len(profs) / GRID_COLUMNS)
    height = ROW_IN * nrows + TOP_IN + BOTTOM_IN
    with figure(11, height) as fig:
        axes = fig.subplots(nrows, GRID_COLUMNS, squeeze=False)
        for i, ax in enumerate(axes.flat):
            if i >= len(profs):
                ax.set_visible(False)
                continue
            p = profs[i]
            _draw(ax, p, arm_color(p.arm, arms), small=True)
            log_y(ax)
            ax.set_ylim(*ylim)
            _symlog_days(ax, small=True)
            ax.xaxis.set_minor_locator(NullLocator())
            ax.yaxis.set_minor_locator(NullLocator())
            ax.tick_params(labelsize=6, labelleft=i % GRID_COLUMNS == 0)
            ax.set_title(f"{p.subject_id} · {p.arm}", fontsize=7, y=1.0, pad=3)   # a set y: no tight-box pass
        fig.subplots_adjust(left=0.06, right=0.99, top=1 - TOP_IN / height, bottom=BOTTOM_IN / height,
                            wspace=0.25, hspace=0.6)
        return to_svg(fig, f"CAR-T kinetics per subject{', ' + which if which else ''}", trim=False)


def kinetics_section(data: ReportData) -> Section:
    sec = Section("kinetics", "CAR-T cellular kinetics",
                  "CAR transgene copies per µg DNA (or CAR-positive T cells per µL when the results' Cmax "
                  "is in that unit) from the CRF PC findings, against study day (axis linear to day 28, "
                  "logarithmic after). The value axis is logarithmic. ★ = Cmax as derived in results/study.json "
                  "(kinetics), on the sample it was measured in (Tmax, in the tables, is the time after the "
                  "infusion in days; the axis is the study day, Day 1 the infusion's); open circles = below the "
                  "lower limit of quantification (plotted at the reported limit).")
    profs, dropped, undated = profiles(data)
    if undated:
        sec.note(f"Not plotted, their results having no study day (no Day 1: no infusion record): "
                 f"{', '.join(undated)}.")
    if not profs:
        sec.no_data("no CAR transgene / CAR-positive cell result (PC findings) in the CRFs")
        return sec
    arms = data.arms
    plot_arms = [a for a in arms if any(p.arm == a for p in profs)]
    units = sorted({p.unit for p in profs})
    ylabel = units[0] if len(units) == 1 else "value (unit per subject)"
    with figure(11, 3.4) as fig:
        axes = fig.subplots(1, len(plot_arms), squeeze=False, sharey=True)
        for ax, arm in zip(axes[0], plot_arms, strict=True):
            members = [p for p in profs if p.arm == arm]
            for p in members:
                _draw(ax, p, arm_color(arm, arms), small=False)
            log_y(ax)
            _symlog_days(ax, small=False)
            ax.set_title(f"{arm} (n={len(members)})")
            ax.set_xlabel("study day")
        axes[0, 0].set_ylabel(ylabel)
        fig.tight_layout()
        sec.blocks.append(FigureBlock(to_svg(fig, "CAR-T kinetics by dose level"),
                                      "Kinetics by dose level (log scale), ★ Cmax"))
    for svg, which in _per_subject(profs, arms):
        sec.blocks.append(FigureBlock(svg, "Kinetics per subject (log scale); ★ and dotted line = the Cmax sample"
                                      + (f" — {which}" if which else "")))
    if dropped:
        sec.note(f"{dropped} result(s) of zero or below were left off the logarithmic axis.")

    results = {str(s.get("subject_id")): s for s in data.subjects}
    kin_rows = []
    for sid in sorted(results):
        k = as_dict(results[sid].get("kinetics"))
        if not k:
            continue
        kin_rows.append([sid, arm_of(results[sid]), fmt(num(k.get("cmax")), 1), str(k.get("cmax_unit") or "–"),
                         fmt(num(k.get("tmax_day")), 0), fmt(num(k.get("clast")), 1), fmt(num(k.get("tlast_day")), 0),
                         fmt(num(k.get("auc0_28")), 0), fmt(num(k.get("persistence_day")), 0)])
    if not kin_rows:
        sec.no_data("kinetics (Cmax, Tmax, AUC) is not in results/study.json; the profiles above are unmarked")
        return sec
    by_arm = []
    for arm in arms:
        ks = [as_dict(s.get("kinetics")) for s in data.subjects if arm_of(s) == arm]
        cmax = [c for k in ks if (c := num(k.get("cmax"))) is not None]
        tmax = [t for k in ks if (t := num(k.get("tmax_day"))) is not None]
        auc = [a for k in ks if (a := num(k.get("auc0_28"))) is not None]
        if not (cmax or tmax or auc):
            continue
        n, _, _, cmed, clo, chi = describe(cmax)
        _, _, _, tmed, tlo, thi = describe(tmax)
        _, _, _, amed, _, _ = describe(auc)
        by_arm.append([arm, str(n), f"{fmt(cmed, 1)} ({fmt(clo, 1)}–{fmt(chi, 1)})",
                       f"{fmt(tmed, 0)} ({fmt(tlo, 0)}–{fmt(thi, 0)})", fmt(amed, 0)])
    sec.blocks.append(TableBlock(["Dose level", "n with Cmax", "Cmax median (range)",
                                  "Tmax (days after infusion) median (range)",
                                  "AUC0–28 median"], by_arm, "Kinetic parameters by dose level"))
    sec.blocks.append(TableBlock(["Subject", "Arm", "Cmax", "Unit", "Tmax (days after infusion)", "Clast",
                                  "Tlast (days after infusion)", "AUC0–28", "Persistence (days after infusion)"],
                                 kin_rows,
                                 "Kinetic parameters per subject (results/study.json kinetics)"))
    return sec
