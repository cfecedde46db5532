"""Tests of the synthetic LCAR-AIO EHR feed (fhir_adapter.synth): determinism, FHIR R4 validity, the plan as
ground truth (subjects, DLTs, irregularities) and the shape of the data (units, visit windows)."""

from __future__ import annotations

import hashlib
import importlib
import itertools
import json
import re
from collections import Counter, defaultdict
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from fhir_adapter.synth import DATA_CUT, TRANSACTION_TIME, TrialPlan, plan_trial, write_feed
from fhir_adapter.synth.cart_sle.schedule import GROUP_ITEMS, GROUP_VISITS, VISITS
from fhir_adapter.synth.cart_sle.study import site_study_id
from fhir_adapter.synth.people import ClinicPatient
from fhir_adapter.terminology.codes import (
    AE_CAUSALITY_ASSESS,
    CS_CLINICAL_INPUT,
    CS_SLEDAI2K_DESCRIPTOR,
    EXT_AE_GRADE,
    EXT_AE_RESOLVE_DATE,
    EXT_AE_SUSPECT_ENTITY,
    LOINC,
    SLEDAI2K_DESCRIPTOR_CODES,
)

ROOT = Path(__file__).resolve().parents[1]
SCHEDULE_YAML = ROOT / "mappings" / "lcar-aio" / "schedule.yaml"
ENROLLED_STATUSES = {"follow-up", "on-study-observation", "on-study-intervention"}
SID_SUBJECT = "https://fhir-adapter.org/fhir/sid/lcar-aio-subject"
OFFSET_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?([+-]\d{2}:\d{2}|Z)$")

Resource = dict[str, Any]


# --- fixtures ---------------------------------------------------------------------------------------------

class Feed:
    def __init__(self, out: Path, summary: dict[str, int], plan: TrialPlan) -> None:
        self.out = out
        self.summary = summary
        self.plan = plan
        self.lines: dict[str, list[str]] = {}
        self.resources: dict[str, list[Resource]] = {}
        for f in sorted(out.glob("*.ndjson")):
            self.lines[f.stem] = f.read_text(encoding="utf-8").splitlines()
            self.resources[f.stem] = [json.loads(line) for line in self.lines[f.stem]]
        self.by_id = {(r["resourceType"], r["id"]): r for rs in self.resources.values() for r in rs}

    def of(self, rtype: str) -> list[Resource]:
        return self.resources.get(rtype, [])

    def for_patient(self, rtype: str, patient_id: str) -> list[Resource]:
        key = "individual" if rtype == "ResearchSubject" else "subject"
        return [r for r in self.of(rtype) if r.get(key, {}).get("reference") == f"Patient/{patient_id}"]


@pytest.fixture(scope="module")
def feed(tmp_path_factory: pytest.TempPathFactory) -> Feed:
    out = tmp_path_factory.mktemp("feed34")
    summary = write_feed(out, subjects=34, seed=7)
    return Feed(out, summary, plan_trial(34, 7))


def _hashes(directory: Path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(directory.iterdir())}


def _code(r: Resource, system: str | None = None) -> str | None:
    concept: dict[str, Any] = r.get("code") or r.get("event") or {}
    for c in concept.get("coding", []):
        if system is None or c["system"] == system:
            return str(c["code"])
    return None


def _local_date(value: str) -> date:
    return date.fromisoformat(value[:10])


def _study_day(day1: date, d: date) -> int:
    delta = (d - day1).days
    return delta + 1 if delta >= 0 else delta


def _effective(r: Resource) -> str | None:
    if "effectiveDateTime" in r:
        return str(r["effectiveDateTime"])
    if "effectivePeriod" in r:
        return str(r["effectivePeriod"]["end"])
    return None


# --- determinism and format -------------------------------------------------------------------------------

