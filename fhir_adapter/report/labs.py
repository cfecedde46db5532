"""Renal and serological markers over time: UPCR, 24-hour urine protein, complement C3/C4, anti-dsDNA."""

from __future__ import annotations

from fhir_adapter.report.blocks import FigureBlock, Section, TableBlock, fmt, quartiles
from fhir_adapter.report.data import ReportData, arm_of, as_dict, as_list, num
from fhir_adapter.report.plotting import figure, to_svg
from fhir_adapter.report.visitplots import arm_legend, visit_panel

#: (results key, CRF item, label, unit, log axis)
LABS = (
    ("upcr_mg_mg", "upcr", "UPCR", "mg/mg", False),
    ("protein_24h_g", "protein_24h", "24-h urine protein", "g/24 h", False),
    ("c3", "c3", "Complement C3", "g/L", False),
    ("c4", "c4", "Complement C4", "g/L", False),
    ("anti_dsdna", "anti_dsdna", "Anti-dsDNA", "IU/mL", True),
)


def _crf_visit_values(data: ReportData, item: str) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for sid, crf in data.crfs.items():
        for v in as_list(crf.get("visits")):
            if v.get("unscheduled") or not isinstance(v.get("visit"), str):
                continue
            x = num(as_dict(as_dict(v.get("values")).get(item)).get("value"))
            if x is not None:
                out.setdefault(v["visit"], {})[sid] = x
    return out


def lab_values(data: ReportData, key: str, item: str) -> tuple[dict[str, dict[str, float]], str]:
    """Per-visit values of a marker: from results/study.json, else the CRF visit's selected value."""
    values = data.visit_values(key)
    if values:
        return values, "results/study.json"
    values = _crf_visit_values(data, item)
    return values, ("CRF visit values" if values else "")


def labs_section(data: ReportData) -> Section:
    sec = Section("labs", "Renal and serological markers",
                  "Urine protein/creatinine ratio, 24-hour urine protein, complement C3 and C4 and anti-dsDNA "
                  "at each scheduled visit: thin line per subject (coloured by dose level), black line = "
                  "median over subjects, band = interquartile range; anti-dsDNA on a logarithmic axis. Values "
                  "come from results/study.json; where a marker is not there yet, from the value each CRF "
                  "visit selected (the source is named under the table).")
    order = data.visit_order()
    arm_map = {str(s.get("subject_id")): arm_of(s) for s in data.subjects}
    arm_map.update({sid: arm_of(c) for sid, c in data.crfs.items() if sid not in arm_map})
    series = []
    for key, item, label, unit, log in LABS:
        values, origin = lab_values(data, key, item)
        if values:
            series.append((label, unit, log, values, origin))
        else:
            sec.no_data(f"{label}: no value in results/study.json ({key}) or in the CRF visits ({item})")
    if not series:
        return sec
    ncols = 2
    nrows = (len(series) + 1) // ncols
    with figure(11, 3.2 * nrows) as fig:
        axes = fig.subplots(nrows, ncols, squeeze=False)
        for i, ax in enumerate(axes.flat):
            if i >= len(series):
                ax.set_visible(False)
                continue
            label, unit, log, values, _ = series[i]
            visit_panel(ax, values, order, arm_map, data.arms, label, unit, summary="median_iqr", log=log)
        arm_legend(axes[0, ncols - 1], data.arms, "median_iqr")
        fig.tight_layout()
        sec.blocks.append(FigureBlock(to_svg(fig, "Renal and serological markers per visit"),
                                      "Markers per visit: median and IQR, per-subject lines"))
    visits = [v for v in order if any(v in s[3] for s in series)]
    rows = []
    for v in visits:
        cells = [v]
        for _, _, _, values, _ in series:
            vals = list(values.get(v, {}).values())
            q = quartiles(vals)
            if q:
                cells.append(f"{fmt(q[1], 2)} ({fmt(q[0], 2)}–{fmt(q[2], 2)}) n={len(vals)}")
            else:
                cells.append(f"{fmt(vals[0], 2)} n=1" if vals else "–")
        rows.append(cells)
    origins = "; ".join(f"{label}: {origin}" for label, _, _, _, origin in series)
    sec.blocks.append(TableBlock(["Visit", *[f"{s[0]} ({s[1]})" for s in series]], rows,
                                 f"Median (IQR) per visit — source: {origins}"))
    data.note_without_day1(sec)
    return sec
