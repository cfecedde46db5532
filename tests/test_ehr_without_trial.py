"""An EHR that knows nothing of the trial: study.yaml and the site roster CSV enrol the subjects, and Day 1
comes from a Procedure (study or site code), a MedicationAdministration of the cell product, or the roster
CSV's infusion_date — the run report says which."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from fhir_adapter.cli.commands import main
from tests.no_trial_feed import build_no_trial_feed


@pytest.fixture(scope="module")
def no_trial_feed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, str]]:
    return build_no_trial_feed(tmp_path_factory.mktemp("no-trial"))


def test_study_yaml_and_roster_csv_are_enough(no_trial_feed: tuple[Path, Path, dict[str, str]],
                                              tmp_path: Path) -> None:
    feed, roster, given = no_trial_feed
    expected = dict(given)
    site = expected.pop("site")
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["run", "--source", str(feed), "--out", str(out), "--roster-csv", str(roster),
                                    "--site", site])
    assert res.exit_code in (0, 2), res.output
    report = json.loads((out / "run-report.json").read_text())
    assert report["summary"]["subjects"] == 3
    sources = {d["subject_id"]: d["source"] for d in report["day1_sources"]}
    assert sources == expected
    assert all(d["day1"] for d in report["day1_sources"])
    # the adapter writes the ResearchStudy of study.yaml it enrolled them in, with its own identifier
    bundle = json.loads(next((out / "writeback").glob("*.json")).read_text())
    studies = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "ResearchStudy"]
    assert studies and studies[0]["identifier"][0]["value"] == "LCAR-AIO-SLE"
    study_entry = next(e for e in bundle["entry"] if e["resource"]["resourceType"] == "ResearchStudy")
    assert study_entry["request"]["url"] == f"ResearchStudy/{studies[0]['id']}"
    # every infused subject has its EX row — also the one whose infusion only the roster CSV dates: the product
    # on Day 1, dose unknown (empty), sourced to its ResearchSubject, the CRF naming the CSV line
    day1 = {d["subject_id"]: d["day1"] for d in report["day1_sources"]}
    with (out / "export" / "EX.csv").open(newline="", encoding="utf-8") as fh:
        infusions = {r["SUBJID"]: r for r in csv.DictReader(fh) if r["EXCAT"] == "INFUSION"}
    assert set(infusions) == set(expected)
    # the date of Day 1, with the infusion's time of day when its record has one
    assert all(r["EXTRT"] == "LCAR-AIO" and r["EXSTDTC"][:10] == day1[sid] and r["EXSTDY"] == "1"
               for sid, r in infusions.items())
    by_csv = next(sid for sid, src in expected.items() if src.startswith("roster CSV"))
    assert infusions[by_csv]["EXDOSE"] == "" and infusions[by_csv]["SRCREF"].startswith("ResearchSubject/")
    crf = json.loads((out / "crf" / f"{by_csv}.json").read_text())
    (row,) = [x for x in crf["ex"] if x["kind"] == "infusion"]
    assert row["day1_source"] == expected[by_csv] and row["dose"] is None


def test_the_shared_research_study_is_one_result_of_the_state_not_new_every_run(
        no_trial_feed: tuple[Path, Path, dict[str, str]], tmp_path: Path) -> None:
    """The adapter's own ResearchStudy is in every subject's bundle under one identifier: the state compares the
    second subject's with the first's of the same run, so a run with nothing changed has nothing new (it said
    "2 new" every night) and a dry run does not count the ResearchStudy once per subject as a write."""
    feed, roster, given = no_trial_feed
    site = dict(given)["site"]
    out = tmp_path / "out"

    def run(*extra: str) -> dict[str, object]:
        res = CliRunner().invoke(main, ["-q", "run", "--source", str(feed), "--out", str(out), "--roster-csv",
                                        str(roster), "--site", site, *extra])
        assert res.exit_code in (0, 2), res.output
        state: dict[str, object] = json.loads((out / "run-report.json").read_text())["writeback_state"]
        return state

    first = run()
    written = json.loads((out / "state" / "written.json").read_text())["results"]
    assert first["new"] == len(written)  # each identifier new once: the ResearchStudy too
    assert sum(e["resource"]["resourceType"] == "ResearchStudy" for e in written.values()) == 1
    second = run()
    assert (second["new"], second["updated"], second["retracted"]) == (0, 0, 0)


def test_a_roster_csv_saved_by_a_spreadsheet_enrols_the_same_subjects(
        no_trial_feed: tuple[Path, Path, dict[str, str]], tmp_path: Path) -> None:
    """Excel's "CSV UTF-8" starts the file with a byte order mark, and a header may come in title case with spaces
    after the commas: the columns are still subject_id, …, and the run enrols and dates the same subjects."""
    feed, roster, given = no_trial_feed
    site = given["site"]
    bom = tmp_path / "with-bom" / roster.name  # the same name: the run report names the file
    bom.parent.mkdir()
    bom.write_bytes(b"\xef\xbb\xbf" + roster.read_bytes())
    reports = []
    for name, csv_file in (("plain", roster), ("bom", bom)):
        res = CliRunner().invoke(main, ["run", "--source", str(feed), "--out", str(tmp_path / name),
                                        "--roster-csv", str(csv_file), "--site", site])
        assert res.exit_code in (0, 2), res.output
        reports.append(json.loads((tmp_path / name / "run-report.json").read_text()))
    plain, with_bom = reports
    assert with_bom["summary"]["subjects"] == plain["summary"]["subjects"] == 3
    assert with_bom["day1_sources"] == plain["day1_sources"] and with_bom["quarantine"] == plain["quarantine"]
    # a header a spreadsheet wrote in title case, with a space after each comma: the same columns
    messy = tmp_path / "messy" / roster.name
    messy.parent.mkdir()
    header, rest = roster.read_text(encoding="utf-8").split("\n", 1)
    messy.write_text(", ".join(name.title() for name in header.split(",")) + "\n" + rest, encoding="utf-8")
    res = CliRunner().invoke(main, ["run", "--source", str(feed), "--out", str(tmp_path / "messy-out"),
                                    "--roster-csv", str(messy), "--site", site])
    assert res.exit_code in (0, 2), res.output
    assert json.loads((tmp_path / "messy-out" / "run-report.json").read_text())["day1_sources"] == plain["day1_sources"]


def test_without_the_site_code_that_subject_has_no_day1(no_trial_feed: tuple[Path, Path, dict[str, str]],
                                                        tmp_path: Path) -> None:
    feed, roster, _ = no_trial_feed
    res = CliRunner().invoke(main, ["run", "--source", str(feed), "--out", str(tmp_path / "o"),
                                    "--roster-csv", str(roster)])
    report = json.loads((tmp_path / "o" / "run-report.json").read_text())
    missing = [d for d in report["day1_sources"] if d["source"] is None]
    assert len(missing) == 1 and missing[0]["day1"] is None, res.output


def test_without_a_roster_the_error_says_how_to_enrol(no_trial_feed: tuple[Path, Path, dict[str, str]],
                                                      tmp_path: Path) -> None:
    feed, _, _ = no_trial_feed
    res = CliRunner().invoke(main, ["run", "--source", str(feed), "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and "--roster-csv" in res.stderr


def _write_rows(path: Path, rows: list[dict[str, str]]) -> None:
    """``rows`` as a roster CSV (the header from the first row's columns), as a site would save it."""
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _run_roster(feed: Path, out: Path, roster: Path, site: str) -> Result:
    """``fhir-adapter run`` of ``feed`` into ``out`` enrolling from the roster CSV, with the site overlay."""
    return CliRunner().invoke(main, ["run", "--source", str(feed), "--out", str(out), "--roster-csv", str(roster),
                                     "--site", site])


def _broken_roster(roster: Path, tmp_path: Path, edit: str) -> Path:
    rows = list(csv.DictReader(roster.open(newline="", encoding="utf-8")))
    header = list(rows[0])
    if edit == "no-status":
        header.remove("status")
    for r in rows:
        if edit == "bad-date":
            r["consent_date"] = "2024-13-01"
        if edit == "basic-iso-date":
            r["consent_date"] = r["consent_date"].replace("-", "")
        if edit == "date-time-without-offset":
            r["consent_date"] = r["consent_date"] + "T09:30:00"
        if edit == "status-not-r4":
            r["status"] = "enrolled"
        if edit == "unknown-patient":
            r["patient_identifier"] = "https://nowhere.example|nobody"
    path = tmp_path / f"roster-{edit}.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=header, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    if edit == "short-row":  # fewer cells than the header: no arm, no status
        lines = path.read_text(encoding="utf-8").splitlines()
        path.write_text("\n".join([lines[0], *(",".join(line.split(",")[:3]) for line in lines[1:])]) + "\n",
                        encoding="utf-8")
    if edit == "latin-1":
        path.write_bytes(path.read_bytes().replace(b"subject_id", b"subject_id" + "é".encode("latin-1"), 1))
    return path


@pytest.mark.parametrize(("edit", "said"), [
    ("no-status", "missing column(s) ['status']"),
    ("bad-date", "consent_date '2024-13-01' is not a date; write YYYY-MM-DD"),
    ("unknown-patient", "no Patient with identifier https://nowhere.example|nobody"),
    ("short-row", "no arm, status; the row is skipped until it has them"),
    ("latin-1", "not UTF-8 text"),
    ("basic-iso-date", "is not a date; write YYYY-MM-DD"),
    ("date-time-without-offset", "is not a date; write YYYY-MM-DD"),
    ("status-not-r4", "status 'enrolled' is not an R4 ResearchSubject status; write one of candidate"),
])
def test_a_roster_csv_that_enrols_nobody_says_why_in_one_line(no_trial_feed: tuple[Path, Path, dict[str, str]],
                                                            tmp_path: Path, edit: str, said: str) -> None:
    """A roster CSV mistake is the integrator's to fix (exit 1, one line naming the file, line and fix), not an
    internal error; a run that enrols nobody writes no OUT, so the message itself quotes the roster's reasons."""
    feed, roster, _ = no_trial_feed
    bad = _broken_roster(roster, tmp_path, edit)
    res = CliRunner().invoke(main, ["run", "--source", str(feed), "--out", str(tmp_path / "o"),
                                    "--roster-csv", str(bad)])
    assert res.exit_code == 1, res.output
    assert said in res.stderr and f"{bad.name}" in res.stderr and "internal error" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_a_roster_row_skipped_is_a_subject_not_processed(no_trial_feed: tuple[Path, Path, dict[str, str]],
                                                         tmp_path: Path) -> None:
    """One row of the site roster with a consent date that is no date: the other subjects run, and the one the
    site enrolled is a subject not processed — exit 2 (not 0: a scheduler would take it for "nothing to do"),
    listed in summary.subjects_failed and subject_failures with the file, line and what to do."""
    feed, roster, given = no_trial_feed
    rows = list(csv.DictReader(roster.open(newline="", encoding="utf-8")))
    rows[1]["consent_date"] = "12/01/2024"
    bad = tmp_path / "roster.csv"
    _write_rows(bad, rows)
    out = tmp_path / "out"
    res = _run_roster(feed, out, bad, given["site"])
    assert res.exit_code == 2, res.output
    report = json.loads((out / "run-report.json").read_text())
    skipped = rows[1]["subject_id"]
    assert report["summary"]["subjects"] == 2 and report["summary"]["subjects_failed"] == [skipped]
    [failure] = report["subject_failures"]
    assert failure["subject_id"] == skipped and failure["stage"] == "roster-csv"
    assert f"{bad}:3: subject {skipped}: consent_date '12/01/2024' is not a date" in failure["error"]
    assert "correct the subject's row of the roster CSV" in failure["what_to_do"]
    # a screen failure's row (status not enrolled) with no arm: a warning, not a subject the run should process
    rows[1].update(consent_date=rows[0]["consent_date"], arm="", status="ineligible")
    _write_rows(bad, rows)
    res = _run_roster(feed, out, bad, given["site"])
    assert res.exit_code == 2 and "quarantined  1 input" in res.output  # the feed's own quarantined record
    report = json.loads((out / "run-report.json").read_text())
    assert report["summary"]["subjects_failed"] == [] and report["subject_failures"] == []
    assert any(w["rule"] == "roster-csv" and w["subject_id"] == skipped for w in report["warnings"])


@pytest.mark.parametrize("bare", [False, True], ids=["system|value", "bare value"])
def test_a_roster_identifier_two_patients_hold_enrols_neither(no_trial_feed: tuple[Path, Path, dict[str, str]],
                                                              tmp_path: Path, bare: bool) -> None:
    """A second Patient holding a row's identifier (a decoy placed first, or an MRN reused under another system
    when the row gives a bare value) never becomes the subject: the row is skipped naming both Patients, so no
    result of the subject can go to the wrong chart."""
    feed, roster, given = no_trial_feed
    copy = tmp_path / "feed"
    shutil.copytree(feed, copy)
    rows = list(csv.DictReader(roster.open(newline="", encoding="utf-8")))
    system, _, value = rows[0]["patient_identifier"].rpartition("|")
    real = next(json.loads(x) for x in (copy / "Patient.ndjson").read_text().splitlines()
                if value in x and json.loads(x)["identifier"][0]["value"] == value)
    decoy = {"resourceType": "Patient", "id": "decoy", "gender": "female", "birthDate": "1950-01-01",
             "identifier": [{"system": "https://other.example.org/mrn" if bare else system, "value": value}]}
    (copy / "Patient.ndjson").write_text(json.dumps(decoy) + "\n" + (copy / "Patient.ndjson").read_text())
    if bare:
        rows[0]["patient_identifier"] = value
    csv_path = tmp_path / "roster.csv"
    _write_rows(csv_path, rows)
    out = tmp_path / "out"
    res = _run_roster(copy, out, csv_path, given["site"])
    assert res.exit_code == 2, res.output
    report = json.loads((out / "run-report.json").read_text())
    sid = rows[0]["subject_id"]
    assert report["summary"]["subjects_failed"] == [sid]
    [failure] = report["subject_failures"]
    both = ", ".join(f"Patient/{p}" for p in sorted(["decoy", real["id"]]))
    assert f"names 2 Patients ({both})" in failure["error"], failure["error"]
    assert ("write the identifier as system|value" in failure["error"]) is bare
    assert not (out / "crf" / f"{sid}.json").exists()
    assert not any("Patient/decoy" in p.read_text() for p in (out / "writeback").glob("*.json"))


def test_a_roster_row_is_named_by_its_line_and_its_status_read_in_any_case(
        no_trial_feed: tuple[Path, Path, dict[str, str]], tmp_path: Path) -> None:
    """A blank line and a quoted cell holding a line break above a bad row: the warning names the row's own line
    (csv's, not a row count). A status written Follow-Up is the R4 code follow-up: its subject is enrolled."""
    feed, roster, given = no_trial_feed
    rows = list(csv.DictReader(roster.open(newline="", encoding="utf-8")))
    rows[0]["status"] = rows[0]["status"].title()  # e.g. Follow-Up
    rows[2]["consent_date"] = "12/01/2024"
    bad = tmp_path / "roster.csv"
    with bad.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]), quoting=csv.QUOTE_ALL)
        w.writeheader()
        w.writerow(rows[0])
        fh.write("\n")  # line 3: blank
        w.writerow({**rows[1], "arm": rows[1]["arm"] + "\n"})  # lines 4-5: a cell with a line break
        w.writerow(rows[2])  # line 6
    out = tmp_path / "out"
    res = _run_roster(feed, out, bad, given["site"])
    assert res.exit_code == 2, res.output
    report = json.loads((out / "run-report.json").read_text())
    [failure] = report["subject_failures"]
    assert f"{bad}:6: subject {rows[2]['subject_id']}: consent_date" in failure["error"]
    assert rows[0]["subject_id"] not in report["summary"]["subjects_failed"]