def test_same_seed_gives_byte_identical_files_and_other_seed_differs(tmp_path: Path, feed: Feed) -> None:
    again = tmp_path / "again"
    assert write_feed(again, subjects=34, seed=7) == feed.summary
    assert _hashes(again) == _hashes(feed.out)
    other = tmp_path / "other"
    write_feed(other, subjects=34, seed=8)
    differing = {name for name, digest in _hashes(other).items() if _hashes(feed.out).get(name) != digest}
    assert {"Patient.ndjson", "Observation.ndjson", "AdverseEvent.ndjson"} <= differing
    assert plan_trial(34, 7) == plan_trial(34, 7)
    assert plan_trial(34, 7) != plan_trial(34, 8)


def test_manifest_lists_every_file_with_its_count(feed: Feed) -> None:
    manifest = json.loads((feed.out / "manifest.json").read_text())
    assert manifest["transactionTime"] == TRANSACTION_TIME
    assert manifest["transactionTime"].startswith(DATA_CUT.isoformat())
    listed = {o["type"]: o for o in manifest["output"]}
    assert set(listed) == set(feed.lines) == set(feed.summary)
    for rtype, entry in listed.items():
        assert entry["url"] == f"{rtype}.ndjson"
        assert entry["count"] == len(feed.lines[rtype]) == feed.summary[rtype]
        assert all(r["resourceType"] == rtype for r in feed.resources[rtype])


def test_lines_are_compact_json_and_ids_unique(feed: Feed) -> None:
    for rtype, lines in feed.lines.items():
        for line, res in zip(lines, feed.resources[rtype], strict=True):
            assert line == json.dumps(res, ensure_ascii=False, separators=(",", ":"))
    ids = Counter((r["resourceType"], r["id"]) for rs in feed.resources.values() for r in rs)
    assert max(ids.values()) == 1


def test_every_resource_parses_as_fhir_r4b(feed: Feed) -> None:
    for rtype, lines in feed.lines.items():
        model = getattr(importlib.import_module(f"fhir.resources.R4B.{rtype.lower()}"), rtype)
        for line in lines:
            model.model_validate_json(line)


def test_references_resolve_and_times_carry_offsets(feed: Feed) -> None:
    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            found = [node["reference"]] if isinstance(node.get("reference"), str) else []
            return found + [x for v in node.values() for x in refs(v)]
        if isinstance(node, list):
            return [x for v in node for x in refs(v)]
        return []

    for rs in feed.resources.values():
        for r in rs:
            for reference in refs(r):
                if reference.startswith("#"):  # a contained resource (a body site's BodyStructure)
                    assert reference[1:] in {c["id"] for c in r.get("contained") or []}, reference
                    continue
                rtype, rid = reference.split("/")
                assert (rtype, rid) in feed.by_id, reference
    for o in feed.of("Observation"):
        for value in (o.get("effectiveDateTime"), o.get("issued"), *(o.get("effectivePeriod") or {}).values()):
            assert value is None or OFFSET_RE.match(value), value
    instants = [r["meta"]["lastUpdated"] for rs in feed.resources.values() for r in rs]
    cut = datetime.fromisoformat(TRANSACTION_TIME)
    assert all(datetime.fromisoformat(t.replace("Z", "+00:00")) <= cut for t in instants)


# --- people, study and subjects ---------------------------------------------------------------------------

def test_sites_patients_and_study(feed: Feed) -> None:
    orgs = {o["identifier"][0]["value"]: o["id"] for o in feed.of("Organization")}
    assert set(orgs) == {"101", "102", "103"}
    for p in feed.of("Patient"):
        mrn = p["identifier"][0]
        site = mrn["system"].rsplit("site-", 1)[1].split("/")[0]
        assert p["managingOrganization"]["reference"] == f"Organization/{orgs[site]}"
        assert p["name"][0]["family"] and p["name"][0]["given"] and p["gender"] in ("female", "male")
    (study,) = [s for s in feed.of("ResearchStudy") if "partOf" not in s]
    assert study["identifier"] == [{"system": "https://fhir-adapter.org/fhir/sid/research-study",
                                    "value": "LCAR-AIO-SLE"}]
    assert study["status"] == "active"
    assert [a["name"] for a in study["arm"]] == ["DL1", "DL2", "DL3", "EXP"]
    # one site-level study per site, partOf the protocol, its principal investigator contained (INVID, INVNAM)
    sites = [s for s in feed.of("ResearchStudy") if "partOf" in s]
    assert sorted(s["identifier"][0]["value"] for s in sites) == [f"LCAR-AIO-SLE-{n}" for n in orgs]
    for s in sites:
        assert s["partOf"] == [{"reference": f"ResearchStudy/{study['id']}"}]
        (pi,) = s["contained"]
        assert s["principalInvestigator"]["reference"] == f"#{pi['id']}" and pi["identifier"][0]["value"]


