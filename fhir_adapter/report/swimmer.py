"""Swimmer plot: each subject's follow-up as a bar from Day 1 to the latest study day with data, with
lymphodepletion, the infusion, CRS and ICANS episodes, DLTs and the visits in LLDAS."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from matplotlib.axes import Axes
from matplotlib.collections import LineCollection
from matplotlib.lines import Line2D

from fhir_adapter.report.blocks import FigureBlock, Section, TableBlock, fmt
from fhir_adapter.report.data import (
    JsonDict,
    ReportData,
    aes_by_source,
    arm_of,
    as_dict,
    as_list,
    num,
    without_history,
)
from fhir_adapter.report.plotting import arm_color, figure, to_svg
from fhir_adapter.report.summary import last_study_day

CRS_COLOR = "#f28e2b"
ICANS_COLOR = "#9467bd"
DLT_COLOR = "#d62728"
LLDAS_COLOR = "#2ca02c"
ZOOM_DAYS = 35
#: AE outcomes of an event not over (HL7 adverse-event-outcome; NCIt: not recovered, recovering — ct.yaml OUT)
ONGOING_OUTCOMES = frozenset({"ongoing", "recovering", "C49494", "C49496"})


@dataclass
class Lane:
    subject_id: str
    arm: str
    last_day: float
    ld_day: float | None = None
    #: start, end (None: no end date — ongoing, or its end not recorded), grade, the AE's outcome
    crs: list[tuple[float, float | None, int | None, str | None]] = field(default_factory=list)
    icans: list[tuple[float, float | None, int | None, str | None]] = field(default_factory=list)
    dlt_days: list[float] = field(default_factory=list)
    dlt_undated: bool = False
    dlt_not_evaluable: bool = False  # results/study.json ``dlt`` null: neither a DLT nor none (not evaluable)
    lldas_days: list[float] = field(default_factory=list)
    #: a subject who left the study (carried forward): its status and end of participation, as DM has them
    left: str | None = None


def _study_day(day1: dt.date, d: dt.date) -> int:
    delta = (d - day1).days
    return delta + 1 if delta >= 0 else delta


def _episodes(crf: JsonDict | None, flag: str) -> list[tuple[float, float | None, int | None, str | None]]:
    out = []
    for ae in as_list(crf.get("ae") if crf else None):
        start = num(ae.get("study_day"))
        if ae.get(flag) is True and start is not None:
            end = num(ae.get("end_study_day"))
            grade = num(ae.get("grade"))
            outcome = ae.get("outcome") if isinstance(ae.get("outcome"), str) else None
            out.append((start, end if end is not None and end >= start else None, int(grade) if grade else None,
                        outcome))
    return out


def _episode_text(start: float, end: float | None, grade: int | None, outcome: str | None) -> str:
    """``d4–8 G3``; with no end date ``d3–ongoing G2`` (outcome ongoing) or ``d3–end not recorded G2``."""
    until = fmt(end, 0) if end is not None else "ongoing" if outcome in ONGOING_OUTCOMES else "end not recorded"
    return f"d{fmt(start, 0)}–{until} G{grade or '?'}"


def _ae_days_by_source(crf: JsonDict | None) -> dict[str, float]:
    """Onset study day of each CRF AE by its source reference, to place DLT events that name their source
    instead of a day."""
    return {ref: day for ref, ae in aes_by_source(crf).items() if (day := num(ae.get("study_day"))) is not None}


def lanes(data: ReportData) -> list[Lane]:
    out = []
    summary = (data.run_report or {}).get("summary")
    carried = summary.get("subjects_carried_forward") if isinstance(summary, dict) else None
    left = {str(x) for x in carried} if isinstance(carried, list) else set()
    for s in data.subjects:
        if not s.get("day1"):
            continue
        sid = str(s.get("subject_id"))
        crf = data.crf(sid)
        last = last_study_day(s, crf)
        lane = Lane(sid, arm_of(s), last if last is not None else 1.0)
        if crf and isinstance(crf.get("lymphodepletion_start"), str):
            try:
                lane.ld_day = _study_day(dt.date.fromisoformat(str(s["day1"])),
                                         dt.date.fromisoformat(crf["lymphodepletion_start"]))
            except ValueError:
                lane.ld_day = None
        lane.crs = _episodes(crf, "crs")
        lane.icans = _episodes(crf, "icans")
        if sid in left and crf is not None:
            dm = as_dict(crf.get("dm"))
            end = dm.get("end_of_participation")
            lane.left = f"{dm.get('status') or 'left'}{f' ({end})' if end else ''}"
        ae_days = _ae_days_by_source(crf)
        events: set[str] = set()  # one event that meets two DLT rules is one DLT
        for ev in s.get("dlt_events") or []:
            day = None
            if isinstance(ev, dict):
                source = ev.get("source")
                if isinstance(source, str):
                    if without_history(source) in events:
                        continue
                    events.add(without_history(source))
                day = num(ev.get("study_day"))
                if day is None and isinstance(source, str):
                    day = ae_days.get(without_history(source))
            if day is not None:
                lane.dlt_days.append(day)
        lane.dlt_undated = s.get("dlt") is True and not lane.dlt_days
        lane.dlt_not_evaluable = "dlt" in s and s.get("dlt") is None
        lane.lldas_days = [d for v in as_list(s.get("visits"))
                           if v.get("lldas") is True and (d := num(v.get("study_day"))) is not None]
        out.append(lane)
    order = {a: i for i, a in enumerate(data.arms)}
    return sorted(out, key=lambda ln: (order.get(ln.arm, len(order)), ln.subject_id), reverse=True)


def _draw(ax: Axes, lns: list[Lane], arms: list[str], scale: float, zoom: bool) -> None:
    """Every lane, each kind of mark in one artist (a bar set, a line collection or one scatter per kind):
    the cost of drawing does not grow with a matplotlib artist per subject and mark."""
    if not lns:
        return
    ys = range(len(lns))
    ends = [min(ln.last_day, ZOOM_DAYS) if zoom else ln.last_day for ln in lns]
    ax.barh(list(ys), [(end - 1) / scale for end in ends], left=1 / scale, height=0.55,
            color=[arm_color(ln.arm, arms) for ln in lns], alpha=0.45, zorder=1)
    ld = [[(ln.ld_day / scale, y), (1 / scale, y)] for y, ln in zip(ys, lns, strict=True)
          if ln.ld_day is not None and ln.ld_day < 1]
    if ld:
        ax.add_collection(LineCollection(ld, colors="#555555", linewidths=1, zorder=1))
    ax.scatter([1 / scale] * len(lns), list(ys), marker=">", s=22, color="#111111", zorder=4)
    for episodes, color_e, dy in (([ln.crs for ln in lns], CRS_COLOR, 0.18),
                                  ([ln.icans for ln in lns], ICANS_COLOR, -0.18)):
        # an episode without an end date runs to the end of the lane (ongoing at the last follow-up, or its
        # end not recorded: the table says which)
        segments = [[(start / scale, y + dy), (((stop if stop is not None else ln.last_day) + 0.6) / scale, y + dy)]
                    for y, eps, ln in zip(ys, episodes, lns, strict=True) for start, stop, _grade, _out in eps]
        if segments:
            ax.add_collection(LineCollection(segments, colors=color_e, linewidths=3, capstyle="butt", zorder=3))
    dlt = [(d / scale, y) for y, ln in zip(ys, lns, strict=True) for d in ln.dlt_days]
    if dlt:
        ax.scatter([x for x, _ in dlt], [y for _, y in dlt], marker="X", s=40, color=DLT_COLOR, zorder=5)
    lldas = [(d / scale, y) for y, ln in zip(ys, lns, strict=True) for d in ln.lldas_days if not zoom or d <= ZOOM_DAYS]
    if lldas:
        ax.scatter([x for x, _ in lldas], [y for _, y in lldas], marker="D", s=12, color=LLDAS_COLOR,
                   edgecolors="white", linewidths=0.4, zorder=4)
    if not zoom:
        for y, ln in zip(ys, lns, strict=True):
            if ln.dlt_undated or ln.dlt_days:
                ax.annotate("DLT", (ln.last_day / scale, y), xytext=(4, -3), textcoords="offset points",
                            fontsize=6, color=DLT_COLOR)


def swimmer_section(data: ReportData) -> Section:
    sec = Section("swimmer", "Follow-up per subject (swimmer plot)",
                  "One lane per infused subject, grouped by dose level: bar from Day 1 (▶ infusion) to the "
                  "latest study day with data; grey line = lymphodepletion before Day 1; orange = CRS and "
                  "purple = ICANS episodes (onset to resolution, CRF AE domain; one without an end date runs to the "
                  "end of the lane, the table saying ongoing or end not recorded); red ✕ = DLT (results "
                  "dlt_events); green ◆ = visits in LLDAS. Left: the first five weeks in days; right: the "
                  "whole follow-up in weeks.")
    lns = lanes(data)
    if not lns:
        sec.no_data("no infused subject (Day 1) in results/study.json")
        return sec
    arms = data.arms
    with figure(11, 1.4 + 0.2 * len(lns)) as fig:
        ax_zoom, ax_all = fig.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [1, 2.2]})
        _draw(ax_zoom, lns, arms, 1.0, zoom=True)
        _draw(ax_all, lns, arms, 7.0, zoom=False)
        ax_zoom.set_xlim(-12, ZOOM_DAYS + 1)
        ax_zoom.set_xlabel("study day")
        ax_all.set_xlim(-2, max(ln.last_day for ln in lns) / 7 + 8)
        ax_all.set_xlabel("study week")
        ax_zoom.set_yticks(range(len(lns)))
        ax_zoom.set_yticklabels([f"{ln.subject_id} {ln.arm}{' (left)' if ln.left else ''}" for ln in lns],
                                fontsize=7)
        ax_zoom.set_ylim(-0.7, len(lns) - 0.3)
        for ax in (ax_zoom, ax_all):
            ax.grid(True, axis="x")
            ax.grid(False, axis="y")
        handles = [Line2D([0], [0], marker=">", color="#111111", linestyle="", label="infusion (Day 1)"),
                   Line2D([0], [0], color=CRS_COLOR, linewidth=3, label="CRS"),
                   Line2D([0], [0], color=ICANS_COLOR, linewidth=3, label="ICANS"),
                   Line2D([0], [0], marker="X", color=DLT_COLOR, linestyle="", label="DLT"),
                   Line2D([0], [0], marker="D", color=LLDAS_COLOR, linestyle="", markersize=4, label="in LLDAS"),
                   *[Line2D([0], [0], color=arm_color(a, arms), linewidth=6, alpha=0.45, label=a) for a in arms]]
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7,
                   bbox_to_anchor=(0.5, 1.0))
        fig.tight_layout()
        sec.blocks.append(FigureBlock(to_svg(fig, "Swimmer plot of follow-up per subject"), "Swimmer plot"))
    rows = []
    for ln in sorted(lns, key=lambda x: x.subject_id):
        first_lldas = min(ln.lldas_days) if ln.lldas_days else None
        rows.append([ln.subject_id, ln.arm, fmt(ln.last_day, 0),
                     ", ".join(_episode_text(*e) for e in ln.crs) or "–",
                     ", ".join(_episode_text(*e) for e in ln.icans) or "–",
                     ", ".join(f"d{fmt(d, 0)}" for d in ln.dlt_days)
                     or ("yes (no day)" if ln.dlt_undated else "not evaluable" if ln.dlt_not_evaluable else "–"),
                     fmt(first_lldas, 0), ln.left or "–"])
    sec.blocks.append(TableBlock(["Subject", "Arm", "Last study day", "CRS", "ICANS", "DLT", "First LLDAS day",
                                  "Left the study"], rows, "Events per subject, as plotted"))
    return sec
