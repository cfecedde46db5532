"""A FHIR server that knows nothing of the trial (no ResearchStudy, no ResearchSubject): study.yaml and the
site roster CSV enrol the subjects, and --post writes the adapter's own ResearchStudy and ResearchSubjects with
the results, on the real test server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fhir_adapter.terminology.codes import SID_RESULT
from fhir_adapter.testing.feed_loader import load_feed, search_all
from fhir_adapter.testing.fhir_server import ServerHandle
from tests.no_trial_feed import build_no_trial_feed
from tests.serverkit import cli_run, report, write_config

pytestmark = pytest.mark.server


def test_roster_csv_and_study_yaml_enrol_and_write_back(clean_fhir_server: ServerHandle, tmp_path: Path) -> None:
    feed, roster, expected = build_no_trial_feed(tmp_path / "feed")
    site = expected.pop("site")
    load_feed(clean_fhir_server.base_url, feed)
    assert search_all(clean_fhir_server.base_url, "ResearchStudy", {}) == []
    out = tmp_path / "out"
    config = write_config(tmp_path / "adapter.yaml")
    cli_run(clean_fhir_server.base_url, out, "--post", "--roster-csv", str(roster), "--site", site,
            "--config", str(config))
    rep = report(out)
    assert rep["summary"]["subjects"] == 3 and rep["summary"]["subjects_not_written"] == []
    assert {d["subject_id"]: d["source"] for d in rep["day1_sources"]} == expected
    studies = search_all(clean_fhir_server.base_url, "ResearchStudy", {})
    assert len(studies) == 1 and studies[0]["identifier"][0]["value"] == "LCAR-AIO-SLE"
    assert any(i["system"] == SID_RESULT for i in studies[0]["identifier"])
    subjects = search_all(clean_fhir_server.base_url, "ResearchSubject", {})
    assert len(subjects) == 3
    assert {s["study"]["reference"] for s in subjects} == {f"ResearchStudy/{studies[0]['id']}"}
    # a second run reads the adapter's own ResearchStudy back, and changes nothing
    cli_run(clean_fhir_server.base_url, out, "--post", "--roster-csv", str(roster), "--site", site,
            "--config", str(config))
    second = report(out)
    assert second["summary"]["server_writes"] == 0, json.dumps(second["writes"])[:500]
    assert second["summary"]["subjects_failed"] == []  # (a failed subject writes nothing either)
    assert len(search_all(clean_fhir_server.base_url, "ResearchStudy", {})) == 1


def test_since_last_with_a_roster_csv_reuses_the_unchanged_subjects(clean_fhir_server: ServerHandle,
                                                                    tmp_path: Path) -> None:
    """The ResearchStudy and ResearchSubjects the adapter makes from study.yaml and the roster CSV are not EHR
    changes: `--since last` with nothing changed reuses every subject; once the site edits its roster CSV, its
    subjects are read again (their arm or dates may differ)."""
    import os
    import shutil
    import time

    feed, roster, expected = build_no_trial_feed(tmp_path / "feed")
    site = expected.pop("site")
    load_feed(clean_fhir_server.base_url, feed)
    out, config = tmp_path / "out", write_config(tmp_path / "adapter.yaml")
    args = ("--roster-csv", str(roster), "--site", site, "--config", str(config))
    os.utime(roster, (time.time() - 3600, time.time() - 3600))  # written before the first run
    cli_run(clean_fhir_server.base_url, out, "--post", *args)  # the server now holds the adapter's ResearchSubjects
    for _ in range(2):
        cli_run(clean_fhir_server.base_url, out, "--post", "--since", "last", *args)
        counts = report(out)["counts"]
        assert (counts["incremental.changed_subjects"], counts["incremental.unchanged_subjects"]) == (0, 3)
    # the site corrects a consent date in its roster: the next run uses it (not the ResearchSubject it wrote
    # from the old row), and --post updates that ResearchSubject
    rows = roster.read_text().splitlines()
    sid, consent = rows[1].split(",")[0], rows[1].split(",")[2]
    corrected = f"{int(consent[:4]) - 1}{consent[4:]}"
    roster.write_text("\n".join([rows[0], rows[1].replace(consent, corrected), *rows[2:]]) + "\n")
    cli_run(clean_fhir_server.base_url, out, "--post", "--since", "last", *args)
    assert report(out)["counts"]["incremental.changed_subjects"] == 3
    crf = json.loads((out / "crf" / f"{sid}.json").read_text())
    assert crf["participation_start"] == corrected
    [held] = [rs for rs in search_all(clean_fhir_server.base_url, "ResearchSubject", {})
              if any(i.get("value") == sid for i in rs.get("identifier") or [])]
    assert held["period"]["start"] == corrected
    # the site edits its roster elsewhere and copies it over with the modification time of an hour ago (cp -p,
    # rsync -t): the content differs from what the last run read, so its subjects are read again all the same
    again = f"{int(consent[:4]) - 2}{consent[4:]}"
    edited = tmp_path / "roster-edited.csv"
    edited.write_text(roster.read_text().replace(corrected, again))
    os.utime(edited, (time.time() - 3600, time.time() - 3600))
    shutil.copy2(edited, roster)
    cli_run(clean_fhir_server.base_url, out, "--post", "--since", "last", *args)
    assert report(out)["counts"]["incremental.changed_subjects"] == 3
    assert json.loads((out / "crf" / f"{sid}.json").read_text())["participation_start"] == again
    # and the same CSV saved again unchanged (a newer modification time) reads nobody again
    roster.write_text(roster.read_text())
    cli_run(clean_fhir_server.base_url, out, "--post", "--since", "last", *args)
    assert report(out)["counts"]["incremental.changed_subjects"] == 0


def test_a_roster_row_pointed_at_another_patient_moves_the_subject_and_retracts_its_old_results(
        clean_fhir_server: ServerHandle, tmp_path: Path) -> None:
    """The site corrects a roster row's patient identifier (it named the wrong patient): the next --post updates
    the adapter's own ResearchSubject to the new Patient and retracts the subject's results on the old one — it
    was refused as "not the adapter's" and the old results stayed final."""
    from fhir_adapter.testing.feed_loader import put_resources

    feed, roster, expected = build_no_trial_feed(tmp_path / "feed")
    site = expected.pop("site")
    load_feed(clean_fhir_server.base_url, feed)
    out, config = tmp_path / "out", write_config(tmp_path / "adapter.yaml")
    args = ("--post", "--roster-csv", str(roster), "--site", site, "--config", str(config))
    cli_run(clean_fhir_server.base_url, out, *args)
    rows = roster.read_text().splitlines()
    sid, ident = rows[1].split(",")[0], rows[1].split(",")[1]
    system, value = ident.split("|")
    [old] = [p for p in search_all(clean_fhir_server.base_url, "Patient", {}) if any(
        i.get("value") == value for i in p.get("identifier") or [])]
    put_resources(clean_fhir_server.base_url, [{k: v for k, v in old.items() if k not in ("meta", "id")} | {
        "id": "right-1", "identifier": [{"system": system, "value": "RIGHT-1"}]}])
    roster.write_text("\n".join([rows[0], rows[1].replace(ident, f"{system}|RIGHT-1"), *rows[2:]]) + "\n")

    cli_run(clean_fhir_server.base_url, out, *args)
    rep = report(out)
    assert rep["summary"]["subjects_not_written"] == [], json.dumps(rep["writes"])[:800]
    [moved] = [w for w in rep["writes"] if w["subject_id"] == sid]
    assert moved["retracted_on_former_patients"] > 0
    on_old = [o for o in search_all(clean_fhir_server.base_url, "Observation", {"subject": f"Patient/{old['id']}"})
              if any(i.get("system") == SID_RESULT for i in o.get("identifier") or [])]
    assert on_old and {o["status"] for o in on_old} == {"entered-in-error"}
    [rs] = [r for r in search_all(clean_fhir_server.base_url, "ResearchSubject", {})
            if any(i.get("value") == sid for i in r.get("identifier") or [])]
    assert rs["individual"]["reference"] == "Patient/right-1"