def test_research_subjects_screen_failures_and_outsiders(feed: Feed) -> None:
    plan = feed.plan
    subjects = feed.of("ResearchSubject")
    statuses = Counter(r["status"] for r in subjects)
    assert sum(statuses[s] for s in ENROLLED_STATUSES) == 34
    assert statuses["ineligible"] == 3 and len(subjects) == 37
    assert statuses["on-study-intervention"] == 1 and statuses["on-study-observation"] >= 1
    by_patient = {r["individual"]["reference"].split("/")[1]: r for r in subjects}
    for sp in plan.subjects:
        rs = by_patient[sp.patient_id]
        assert rs["identifier"] == [{"system": SID_SUBJECT, "value": sp.subject_id}]
        assert re.fullmatch(rf"{sp.site}-\d{{3}}", sp.subject_id)
        assert rs["assignedArm"] == sp.arm and rs["status"] == sp.status
        assert rs["period"]["start"] == sp.consent_date.isoformat()
        assert rs["study"]["reference"] == f"ResearchStudy/{site_study_id(plan.study_id, sp.site)}"
    for sf in plan.screen_failures:
        assert by_patient[sf.patient_id]["status"] == "ineligible"
        assert feed.for_patient("Observation", sf.patient_id)
    assert len(plan.non_enrolled_patient_ids) == 3
    assert all(type(ne) is ClinicPatient for ne in plan.non_enrolled)   # the generic feed's clinic patient
    for pid in plan.non_enrolled_patient_ids:
        assert pid not in by_patient
        assert (("Patient", pid)) in feed.by_id
        for rtype in ("Observation", "MedicationStatement", "AdverseEvent"):
            assert feed.for_patient(rtype, pid), rtype
        assert all("study" not in ae for ae in feed.for_patient("AdverseEvent", pid))


def test_cohorts_and_enrolment_timeline(feed: Feed) -> None:
    plan = feed.plan
    arms = [s.arm for s in plan.subjects]
    assert arms == ["DL1"] * 3 + ["DL2"] * 6 + ["DL3"] * 3 + ["EXP"] * 22
    assert plan.subjects[0].consent_date >= date(2024, 1, 1)
    assert date(2026, 5, 1) <= max(s.consent_date for s in plan.subjects[:-1]) <= date(2026, 8, 1)
    escalation = plan.subjects[:12]
    for a, b in itertools.pairwise(escalation):
        assert (b.day1 - a.day1).days >= 14      # sentinel spacing
    for s in plan.subjects:
        assert s.consent_date <= s.screening_date < s.day1 <= DATA_CUT
        assert s.followup_end == min(s.day1 + timedelta(days=749), DATA_CUT)
    assert [s.arm for s in plan_trial(5, 7).subjects] == ["DL1", "DL1", "DL1", "DL2", "DL2"]


def test_one_car_t_infusion_per_enrolled_subject_on_day1(feed: Feed) -> None:
    infusions = [p for p in feed.of("Procedure") if _code(p) == "1156961008"]
    assert len(infusions) == 34
    by_patient = {p["subject"]["reference"].split("/")[1]: p for p in infusions}
    for sp in feed.plan.subjects:
        p = by_patient[sp.patient_id]
        assert p["id"] == sp.infusion_procedure_id and p["status"] == "completed"
        assert OFFSET_RE.match(p["performedDateTime"])
        assert _local_date(p["performedDateTime"]) == sp.day1


