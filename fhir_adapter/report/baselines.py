"""Baselines that are no visit's own value (``baselines`` of each subject in results/study.json): per subject
and parameter the value, its date and study day, and where it lies (before consent; in a visit's window when
that visit kept another result; between the visit windows). A baseline that is a visit's own value is flagged in
that visit and is not listed here.

The table names the records behind each baseline by resource type and count only; their references are in
results/study.json (``baselines[].sources``) — the report shows no EHR identifiers."""

from __future__ import annotations

from collections import Counter
from typing import Any

from fhir_adapter.report.blocks import Section, TableBlock, fmt
from fhir_adapter.report.data import ReportData, as_list, num


def _value(b: dict[str, Any]) -> str:
    x = num(b.get("value"))
    if x is None:
        return "–"
    text = f"{x:g}" if not float(x).is_integer() else str(int(x))
    comparator = b.get("comparator")
    unit = b.get("unit")
    return " ".join(str(p) for p in (comparator, text, unit) if p)


def _where(b: dict[str, Any]) -> str:
    if b.get("before_participation"):
        return "before consent"
    return f"in the {b['visit']} window, not the visit's pick" if b.get("visit") else "in no visit window"


def _kind(b: dict[str, Any]) -> str:
    return "before" if b.get("before_participation") else "window" if b.get("visit") else "between"


def _records(b: dict[str, Any]) -> str:
    kinds = Counter(str(s).split("/", 1)[0] for s in b.get("sources") or [] if isinstance(s, str))
    return ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items())) or "–"


def baselines_section(data: ReportData) -> Section:
    sec = Section("baselines", "Baselines that are no visit's value",
                  "A baseline is the last assessment on or before Day 1 inside the baseline look-back; where that "
                  "was no visit's own value — drawn before consent, in a visit's window when the visit kept another "
                  "result, or between the visit windows — it is listed here with its value, date and study day "
                  "(results/study.json baselines). Baselines that are a visit's own value are flagged in that "
                  "visit instead.")
    subjects = data.subjects
    if subjects and not any("baselines" in s for s in subjects):
        sec.no_data("baselines is not in results/study.json (written before the key existed)")
        return sec
    rows = [(str(s.get("subject_id") or "–"), b) for s in subjects for b in as_list(s.get("baselines"))]
    if not rows:
        sec.note("Every baseline of this run is a visit's own value.")
        return sec
    per_item: dict[str, list[dict[str, Any]]] = {}
    for _, b in rows:
        per_item.setdefault(str(b.get("item") or "–"), []).append(b)
    sec.blocks.append(TableBlock(
        ["Parameter", "Subjects", "Before consent", "In a visit's window, not its pick",
         "Between visit windows after consent"],
        [[item, str(len(bs)), *(str(sum(1 for b in bs if _kind(b) == k)) for k in ("before", "window", "between"))]
         for item, bs in sorted(per_item.items())],
        "Baselines that are no visit's value, per parameter"))
    sec.blocks.append(TableBlock(
        ["Subject", "Parameter", "Baseline", "Date", "Study day", "Where", "Records"],
        [[sid, str(b.get("item") or "–"), _value(b), str(b.get("date") or "–"), fmt(num(b.get("study_day")), 0),
          _where(b), _records(b)]
         for sid, b in sorted(rows, key=lambda r: (r[0], str(r[1].get("item"))))],
        "Per subject and parameter (the record references: results/study.json baselines[].sources)"))
    return sec