def test_a_subject_given_on_two_rows_uses_identical_ones_once_and_none_of_differing_ones(
        no_trial_feed: tuple[Path, Path, dict[str, str]], tmp_path: Path) -> None:
    """The same row pasted twice enrolled nobody (two ResearchSubjects with one subject ID: both refused, "correct
    the EHR"); identical rows are one, with a warning; rows that differ name both lines, and that subject is not
    processed (exit 2)."""
    feed, roster, given = no_trial_feed
    rows = list(csv.DictReader(roster.open(newline="", encoding="utf-8")))
    for edit in ("identical", "differing"):
        again = dict(rows[0]) if edit == "identical" else {**rows[0], "arm": "DL2"}
        bad = tmp_path / edit / "roster.csv"
        bad.parent.mkdir()
        _write_rows(bad, [rows[0], *rows[1:], again])
        out = tmp_path / edit / "out"
        res = _run_roster(feed, out, bad, given["site"])
        report = json.loads((out / "run-report.json").read_text())
        sid, last = rows[0]["subject_id"], len(rows) + 2
        said = [w["message"] for w in report["warnings"] if w.get("subject_id") == sid and w["rule"] == "roster-csv"]
        if edit == "identical":
            assert res.exit_code in (0, 2) and report["summary"]["subjects"] == 3
            assert said == [f"{bad}:2,{last}: subject {sid} is given on 2 identical rows; the first is used"]
        else:
            assert res.exit_code == 2 and report["summary"]["subjects_failed"] == [sid]
            assert said == [f"{bad}:2,{last}: subject {sid} is given on 2 rows that differ: none is used"]


