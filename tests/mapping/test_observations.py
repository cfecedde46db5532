"""Observation → Finding: codes, units (UCUM and analyte factors), statuses, versions, duplicates, quarantine."""

from __future__ import annotations

from typing import Any

import pytest

from fhir_adapter.crf.models import Finding
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.mapping.observations import ObservationMapper
from fhir_adapter.study.load import Study

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
CLIN = "https://fhir-adapter.org/fhir/CodeSystem/clinical-input"


def obs(id_: str, code: str, value: Any = None, unit: str | None = None, *, system: str = LOINC,
        when: str | None = "2024-03-05T09:00:00+01:00", status: str = "final", **extra: Any) -> dict[str, Any]:
    o: dict[str, Any] = {"resourceType": "Observation", "id": id_, "status": status,
                         "code": {"coding": [{"system": system, "code": code}]},
                         "subject": {"reference": "Patient/p1"}}
    if when:
        o["effectiveDateTime"] = when
    if value is not None:
        q = {"value": value}
        if unit:
            q.update({"unit": unit, "system": UCUM, "code": unit})
        o["valueQuantity"] = q
    o.update(extra)
    return o


def mapped(study: Study, resources: list[dict[str, Any]]) -> tuple[list[Finding], RunLog]:
    log = RunLog()
    return ObservationMapper(study, log).map(resources, "T-001"), log


@pytest.mark.parametrize(("code", "value", "unit", "item", "expected"), [
    ("4485-9", 95, "mg/dL", "c3", 0.95),
    ("4485-9", 0.95, "g/L", "c3", 0.95),
    ("777-3", 150, "10*3/uL", "platelets", 150.0),
    ("777-3", 150, "10*9/L", "platelets", 150.0),
    ("6690-2", 3500, "/uL", "leukocytes", 3.5),
    ("8310-5", 100.4, "[degF]", "temperature", 38.0),
    ("2890-2", 500, "mg/g{creat}", "upcr", 0.5),
    ("2890-2", 56.56, "mg/mmol{creat}", "upcr", 0.5),
    ("2889-4", 650, "mg/(24.h)", "protein_24h", 0.65),
    ("2160-0", 88.4, "umol/L", "creatinine", 1.0),
])
def test_units_are_normalised_to_the_crf_unit(study: Study, code: str, value: float, unit: str, item: str,
                                         expected: float) -> None:
    (f,), log = mapped(study, [obs("o1", code, value, unit)])
    assert f.item == item and f.value == pytest.approx(expected, rel=1e-4)
    assert f.orig_unit == unit and f.unit == study.items[item].unit
    assert not log.quarantine


def test_pga_in_mm_converts_to_score(study: Study) -> None:
    (f,), _ = mapped(study, [obs("o1", "sle-pga", 40, "mm", system=CLIN)])
    assert f.item == "pga" and f.value == pytest.approx(1.2)


def test_reference_range_converted_with_the_value(study: Study) -> None:
    o = obs("o1", "4485-9", 80, "mg/dL", referenceRange=[{"low": {"value": 90, "unit": "mg/dL"},
                                                          "high": {"value": 180, "unit": "mg/dL"}}])
    (f,), _ = mapped(study, [o])
    assert (f.value, f.ref_low, f.ref_high) == (0.8, 0.9, 1.8)


RR_MEANING = "http://terminology.hl7.org/CodeSystem/referencerange-meaning"


@pytest.mark.parametrize(("ranges", "expected"), [
    ([{"text": "see the laboratory's manual"}, {"low": {"value": 1.1, "unit": "g/L"}, "high": {"value": 1.8}}],
     (1.1, 1.8)),
    ([{"type": {"coding": [{"system": RR_MEANING, "code": "therapeutic"}]}, "low": {"value": 2.0, "unit": "g/L"}},
      {"type": {"coding": [{"system": RR_MEANING, "code": "normal"}]}, "low": {"value": 1.1, "unit": "g/L"}}],
     (1.1, None)),
    ([{"text": "no numbers"}], (None, None)),
])
def test_the_normal_range_is_read_whatever_entry_comes_first(study: Study, ranges: list[dict[str, Any]],
                                                            expected: tuple[float | None, float | None]) -> None:
    """docs/clinical-rules.md#sledai2k-reference-ranges: low complement is judged against the result's own range
    low: a text-only entry or a range of
    another meaning placed first must not hide the normal range (C3 1.0 g/L is low against 1.1)."""
    (f,), _ = mapped(study, [obs("o1", "4485-9", 1.0, "g/L", referenceRange=ranges)])
    assert (f.ref_low, f.ref_high) == expected


