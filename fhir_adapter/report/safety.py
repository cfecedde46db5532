"""Safety: treatment-emergent adverse events by dose level — per-subject counts from results/study.json, and
TEAEs by term and maximum grade from the CRF AE domain."""

from __future__ import annotations

import json
import re
from typing import Any

from fhir_adapter.report.blocks import Section, TableBlock, fmt, pct
from fhir_adapter.report.data import ReportData, aes_by_source, arm_of, as_dict, as_list, num, without_history

SUBJECT_KEYS = ("teae_count", "serious_teae_count", "max_teae_grade", "crs_max_grade", "icans_max_grade", "dlt")


def _infused(s: dict[str, Any]) -> bool:
    """A subject with Day 1: only an infused subject can have a treatment-emergent event (the denominator of
    every TEAE rate, as results/study.json teae_summary counts them)."""
    return bool(s.get("day1"))


def _present(key: str) -> Any:
    """A CRS or ICANS the subject had, whatever its grade (one with no grade recorded is one too)."""
    return lambda s: as_dict(s.get(key)).get("present") is True or (num(s.get(f"{key}_max_grade")) or 0) >= 1


def _overview(data: ReportData, arms: list[str]) -> TableBlock | None:
    subjects = [s for s in data.subjects if any(k in s for k in SUBJECT_KEYS) and _infused(s)]
    if not subjects:
        return None
    cols = [*arms, "Total"]

    def row(label: str, test: Any, among: Any = None) -> list[str]:
        """n (%) of the arm's subjects (``among``: of those it accepts) that ``test`` accepts."""
        cells = []
        for arm in cols:
            members = [s for s in subjects if (arm == "Total" or arm_of(s) == arm) and (among is None or among(s))]
            cells.append(pct(sum(1 for s in members if test(s)), len(members)))
        return [label, *cells]

    def dlt_evaluable(s: dict[str, Any]) -> bool:  # dlt null: not evaluable, counted neither way
        return s.get("dlt") is not None

    def grade_at_least(key: str, g: int) -> Any:
        return lambda s: (num(s.get(key)) or 0) >= g

    n_row = ["Subjects (N)", *[str(sum(1 for s in subjects if c == "Total" or arm_of(s) == c)) for c in cols]]
    rows = [
        n_row,
        row("Any TEAE", lambda s: (num(s.get("teae_count")) or 0) > 0),
        row("Serious TEAE", lambda s: (num(s.get("serious_teae_count")) or 0) > 0),
        row("TEAE grade ≥ 3", grade_at_least("max_teae_grade", 3)),
        row("CRS, any grade", _present("crs")),
        row("CRS grade ≥ 3", grade_at_least("crs_max_grade", 3)),
        row("ICANS, any grade", _present("icans")),
        row("ICANS grade ≥ 3", grade_at_least("icans_max_grade", 3)),
        ["DLT-evaluable subjects (N)",
         *[str(sum(1 for s in subjects if (c == "Total" or arm_of(s) == c) and dlt_evaluable(s))) for c in cols]],
        row("DLT, n (%) of the DLT-evaluable", lambda s: s.get("dlt") is True, dlt_evaluable),
    ]
    for g in range(1, 6):
        rows.append(row(f"Maximum TEAE grade = {g}", lambda s, g=g: num(s.get("max_teae_grade")) == g))
    return TableBlock(["Subjects with …", *cols], rows,
                      "Subjects with TEAEs by dose level, n (%) of N infused subjects (Day 1 known; "
                      "results/study.json per-subject counts); CRS/ICANS of any grade include one whose grade is "
                      "not recorded; DLTs of the subjects evaluable for DLT (a subject not evaluable counts "
                      "neither way)")


