"""The HTML report over a hand-made run output that follows the results contract (report_fixture.py)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from fhir_adapter.cli.commands import main
from fhir_adapter.report import ReportError, build_report
from fhir_adapter.report.assemble import SECTIONS, sections
from fhir_adapter.report.blocks import FigureBlock, NoteBlock, Section, TableBlock
from fhir_adapter.report.data import load
from fhir_adapter.report.swimmer import swimmer_section
from tests.report import report_fixture as fixture

SECTION_IDS = ["summary", "disease-activity", "lldas", "kinetics", "swimmer", "safety", "labs", "baselines",
               "completeness", "settings"]


def _section_html(html: str, sid: str) -> str:
    m = re.search(rf'<section id="{sid}".*?</section>', html, re.S)
    assert m, f"section {sid} missing"
    return m.group(0)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Section]:
    """Every section of the complete fixture, made once for the tests that only read them."""
    out = fixture.write(tmp_path_factory.mktemp("report") / "out")
    return {s.id: s for s in sections(load(out))}


def _table(sec_blocks: Sequence[object], caption_start: str) -> TableBlock:
    return next(b for b in sec_blocks if isinstance(b, TableBlock) and b.caption.startswith(caption_start))


def test_every_section_has_content_and_no_gaps(built: dict[str, Section]) -> None:
    assert list(built) == SECTION_IDS
    assert len(SECTIONS) == len(SECTION_IDS) + 1   # + the renal response, shown only where it was graded
    for s in built.values():
        assert any(isinstance(b, FigureBlock | TableBlock) for b in s.blocks), s.id
        assert not [b.text for b in s.blocks if isinstance(b, NoteBlock) and b.nodata], s.id


def test_sections_follow_the_endpoints_in_study_json(tmp_path: Path) -> None:
    out = fixture.write(tmp_path / "out")
    study_file = out / "results" / "study.json"
    study = json.loads(study_file.read_text(encoding="utf-8"))
    study["endpoints"] = ["sledai2k", "pga", "glucocorticoids", "lldas", "renal", "immunology"]
    study_file.write_text(json.dumps(study), encoding="utf-8")
    assert [s.id for s in sections(load(out))] == [i for i in SECTION_IDS if i not in ("kinetics", "safety")]
    for k, subject in enumerate(study["subjects"]):
        subject["renal_response"] = {"measure": "upcr", "visits": [
            {"visit": "W24", "response": ("complete", "partial", "none")[k % 3]}]}
    study_file.write_text(json.dumps(study), encoding="utf-8")
    renal = next(s for s in sections(load(out)) if s.id == "renal-response")
    table = _table(renal.blocks, "Renal response per visit")
    n = len(study["subjects"])
    assert table.rows[0][:2] == ["W24", str(n)]


def test_self_contained_and_reproducible(run_out: Path, tmp_path: Path) -> None:
    first = build_report(run_out).read_text(encoding="utf-8")
    second = build_report(run_out, tmp_path / "again").read_text(encoding="utf-8")
    assert first == second  # svg.hashsalt and date-free metadata: byte-identical
    assert "<script" not in first and "<link" not in first and "<img" not in first
    assert not re.search(r'(src|href)="(https?:)?//', first)
    assert first.count("<svg") == 7  # disease, LLDAS, kinetics x2, swimmer, labs, completeness
    for sid in SECTION_IDS:
        _section_html(first, sid)


def test_summary_shows_dose_escalation_and_rp2d(built: dict[str, Section]) -> None:
    summary = built["summary"]
    doses = _table(summary.blocks, "Dose levels")
    assert ["DL3", "2", "2", "2", "1", "stay"] in doses.rows
    rp2d = _table(summary.blocks, "Recommended phase 2 dose")
    assert rp2d.rows[0][:2] == ["DL3", "3+3"]
    enrol = dict(_table(summary.blocks, "Enrolment").rows)
    assert enrol["Infused (Day 1 known)"] == "8"
    assert enrol["Follow-up, latest study day with data: median (range)"] == "365 (365–365) days, n=8"
    assert enrol["Left the study (withdrawn, off-study): data read before, carried forward"] == "1"


def test_lldas_rate_table_reads_the_results(built: dict[str, Section]) -> None:
    sec = built["lldas"]
    rows = {r[0]: r for r in _table(sec.blocks, "LLDAS response").rows}
    expected = {r["visit"]: r for r in fixture.study_json()["lldas_rate"]}
    assert set(rows) == set(expected)
    w52 = expected["W52"]
    assert rows["W52"][:3] == ["W52", str(w52["n"]), str(w52["responders"])]
    # the rate in percent, half up (1 of 8 is 13%, not the 12% of Python's half-to-even formatting)
    for visit, r in expected.items():
        if r["rate"] is not None:
            shown = Decimal(repr(100 * r["rate"])).quantize(Decimal(1), rounding=ROUND_HALF_UP)
            assert rows[visit][3] == f"{shown}%"


def test_kinetics_marks_cmax_and_tables_by_dose_level(built: dict[str, Section]) -> None:
    sec = built["kinetics"]
    per_subject = _table(sec.blocks, "Kinetic parameters per subject")
    first = per_subject.rows[0]
    assert first[:5] == ["LCAR-101", "DL1", "10,000", "{copies}/ug{DNA}", "10"]
    svg = next(b.svg for b in sec.blocks if isinstance(b, FigureBlock))
    assert "symlog" not in svg and "<svg" in svg
    by_arm = _table(sec.blocks, "Kinetic parameters by dose level")
    assert [r[0] for r in by_arm.rows] == ["DL1", "DL2", "DL3", "EXP"]


def test_the_cmax_star_sits_on_the_sample_it_was_measured_in(tmp_path: Path) -> None:
    """Tmax is days after the infusion (11.0 in the fixture), the axis the study day (Day 1 = the infusion's day):
    ★ and the Tmax line go on the peak sample's study day, never at x = Tmax (a day early)."""
    import matplotlib.pyplot as plt
    import numpy as np

    from fhir_adapter.report import kinetics

    data = load(fixture.write(tmp_path / "out"))
    profs, _, _ = kinetics.profiles(data)
    assert profs
    for p in profs:
        peak = max(y for _, y, blq in p.points if not blq)
        assert p.cmax == peak and p.cmax_day == next(x for x, y, blq in p.points if y == peak and not blq)
        fig, ax = plt.subplots()
        try:
            kinetics._draw(ax, p, "#000000", small=True)
            assert np.asarray(ax.collections[-1].get_offsets()).tolist() == [[p.cmax_day, peak]]
            dotted = [np.asarray(line.get_xdata()).tolist() for line in ax.lines[1:]]
            assert dotted == [[p.cmax_day, p.cmax_day]]
        finally:
            plt.close(fig)
    tmax = {str(s["subject_id"]): s["kinetics"]["tmax_day"] for s in data.subjects}
    assert any(p.cmax_day != tmax[p.subject_id] for p in profs), "the fixture tells study day from Tmax"


def test_a_subject_without_day1_is_named_not_silently_left_off_the_kinetics(tmp_path: Path) -> None:
    out = fixture.write(tmp_path / "out")
    path = next((out / "crf").glob("*.json"))
    crf = json.loads(path.read_text(encoding="utf-8"))
    for f in crf["findings"]:
        f["study_day"] = None  # no Day 1: no study day
    path.write_text(json.dumps(crf), encoding="utf-8")
    from fhir_adapter.report.kinetics import kinetics_section

    notes = [b.text for b in kinetics_section(load(out)).blocks if isinstance(b, NoteBlock)]
    assert any(crf["subject_id"] in n and "no Day 1" in n for n in notes), notes


def test_swimmer_lists_crs_icans_and_dlt(built: dict[str, Section]) -> None:
    sec = built["swimmer"]
    rows = {r[0]: r for r in _table(sec.blocks, "Events per subject").rows}
    assert rows["LCAR-106"][3:6] == ["d4–8 G3", "d7–10 G3", "d7"]
    assert rows["LCAR-101"][5] == "–"


def test_per_visit_sections_name_the_subjects_without_day1(tmp_path: Path) -> None:
    """A subject with results but no Day 1 has no study visits: the disease activity and the markers sections
    name it instead of showing n smaller than the enrolled without a word."""
    out = fixture.write(tmp_path / "out")
    before = {s.id: s for s in sections(load(out))}
    assert not any(isinstance(b, NoteBlock) and "no Day 1" in b.text
                   for sid in ("disease-activity", "labs") for b in before[sid].blocks)

    def no_day1(study: dict[str, Any]) -> None:
        study["subjects"][0]["day1"] = None
    _edit_study(out, no_day1)
    built = {s.id: s for s in sections(load(out))}
    for sid in ("disease-activity", "labs"):
        notes = [b.text for b in built[sid].blocks if isinstance(b, NoteBlock)]
        assert any("no Day 1" in n and fixture.subject_id(0) in n for n in notes), (sid, notes)


def test_swimmer_says_an_open_episode_a_subject_who_left_and_one_dlt_per_event(tmp_path: Path) -> None:
    """A CRS with no end date is not drawn or listed as resolved on its onset day: the table says ongoing (or
    end not recorded) and the bar runs to the end of the lane; a subject who left is named as such; one event
    that meets two DLT rules is one DLT."""
    from fhir_adapter.report.swimmer import lanes

    out = fixture.write(tmp_path / "out")
    first = json.loads((out / "crf" / "LCAR-101.json").read_text(encoding="utf-8"))
    crs = next(a for a in first["ae"] if a["crs"])
    crs.update(end_study_day=None, outcome="ongoing")
    (out / "crf" / "LCAR-101.json").write_text(json.dumps(first), encoding="utf-8")
    second = json.loads((out / "crf" / "LCAR-102.json").read_text(encoding="utf-8"))
    next(a for a in second["ae"] if a["crs"]).update(end_study_day=None, outcome=None)
    (out / "crf" / "LCAR-102.json").write_text(json.dumps(second), encoding="utf-8")

    def twice(study: dict[str, Any]) -> None:
        s = next(x for x in study["subjects"] if x["dlt_events"])
        s["dlt_events"].append({**s["dlt_events"][0], "rule": "another-rule"})
    _edit_study(out, twice)
    data = load(out)
    rows = {r[0]: r for r in _table(swimmer_section(data).blocks, "Events per subject").rows}
    assert rows["LCAR-101"][3] == f"d{crs['study_day']}–ongoing G{crs['grade']}"
    assert rows["LCAR-102"][3].startswith("d") and "–end not recorded G" in rows["LCAR-102"][3]
    lane = next(ln for ln in lanes(data) if ln.subject_id == "LCAR-101")
    assert lane.crs[0][1] is None and lane.last_day > crs["study_day"]
    dlt = next(r for r in rows.values() if r[5].startswith("d"))
    assert "," not in dlt[5], dlt
    left = [r for r in rows.values() if r[7] != "–"]
    carried = json.loads((out / "run-report.json").read_text())["summary"]["subjects_carried_forward"]
    assert [r[0] for r in left] == carried and first["subject_id"] not in carried


def test_teae_by_term_counts_subjects_once_at_worst_grade(built: dict[str, Section]) -> None:
    sec = built["safety"]
    by_term = {r[0]: r for r in _table(sec.blocks, "TEAEs by term: subjects with").rows}
    # neutropenia: grade 3 for odd subjects (one per dose level), grade 2 for even ones
    assert by_term["Neutropenia"][1:6] == ["2 / 1", "2 / 1", "2 / 1", "2 / 1", "8 / 4"]
    derived = _table(sec.blocks, "Subjects with TEAEs per arm")
    assert [r[0] for r in derived.rows] == ["DL1", "DL2", "DL3", "EXP"]  # dose-level order, not file order
    assert derived.rows[2][:4] == ["DL3", "2", "2 (100%)", "2 (100%)"]
    assert _table(sec.blocks, "TEAEs by term per arm").rows == [["Neutropenia", "2 (2)", "2 (2)", "2 (2)", "2 (2)"]]
    overview = {r[0]: r for r in _table(sec.blocks, "Subjects with TEAEs by dose level").rows}
    assert overview["DLT-evaluable subjects (N)"][1:] == ["2", "2", "2", "2", "8"]
    assert overview["DLT, n (%) of the DLT-evaluable"][1:] == ["0 (0%)", "0 (0%)", "1 (50%)", "0 (0%)", "1 (13%)"]


def _edit_study(out: Path, edit: object) -> None:
    path = out / "results" / "study.json"
    study = json.loads(path.read_text(encoding="utf-8"))
    edit(study)  # type: ignore[operator]
    path.write_text(json.dumps(study), encoding="utf-8")


def test_dlt_rates_are_of_the_evaluable_and_what_no_count_shows_is_listed(tmp_path: Path) -> None:
    """A subject not evaluable for DLT (``dlt`` null) counts neither way: the DLT rate is of the evaluable
    subjects, as the dose-level table's; the swimmer table says "not evaluable", not "–" (no DLT); AEs before
    Day 1, AEs without an onset date (counted as TEAEs) and the reasons a subject is not evaluable for DLT are
    listed (docs/clinical-rules.md: the report lists them) — by the CRF AE's AESPID, never the EHR's reference
    (docs/report.md: the report shows no EHR identifiers)."""
    out = fixture.write(tmp_path / "out")
    crf_path = out / "crf" / f"{fixture.subject_id(0)}.json"
    crf = json.loads(crf_path.read_text(encoding="utf-8"))
    crf["ae"][0]["spid"] = "101-AE007"
    crf_path.write_text(json.dumps(crf), encoding="utf-8")
    in_crf = f"AdverseEvent/{crf['ae'][0]['source']['id']}/_history/1"
    pre = {"term": "Nausea", "grade": 2, "source": "AdverseEvent/pre-1/_history/1", "teae_case": "pre-infusion"}
    unknown_onset = {"term": "Rash", "grade": None, "source": in_crf}

    def edit(study: dict[str, object]) -> None:
        rows = study["subjects"]
        assert isinstance(rows, list)
        rows[4].update(dlt=None, dlt_not_evaluable=["DLT window not completed: last data on study day 5"])
        rows[0].update(pre_infusion_aes=[pre], onset_unknown_aes=[unknown_onset],
                       dlt_not_evaluable=[f"{in_crf}: grade 3 CRS resolution not recorded"])

    _edit_study(out, edit)
    built = {s.id: s for s in sections(load(out))}
    overview = {r[0]: r for r in _table(built["safety"].blocks, "Subjects with TEAEs by dose level").rows}
    assert overview["Subjects (N)"][1:] == ["2", "2", "2", "2", "8"]
    assert overview["DLT-evaluable subjects (N)"][1:] == ["2", "2", "1", "2", "7"]  # (row 0: still evaluable)
    assert overview["DLT, n (%) of the DLT-evaluable"][1:] == ["0 (0%)", "0 (0%)", "1 (100%)", "0 (0%)", "1 (14%)"]
    swimmer = {r[0]: r for r in _table(built["swimmer"].blocks, "Events per subject").rows}
    assert swimmer[fixture.subject_id(4)][5] == "not evaluable" and swimmer[fixture.subject_id(1)][5] == "–"
    apart = _table(built["safety"].blocks, "Adverse events outside the TEAE counts").rows
    assert apart == [
        [fixture.subject_id(0), "DL1", "onset date unknown: counted as a TEAE", "Rash, grade not recorded",
         "101-AE007"],
        [fixture.subject_id(0), "DL1", "before the infusion: not a TEAE", "Nausea, grade 2", "–"],
        [fixture.subject_id(0), "DL1", "not evaluable for DLT", "101-AE007: grade 3 CRS resolution not recorded", "–"],
        [fixture.subject_id(4), "DL3", "not evaluable for DLT", "DLT window not completed: last data on study day 5",
         "–"]]
    assert "AdverseEvent/" not in build_report(out).read_text(encoding="utf-8")


def test_teae_rates_are_of_infused_subjects_and_a_crs_without_grade_is_a_crs(tmp_path: Path) -> None:
    """N of every TEAE rate is the infused subjects (Day 1 known), as teae_summary counts them: a subject never
    infused cannot have a TEAE and must not lower the rates; a CRS whose grade is not recorded is a CRS of any
    grade."""
    out = fixture.write(tmp_path / "out")
    base = {s.id: s for s in sections(load(out))}
    before = {r[0]: r for r in _table(base["safety"].blocks, "Subjects with TEAEs by dose level").rows}

    def edit(study: dict[str, Any]) -> None:
        rows = study["subjects"]
        rows.append({**rows[0], "subject_id": "LCAR-199", "day1": None, "teae_count": 0, "teaes": []})
        rows[1].update(crs={"present": True, "max_grade": None}, crs_max_grade=None)
    _edit_study(out, edit)
    built = {s.id: s for s in sections(load(out))}
    overview = {r[0]: r for r in _table(built["safety"].blocks, "Subjects with TEAEs by dose level").rows}
    assert overview["Subjects (N)"] == before["Subjects (N)"]
    assert overview["CRS, any grade"] == before["CRS, any grade"]  # the ungraded CRS still counted
    by_term = _table(built["safety"].blocks, "TEAEs by term")
    assert by_term.columns == _table(base["safety"].blocks, "TEAEs by term").columns  # N per arm: infused only


def test_by_term_counts_an_unknown_worst_grade_and_only_subjects_with_results(tmp_path: Path) -> None:
    """A subject whose only grade for a term is unknown is counted under "unknown" (the grades add up to the
    subjects); the N of a dose level is the subjects whose TEAEs are counted, not a CRF without results."""
    out = fixture.write(tmp_path / "out")

    def edit(study: dict[str, object]) -> None:
        rows = study["subjects"]
        assert isinstance(rows, list)
        for ae in rows[0]["teaes"]:
            if ae["term"] == "Neutropenia":
                ae["grade"] = None
        del rows[7]  # its CRF stays: a subject without results

    _edit_study(out, edit)
    sec = next(s for s in sections(load(out)) if s.id == "safety")
    by_term = _table(sec.blocks, "TEAEs by term: subjects with")
    assert by_term.columns[1:5] == ["DL1 (N=2)", "DL2 (N=2)", "DL3 (N=2)", "EXP (N=1)"]
    row = next(r for r in by_term.rows if r[0] == "Neutropenia")
    assert row[5:] == ["7 / 3", "G2:3 G3:3 unknown:1"]
    assert any(isinstance(b, NoteBlock) and "2 CRF adverse event(s) carry no TEAE flag" in b.text
               for b in sec.blocks)


def test_follow_up_reaches_the_last_adverse_event(tmp_path: Path) -> None:
    """The latest study day with data counts an AE's onset and end (a TEAE the safety tables count is data),
    in the summary's follow-up and the swimmer's last study day."""
    out = fixture.write(tmp_path / "out")
    path = out / "crf" / f"{fixture.subject_id(0)}.json"
    crf = json.loads(path.read_text(encoding="utf-8"))
    crf["ae"].append({**crf["ae"][1], "term": "Upper respiratory tract infection", "grade": 1, "study_day": 400,
                      "end_study_day": 407})
    path.write_text(json.dumps(crf), encoding="utf-8")
    built = {s.id: s for s in sections(load(out))}
    swimmer = {r[0]: r for r in _table(built["swimmer"].blocks, "Events per subject").rows}
    assert swimmer[fixture.subject_id(0)][2] == "407" and swimmer[fixture.subject_id(1)][2] == "365"
    summary = {r[0]: r[1] for r in _table(built["summary"].blocks, "").rows}
    assert summary["Follow-up, latest study day with data: median (range)"] == "365 (365–407) days, n=8"


def test_baselines_that_are_no_visit_s_value_per_subject_and_parameter(built: dict[str, Section]) -> None:
    sec = built["baselines"]
    assert _table(sec.blocks, "Baselines that are no visit's value, per parameter").rows == [
        ["c3", "1", "0", "0", "1"], ["upcr", "3", "2", "1", "0"]]
    rows = _table(sec.blocks, "Per subject and parameter").rows
    assert [fixture.subject_id(3), "c3", "< 0.2 g/L", "2024-02-20", "-4", "in no visit window",
            "2 Observation"] in rows
    assert [fixture.subject_id(1), "upcr", "1.84 mg/mg", "2024-01-02", "-31", "before consent",
            "1 Observation"] in rows
    # a result of the BL window that BL did not keep (its select rule kept another): where it lies, not "no window"
    assert [fixture.subject_id(4), "upcr", "0.9 mg/mg", "2024-02-23", "-1", "in the BL window, not the visit's pick",
            "1 Observation"] in rows and len(rows) == 4


def test_baselines_are_escaped_and_absent_ones_said(tmp_path: Path) -> None:
    out = fixture.write(tmp_path / "out")
    study_file = out / "results" / "study.json"
    study = json.loads(study_file.read_text(encoding="utf-8"))
    study["subjects"][0]["baselines"] = [{"item": "<img src=x onerror=alert(1)>", "value": 3, "date": "2024-01-05",
                                          "study_day": -27, "sources": [], "before_participation": True,
                                          "comparator": "<", "unit": "mg&L"}]
    study_file.write_text(json.dumps(study), encoding="utf-8")
    html = _section_html(build_report(out).read_text(encoding="utf-8"), "baselines")
    assert "<img" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html and "&lt; 3 mg&amp;L" in html
    for s in study["subjects"]:
        s["baselines"] = []
    study_file.write_text(json.dumps(study), encoding="utf-8")
    sec = next(s for s in sections(load(out)) if s.id == "baselines")
    assert [b.text for b in sec.blocks if isinstance(b, NoteBlock)] == [
        "Every baseline of this run is a visit's own value."]
    for s in study["subjects"]:
        del s["baselines"]
    study_file.write_text(json.dumps(study), encoding="utf-8")
    assert "No data: baselines is not in results/study.json" in build_report(out).read_text(encoding="utf-8")


def test_completeness_from_crfs_and_from_run_report_coverage(run_out: Path) -> None:
    crf_sec = next(s for s in sections(load(run_out)) if s.id == "completeness")
    per_visit = {r[0]: r for r in _table(crf_sec.blocks, "Completeness per visit").rows}
    assert per_visit["W12"] == ["W12", "8", "3", "96%"]  # one PGA missing of 8 x 3 cells
    rr_path = run_out / "run-report.json"
    rr = json.loads(rr_path.read_text())
    rr["coverage"] = {"never_filled": ["ch50"], "items": [
        {"item": "c3", "visits": {"BL": {"filled": 3, "quarantined": 1, "no-data": 0}}},
        {"item": "ch50", "visits": {"BL": {"filled": 0, "quarantined": 0, "no-data": 4}}},
    ]}
    rr_path.write_text(json.dumps(rr))
    sec = next(s for s in sections(load(run_out)) if s.id == "completeness")
    per_visit = {r[0]: r for r in _table(sec.blocks, "Completeness per visit").rows}
    # the mean of the items with any value (c3 75%); ch50, which no subject has at BL, does not lower it
    assert per_visit["BL"] == ["BL", "4", "1", "75%"]
    assert ["c3", "1"] in _table(sec.blocks, "Cells whose only input was quarantined").rows
    assert any(isinstance(b, NoteBlock) and "ch50" in b.text for b in sec.blocks)


@pytest.mark.parametrize("dropped", [
    ("lldas_rate", "dose_levels", "rp2d", "teae_summary", "kinetics", "teae_count", "serious_teae_count",
     "max_teae_grade", "crs_max_grade", "icans_max_grade", "dlt", "dlt_events", "lldas", "pga", "upcr_mg_mg",
     "c3", "c4", "anti_dsdna", "protein_24h_g", "settings"),
])
def test_missing_keys_say_no_data_never_crash(tmp_path: Path, dropped: tuple[str, ...]) -> None:
    out = fixture.write(tmp_path / "out", drop=dropped, run_report=False)
    html = build_report(out).read_text(encoding="utf-8")
    assert "No data: lldas_rate is not in results/study.json" in _section_html(html, "lldas")
    assert "No data: rp2d" in _section_html(html, "summary")
    assert "No data: settings" in _section_html(html, "settings")
    assert "No data: teae_summary (subjects with TEAEs per arm" in _section_html(html, "safety")
    # what the CRFs still hold is shown: kinetics profiles and C3 from the CRF visit values
    assert "<svg" in _section_html(html, "kinetics")
    assert "Complement C3: CRF visit values" in _section_html(html, "labs")


def test_results_only_without_crfs(tmp_path: Path) -> None:
    out = fixture.write(tmp_path / "out", crfs=False, run_report=False)
    html = build_report(out).read_text(encoding="utf-8")
    assert "No data: no CAR transgene" in _section_html(html, "kinetics")
    assert "No data: neither run-report.json coverage nor CRF visits" in _section_html(html, "completeness")
    assert "<svg" in _section_html(html, "disease-activity")


def test_only_pseudonymised_ids(run_out: Path) -> None:
    html = build_report(run_out).read_text(encoding="utf-8")
    assert "LCAR-101" in html
    for crf_only in ('"age"', ">F<", "consent_date", "Observation/"):
        assert crf_only not in html


def test_ids_holding_dollar_signs_are_drawn_as_they_are(tmp_path: Path) -> None:
    """A subject ID is EHR data: '$...$' in it is neither matplotlib mathtext (an unknown macro failed the
    report, 'a$x^2$b' was drawn as a formula) nor lost; tick labels of log axes are plain text too."""
    out = fixture.write(tmp_path / "out")
    ids = {fixture.subject_id(2): r"$\undefinedmacro{x}$", fixture.subject_id(3): "a$x^2$b"}   # both DL2
    for path in [out / "results" / "study.json", out / "run-report.json", *(out / "crf").glob("*.json")]:
        text = path.read_text(encoding="utf-8")
        for old, new in ids.items():
            text = text.replace(old, json.dumps(new)[1:-1])
        path.write_text(text, encoding="utf-8")
    res = CliRunner().invoke(main, ["report", "--results", str(out)])
    assert res.exit_code == 0, res.output
    html = (out / "report" / "index.html").read_text(encoding="utf-8")
    for sid in ids.values():
        assert f">{sid} · DL2</text>" in _section_html(html, "kinetics")   # the per-subject panel's title
        assert f">{sid} DL2</text>" in _section_html(html, "swimmer")      # the lane's label
    assert "mathdefault" not in html and ">10⁴</text>" in _section_html(html, "kinetics")


def test_missing_results_is_a_report_error(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="pass --results the OUT folder"):
        build_report(tmp_path / "nowhere")
    (tmp_path / "bad" / "results").mkdir(parents=True)
    (tmp_path / "bad" / "results" / "study.json").write_text("{oops")
    with pytest.raises(ReportError, match="not valid JSON"):
        build_report(tmp_path / "bad")


def test_a_large_cohort_gets_its_per_subject_kinetics_in_several_figures(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each figure holds at most FIGURE_PANELS panels (matplotlib's memory is one figure's), every subject's panel
    is drawn once, and the captions say which subjects each figure holds; a cohort that fits one figure keeps
    the single caption."""
    from fhir_adapter.report import kinetics
    from fhir_adapter.report.kinetics import kinetics_section

    data = load(fixture.write(tmp_path / "out"))
    whole = [b for b in kinetics_section(data).blocks
             if isinstance(b, FigureBlock) and b.caption.startswith("Kinetics per subject")]
    assert [b.caption for b in whole] == ["Kinetics per subject (log scale); ★ and dotted line = the Cmax sample"]
    profs, _, _ = kinetics.profiles(data)
    assert len(profs) > 2
    monkeypatch.setattr(kinetics, "FIGURE_PANELS", 2)
    parts = [b for b in kinetics_section(data).blocks
             if isinstance(b, FigureBlock) and b.caption.startswith("Kinetics per subject")]
    n = len(profs)
    assert len(parts) == (n + 1) // 2
    assert parts[0].caption.endswith(f"— subjects 1–2 of {n}") and parts[-1].caption.endswith(f" of {n}")
    for p in profs:
        title = f"{p.subject_id} · {p.arm}"
        assert sum(b.svg.count(f">{title}<") for b in parts) == 1, title
        assert whole[0].svg.count(f">{title}<") == 1


def test_table_numbers_round_half_up_as_study_json_shows_them() -> None:
    """A median of 1.15 and one of 0.45 round the same way (1.2, 0.5): formatting the binary float gave 1.1 and
    0.5, as the nearest doubles happen to lie."""
    from fhir_adapter.report.blocks import fmt

    assert [fmt(v) for v in (1.15, 0.45, 0.75, 0.55, -1.15, 2.0, 0.04)] == \
        ["1.2", "0.5", "0.8", "0.6", "-1.2", "2.0", "0.04"]
    assert (fmt(1234.5), fmt(1.005, 2), fmt(3, 0), fmt(None)) == ("1,235", "1.01", "3", "–")


def test_percentages_round_half_up_as_every_shown_number() -> None:
    """The LLDAS rate and completeness tables and the counts share one formatter: 1 of 8 is 13% (Python's
    half-to-even formatting had shown 12%), 0.5% is 1%."""
    from fhir_adapter.report.blocks import pct, percent

    assert [pct(1, 8), pct(3, 8), pct(1, 200), pct(0, 0)] == ["1 (13%)", "3 (38%)", "1 (1%)", "–"]
    assert [percent(0.125), percent(0.375), percent(0.005), percent(1.0)] == ["13%", "38%", "1%", "100%"]