def test_unknown_unit_is_quarantined_with_the_fix(study: Study) -> None:
    fs, log = mapped(study, [obs("o1", "4485-9", 95, "mmol/L"), obs("o2", "777-3", 150, "10*9/L")])
    assert [f.item for f in fs] == ["platelets"]
    (q,) = log.quarantine
    assert (q.resource_type, q.id, q.rule) == ("Observation", "o1", "unknown-unit")
    assert "accept_units" in q.fix and "c3" in q.fix


def test_missing_date_and_out_of_bounds_are_quarantined(study: Study) -> None:
    fs, log = mapped(study, [obs("o1", "777-3", 150, "10*9/L", when=None), obs("o2", "8310-5", 60, "Cel")])
    assert fs == []
    assert sorted(q.rule for q in log.quarantine) == ["missing-date", "out-of-bounds"]


def test_status_rules(study: Study) -> None:
    fs, log = mapped(study, [
        obs("a", "777-3", 10, "10*9/L", status="entered-in-error"),
        obs("b", "777-3", 11, "10*9/L", status="cancelled"),
        obs("c", "777-3", 150, "10*9/L", status="preliminary", when="2024-03-06T09:00:00Z"),
        obs("d", "777-3", 160, "10*9/L", status="corrected", when="2024-03-07T09:00:00Z"),
    ])
    assert [(f.source.id, f.preliminary) for f in fs] == [("c", True), ("d", False)]
    assert not log.quarantine and log.counts["observations.not-used.entered-in-error"] == 1


def test_latest_version_wins(study: Study) -> None:
    v1 = obs("a", "4485-9", 0.7, "g/L", meta={"versionId": "1"})
    v2 = obs("a", "4485-9", 0.9, "g/L", status="amended", meta={"versionId": "2"})
    (f,), _ = mapped(study, [v2, v1])
    assert f.value == 0.9 and f.source.version == "2" and f.source.reference == "Observation/a/_history/2"


def test_duplicates_count_once(study: Study) -> None:
    fs, log = mapped(study, [obs("a", "777-3", 150, "10*9/L"), obs("b", "777-3", 150, "10*9/L")])
    assert len(fs) == 1 and log.counts["observations.duplicates"] == 1


def test_string_numbers_comparators_and_components(study: Study) -> None:
    s = obs("s", "5130-0", valueString="45", referenceRange=[{"high": {"value": 30, "unit": "[IU]/mL"}}])
    lloq = obs("q", "2890-2", 0.2, "mg/mg")
    lloq["valueQuantity"]["comparator"] = "<"
    bp = obs("bp", "85354-9", component=[
        {"code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
         "valueQuantity": {"value": 120, "unit": "mm[Hg]", "system": UCUM, "code": "mm[Hg]"}},
        {"code": {"coding": [{"system": LOINC, "code": "8462-4"}]},
         "valueQuantity": {"value": 80, "unit": "mm[Hg]", "system": UCUM, "code": "mm[Hg]"}}])
    fs, log = mapped(study, [s, lloq, bp])
    got = {f.item: (f.value, f.comparator) for f in fs}
    assert got == {"anti_dsdna": (45.0, None), "upcr": (0.2, "<"), "systolic_bp": (120.0, None),
                   "diastolic_bp": (80.0, None)}
    assert not log.quarantine


@pytest.mark.parametrize("text", ["1,200", "1,2", "0,5", "1.200,5", "1 200", "1\u202f200", "1'200", "1.200.000",
                                  "<1,5", "\u22641,5"])
def test_a_string_number_with_a_comma_or_grouping_is_quarantined_never_guessed(study: Study, text: str) -> None:
    """"1,200" ferritin may be 1200 or 1.2 (a decimal comma): neither is read; the resource is named with the
    rule and the fix."""
    fs, log = mapped(study, [obs("f", "2276-4", valueString=text)])
    assert fs == []
    (q,) = log.quarantine
    assert (q.resource_type, q.id, q.rule) == ("Observation", "f", "ambiguous-number")
    assert text in q.reason and "valueQuantity" in q.fix


