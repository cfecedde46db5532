"""ServerSource roster: the ResearchSubjects of the study, and their Patients even when the EHR ignores
``_include=ResearchSubject:individual``."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from fhir_adapter.fhir import ClientSettings, FhirClient
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.source.server import ServerSource
from fhir_adapter.study.load import Study
from tests.feedkit import STUDY_SYSTEM


def bundle(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in resources]}


def roster(study: Study, include_honoured: bool) -> tuple[Any, list[httpx.Request]]:
    seen: list[httpx.Request] = []
    subjects = [{"resourceType": "ResearchSubject", "id": f"rs{i}", "status": "follow-up",
                 "study": {"reference": "ResearchStudy/s1"}, "individual": {"reference": f"Patient/p{i}"}}
                for i in range(3)]
    patients = [{"resourceType": "Patient", "id": f"p{i}"} for i in range(3)]

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        kind = request.url.path.rsplit("/", 1)[-1]
        if kind == "ResearchStudy":
            if "partof" in request.url.params:
                return httpx.Response(200, json=bundle([]))
            own = [{"system": STUDY_SYSTEM, "value": "LCAR-AIO-SLE"}]
            return httpx.Response(200, json=bundle([{"resourceType": "ResearchStudy", "id": "s1", "status": "active",
                                                     "identifier": own}]))
        if kind == "ResearchSubject":
            return httpx.Response(200, json=bundle(subjects + (patients if include_honoured else [])))
        if kind == "Patient":
            ids = request.url.params["_id"].split(",")
            return httpx.Response(200, json=bundle([p for p in patients if p["id"] in ids]))
        return httpx.Response(404)

    client = FhirClient("https://ehr.example.org/fhir", settings=ClientSettings(),
                        transport=httpx.MockTransport(handler))
    source = ServerSource(client, study, RunLog(), loop=asyncio.new_event_loop())
    try:
        return source.roster(), seen
    finally:
        source.close()


def test_patients_come_with_the_include(study: Study) -> None:
    data, seen = roster(study, include_honoured=True)
    assert sorted(data.patients) == ["p0", "p1", "p2"] and len(data.subjects) == 3
    assert not [r for r in seen if r.url.path.endswith("/Patient")]


def test_patients_read_by_id_when_the_include_is_ignored(study: Study) -> None:
    data, seen = roster(study, include_honoured=False)
    assert sorted(data.patients) == ["p0", "p1", "p2"]
    reads = [r for r in seen if r.url.path.endswith("/Patient")]
    assert len(reads) == 1 and reads[0].url.params["_id"] == "p0,p1,p2"


def test_observation_code_parameter_modes(study: Study) -> None:
    client = FhirClient("https://ehr.example.org/fhir", transport=httpx.MockTransport(lambda r: httpx.Response(404)))
    loop = asyncio.new_event_loop()
    try:
        for mode, expected in (("combo-code", "combo-code"), ("code", "code"), ("none", None)):
            source = ServerSource(client, study, RunLog(), loop=loop, observation_code_param=mode)
            obs = [p for t, p in source.plan.searches("p1") if t == "Observation"]
            assert len(obs) == 1 and obs[0]["patient"] == "Patient/p1"
            if expected is None:
                assert "code" not in obs[0] and "combo-code" not in obs[0]
            else:
                assert "http://loinc.org|777-3" in obs[0][expected].split(",")
    finally:
        loop.run_until_complete(client.aclose())
        loop.close()
    with pytest.raises(ValueError, match="observation_code_param"):
        ServerSource(client, study, RunLog(), observation_code_param="codes")