def test_lymphodepletion_before_day1(feed: Feed) -> None:
    for sp in feed.plan.subjects:
        given: Counter[tuple[str, int]] = Counter()
        for m in feed.for_patient("MedicationAdministration", sp.patient_id):
            start = m.get("effectiveDateTime") or m["effectivePeriod"]["start"]
            given[(m["medicationCodeableConcept"]["coding"][0]["code"], _study_day(sp.day1, _local_date(start)))] += 1
        assert {(k, d) for (k, d) in given if k in ("24698", "3002")} == {
            ("24698", -5), ("24698", -4), ("24698", -3), ("3002", -3)}


# --- observations -----------------------------------------------------------------------------------------

def test_schedule_matches_the_mapping_file() -> None:
    visits = yaml.safe_load(SCHEDULE_YAML.read_text())["visits"]
    assert [(v["id"], v["day"], tuple(v["window"])) for v in visits] == [
        (v.id, v.day, (v.lo, v.hi)) for v in VISITS]


def test_scheduled_labs_fall_inside_visit_windows_and_not_all_on_target(feed: Feed) -> None:
    visits = yaml.safe_load(SCHEDULE_YAML.read_text())["visits"]
    windows = {v["id"]: (v["window"][0], v["window"][1], v["day"]) for v in visits}
    from fhir_adapter.synth.lab_catalog import ANALYTES

    def items(group: str) -> list[str]:   # the urinary-cast item is site-specific
        return [x for k in GROUP_ITEMS[group] for x in (("rbc_casts", "granular_casts") if k == "urine_casts"
                                                        else (k,))]

    scheduled = {ANALYTES[k].code: g for g in ("complement", "dsdna", "immunology", "urinalysis")
                 for k in items(g)}
    scheduled |= {ANALYTES[k].code: "cbc" for k in GROUP_ITEMS["cbc"]}
    on_target = off_target = 0
    for sp in feed.plan.subjects:
        seen: Counter[tuple[str, str]] = Counter()
        for o in feed.for_patient("Observation", sp.patient_id):
            code, eff = _code(o, LOINC), _effective(o)
            if code not in scheduled or eff is None or o["status"] == "entered-in-error":
                continue
            sd = _study_day(sp.day1, _local_date(eff))
            hits = [vid for vid in GROUP_VISITS[scheduled[code]] if windows[vid][0] <= sd <= windows[vid][1]]
            assert len(hits) == 1, (sp.subject_id, code, sd)
            seen[(code, hits[0])] += 1
            if sd == windows[hits[0]][2]:
                on_target += 1
            else:
                off_target += 1
        duplicates = {ir.item for ir in feed.plan.irregularities if ir.subject_id == sp.subject_id}
        assert all(n == 1 for (code, _), n in seen.items() if code != "5130-0" or "dsdna" not in duplicates)
    assert on_target > 0 and off_target > on_target / 4


def test_sledai_descriptors_and_pga(feed: Feed) -> None:
    descriptors = [o for o in feed.of("Observation") if _code(o, CS_SLEDAI2K_DESCRIPTOR)]
    assert {_code(o, CS_SLEDAI2K_DESCRIPTOR) for o in descriptors} == set(SLEDAI2K_DESCRIPTOR_CODES)
    assert all(isinstance(o["valueBoolean"], bool) for o in descriptors)
    assert {o["category"][0]["coding"][0]["code"] for o in descriptors} == {"exam", "survey"}
    pga = [o for o in feed.of("Observation") if _code(o, CS_CLINICAL_INPUT) == "sle-pga"]
    units = Counter(o["valueQuantity"]["code"] for o in pga)
    assert set(units) == {"{score}", "mm"}
    for o in pga:
        v = o["valueQuantity"]["value"]
        assert 0 <= v <= (100 if o["valueQuantity"]["code"] == "mm" else 3)
    windows = {v.id: (v.lo, v.hi) for v in VISITS}
    for sp in feed.plan.subjects:
        for o in feed.for_patient("Observation", sp.patient_id):
            if _code(o, CS_CLINICAL_INPUT) == "sle-pga":
                sd = _study_day(sp.day1, _local_date(o["effectiveDateTime"]))
                assert any(lo <= sd <= hi for vid, (lo, hi) in windows.items() if vid in GROUP_VISITS["sledai"])