@pytest.mark.parametrize(("text", "value", "comparator"), [
    ("1200", 1200.0, None), ("1200.5", 1200.5, None), (" 45 ", 45.0, None), ("<0.2", 0.2, "<"),
    ("<=0.2", 0.2, "<="), ("\u22640.2", 0.2, "<="), ("\u2265 300", 300.0, ">="), (">=300", 300.0, ">="),
])
def test_a_string_number_with_a_decimal_point_and_comparator_signs(study: Study, text: str, value: float,
                                                                  comparator: str | None) -> None:
    (f,), log = mapped(study, [obs("f", "2276-4", valueString=text, referenceRange=[FERRITIN_RANGE])])
    assert (f.item, f.value, f.comparator, f.unit, f.orig_value) == ("ferritin", value, comparator, "ug/L", text)
    assert not log.quarantine


FERRITIN_RANGE = {"low": {"value": 15, "unit": "ug/L", "system": UCUM, "code": "ug/L"},
                  "high": {"value": 150, "unit": "ug/L", "system": UCUM, "code": "ug/L"}}


def test_a_string_number_takes_the_unit_of_its_reference_range_never_the_crfs_by_assumption(study: Study) -> None:
    """A valueString has no unit (docs/clinical-rules.md#unit-spellings: never guessed). A European lab's UPCR
    "25" is 25 mg/mmol, 0.221 mg/mg: read in its reference range's unit, converted; with no unit anywhere it is
    quarantined — it had been stored as 25 mg/mg, proteinuria."""
    mmol = {"high": {"value": 3, "unit": "mg/mmol"}}
    (f,), log = mapped(study, [obs("u", "2890-2", valueString="25", referenceRange=[mmol])])
    assert (f.item, f.value, f.orig_unit) == ("upcr", 0.221, "mg/mmol") and not log.quarantine
    fs, log = mapped(study, [obs("v", "2890-2", valueString="25")])
    assert fs == [] and [(q.id, q.rule) for q in log.quarantine] == [("v", "missing-unit")]
    assert "valueString '25' carries no unit" in log.quarantine[0].reason
    assert "valueQuantity" in log.quarantine[0].fix


def test_a_string_that_is_no_number_stays_non_numeric(study: Study) -> None:
    _, log = mapped(study, [obs("f", "2276-4", valueString="see comment"), obs("g", "2276-4", valueString="1,")])
    assert [q.rule for q in log.quarantine] == ["non-numeric", "non-numeric"]


def test_coded_and_boolean_values(study: Study) -> None:
    pos = obs("p", "anti-car-antibody", system=CLIN, valueCodeableConcept={
        "coding": [{"system": "http://snomed.info/sct", "code": "10828004", "display": "Positive"}]})
    desc = obs("d", "arthritis", system="https://fhir-adapter.org/fhir/CodeSystem/sledai-2k-descriptor",
               valueBoolean=True)
    weird = obs("w", "8061-4", valueCodeableConcept={"text": "equivocal"})
    fs, log = mapped(study, [pos, desc, weird])
    assert {(f.item, f.value_bool) for f in fs} == {("anti_car_antibody", True), ("sledai2k.arthritis", True)}
    assert [q.rule for q in log.quarantine] == ["unknown-code"]


def test_dates_in_the_site_time_zone(study: Study) -> None:
    (f,), _ = mapped(study, [obs("a", "777-3", 150, "10*9/L", when="2024-03-05T23:30:00-03:00")])
    assert str(f.date) == "2024-03-06"  # UTC is the study default
    (f,), _ = mapped(study, [obs("a", "777-3", 150, "10*9/L", when="2024-03")])
    assert f.date is None and f.partial_date == "2024-03"


def test_original_value_text_does_not_depend_on_how_json_carried_the_number(study: Study) -> None:
    # a file export keeps 37.0, a JavaScript server returns 37: ORRES must read the same from both sources
    (a,), _ = mapped(study, [obs("o1", "8310-5", 37.0, "Cel")])
    (b,), _ = mapped(study, [obs("o1", "8310-5", 37, "Cel")])
    (c,), _ = mapped(study, [obs("o2", "8310-5", 37.25, "Cel")])
    assert a.orig_value == b.orig_value == "37"
    assert c.orig_value == "37.25"