def _by_term(data: ReportData, arms: list[str]) -> tuple[TableBlock | None, int]:
    """Subjects per TEAE term by dose level and maximum grade (the ``teaes`` of results/study.json); and the
    number of CRF AEs of subjects without safety results (no TEAE flag)."""
    arm_by_subject = {str(s.get("subject_id")): arm_of(s) for s in data.subjects}
    for sid, crf in data.crfs.items():
        arm_by_subject.setdefault(sid, arm_of(crf))
    rows_by_id = {str(s.get("subject_id")): s for s in data.subjects}
    worst: dict[str, dict[str, int]] = {}  # term -> subject -> worst grade (0 = grade unknown)
    unflagged = 0
    for sid in arm_by_subject:
        row = rows_by_id.get(sid)
        if row is None or "teaes" not in row:
            unflagged += len(as_list((data.crf(sid) or {}).get("ae")))
            continue
        for ae in as_list(row.get("teaes")):
            term = str(ae.get("term") or "(no term)")
            g = int(num(ae.get("grade")) or 0)
            per = worst.setdefault(term, {})
            per[sid] = max(per.get(sid, 0), g)
    if not worst:
        return None, unflagged
    # N: the subjects whose TEAEs are counted (a CRF without results is only in the note below)
    n_arm = {a: sum(1 for sid, s in arm_by_subject.items()
                    if s == a and "teaes" in rows_by_id.get(sid, {}) and _infused(rows_by_id[sid]))
             for a in arms}
    rows = []
    for term in sorted(worst, key=lambda t: (-len(worst[t]), t)):
        per = worst[term]
        cells = [term]
        for arm in arms:
            grades = [g for s, g in per.items() if arm_by_subject.get(s) == arm]
            cells.append(f"{len(grades)} / {sum(1 for g in grades if g >= 3)}" if grades else "–")
        total = list(per.values())
        cells.append(f"{len(total)} / {sum(1 for g in total if g >= 3)}")
        unknown = sum(1 for x in total if x == 0)  # no known grade for the term (a known one is the worst)
        cells.append(" ".join([*(f"G{g}:{sum(1 for x in total if x == g)}" for g in range(1, 6)
                                 if any(x == g for x in total)), *([f"unknown:{unknown}"] if unknown else [])])
                     if unknown < len(total) else "grade not recorded")
        rows.append(cells)
    header = ["TEAE term", *[f"{a} (N={n_arm[a]})" for a in arms], "Total", "Subjects by maximum grade"]
    return TableBlock(header, rows, "TEAEs by term: subjects with the term, any grade / grade ≥ 3, per dose level "
                                    "(CRF AE domain, events flagged treatment-emergent)"), unflagged


def _set_apart(data: ReportData) -> TableBlock | None:
    """The AEs and DLT assessments a reader must not miss because no count shows them: AEs with no onset date
    (counted treatment-emergent, docs/clinical-rules.md), AEs before Day 1 (not treatment-emergent) and the
    subjects not evaluable for DLT, with the reason the derivation gives."""
    rows = []
    for s in data.subjects:
        sid, arm = str(s.get("subject_id")), arm_of(s)
        spids = _ae_spids(data.crf(sid))
        for key, what in (("onset_unknown_aes", "onset date unknown: counted as a TEAE"),
                          ("pre_infusion_aes", "before the infusion: not a TEAE")):
            for ae in as_list(s.get(key)):
                grade = num(ae.get("grade"))
                source = ae.get("source")
                rows.append([sid, arm, what, f"{ae.get('term') or '(no term)'}"
                             + (f", grade {fmt(grade, 0)}" if grade is not None else ", grade not recorded"),
                             spids.get(without_history(source), "–") if isinstance(source, str) else "–"])
        reasons = s.get("dlt_not_evaluable")
        for reason in reasons if isinstance(reasons, list) else []:
            rows.append([sid, arm, "not evaluable for DLT", _without_references(str(reason), spids), "–"])
    if not rows:
        return None
    return TableBlock(["Subject", "Arm", "What", "Event / reason", "AE (CRF AESPID)"], rows,
                      "Adverse events outside the TEAE counts or counted without an onset date, and subjects not "
                      "evaluable for DLT (results/study.json onset_unknown_aes, pre_infusion_aes, dlt_not_evaluable)")


#: an EHR reference to an adverse event, as the derivations cite one (``AdverseEvent/<id>/_history/<version>``)
_AE_REFERENCE = re.compile(r"AdverseEvent/[A-Za-z0-9\-.]{1,64}(?:/_history/[A-Za-z0-9\-.]{1,64})?")


def _ae_spids(crf: dict[str, Any] | None) -> dict[str, str]:
    """``AdverseEvent/<id>`` -> the CRF AE's sponsor id (AESPID), else its term: what the report shows in place
    of an EHR identifier (docs/report.md: the report shows none)."""
    return {ref: str(ae.get("spid") or ae.get("term") or "–") for ref, ae in aes_by_source(crf).items()}


def _without_references(text: str, spids: dict[str, str]) -> str:
    """``text`` with each EHR adverse-event reference replaced by the AE's AESPID (else "an adverse event")."""
    return _AE_REFERENCE.sub(lambda m: spids.get(without_history(m.group(0)), "an adverse event"), text)


