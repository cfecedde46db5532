"""Disease activity: SLEDAI-2K and PGA per visit, and the LLDAS response rate over visits."""

from __future__ import annotations

from fhir_adapter.report.blocks import FigureBlock, Section, TableBlock, describe, fmt, percent
from fhir_adapter.report.data import ReportData, arm_of, as_list, num
from fhir_adapter.report.plotting import figure, to_svg
from fhir_adapter.report.visitplots import arm_legend, visit_panel


def _arm_map(data: ReportData) -> dict[str, str]:
    return {str(s.get("subject_id")): arm_of(s) for s in data.subjects}


def _summary_rows(data: ReportData, key: str, order: list[str]) -> list[list[str]]:
    values = data.visit_values(key)
    changes = data.visit_values(f"{key}_change")
    rows = []
    for v in order:
        if v not in values:
            continue
        n, mean, sd, med, lo, hi = describe(list(values[v].values()))
        cn, cmean, csd, *_ = describe(list(changes.get(v, {}).values()))
        rows.append([v, str(n), fmt(mean, 1), fmt(sd, 1), fmt(med, 1), f"{fmt(lo, 1)}–{fmt(hi, 1)}",
                     f"{fmt(cmean, 1)} ± {fmt(csd, 1)} (n={cn})" if cn else "–"])
    return rows


def disease_activity_section(data: ReportData) -> Section:
    sec = Section("disease-activity", "Disease activity: SLEDAI-2K and PGA",
                  "SLEDAI-2K total score and Physician Global Assessment (0–3) at each scheduled visit: one "
                  "thin line per subject (coloured by dose level), black line = mean over subjects with the "
                  "score at that visit, band = ± 1 SD. n under each visit = subjects with a value. Change = "
                  "value minus the subject's baseline, as derived in results/study.json.")
    order = data.visit_order()
    arm_map = _arm_map(data)
    panels = [(key, label) for key, label in (("sledai2k", "SLEDAI-2K"), ("pga", "PGA (0–3)"))
              if data.visit_values(key)]
    missing = [label for key, label in (("sledai2k", "SLEDAI-2K"), ("pga", "PGA")) if not data.visit_values(key)]
    if panels:
        with figure(11, 3.6 * len(panels)) as fig:
            axes = fig.subplots(len(panels), 1, squeeze=False)
            for (key, label), ax in zip(panels, axes[:, 0], strict=True):
                visit_panel(ax, data.visit_values(key), order, arm_map, data.arms, f"{label} per visit", label)
            arm_legend(axes[0, 0], data.arms, "mean_sd")
            fig.tight_layout()
            sec.blocks.append(FigureBlock(to_svg(fig, "SLEDAI-2K and PGA per visit"),
                                          "Per-subject lines and mean ± SD per visit"))
        for key, label in panels:
            sec.blocks.append(TableBlock(
                ["Visit", "n", "Mean", "SD", "Median", "Range", "Change from baseline, mean ± SD"],
                _summary_rows(data, key, order), f"{label} per visit"))
    for label in missing:
        sec.no_data(f"no {label} value in results/study.json visits")
    data.note_without_day1(sec)
    return sec


def lldas_section(data: ReportData) -> Section:
    sec = Section("lldas", "LLDAS response rate",
                  "Share of subjects in Lupus Low Disease Activity State at each visit, as derived in "
                  "results/study.json (lldas_rate): responders / n, where n = subjects whose LLDAS could be "
                  "assessed at that visit. The number above each bar is responders/n.")
    rates = [r for r in as_list(data.study.get("lldas_rate")) if isinstance(r.get("visit"), str)]
    if not rates:
        sec.no_data("lldas_rate is not in results/study.json")
        return sec
    order = data.visit_order()
    rates.sort(key=lambda r: (order.index(r["visit"]) if r["visit"] in order else len(order), r["visit"]))
    with figure(11, 3.4) as fig:
        ax = fig.subplots()
        xs = list(range(len(rates)))
        ys = [100 * (num(r.get("rate")) or 0.0) for r in rates]
        ax.bar(xs, ys, color="#54a24b", width=0.65, zorder=2)
        for x, y, r in zip(xs, ys, rates, strict=True):
            n = num(r.get("n"))
            label = f"{fmt(num(r.get('responders')), 0)}/{fmt(n, 0)}" if n else "n=0"
            ax.annotate(label, (x, y), xytext=(0, 3), textcoords="offset points", ha="center", fontsize=7)
        ax.set_xticks(xs)
        ax.set_xticklabels([r["visit"] for r in rates], fontsize=8)
        ax.set_ylim(0, 110)
        ax.set_ylabel("Subjects in LLDAS (%)")
        ax.set_title("LLDAS response rate per visit")
        fig.tight_layout()
        sec.blocks.append(FigureBlock(to_svg(fig, "LLDAS response rate per visit"), "LLDAS rate per visit"))
    sec.blocks.append(TableBlock(
        ["Visit", "n assessed", "Responders", "Rate"],
        [[r["visit"], fmt(num(r.get("n")), 0), fmt(num(r.get("responders")), 0),
          percent(v) if (v := num(r.get("rate"))) is not None else "–"] for r in rates],
        "LLDAS response per visit (results/study.json lldas_rate)"))
    return sec