def test_a_reference_range_limit_in_a_unit_not_understood_is_said_not_dropped_silently(study: Study) -> None:
    """An Epic-style range high "IU/mL" (not UCUM, and "IU" is no synonym: which international unit?) cannot be
    compared: the derivations fall back to the interpretation, else the study's default range
    (docs/clinical-rules.md#sledai2k-reference-ranges) — and the run report says so, naming the result."""
    o = obs("d", "5130-0", 16, "[IU]/mL", referenceRange=[{"low": {"value": 0, "unit": "IU/mL"},
                                                          "high": {"value": 15, "unit": "IU/mL"}}])
    (f,), log = mapped(study, [o])
    assert (f.value, f.ref_low, f.ref_high) == (16.0, None, None)
    (w,) = [w for w in log.warnings if w["rule"] == "reference-range-unit"]  # one per result, both limits in it
    assert w["resource"] == "Observation/d" and "15 IU/mL not used" in w["message"] and w["fix"]
    assert "limit 0 IU/mL not used" in w["message"]


def test_every_interpretation_element_is_read(study: Study) -> None:
    """Observation.interpretation is 0..*: a C3 flagged [N, L] carries L (low complement by the lab's flag)."""
    v2 = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
    o = obs("c", "4485-9", 0.85, "g/L", interpretation=[{"coding": [{"system": v2, "code": "N"}]},
                                                        {"coding": [{"system": v2, "code": "L"}]}])
    (f,), _ = mapped(study, [o])
    assert f.interpretation == ("N", "L")


def test_the_latest_version_is_the_latest_instant_whatever_the_offset(study: Study) -> None:
    """Without versionIds, meta.lastUpdated decides as a point in time: 10:00+08:00 is 02:00Z, before 03:00Z
    (compared as text it had looked later)."""
    later = obs("a", "2890-2", 2.8, "mg/mg", meta={"lastUpdated": "2024-05-03T03:00:00Z"})
    earlier = obs("a", "2890-2", 0.95, "mg/mg", meta={"lastUpdated": "2024-05-03T10:00:00+08:00"})
    for order in ([later, earlier], [earlier, later]):
        (f,), _ = mapped(study, order)
        assert f.value == 2.8


def test_an_observation_named_by_text_alone_is_counted_unmapped_not_lost(study: Study) -> None:
    """A local test sent with code.text and no coding feeds no item (no code to map) — and the run report's
    coverage.unmapped_codes says so, as for a code no item knows."""
    from fhir_adapter.export.coverage import unmapped_codes
    from fhir_adapter.mapping.observations import TEXT_ONLY

    o = obs("t", "x")
    o["code"] = {"text": "Urine  protein|creatinine"}
    fs, log = mapped(study, [o])
    assert fs == [] and log.counts[f"unmapped.{TEXT_ONLY}|Urine protein/creatinine"] == 1
    assert {"system": TEXT_ONLY, "code": "Urine protein/creatinine"}.items() <= unmapped_codes(log.counts)[0].items()


def test_one_id_twice_with_different_values_and_no_version_is_said(study: Study) -> None:
    """Nothing tells which of two different Observation/a is current: the first is used, and the run report
    names the resource (an identical copy is no news)."""
    first, second = obs("a", "2890-2", 0.4, "mg/mg"), obs("a", "2890-2", 2.4, "mg/mg")
    (f,), log = mapped(study, [first, second, dict(first)])
    assert f.value == 0.4
    assert [(w["rule"], w["resource"]) for w in log.warnings] == [("same-id-different-content", "Observation/a")]
    _, log = mapped(study, [first, dict(first)])
    assert log.warnings == []


def test_a_coded_result_not_done_is_data_absent_like_a_quantity(study: Study) -> None:
    """ANA (a coded item) with a dataAbsentReason and no value: not done (kept for the NOT DONE row), as a
    quantity is — it had been quarantined as having no value."""
    absent = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/data-absent-reason", "code": "error"}]}
    mapper = ObservationMapper(study, RunLog())
    fs = mapper.map([obs("n", "8061-4", dataAbsentReason=absent)], "T-001")
    assert fs == [] and [q.rule for q in mapper.log.quarantine] == ["data-absent"]
    assert [(o["id"], item) for o, item in mapper.not_done_obs] == [("n", "ana")]


