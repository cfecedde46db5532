"""A synthetic Bulk export of a hospital whose EHR holds no research resources (no ResearchStudy, no
ResearchSubject), its site roster CSV and site overlay — for the tests of an EHR that does not know the trial."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.feedkit import recount_manifest

SNOMED_INFUSION = "1156961008"
CLIN = "https://fhir-adapter.org/fhir/CodeSystem/clinical-input"


def _read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write(path: Path, rows: list[dict[str, object]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def build_no_trial_feed(feed: Path) -> tuple[Path, Path, dict[str, str]]:
    """Three subjects, no ResearchStudy/ResearchSubject; subject 1's infusion a Procedure with a site code,
    subject 2's a MedicationAdministration of the cell product, subject 3's only in the roster CSV."""
    from fhir_adapter.synth import write_feed

    write_feed(feed, subjects=3, seed=11)
    subjects = [s for s in _read(feed / "ResearchSubject.ndjson") if s["status"] != "ineligible"]
    (feed / "ResearchSubject.ndjson").unlink()
    (feed / "ResearchStudy.ndjson").unlink()
    manifest = json.loads((feed / "manifest.json").read_text())
    manifest["output"] = [o for o in manifest["output"] if o["type"] not in ("ResearchStudy", "ResearchSubject")]
    (feed / "manifest.json").write_text(json.dumps(manifest))
    patients = {p["id"]: p for p in _read(feed / "Patient.ndjson")}
    procedures = _read(feed / "Procedure.ndjson")
    infusions = {str(p["subject"]["reference"]).split("/")[1]: p for p in procedures
                 if SNOMED_INFUSION in json.dumps(p["code"])}
    pids = [str(s["individual"]["reference"]).split("/")[1] for s in subjects]
    sids = [str(s["identifier"][0]["value"]) for s in subjects]
    kept: list[dict[str, object]] = []
    admins = _read(feed / "MedicationAdministration.ndjson") if (feed / "MedicationAdministration.ndjson").exists() \
        else []
    for p in procedures:
        pid = str(p["subject"]["reference"]).split("/")[1]
        if p is infusions.get(pids[0]):
            p["code"] = {"coding": [{"system": "https://hospital.example.org/procedure-code", "code": "CART-INF"}]}
        elif p is infusions.get(pids[1]):
            admins.append({"resourceType": "MedicationAdministration", "id": "cart-admin-1", "status": "completed",
                           "medicationCodeableConcept": {"coding": [{"system": CLIN,
                                                                     "code": "lcar-aio-cell-product"}]},
                           "subject": {"reference": f"Patient/{pid}"},
                           "effectiveDateTime": p["performedDateTime"]})
            continue
        elif p is infusions.get(pids[2]):
            continue
        kept.append(p)
    _write(feed / "Procedure.ndjson", kept)
    _write(feed / "MedicationAdministration.ndjson", admins)
    recount_manifest(feed)
    lines = ["subject_id,patient_identifier,consent_date,arm,status,infusion_date"]
    for sid, pid, s in zip(sids, pids, subjects, strict=True):
        ident = patients[pid]["identifier"][0]
        infusion = str(infusions[pid]["performedDateTime"])[:10] if pid == pids[2] else ""
        lines.append(f"{sid},{ident['system']}|{ident['value']},{s['period']['start']},{s['assignedArm']},"
                     f"follow-up,{infusion}")
    roster = feed.parent / f"{feed.name}-roster.csv"
    roster.write_text("\n".join(lines) + "\n")
    site = feed.parent / f"{feed.name}-site.yaml"
    site.write_text("site: hospital\ncode_systems:\n  hproc: https://hospital.example.org/procedure-code\n"
                    "infusion_codes: [\"hproc|CART-INF\"]\n")
    expected = {sids[0]: f"Procedure/{infusions[pids[0]]['id']}", sids[1]: "MedicationAdministration/cart-admin-1",
                sids[2]: f"roster CSV {roster.name}:4"}
    return feed, roster, {"site": str(site), **expected}