def _value(o: Resource) -> float:
    return float(o["valueQuantity"]["value"])


def test_site_unit_conventions(feed: Feed) -> None:
    site_of = {sp.patient_id: sp.site for sp in feed.plan.subjects}
    units: dict[tuple[int, str], set[str]] = defaultdict(set)
    panels: Counter[int] = Counter()
    for o in feed.of("Observation"):
        pid = o["subject"]["reference"].split("/")[1]
        if pid not in site_of:
            continue
        if _code(o, LOINC) == "58410-2":
            panels[site_of[pid]] += 1
            assert len(o["hasMember"]) == 5
        if "valueQuantity" in o:
            units[(site_of[pid], str(_code(o, LOINC) or _code(o)))].add(o["valueQuantity"]["code"])
    assert units[(101, "4485-9")] == {"mg/dL"} and units[(102, "4485-9")] == {"g/L"}
    assert units[(101, "4498-2")] == {"mg/dL"} and units[(103, "4498-2")] == {"g/L"}
    assert units[(101, "777-3")] == {"10*3/uL"} and units[(102, "777-3")] == {"10*9/L"}
    assert units[(101, "6690-2")] == {"10*3/uL"} and units[(103, "6690-2")] == {"10*9/L"}
    assert units[(103, "8310-5")] == {"[degF]"} and units[(101, "8310-5")] == {"Cel"}
    assert units[(102, "2890-2")] == {"mg/g{creat}"} and units[(101, "2890-2")] == {"mg/mg"}
    assert units[(101, "5130-0")] == {"[IU]/mL"}
    assert units[(101, "car-transgene-copies")] == {"{copies}/ug{DNA}"}
    assert set(panels) == {102}


def test_disease_course_and_kinetics_are_plausible(feed: Feed) -> None:
    plan = feed.plan
    by_code: dict[tuple[str, str], list[tuple[int, Resource]]] = defaultdict(list)
    for sp in plan.subjects:
        for o in feed.for_patient("Observation", sp.patient_id):
            eff = _effective(o)
            if eff and o["status"] != "entered-in-error":
                by_code[(sp.patient_id, str(_code(o, LOINC) or _code(o)))].append(
                    (_study_day(sp.day1, _local_date(eff)), o))
    blq_late = 0
    for sp in plan.subjects:
        tg = sorted(by_code[(sp.patient_id, "car-transgene-copies")], key=lambda x: x[0])
        assert tg[0][1]["valueQuantity"].get("comparator") == "<" and tg[0][0] <= 1       # D1 pre-infusion
        peak = max(tg, key=lambda x: _value(x[1]) if "comparator" not in x[1]["valueQuantity"] else 0)
        if len(tg) >= 5:
            assert 6 <= peak[0] <= 25 and 1e3 <= _value(peak[1]) <= 3e5          # W1-W2 (W3 by noise)
        blq_late += any(d >= 155 and "comparator" in o["valueQuantity"] for d, o in tg)
        cd19 = by_code[(sp.patient_id, "8116-6")]
        aplasia_until = 92 if sp.responder else 32                                           # B-cell aplasia
        assert all(_value(o) < 1 for d, o in cd19 if 1 <= d <= aplasia_until)
        wbc = [_value(o) for d, o in by_code[(sp.patient_id, "6690-2")] if 3 <= d <= 18]
        if wbc:
            assert min(wbc) < 3.0                                                              # LD cytopenia
    assert blq_late >= 3
    recovered = sum(any(d >= 155 and _value(o) > 20 for d, o in by_code[(sp.patient_id, "8116-6")])
                    for sp in plan.subjects)
    assert recovered >= 10