def _teae_summary(data: ReportData, arms: list[str]) -> list[TableBlock]:
    """results/study.json ``teae_summary`` as derived: per-arm counts and, when given, subjects per term."""
    summary = data.study.get("teae_summary")
    by_arm = as_list(as_dict(summary).get("by_arm")) if isinstance(summary, dict) else as_list(summary)
    if not by_arm:
        if isinstance(summary, dict) and summary:
            scalars = [[str(k), _cell(v)] for k, v in summary.items() if not isinstance(v, dict | list)]
            return [TableBlock(["Item", "Value"], scalars, "TEAE summary (results/study.json teae_summary)")] \
                if scalars else []
        return []
    order = {a: i for i, a in enumerate(arms)}
    by_arm = sorted(by_arm, key=lambda r: (order.get(str(r.get("arm")), len(order)), str(r.get("arm"))))
    grades = ["1", "2", "3", "4", "5", "unknown"]
    rows = []
    for r in by_arm:
        n = int(num(r.get("n_subjects")) or 0)

        def count(v: Any, n: int = n) -> str:
            k = num(v)
            return pct(int(k), n) if k is not None and n else _cell(v)

        max_grade = as_dict(r.get("by_max_grade"))
        rows.append([str(r.get("arm")), str(n), count(r.get("any_teae")), count(r.get("serious")),
                     count(r.get("related")), count(as_dict(r.get("crs")).get("subjects")),
                     count(as_dict(r.get("icans")).get("subjects")),
                     *[_cell(max_grade.get(g)) for g in grades]])
    blocks = [TableBlock(["Arm", "N", "Any TEAE", "Serious", "Related", "CRS", "ICANS",
                          *[f"Max grade {g}" for g in grades]], rows,
                         "Subjects with TEAEs per arm, n (%) of N, and by maximum grade "
                         "(results/study.json teae_summary)")]
    terms: dict[str, dict[str, str]] = {}
    for r in by_arm:
        for t in as_list(r.get("by_term")):
            subjects, events = num(t.get("subjects")), num(t.get("events"))
            terms.setdefault(str(t.get("term") or "(no term)"), {})[str(r.get("arm"))] = \
                f"{fmt(subjects, 0)} ({fmt(events, 0)})"
    if terms:
        arm_names = [str(r.get("arm")) for r in by_arm]

        def total(term: str) -> int:
            return sum(int(num(t.get("subjects")) or 0) for r in by_arm for t in as_list(r.get("by_term"))
                       if str(t.get("term") or "(no term)") == term)

        blocks.append(TableBlock(
            ["TEAE term", *arm_names],
            [[term, *[terms[term].get(a, "–") for a in arm_names]]
             for term in sorted(terms, key=lambda t: (-total(t), t))],
            "TEAEs by term per arm: subjects (events) (results/study.json teae_summary)"))
    return blocks


def _cell(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, str):
        return v
    return json.dumps(v, ensure_ascii=False)


def safety_section(data: ReportData) -> Section:
    sec = Section("safety", "Treatment-emergent adverse events",
                  "TEAEs by dose level. Per-subject counts and maximum grades (TEAE, CRS, ICANS, DLT) are the "
                  "derived values of results/study.json; the table by term counts subjects once per term at "
                  "their worst grade, from the CRF AE records flagged treatment-emergent. Grades are CTCAE "
                  "(ASTCT consensus grading for CRS and ICANS).")
    arms = data.arms
    summary = _teae_summary(data, arms)
    sec.blocks.extend(summary)
    if not summary:
        sec.no_data("teae_summary (subjects with TEAEs per arm, by maximum grade and term) is not in "
                    "results/study.json")
    overview = _overview(data, arms)
    if overview:
        sec.blocks.append(overview)
    else:
        sec.no_data("per-subject TEAE counts (teae_count, max_teae_grade, crs/icans_max_grade, dlt) are not in "
                    "results/study.json")
    by_term, unflagged = _by_term(data, arms)
    if by_term:
        sec.blocks.append(by_term)
    else:
        sec.no_data("no CRF adverse event flagged treatment-emergent")
    if unflagged:
        sec.note(f"{unflagged} CRF adverse event(s) carry no TEAE flag and are not counted by term.")
    apart = _set_apart(data)
    if apart:
        sec.blocks.append(apart)
    return sec