def test_a_value_beside_a_data_absent_reason_is_quarantined(study: Study) -> None:
    """R4 obs-6: dataAbsentReason only when there is no value. Both together (a 0 placeholder?) is not read."""
    absent = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/data-absent-reason", "code": "error"}]}
    fs, log = mapped(study, [obs("b", "2890-2", 0, "mg/mg", dataAbsentReason=absent)])
    assert fs == [] and [(q.id, q.rule) for q in log.quarantine] == [("b", "value-and-data-absent")]


def test_a_string_number_whose_range_unit_is_not_understood_says_where_the_unit_came_from(study: Study) -> None:
    fs, log = mapped(study, [obs("s", "5130-0", valueString="45", referenceRange=[{"high": {"value": 30,
                                                                                            "unit": "IU/mL"}}])])
    assert fs == [] and log.quarantine[0].rule == "unknown-unit"
    assert "the unit of its reference range: a valueString has none" in log.quarantine[0].reason


def test_a_coded_result_without_text_shows_its_first_code_in_the_order_sent(study: Study) -> None:
    """A valueCodeableConcept with no text or display shows the first of its codes as sent: a set's order differs
    from one process to the next, and one worker's CRF and LB rows differed from another's."""
    snomed = "http://snomed.info/sct"
    others = ["1000001", "1000002", "1000003", "1000004", "1000005", "1000006"]
    for first in others:
        rest = [c for c in others if c != first]
        value = {"coding": [{"system": snomed, "code": c} for c in [first, "10828004", *rest]]}
        (f,), _ = mapped(study, [obs(f"ana-{first}", "8061-4", valueCodeableConcept=value)])
        assert (f.value_bool, f.value_text, f.orig_value) == (True, first, first)


def _component(code: str, value: float, unit: str) -> dict[str, Any]:
    return {"code": {"coding": [{"system": LOINC, "code": code}]},
            "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit}}


def test_a_code_without_value_heading_its_result_is_a_header(study: Study) -> None:
    """A single-test order converted from HL7 v2: the Observation's code is the test's, its result a component
    of the same code. Read as the result, never quarantined as ambiguous."""
    header = obs("h", "777-3", component=[_component("777-3", 237, "10*9/L")])
    same = obs("s", "777-3", 237, "10*9/L", when="2024-03-06T09:00:00+01:00",
               component=[_component("777-3", 237, "10*9/L")])
    fs, log = mapped(study, [header, same])
    assert [(f.source.id, f.item, f.value) for f in fs] == [("h", "platelets", 237), ("s", "platelets", 237)]
    assert log.quarantine == []


def test_an_item_given_two_values_by_one_observation_is_quarantined_alone(study: Study) -> None:
    """A panel whose components give lymphocytes twice (automated 731-0 and manual 26474-7, both the study's
    lymphocytes codes) with different values: which is the result cannot be told, so lymphocytes is quarantined
    (ambiguous-code, both values named) and the panel's other components are read."""
    panel = obs("cbc", "58410-2", component=[_component("777-3", 237, "10*9/L"), _component("731-0", 1.1, "10*9/L"),
                                              _component("26474-7", 1.2, "10*9/L")])
    fs, log = mapped(study, [panel])
    assert [(f.item, f.value) for f in fs] == [("platelets", 237)]
    (q,) = log.quarantine
    assert (q.rule, q.id) == ("ambiguous-code", "cbc") and "lymphocytes" in q.reason and "1.1, 1.2" in q.reason


def test_an_item_given_two_values_one_unreadable_is_ambiguous_not_the_readable_one(study: Study) -> None:
    """Its own platelet value in a unit no one reads, and a component of the same code giving 150: the 150 was
    used as the platelet count, silently (review finding). Either could be the result: the item is quarantined
    ambiguous-code, naming what could not be read."""
    o = obs("x", "777-3", 237, "xyz", component=[_component("777-3", 150, "10*9/L")])
    fs, log = mapped(study, [o])
    assert fs == []
    (q,) = log.quarantine
    assert q.rule == "ambiguous-code" and "one of which cannot be read" in q.reason and "xyz" in q.reason