# --- irregularities ---------------------------------------------------------------------------------------

def _same_result(a: Resource, b: Resource) -> bool:
    keys = ("code", "subject", "effectiveDateTime", "valueQuantity", "status")
    return all(a.get(k) == b.get(k) for k in keys)


def test_each_irregularity_is_where_the_plan_says(feed: Feed) -> None:
    plan = feed.plan
    kinds = {ir.kind for ir in plan.irregularities}
    assert kinds == {
        "amended", "entered-in-error", "duplicate", "no-effective-date", "preliminary", "upcr-below-lloq",
        "dsdna-value-string", "clinician-override-leukopenia", "clinician-override-fever",
        "topical-glucocorticoid", "alternate-day-glucocorticoid", "ae-ongoing", "ae-missing-grade",
    }
    for ir in plan.irregularities:
        r = feed.by_id[(ir.resource_type, ir.resource_id)]
        assert r["subject"]["reference"] == f"Patient/{ir.patient_id}"
        if ir.kind == "amended":
            assert r["status"] == "amended" and r["meta"]["versionId"] == "2"
            assert datetime.fromisoformat(r["meta"]["lastUpdated"].replace("Z", "+00:00")) > \
                datetime.fromisoformat(r["issued"])
        elif ir.kind == "entered-in-error":
            assert r["status"] == "entered-in-error" and _value(r) < 20
            redraw = feed.by_id[("Observation", str(ir.related_id))]
            assert redraw["status"] == "final" and _value(redraw) > 20
        elif ir.kind == "duplicate":
            assert _same_result(r, feed.by_id[("Observation", str(ir.related_id))])
        elif ir.kind == "no-effective-date":
            assert not any(k.startswith("effective") for k in r) and "issued" in r
        elif ir.kind == "preliminary":
            assert r["status"] == "preliminary"
        elif ir.kind == "upcr-below-lloq":
            assert _code(r, LOINC) == "2890-2" and r["valueQuantity"]["comparator"] == "<"
        elif ir.kind == "dsdna-value-string":
            assert _code(r, LOINC) == "5130-0" and r["valueString"] == "45"
        elif ir.kind.startswith("clinician-override"):
            assert r["valueBoolean"] is False and r["note"]
            assert _code(r, CS_SLEDAI2K_DESCRIPTOR) == ir.item
        elif ir.kind == "topical-glucocorticoid":
            assert r["dosage"][0]["route"]["coding"][0]["code"] == "6064005"
            assert r["medicationCodeableConcept"]["coding"][0]["code"] == "5492"
        elif ir.kind == "alternate-day-glucocorticoid":
            assert r["dosage"][0]["timing"]["repeat"] == {"frequency": 1, "period": 2, "periodUnit": "d"}
            assert r["dosage"][0]["doseAndRate"][0]["doseQuantity"]["value"] == 20
        elif ir.kind == "ae-ongoing":
            assert r["outcome"]["coding"][0]["code"] == "ongoing"
            assert all(e["url"] != EXT_AE_RESOLVE_DATE for e in r.get("extension", []))
        elif ir.kind == "ae-missing-grade":
            assert all(e["url"] != EXT_AE_GRADE for e in r.get("extension", [])) and "severity" not in r


