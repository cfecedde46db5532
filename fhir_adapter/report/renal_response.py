"""The lupus nephritis renal response section: complete / partial / no response per visit among the graded
subjects, from ``renal_response`` of results/study.json (docs/clinical-rules.md#renal-response)."""

from __future__ import annotations

from collections import Counter

from fhir_adapter.report.blocks import FigureBlock, Section, TableBlock, pct
from fhir_adapter.report.data import ReportData, as_list
from fhir_adapter.report.plotting import figure, to_svg

GRADES: tuple[tuple[str, str, str], ...] = (
    ("complete", "Complete", "#54a24b"), ("partial", "Partial", "#eeca3b"), ("none", "None", "#e45756"),
)


def has_renal_response(data: ReportData) -> bool:
    """The study grades a renal response (renal.yaml ``response.enabled``): some subject has one."""
    return any(isinstance(s.get("renal_response"), dict) for s in data.subjects)


def renal_response_section(data: ReportData) -> Section:
    sec = Section("renal-response", "Renal response",
                  "Complete, partial or no renal response at each visit after Day 1 among the subjects graded "
                  "there (results/study.json renal_response; thresholds in the settings below): complete = "
                  "proteinuria below the complete threshold with stable kidney function, partial = the required "
                  "reduction from baseline to below the partial threshold.")
    by_visit: dict[str, Counter[str]] = {}
    for s in data.subjects:
        rr = s.get("renal_response")
        if not isinstance(rr, dict):
            continue
        for graded in as_list(rr.get("visits")):
            visit, response = graded.get("visit"), graded.get("response")
            if isinstance(visit, str) and response in ("complete", "partial", "none"):
                by_visit.setdefault(visit, Counter())[str(response)] += 1
    if not by_visit:
        sec.no_data("no graded renal response in results/study.json (renal.yaml response.enabled)")
        return sec
    order = data.visit_order()
    visits = sorted(by_visit, key=lambda v: (order.index(v) if v in order else len(order), v))
    with figure(11, 3.4) as fig:
        ax = fig.subplots()
        xs = list(range(len(visits)))
        bottom = [0.0] * len(visits)
        for key, label, colour in GRADES:
            ys = [100 * by_visit[v][key] / max(1, sum(by_visit[v].values())) for v in visits]
            ax.bar(xs, ys, bottom=bottom, color=colour, width=0.65, label=label, zorder=2)
            bottom = [b + y for b, y in zip(bottom, ys, strict=True)]
        ax.set_xticks(xs)
        ax.set_xticklabels(visits, fontsize=8)
        ax.set_ylim(0, 105)
        ax.set_ylabel("Graded subjects (%)")
        ax.set_title("Renal response per visit")
        ax.legend(fontsize=7, loc="upper left")
        fig.tight_layout()
        sec.blocks.append(FigureBlock(to_svg(fig, "Renal response per visit"), "Renal response per visit"))
    rows: list[list[str]] = []
    for visit in visits:
        c = by_visit[visit]
        n = sum(c.values())
        rows.append([visit, str(n), *(pct(c[key], n) for key, _, _ in GRADES)])
    sec.blocks.append(TableBlock(["Visit", "Graded", "Complete", "Partial", "None"], rows,
                                 "Renal response per visit (results/study.json renal_response)"))
    return sec
