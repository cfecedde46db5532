"""Hand-built FHIR R4 NDJSON feeds for pipeline tests (small, readable, every value known)."""

from __future__ import annotations

import datetime as dt
import itertools
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"
SLEDAI = "https://fhir-adapter.org/fhir/CodeSystem/sledai-2k-descriptor"
CLIN = "https://fhir-adapter.org/fhir/CodeSystem/clinical-input"
SUBJECT_SYSTEM = "https://fhir-adapter.org/fhir/sid/lcar-aio-subject"
STUDY_ID = "LCAR-AIO-SLE"
STUDY_SYSTEM = "https://fhir-adapter.org/fhir/sid/research-study"  # study.yaml's study.identifier_system


def at(day1: dt.date, study_day: int, time: str = "09:00:00+00:00") -> str:
    """The dateTime of a study day (no Day 0)."""
    d = day1 + dt.timedelta(days=study_day - 1 if study_day > 0 else study_day)
    return f"{d.isoformat()}T{time}"


def recount_manifest(feed: Path) -> Path:
    """A synthetic feed edited by a test (lines added or removed) keeps a true ``manifest.json``: each output's
    ``count`` (the resources in the file, Bulk Data IG v2), which a local folder's reader checks, set to the
    file's lines again."""
    path = feed / "manifest.json"
    if not path.exists():
        return feed
    manifest = orjson.loads(path.read_bytes())
    for entry in manifest["output"]:
        if "count" in entry:
            lines = (feed / entry["url"]).read_bytes().splitlines()
            entry["count"] = sum(1 for line in lines if line.strip())
    path.write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n")
    return feed


class Feed:
    """Resources grouped by type, written as ``<Type>.ndjson`` (plus raw extra lines)."""

    def __init__(self) -> None:
        self.resources: dict[str, list[Any]] = defaultdict(list)
        self.raw_lines: list[bytes] = []
        self._ids = itertools.count(1)
        self.add(
            {
                "resourceType": "ResearchStudy",
                "id": "study",
                "status": "active",
                "identifier": [{"system": STUDY_SYSTEM, "value": STUDY_ID}],
            }
        )

    def next_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids)}"

    def add(self, resource: dict[str, Any], file_type: str | None = None) -> dict[str, Any]:
        rtype = file_type or (resource.get("resourceType") if isinstance(resource, dict) else None) or "Misc"
        self.resources[str(rtype)].append(resource)
        return resource

    def subject(
        self,
        pid: str,
        subject_id: str,
        *,
        name: str,
        mrn: str,
        birth: str,
        day1: dt.date | None,
        sex: str = "female",
        arm: str = "DL1",
    ) -> None:
        self.add(
            {
                "resourceType": "Patient",
                "id": pid,
                "gender": sex,
                "birthDate": birth,
                "identifier": [{"system": "urn:oid:1.2.3.4.5.mrn", "value": mrn}],
                "name": [{"family": name.split()[-1], "given": name.split()[:-1]}],
                "address": [{"line": ["12 Hospital Lane"], "city": "Springfield"}],
                "managingOrganization": {"reference": "Organization/site-01"},
            }
        )
        self.add(
            {
                "resourceType": "ResearchSubject",
                "id": f"rs-{pid}",
                "status": "on-study",
                "study": {"reference": "ResearchStudy/study"},
                "individual": {"reference": f"Patient/{pid}"},
                "identifier": [{"system": SUBJECT_SYSTEM, "value": subject_id}],
                "assignedArm": arm,
                "period": {"start": "2024-01-05"},
            }
        )
        if day1 is not None:
            self.add(
                {
                    "resourceType": "Procedure",
                    "id": f"inf-{pid}",
                    "status": "completed",
                    "code": {"coding": [{"system": SNOMED, "code": "1156961008"}]},
                    "subject": {"reference": f"Patient/{pid}"},
                    "performedDateTime": at(day1, 1, "10:00:00+00:00"),
                }
            )
            self.add(
                {
                    "resourceType": "MedicationAdministration",
                    "id": f"ld-{pid}",
                    "status": "completed",
                    "medicationCodeableConcept": {
                        "coding": [{"system": RXNORM, "code": "24698"}],
                        "text": "Fludarabine",
                    },
                    "subject": {"reference": f"Patient/{pid}"},
                    "effectiveDateTime": at(day1, -5),
                    "dosage": {"dose": {"value": 30, "unit": "mg/m2"}},
                }
            )

    def obs(
        self,
        pid: str,
        code: str,
        when: str | None,
        *,
        system: str = LOINC,
        value: float | None = None,
        unit: str | None = None,
        id_: str | None = None,
        status: str = "final",
        **extra: Any,
    ) -> dict[str, Any]:
        o: dict[str, Any] = {
            "resourceType": "Observation",
            "id": id_ or self.next_id("o"),
            "status": status,
            "code": {"coding": [{"system": system, "code": code}]},
            "subject": {"reference": f"Patient/{pid}"},
        }
        if when is not None:
            o["effectiveDateTime"] = when
        if value is not None:
            q: dict[str, Any] = {"value": value}
            if unit is not None:
                q.update({"unit": unit, "system": UCUM, "code": unit})
            o["valueQuantity"] = q
        o.update(extra)
        return self.add(o)

    def descriptor(self, pid: str, code: str, when: str, present: bool, **kw: Any) -> dict[str, Any]:
        return self.obs(pid, code, when, system=SLEDAI, valueBoolean=present, **kw)

    def write(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.ndjson"):
            old.unlink()
        for rtype, items in self.resources.items():
            lines = [r if isinstance(r, bytes) else orjson.dumps(r) for r in items]
            (folder / f"{rtype}.ndjson").write_bytes(b"\n".join(lines) + b"\n")
        if self.raw_lines:
            (folder / "Broken.ndjson").write_bytes(b"\n".join(self.raw_lines) + b"\n")
        return folder