def test_irregularities_appear_nowhere_else(feed: Feed) -> None:
    planned = {(ir.resource_type, ir.resource_id) for ir in feed.plan.irregularities}
    planned |= {("Observation", str(ir.related_id)) for ir in feed.plan.irregularities if ir.kind == "duplicate"}
    # cancelled orders with a dataAbsentReason are ordinary EHR content (LB NOT DONE rows), not irregularities
    observations = [o for o in feed.of("Observation") if not (o["status"] == "cancelled" and "dataAbsentReason" in o)]
    odd = [o for o in observations if o["status"] != "final" or "valueString" in o
           or not any(k.startswith("effective") for k in o)
           or (_code(o, LOINC) == "2890-2" and "comparator" in o.get("valueQuantity", {}))]
    assert {("Observation", o["id"]) for o in odd} <= planned
    groups: Counter[str] = Counter(json.dumps([o["subject"], o["code"], o.get("effectiveDateTime"),
                                               o.get("effectivePeriod"), o.get("valueQuantity")])
                                   for o in observations if "valueQuantity" in o)
    assert sum(n - 1 for n in groups.values()) == 1        # the one planned duplicate
    overrides = [o for o in observations if "note" in o and _code(o, CS_SLEDAI2K_DESCRIPTOR)]
    assert {("Observation", o["id"]) for o in overrides} <= planned


def test_clinician_overrides_contradict_the_labs(feed: Feed) -> None:
    for ir in feed.plan.irregularities:
        if not ir.kind.startswith("clinician-override"):
            continue
        sp = feed.plan.subject(ir.subject_id)
        descriptor = feed.by_id[("Observation", ir.resource_id)]
        day = _local_date(descriptor["effectiveDateTime"])
        labs = [o for o in feed.for_patient("Observation", sp.patient_id)
                if _effective(o) and 0 <= (day - _local_date(str(_effective(o)))).days <= 2]
        if ir.item == "leukopenia":
            assert any(_code(o, LOINC) == "6690-2" and _value(o) < 3.0 for o in labs)
        else:
            temps = [o for o in labs if _code(o, LOINC) == "8310-5"]
            assert any((_value(o) if o["valueQuantity"]["code"] == "Cel" else (_value(o) - 32) / 1.8) > 38.0
                       for o in temps)


# --- safety -----------------------------------------------------------------------------------------------

def _grade(ae: Resource) -> int | None:
    for e in ae.get("extension", []):
        if e["url"] == EXT_AE_GRADE:
            return int(e["valueCodeableConcept"]["text"].split()[-1])
    return None


def _related(ae: Resource) -> bool:
    for se in ae.get("suspectEntity", []):
        for c in se.get("causality", []):
            assert c["assessment"]["coding"][0]["system"] == AE_CAUSALITY_ASSESS
            return bool(c["productRelatedness"] == "related")
    for e in ae.get("extension", []):
        if e["url"] == EXT_AE_SUSPECT_ENTITY:
            causality = next(x for x in e["extension"] if x["url"] == "causality")
            code = causality["extension"][0]["valueCodeableConcept"]["coding"][0]["code"]
            return code in ("C53258", "C53259", "C53260")
    raise AssertionError("no causality")


def _dlt_status(ae: Resource, day1: date) -> str:
    """An independent reading of the DLT rules (docs/clinical-rules.md#dlt-rules): 'dlt', 'no' or 'not-evaluable'."""
    onset = datetime.fromisoformat(ae["date"])
    if not 1 <= _study_day(day1, onset.date()) <= 30:
        return "no"
    grade = _grade(ae)
    if grade is None:
        return "not-evaluable"
    resolve = next((datetime.fromisoformat(e["valueDateTime"]) for e in ae.get("extension", [])
                    if e["url"] == EXT_AE_RESOLVE_DATE), None)
    hours = (resolve - onset).total_seconds() / 3600 if resolve else None
    term = ae["event"]["text"]
    if term in ("Cytokine release syndrome", "Immune effector cell-associated neurotoxicity syndrome"):
        return "dlt" if grade >= 4 or (grade == 3 and (hours is None or hours > 72)) else "no"
    if term in ("Neutropenia", "Thrombocytopenia"):
        still_on_day30 = resolve is None or _study_day(day1, resolve.date()) > 30
        return "dlt" if grade >= 4 and still_on_day30 else "no"
    return "dlt" if grade >= 3 and _related(ae) and (hours is None or hours > 7 * 24) else "no"