def test_read_roster_names_each_row_by_its_first_line_and_each_column_as_the_guide_does() -> None:
    """read_roster: a quoted column name after ", ", title case; a blank line; a cell holding a line break; a
    row with a cell too many (a list under DictReader's None key crashed the duplicate-row check); a quote
    left open, which takes the rest of the file — each row named by the line it starts on."""
    import io

    from fhir_adapter.roster.site_csv import read_roster

    text = ('Subject_ID, "Patient_Identifier", consent_date,arm,status\n'
            "101-001,MRN1,2024-01-10,DL1,on-study,EXTRA\n"
            "\n"
            '101-002,MRN2,2024-01-11,"DL\n1",on-study\n'
            '101-003,MRN3,"2024-01-12,DL1,on-study\n'
            "101-004,MRN4,2024-01-13,DL1,on-study\n")
    header, rows = read_roster(io.StringIO(text, newline=""))
    assert header == ["subject_id", "patient_identifier", "consent_date", "arm", "status"]
    assert [(n, r["subject_id"]) for n, r in rows] == [(2, "101-001"), (4, "101-002"), (6, "101-003")]
    assert rows[0][1]["status"] == "on-study" and all(isinstance(v, str) for _, r in rows for v in r.values())
    assert rows[2][1]["arm"] == "" and rows[2][1]["consent_date"].startswith("2024-01-12,DL1")
