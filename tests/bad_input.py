"""A corpus of bad input mixed with valid data of the same subjects (``tests/data/bad_input/``).

``build(folder)`` writes the NDJSON feed and returns what the run must report for each kind of bad input
and the valid Observations that must still reach the CRF. Run as a script to (re)write the corpus:
``python tests/bad_input.py tests/data/bad_input``.
"""

from __future__ import annotations

import datetime as dt
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from fhir_adapter.terminology.codes import AE_SEVERITY
from tests.feedkit import CLIN, LOINC, RXNORM, SNOMED, SUBJECT_SYSTEM, Feed, at

DAY1 = dt.date(2024, 2, 1)
SUBJECTS = {"p1": "101-001", "p2": "101-002", "p3": "101-003"}


@dataclass(frozen=True)
class Expect:
    """Where the run must report one kind of bad input."""

    kind: str
    where: str  # "quarantine", "warning" or "count"
    rule: str  # quarantine/warning rule, or the run-log counter
    resource_type: str | None = None
    id: str | None = None
    file: str | None = None


def _pl(f: Feed, pid: str, when: str | None, oid: str, **kw: Any) -> dict[str, Any]:
    """A platelet count (10*9/L unless overridden)."""
    kw.setdefault("value", 180)
    kw.setdefault("unit", "10*9/L")
    return f.obs(pid, "777-3", when, id_=oid, **kw)