def test_three_plus_three_dlts_as_planned(feed: Feed) -> None:
    plan = feed.plan
    dlts = Counter(s.arm for s in plan.subjects if s.dlt_expected)
    assert (dlts["DL1"], dlts["DL2"], dlts["DL3"]) == (0, 1, 2)
    exp = [s for s in plan.subjects if s.arm == "EXP"]
    assert 1 <= dlts["EXP"] <= 2 and dlts["EXP"] / len(exp) < 1 / 6
    assert [s.arm for s in plan.subjects if s.dlt_not_evaluable] == ["EXP"]
    for sp in plan.subjects:
        statuses = {_dlt_status(ae, sp.day1) for ae in feed.for_patient("AdverseEvent", sp.patient_id)}
        assert ("dlt" in statuses) == sp.dlt_expected, sp.subject_id
        assert ("not-evaluable" in statuses) == sp.dlt_not_evaluable, sp.subject_id


def test_adverse_event_coding(feed: Feed) -> None:
    aes = [ae for sp in feed.plan.subjects for ae in feed.for_patient("AdverseEvent", sp.patient_id)]
    crs = [ae for ae in aes if ae["event"]["text"] == "Cytokine release syndrome"]
    assert len({ae["subject"]["reference"] for ae in crs}) >= 20
    for ae in crs:
        systems = {c["system"]: c["code"] for c in ae["event"]["coding"]}
        assert systems["http://terminology.hl7.org/CodeSystem/mdr"] == "10052015"
        assert systems["http://hl7.org/fhir/sid/icd-10-cm"].startswith("D89.83")
    backport = [ae for ae in aes if any(e["url"] == EXT_AE_SUSPECT_ENTITY for e in ae.get("extension", []))]
    core = [ae for ae in aes if "suspectEntity" in ae]
    assert backport and core and len(backport) + len(core) == len(aes)
    assert all("site-103" in ae["identifier"]["system"] for ae in backport)
    for ae in aes:
        assert ae["actuality"] == "actual" and ae["event"]["text"]
        serious = ae["seriousness"]["coding"][0]["code"] == "serious"
        assert serious == any(e["url"].endswith("seriousness-criteria") for e in ae.get("extension", []))
    pre_infusion = [sp for sp in feed.plan.subjects
                    if any(-5 <= _study_day(sp.day1, _local_date(ae["date"])) <= -1
                           for ae in feed.for_patient("AdverseEvent", sp.patient_id))]
    assert len(pre_infusion) >= 2


def test_glucocorticoids_taper_with_systemic_routes(feed: Feed) -> None:
    statements = [m for sp in feed.plan.subjects for m in feed.for_patient("MedicationStatement", sp.patient_id)]
    formulary = {m["id"]: m for m in feed.of("Medication")}
    codes = Counter((m.get("medicationCodeableConcept")
                     or formulary[m["medicationReference"]["reference"].split("/")[1]]["code"])["coding"][0]["code"]
                    for m in statements)
    assert codes["73645"] == 34, "valaciclovir prophylaxis references the site formulary's Medication"
    assert codes["8640"] > codes["6902"] > 0 and codes["5492"] == 1
    for code in ("5521", "68149"):           # stopped before lymphodepletion
        for sp in feed.plan.subjects:
            for m in feed.for_patient("MedicationStatement", sp.patient_id):
                if "medicationCodeableConcept" in m and m["medicationCodeableConcept"]["coding"][0]["code"] == code:
                    end = date.fromisoformat(m["effectivePeriod"]["end"])
                    assert _study_day(sp.day1, end) < -5


# --- scale ------------------------------------------------------------------------------------------------

def test_small_and_larger_feeds(tmp_path: Path) -> None:
    small = write_feed(tmp_path / "n3", subjects=3, seed=7)
    assert small["ResearchSubject"] == 3 + 3
    summary = write_feed(tmp_path / "n340", subjects=340, seed=7)
    plan = plan_trial(340, 7)
    assert summary["ResearchSubject"] == 340 + len(plan.screen_failures) == 370
    assert summary["Patient"] == 340 + 30 + 30
    assert summary["Observation"] > 8 * 15_000
