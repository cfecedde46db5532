"""What a finding reads of the Specimen it names (read once per subject and shared by the Observations naming it),
and the one-pass reads of a CodeableConcept agreeing with :func:`codings` and :func:`texts`."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from fhir_adapter.job.runlog import RunLog
from fhir_adapter.mapping.cdisc_details import BODY_POSITION, RELATIVE_TIME
from fhir_adapter.mapping.common import codings, first_code, first_text, indexed, system_code, texts
from fhir_adapter.mapping.observations import ObservationMapper
from fhir_adapter.study.load import Study
from tests.mapping.test_observations import obs

V2_0916 = "http://terminology.hl7.org/CodeSystem/v2-0916"


def _position(code: str) -> dict[str, Any]:
    return {"url": BODY_POSITION, "valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct",
                                                                      "code": code}]}}


def _relative(minutes: int, target: str) -> dict[str, Any]:
    return {"url": RELATIVE_TIME, "extension": [
        {"url": "target", "valueReference": {"display": target}},
        {"url": "relationship", "valueCode": "after-start"},
        {"url": "offset", "valueDuration": {"value": minutes, "code": "min"}},
    ]}


SPECIMEN: dict[str, Any] = {
    "resourceType": "Specimen", "id": "s1", "status": "unsatisfactory",
    "type": {"text": "Serum"}, "accessionIdentifier": {"value": "ACC-1"},
    "condition": [{"coding": [{"display": "Hemolyzed"}]}],
    "collection": {"collectedDateTime": "2024-03-05T08:30:00+01:00",
                   "fastingStatusCodeableConcept": {"coding": [{"system": V2_0916, "code": "F"}]},
                   "extension": [_position("40199007")]},
    "extension": [_relative(30, "LCAR-AIO infusion")],
}


def test_observations_naming_one_specimen_share_its_details_and_keep_their_own_position(study: Study) -> None:
    own = obs("o1", "4485-9", 95, "mg/dL", specimen={"reference": "Specimen/s1"}, extension=[_position("33586001")])
    shared = obs("o2", "2160-0", 88.4, "umol/L", specimen={"reference": "Specimen/s1"})
    alone = obs("o3", "777-3", 150, "10*3/uL", extension=[_relative(60, "lymphodepletion")])
    mapper = ObservationMapper(study, RunLog())
    found = {f.source.id: f for f in mapper.map([own, shared, alone], "T-001", {"s1": SPECIMEN})}
    for f in (found["o1"], found["o2"]):
        assert (f.specimen, f.fasting, f.accession, f.specimen_condition, f.specimen_unusable) == (
            "Serum", True, "ACC-1", "Hemolyzed", True)
        assert f.collected is not None and f.collected.isoformat().startswith("2024-03-05T")
        assert (f.timepoint, f.elapsed) == ("30 min after LCAR-AIO infusion", "PT30M")
    assert found["o1"].position == "33586001"  # the Observation's own, not the collection's
    assert found["o2"].position == "40199007"  # the collection's
    assert (found["o3"].specimen, found["o3"].position) == (None, None)
    assert found["o3"].timepoint == "60 min after lymphodepletion"
    # the next subject's Specimen of the same id is read again, not the last subject's
    other = {**SPECIMEN, "type": {"text": "Plasma"}, "status": "available"}
    again = mapper.map([shared], "T-002", {"s1": other})
    assert (again[0].specimen, again[0].specimen_unusable) == ("Plasma", False)


def test_a_timed_collection_without_a_specimen_is_dated_by_the_observation_s_own_period(study: Study) -> None:
    """A 24-h urine protein sent with effectivePeriod and no Specimen (as the generic synthetic feed and many
    EHRs send it) has its start and end (LBDTC, LBENDTC, LBDUR); a Specimen that dates the collection wins."""
    period = {"start": "2024-03-04T08:00:00+01:00", "end": "2024-03-05T08:00:00+01:00"}
    alone = obs("o1", "2889-4", 650, "mg/(24.h)", when=None, effectivePeriod=period)
    with_specimen = obs("o2", "2889-4", 700, "mg/(24.h)", when=None, effectivePeriod=period,
                        specimen={"reference": "Specimen/s1"})
    point = obs("o3", "2889-4", 720, "mg/(24.h)", when=None, effectivePeriod={"start": period["start"]})
    found = {f.source.id: f for f in ObservationMapper(study, RunLog()).map(
        [alone, with_specimen, point], "T-001", {"s1": SPECIMEN})}
    a = found["o1"]
    assert a.collected is not None and a.collected_end is not None
    assert (a.collected_end - a.collected).total_seconds() == 24 * 3600
    assert a.collected == a.datetime  # the period's start: the same instant the finding is dated by
    s = found["o2"]
    assert s.collected == datetime.fromisoformat("2024-03-05T08:30:00+01:00")  # the Specimen's
    assert s.collected_end is None
    assert (found["o3"].collected, found["o3"].collected_end) == (None, None)  # no end: no timed collection
    backwards = obs("o4", "2889-4", 650, "mg/(24.h)", when=None,
                    effectivePeriod={"start": period["end"], "end": period["start"]})  # R4 per-1 broken
    temperature = obs("o5", "8310-5", 37.0, "Cel", when=None, effectivePeriod=period)
    other = {f.source.id: f for f in ObservationMapper(study, RunLog()).map([backwards, temperature], "T-002", {})}
    assert (other["o4"].collected, other["o4"].collected_end) == (None, None)  # never an end before the start
    assert (other["o5"].collected, other["o5"].collected_end) == (None, None)  # a vital sign is no collection


CONCEPTS: list[Any] = [
    None, "text", [], {}, {"text": "T"}, {"text": ""}, {"coding": None}, {"coding": []},
    {"coding": ["x", None, {}]},
    {"coding": [{"system": "s", "code": ""}, {"system": "s", "code": "c2", "display": "D2"}]},
    {"coding": [{"code": "c1"}, {"system": "http://loinc.org", "code": "l1"}, {"system": "http://loinc.org",
                                                                             "code": "l2"}]},
    {"coding": [{"system": "http://loinc.org"}, {"display": ""}, {"display": "D"}], "text": None},
    {"coding": [{"system": "s", "code": "c", "display": "D"}], "text": "T"},
    {"coding": [{"system": "a", "code": "1"}, {"system": "b", "code": "2"}]},
]


@pytest.mark.parametrize("cc", CONCEPTS)
def test_one_pass_reads_agree_with_codings_and_texts(cc: Any) -> None:
    assert first_code(cc) == next((c for _, c in codings(cc) if c), None)
    assert first_text(cc) == next(iter(texts(cc)), None)
    for system in ("http://loinc.org", "s", "", "none"):
        assert system_code(cc, system) == next((c for s, c in codings(cc) if s == system), None)
    for index in ({("b", "2"): "B", ("a", "1"): "A"}, {("b", "2"): "B"}, {("s", ""): "E"}, {}):
        assert indexed(cc, index) == next((index[k] for k in codings(cc) if k in index), None)


@pytest.mark.parametrize(("reference", "own"), [
    ("Patient/p1", True), ("Patient/p1/", True), ("Patient/p1/_history/3", True),
    ("https://ehr.example.org/fhir/Patient/p1", True), ("Patient/p2", False), ("Patient/p10", False),
    ("https://ehr.example.org/fhir/Patient/p2/_history/1", False)])
def test_a_specimen_subject_names_the_subjects_patient_in_any_reference_form(reference: str, own: bool) -> None:
    """Which Specimens a subject's results may take details from (mapping/subject.py: another Patient's are
    warned of, specimen-patient): relative, versioned, absolute or with a trailing slash."""
    from fhir_adapter.mapping.subject import _names_patient

    assert _names_patient(reference, "p1") is own