def build(folder: Path) -> tuple[list[Expect], dict[str, set[str]]]:
    f = Feed()
    exp: list[Expect] = []
    valid: dict[str, set[str]] = {sid: set() for sid in SUBJECTS.values()}
    names = {"p1": "Dora Quarantine", "p2": "Evan Brokenfeed", "p3": "Fay Malformed"}
    for i, (pid, sid) in enumerate(SUBJECTS.items()):
        f.subject(pid, sid, name=names[pid], mrn=f"MRN-99{i}", birth=f"198{i}-05-0{i + 1}", day1=DAY1)
        for oid, code, when, value, unit in [
            (f"v-plt-{pid}", "777-3", at(DAY1, 29), 150 + i, "10*9/L"),
            (f"v-hgb-{pid}", "718-7", at(DAY1, 29), 12.1, "g/dL"),
            (f"v-temp-{pid}", "8310-5", at(DAY1, 57), 37.2, "Cel"),
            (f"v-c3-{pid}", "4485-9", at(DAY1, 57), 95, "mg/dL"),
        ]:
            f.obs(pid, code, when, id_=oid, value=value, unit=unit)
            valid[sid].add(oid)
        f.descriptor(pid, "arthritis", at(DAY1, 29, "11:00:00+00:00"), True, id_=f"v-arth-{pid}")
        valid[sid].add(f"v-arth-{pid}")

    def q(
        kind: str, rule: str, rtype: str | None = None, id_: str | None = None, file: str | None = None
    ) -> None:
        exp.append(Expect(kind, "quarantine", rule, rtype, id_, file))

    # -- lines that are not FHIR resources (Broken.ndjson, line by line) -----------------------------
    raw: list[tuple[str, bytes, str]] = [
        (
            "truncated JSON line",
            b'{"resourceType": "Observation", "id": "trunc", "status": "fi',
            "malformed-json",
        ),
        ("JSON array instead of an object", b"[1, 2, 3]", "not-a-resource"),
        ("JSON null line", b"null", "not-a-resource"),
        ("JSON string line", b'"Observation"', "not-a-resource"),
        ("invalid UTF-8 bytes", b'{"resourceType": "Observation", "id": "\xff\xfe"}', "malformed-json"),
        ("missing resourceType", orjson.dumps({"id": "nort", "status": "final"}), "not-a-resource"),
        ("resourceType is not a string", orjson.dumps({"resourceType": 42, "id": "rt42"}), "not-a-resource"),
    ]
    for kind, line, rule in raw:
        f.raw_lines.append(line)
        q(kind, rule, file="Broken.ndjson")
    f.add(
        {
            "resourceType": "Observaton",
            "id": "typo",
            "status": "final",
            "subject": {"reference": "Patient/p1"},
        },
        "Misc",
    )
    q("unknown resourceType", "unknown-resource-type", "Observaton", "typo")

    # -- roster ----------------------------------------------------------------------------------------
    f.add(
        {
            "resourceType": "ResearchSubject",
            "id": "rs-ghost",
            "status": "on-study",
            "study": {"reference": "ResearchStudy/study"},
            "individual": {"reference": "Patient/ghost"},
            "identifier": [{"system": SUBJECT_SYSTEM, "value": "101-099"}],
        }
    )
    q("ResearchSubject pointing at a missing Patient", "unknown-patient", "ResearchSubject", "rs-ghost")
    # two ResearchSubjects claiming one subject ID: neither is processed (never "the first one wins")
    for pid, rsid in (("p4", "rs-dup"), ("p6", "rs-dup-twin")):
        f.add({"resourceType": "Patient", "id": pid, "gender": "male", "birthDate": "1970-01-01"})
        f.add(
            {
                "resourceType": "ResearchSubject",
                "id": rsid,
                "status": "on-study",
                "study": {"reference": "ResearchStudy/study"},
                "individual": {"reference": f"Patient/{pid}"},
                "identifier": [{"system": SUBJECT_SYSTEM, "value": "101-904"}],
            }
        )
    q("duplicate subject id", "duplicate-subject-id", "ResearchSubject", "rs-dup")
    f.add({"resourceType": "Patient", "id": "p5", "gender": "male"})
    f.add(
        {
            "resourceType": "ResearchSubject",
            "id": "rs-noid",
            "status": "on-study",
            "study": {"reference": "ResearchStudy/study"},
            "individual": {"reference": "Patient/p5"},
            "identifier": [{"system": "urn:other", "value": "X"}],
        }
    )
    q("ResearchSubject without a subject ID", "no-subject-id", "ResearchSubject", "rs-noid")
    f.add(
        {
            "resourceType": "ResearchSubject",
            "id": "rs-bad",
            "status": "on-study",
            "study": {"reference": "ResearchStudy/study"},
            "individual": {"reference": "Patient/p5"},
            "period": {"start": "yesterday"},
        }
    )
    q("ResearchSubject that fails R4 parsing", "r4-invalid", "ResearchSubject", "rs-bad")
    f.add({"resourceType": "Patient", "gender": "female"})
    q("Patient without id", "missing-id", "Patient")

    # -- references ------------------------------------------------------------------------------------
    _pl(f, "nobody", at(DAY1, 29), "o-unknown-patient")
    q("reference to a Patient not in the export", "unknown-patient", "Observation", "o-unknown-patient")
    o = _pl(f, "p1", at(DAY1, 29), "o-no-subject")
    del o["subject"]
    q("resource with no subject", "no-patient", "Observation", "o-no-subject")
    _pl(f, "p1", at(DAY1, 29), "o-group-subject")["subject"] = {"reference": "Group/g1"}
    q("subject is not a Patient", "no-patient", "Observation", "o-group-subject")
    del _pl(f, "p2", at(DAY1, 29), "o-no-id")["id"]
    q("Observation without id", "missing-id", "Observation")

    # -- FHIR R4 parsing -------------------------------------------------------------------------------
    _pl(f, "p1", at(DAY1, 29), "o-wrong-type", value=None, valueQuantity={"value": "abc", "unit": "10*9/L"})
    q("wrong type for a field (value 'abc')", "r4-invalid", "Observation", "o-wrong-type")
    _pl(f, "p1", at(DAY1, 29), "o-unknown-element", foo=1)
    q("unknown element", "r4-invalid", "Observation", "o-unknown-element")
    del _pl(f, "p2", at(DAY1, 29), "o-no-status")["status"]
    q("Observation without status", "r4-invalid", "Observation", "o-no-status")
    _pl(f, "p2", "2024-13", "o-month-13")
    q("partial date with month 13 (2024-13)", "r4-invalid", "Observation", "o-month-13")
    _pl(f, "p2", "2024-03-05T10:00:00+25:00", "o-bad-offset")
    q("dateTime with a bad offset (+25:00)", "r4-invalid", "Observation", "o-bad-offset")
    _pl(f, "p2", "2024-03-05T10:00:00", "o-no-offset")
    q("dateTime without offset", "r4-invalid", "Observation", "o-no-offset")
    _pl(f, "p3", at(DAY1, 29), "o-two-values", valueString="180")
    q("two value[x] elements", "r4-invalid", "Observation", "o-two-values")
    f.obs("p3", "718-7", at(DAY1, 29), id_="o-empty-string", valueString="")
    q("empty string value", "r4-invalid", "Observation", "o-empty-string")

    # -- observation mapping ---------------------------------------------------------------------------
    _pl(f, "p1", at(DAY1, 29), "o-bogus-status", status="bogus")
    q("status that is not an R4 code", "unknown-status", "Observation", "o-bogus-status")
    _pl(f, "p1", None, "o-no-date")
    q("Observation without effective date", "missing-date", "Observation", "o-no-date")
    _pl(f, "p1", at(DAY1, 29), "o-date-int", effectiveDateTime=20240305)
    q("effective date that is a number", "bad-date", "Observation", "o-date-int")
    _pl(f, "p1", at(DAY1, 29), "o-unknown-unit", value=150, unit="mg/dL")
    q("unknown unit (mg/dL for platelets)", "unknown-unit", "Observation", "o-unknown-unit")
    _pl(f, "p2", at(DAY1, 29), "o-non-ucum", value=150, unit="cells per microlitre")
    q("non-UCUM unit", "unknown-unit", "Observation", "o-non-ucum")
    _pl(f, "p2", at(DAY1, 29), "o-no-unit", value=None, valueQuantity={"value": 150})
    q("quantity without unit", "missing-unit", "Observation", "o-no-unit")
    f.obs("p3", "8310-5", at(DAY1, 57), value=60, unit="Cel", id_="o-hot")
    q("value outside physiological bounds (60 Cel)", "out-of-bounds", "Observation", "o-hot")
    _pl(f, "p2", at(DAY1, 29), "o-huge", value=1e308, unit="10*3/uL")
    q("a value of 1e308 in a unit rounded on conversion", "out-of-bounds", "Observation", "o-huge")
    f.obs("p2", "1988-5", at(DAY1, 29), value=1e308, unit="mg/dL", id_="o-crp-overflow")
    q("a value that overflows on conversion (1e308 mg/dL in mg/L)", "out-of-bounds", "Observation", "o-crp-overflow")
    _pl(f, "p3", "0001-01-01T00:30:00+14:00", "o-year-0")
    q("a dateTime whose offset puts it before year 1", "bad-date", "Observation", "o-year-0")
    f.obs("p3", "718-7", at(DAY1, 29), id_="o-text", valueString="see comment")
    q("valueString that is not a number", "non-numeric", "Observation", "o-text")
    f.obs("p3", "718-7", at(DAY1, 29), id_="o-no-value", valueQuantity={"unit": "g/dL"})
    q("valueQuantity without value", "no-value", "Observation", "o-no-value")
    f.obs(
        "p1",
        "8061-4",
        at(DAY1, 29),
        id_="o-equivocal",
        valueCodeableConcept={"coding": [{"system": SNOMED, "code": "42425007"}], "text": "equivocal"},
    )
    q("coded result neither positive nor negative", "unknown-code", "Observation", "o-equivocal")
    f.obs("p2", "8061-4", at(DAY1, 29), id_="o-pos-and-neg", valueCodeableConcept={"coding": [
        {"system": SNOMED, "code": "10828004"}, {"system": SNOMED, "code": "260385009"}]})
    q("coded result with both the positive and the negative code", "ambiguous-code", "Observation", "o-pos-and-neg")
    _pl(f, "p3", at(DAY1, 29), "o-two-items")["code"]["coding"].insert(0, {"system": LOINC, "code": "6690-2"})
    q("a code naming two items (leukocytes and platelets)", "ambiguous-code", "Observation", "o-two-items")
    _pl(f, "p3", at(DAY1, 29), "o-value-and-component", component=[
        {"code": {"coding": [{"system": LOINC, "code": "777-3"}]},
         "valueQuantity": {"value": 50, "unit": "10*9/L", "system": "http://unitsofmeasure.org", "code": "10*9/L"}}])
    q("a value and a component of the same item", "ambiguous-code", "Observation", "o-value-and-component")
    f.obs(
        "p2",
        "718-7",
        at(DAY1, 29),
        id_="o-absent",
        dataAbsentReason={
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/data-absent-reason", "code": "error"}
            ]
        },
    )
    q("dataAbsentReason instead of a value", "data-absent", "Observation", "o-absent")
    _pl(
        f,
        "p3",
        at(DAY1, 29),
        "o-comparator",
        value=None,
        valueQuantity={
            "value": 20,
            "comparator": "~",
            "unit": "10*9/L",
            "system": "http://unitsofmeasure.org",
            "code": "10*9/L",
        },
    )
    q("comparator that is not an R4 code", "bad-comparator", "Observation", "o-comparator")
    f.descriptor("p3", "rash", at(DAY1, 29, "11:00:00+00:00"), True, id_="o-maybe")
    f.resources["Observation"][-1].pop("valueBoolean")
    f.resources["Observation"][-1]["valueString"] = "maybe"
    q("SLEDAI-2K descriptor that is neither present nor absent", "unknown-code", "Observation", "o-maybe")
    f.obs(
        "p3",
        "85354-9",
        at(DAY1, 57),
        id_="o-bp-kpa",
        component=[
            {
                "code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
                "valueQuantity": {
                    "value": 16,
                    "unit": "kPa",
                    "system": "http://unitsofmeasure.org",
                    "code": "kPa",
                },
            }
        ],
    )
    q("panel component with an unaccepted unit (kPa)", "unknown-unit", "Observation", "o-bp-kpa")
    f.obs("p1", "sle-pga", at(DAY1, 29), system=CLIN, value=7, unit="{score}", id_="o-pga-7")
    q("PGA outside 0-3", "out-of-bounds", "Observation", "o-pga-7")

    f.obs("p2", "2276-4", at(DAY1, 29), id_="o-ferritin-comma", valueString="1,200")
    q("valueString number with a comma (1,200: 1200 or 1.2?)", "ambiguous-number", "Observation",
      "o-ferritin-comma")

    # -- concomitant medications -----------------------------------------------------------------------
    f.add(
        {
            "resourceType": "MedicationStatement",
            "id": "cm-dangling",
            "status": "active",
            "medicationReference": {"reference": "Medication/nope"},
            "subject": {"reference": "Patient/p1"},
            "effectiveDateTime": "2024-01-10",
        }
    )
    q("medicationReference to a Medication not in the export", "unresolved-medication-reference",
      "MedicationStatement", "cm-dangling")
    for cm_id, pid, dose, repeat, status in [
        ("cm-negative-dose", "p1", -7.5, {"frequency": 1, "period": 1, "periodUnit": "d"}, "active"),
        ("cm-micrograms-as-mg", "p2", 7500, {"frequency": 1, "period": 1, "periodUnit": "d"}, "active"),
        ("cm-period-zero", "p3", 7.5, {"frequency": 1, "period": 0, "periodUnit": "d"}, "active"),
        ("cm-taking", "p2", 5, {"frequency": 1, "period": 1, "periodUnit": "d"}, "taking"),
    ]:
        f.add(
            {
                "resourceType": "MedicationStatement",
                "id": cm_id,
                "status": status,
                "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "8638"}]},
                "subject": {"reference": f"Patient/{pid}"},
                "effectivePeriod": {"start": "2024-01-10"},
                "dosage": [
                    {
                        "timing": {"repeat": repeat},
                        "route": {"coding": [{"system": SNOMED, "code": "26643006"}]},
                        "doseAndRate": [
                            {"doseQuantity": {"value": dose, "unit": "mg", "system": "http://unitsofmeasure.org",
                                              "code": "mg"}}
                        ],
                    }
                ],
            }
        )
    q("a negative glucocorticoid dose (-7.5 mg)", "implausible-dose", "MedicationStatement", "cm-negative-dose")
    q("a glucocorticoid dose above max_daily_dose_mg (7,500 micrograms sent as mg)", "implausible-dose",
      "MedicationStatement", "cm-micrograms-as-mg")
    q("a dosage timing with period 0", "implausible-dose", "MedicationStatement", "cm-period-zero")
    q("a MedicationStatement status that is not an R4 code ('taking')", "unknown-status", "MedicationStatement",
      "cm-taking")

    # -- exposure --------------------------------------------------------------------------------------
    f.add(
        {
            "resourceType": "MedicationAdministration",
            "id": "ld-bad-date",
            "status": "completed",
            "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "3002"}]},
            "subject": {"reference": "Patient/p2"},
            "effectiveDateTime": "2024-02-30",
        }
    )
    q(
        "lymphodepletion with an impossible date (Feb 30)",
        "r4-invalid",
        "MedicationAdministration",
        "ld-bad-date",
    )
    f.add(
        {
            "resourceType": "MedicationAdministration",
            "id": "ld-negative-dose",
            "status": "completed",
            "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "3002"}]},
            "subject": {"reference": "Patient/p1"},
            "effectiveDateTime": "2024-01-28",
            "dosage": {"dose": {"value": -5, "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg"}},
        }
    )
    exp.append(Expect("lymphodepletion with a negative dose (kept without it)", "warning", "implausible-dose",
                      "MedicationAdministration", "ld-negative-dose"))
    f.add(
        {
            "resourceType": "MedicationAdministration",
            "id": "ld-given",
            "status": "given",
            "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "3002"}]},
            "subject": {"reference": "Patient/p2"},
            "effectiveDateTime": "2024-01-27",
        }
    )
    q("lymphodepletion whose status is not an R4 code ('given')", "unknown-status", "MedicationAdministration",
      "ld-given")

    # -- used but reported (warnings) -------------------------------------------------------------------
    _pl(f, "p1", at(DAY1, 8), "w-prelim", status="preliminary")
    valid["101-001"].add("w-prelim")
    exp.append(
        Expect("preliminary result (used and flagged)", "warning", "preliminary", "Observation", "w-prelim")
    )
    _pl(f, "p2", "2024-03", "w-partial")
    valid["101-002"].add("w-partial")
    exp.append(
        Expect(
            "partial date on a result (kept, not imputed)",
            "warning",
            "partial-date",
            "Observation",
            "w-partial",
        )
    )
    f.add(
        {
            "resourceType": "Procedure",
            "id": "inf-nodate",
            "status": "completed",
            "code": {"coding": [{"system": SNOMED, "code": "1156961008"}]},
            "subject": {"reference": "Patient/p2"},
        }
    )
    exp.append(Expect("infusion without date", "warning", "day1", "Procedure", "inf-nodate"))
    f.add(
        {
            "resourceType": "Procedure",
            "id": "inf-second",
            "status": "completed",
            "code": {"coding": [{"system": SNOMED, "code": "1156961008"}]},
            "subject": {"reference": "Patient/p3"},
            "performedDateTime": at(DAY1, 40),
        }
    )
    exp.append(Expect("two infusions", "warning", "day1", None, None))
    f.add({"resourceType": "Specimen", "id": "spec-of-p2", "subject": {"reference": "Patient/p2"},
           "accessionIdentifier": {"value": "ACC-OF-P2"},
           "collection": {"collectedDateTime": at(DAY1, 40)}})
    _pl(f, "p1", at(DAY1, 29, "09:30:00+00:00"), "o-other-specimen", value=181,
        specimen={"reference": "Specimen/spec-of-p2"})
    valid["101-001"].add("o-other-specimen")
    exp.append(Expect("a result naming another patient's Specimen (its details not used)", "warning",
                      "specimen-patient", "Specimen", "spec-of-p2"))
    for collected in (at(DAY1, 29, "08:00:00+00:00"), at(DAY1, 43, "08:00:00+00:00")):
        f.add({"resourceType": "Specimen", "id": "spec-twice", "subject": {"reference": "Patient/p3"},
               "collection": {"collectedDateTime": collected}})
    _pl(f, "p3", at(DAY1, 29, "09:30:00+00:00"), "o-spec-twice", value=182,
        specimen={"reference": "Specimen/spec-twice"})
    valid["101-003"].add("o-spec-twice")
    exp.append(Expect("a Specimen twice with different content (the first is used)", "warning",
                      "same-id-different-content", "Specimen", "spec-twice"))
    f.add(
        {
            "resourceType": "Procedure",
            "id": "inf-invalid-earlier",
            "status": "completed",
            "code": {"coding": [{"system": SNOMED, "code": "1156961008"}]},
            "subject": {"reference": "Patient/p1"},
            "performedDateTime": at(DAY1, -2),
            "notAnR4Element": True,
        }
    )
    q("an invalid infusion Procedure dated before the valid one (it must not date Day 1)", "r4-invalid",
      "Procedure", "inf-invalid-earlier")
    mild = {"coding": [{"system": AE_SEVERITY, "code": "mild"}]}
    undated_or_ungraded: list[tuple[str, str, dict[str, Any]]] = [
        ("ae-no-onset", "p1", {"severity": mild}), ("ae-no-grade", "p2", {"date": at(DAY1, 5)})]
    for aid, pid, extra in undated_or_ungraded:
        f.add({"resourceType": "AdverseEvent", "id": aid, "actuality": "actual",
               "subject": {"reference": f"Patient/{pid}"}, "event": {"text": "Headache"}, **extra})
    exp.append(Expect("adverse event without onset date (kept)", "warning", "ae-no-onset", "AdverseEvent",
                      "ae-no-onset"))
    exp.append(Expect("adverse event without grade (kept)", "warning", "ae-no-grade", "AdverseEvent", "ae-no-grade"))
    f.obs("p1", "9999-9", at(DAY1, 29), value=1, unit="mg/L", id_="c-unmapped")
    exp.append(Expect("code the mapping does not know", "count", "unmapped.http://loinc.org|9999-9"))

    f.write(folder)
    (folder / "Bundle-broken.json").write_bytes(
        b'{"resourceType": "Bundle", "type": "collection", "entry": ['
    )
    q("truncated Bundle file", "malformed-json", file="Bundle-broken.json")
    return exp, valid


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "tests/data/bad_input")
    kinds, _ = build(target)
    print(f"wrote {len(kinds)} kinds of bad input to {target}")
