"""ServerSource reading patients in groups (multi-patient searches) against a small in-test FHIR search handler:
answers split by subject, Observations asked for as many patients as fill a page, next links followed, a
resource of no patient searched for reported, a failing group search read again per patient (that subject
fails alone, the run goes on)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from fhir_adapter.fhir import ClientSettings, FhirClient
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.source.server import SUBJECT_SEARCHES, ServerSource
from fhir_adapter.source.server.groups import LABEL, PageSizer, group_size
from fhir_adapter.study.load import Study

Resource = dict[str, Any]
PATIENTS = ["p1", "p2", "p3"]
BASE = "https://ehr.example.org/fhir"
PLATELETS = {"coding": [{"system": "http://loinc.org", "code": "777-3"}]}  # one of the study's codes


def ehr(observations_per_patient: int = 5, patients: list[str] = PATIENTS) -> list[Resource]:
    data: list[Resource] = []
    for p in patients:
        data += [{"resourceType": "Observation", "id": f"{p}-o{i}", "status": "final", "code": PLATELETS,
                  "subject": {"reference": f"Patient/{p}"}} for i in range(observations_per_patient)]
        data.append({"resourceType": "Condition", "id": f"{p}-c", "subject": {"reference": f"Patient/{p}"}})
        data.append({"resourceType": "AdverseEvent", "id": f"{p}-ae", "subject": {"reference": f"Patient/{p}"}})
    return data


class Ehr:
    """Searches by patient/subject (comma OR), ``_count`` and ``_offset`` paging with absolute next links."""

    def __init__(self, resources: list[Resource], *, failing: str | None = None,
                 extra: Resource | None = None, refuse: str | None = None) -> None:
        self.resources = resources
        self.failing = failing  # a patient whose every search answers 503
        self.extra = extra  # one more resource in every Condition answer
        self.refuse = refuse  # a resource type whose searches by patient answer 400
        self.seen: list[httpx.URL] = []
        self.batches = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path.rstrip("/").endswith("/fhir"):  # a batch of searches
            self.batches += 1
            entries = []
            for e in json.loads(request.content)["entry"]:
                answer = self(httpx.Request("GET", f"{BASE}/{e['request']['url']}"))
                entries.append({"response": {"status": str(answer.status_code)},
                                **({"resource": answer.json()} if answer.status_code == 200 else {})})
            return httpx.Response(200, json={"resourceType": "Bundle", "type": "batch-response", "entry": entries})
        params = request.url.params if request.method == "GET" else httpx.QueryParams(request.content.decode())
        rtype = request.url.path.removesuffix("/_search").rsplit("/", 1)[-1]
        self.seen.append(request.url.copy_merge_params(params))
        refs = (params.get("patient") or params.get("subject") or "").split(",")
        if self.failing and f"Patient/{self.failing}" in refs:
            return httpx.Response(503)
        if rtype == self.refuse and "patient" in params:
            return httpx.Response(400)
        ids = params["_id"].split(",") if "_id" in params else None
        found = [r for r in self.resources if r["resourceType"] == rtype
                 and ((r.get("subject") or {}).get("reference") in refs if ids is None else r["id"] in ids)]
        if rtype == "Condition" and self.extra:
            found.append(self.extra)
        count, offset = int(params.get("_count", "100")), int(params.get("_offset", "0"))
        page = found[offset:offset + count]
        links = []
        if offset + count < len(found):
            nxt = httpx.URL(f"{BASE}/{rtype}").copy_merge_params({**dict(params), "_offset": str(offset + count)})
            links.append({"relation": "next", "url": str(nxt)})
        return httpx.Response(200, json={"resourceType": "Bundle", "type": "searchset", "link": links,
                                         "entry": [{"resource": r} for r in page]})


def read(study: Study, handler: Ehr, read_mode: str = "search",
         **settings: Any) -> tuple[dict[str, list[Resource]], ServerSource, RunLog]:
    client = FhirClient(BASE, transport=httpx.MockTransport(handler),
                        settings=ClientSettings(max_attempts=1, **settings))
    log = RunLog()
    source = ServerSource(client, study, log, loop=asyncio.new_event_loop(), observation_code_param="none",
                          patients_per_search=50, read_mode=read_mode)
    try:
        got = dict(source.subject_resources(set(PATIENTS)))
    finally:
        source.close()
    return got, source, log


def by_type(handler: Ehr, rtype: str) -> Iterator[httpx.URL]:
    return (u for u in handler.seen if u.path.rsplit("/", 1)[-1] in (rtype, "_search") and rtype in str(u))


def test_one_search_per_sparse_type_for_the_group_split_by_subject(study: Study) -> None:
    handler = Ehr(ehr())
    got, source, _ = read(study, handler)
    assert sorted(got) == PATIENTS
    for p in PATIENTS:
        assert {r["id"] for r in got[p]} == {f"{p}-o{i}" for i in range(5)} | {f"{p}-c", f"{p}-ae"}
    conditions = list(by_type(handler, "Condition"))
    assert [u.params["patient"] for u in conditions] == ["Patient/p1,Patient/p2,Patient/p3"]
    assert next(by_type(handler, "AdverseEvent")).params["subject"] == "Patient/p1,Patient/p2,Patient/p3"
    # Observations: one patient a search until the answers show how many fill a page
    assert [u.params["patient"] for u in by_type(handler, "Observation")] == [f"Patient/{p}" for p in PATIENTS]
    stats = source.request_stats()
    assert stats["per_subject"] == {} and stats["shared"][LABEL] == len(handler.seen)
    # and the group's Specimens (one search: none of them has any)
    assert [u.params["patient"] for u in by_type(handler, "Specimen")] == ["Patient/p1,Patient/p2,Patient/p3"]
    assert len(handler.seen) == len(SUBJECT_SEARCHES) - 1 + len(PATIENTS) + 1
    assert stats["mean_per_subject"] == round(len(handler.seen) / len(PATIENTS), 2)


def with_specimens(patients: list[str] = PATIENTS) -> list[Resource]:
    """Each patient's first Observation on a Specimen of its own; p2 has another Specimen nothing references."""
    data = ehr(patients=patients)
    for r in data:
        if r["id"].endswith("-o0"):
            r["specimen"] = {"reference": f"Specimen/{r['id'][:2]}-s"}
    data += [{"resourceType": "Specimen", "id": f"{p}-s", "subject": {"reference": f"Patient/{p}"}} for p in patients]
    data.append({"resourceType": "Specimen", "id": "p2-unused", "subject": {"reference": "Patient/p2"}})
    return data


def test_the_groups_specimens_are_searched_by_patient_and_only_the_referenced_ones_are_input(study: Study) -> None:
    handler = Ehr(with_specimens())
    got, _, log = read(study, handler)
    for p in PATIENTS:
        assert sorted(r["id"] for r in got[p] if r["resourceType"] == "Specimen") == [f"{p}-s"]
    assert [u.params["patient"] for u in by_type(handler, "Specimen")] == ["Patient/p1,Patient/p2,Patient/p3"]
    assert not any("_include" in u.params for u in handler.seen if "Observation" in u.path)
    assert not any("_id" in u.params for u in handler.seen)  # nothing left to read by id
    assert "read.Specimen-search-failed" not in log.counts


def test_a_refused_specimen_search_reads_them_by_id_and_is_not_asked_again(study: Study) -> None:
    patients = [*PATIENTS, "p4"]
    handler = Ehr(with_specimens(patients), refuse="Specimen")
    client = FhirClient(BASE, transport=httpx.MockTransport(handler), settings=ClientSettings(max_attempts=1))
    log = RunLog()
    source = ServerSource(client, study, log, loop=asyncio.new_event_loop(), observation_code_param="none",
                          patients_per_search=2)  # two groups: p1 and p2, p3 and p4
    try:
        got = dict(source.subject_resources(set(patients)))
    finally:
        source.close()
    for p in patients:
        assert sorted(r["id"] for r in got[p] if r["resourceType"] == "Specimen") == [f"{p}-s"]
    by_patient = [u for u in by_type(handler, "Specimen") if "patient" in u.params]
    assert [u.params["patient"] for u in by_patient] == ["Patient/p1,Patient/p2"]  # refused once, not again
    assert sorted(u.params["_id"] for u in by_type(handler, "Specimen") if "_id" in u.params) == \
        ["p1-s,p2-s", "p3-s,p4-s"]
    assert log.counts["read.Specimen-search-failed"] == 1 and "Specimen" in source.groups.refused
    assert not source.failed


def test_batch_mode_sends_the_group_searches_in_one_batch(study: Study) -> None:
    handler = Ehr(ehr())
    got, source, _ = read(study, handler, read_mode="batch")
    assert {p: sorted(r["id"] for r in rs) for p, rs in got.items()} == \
        {p: sorted([f"{p}-o{i}" for i in range(5)] + [f"{p}-c", f"{p}-ae"]) for p in PATIENTS}
    assert handler.batches == 1 and source.request_stats()["total"] == 1


def test_next_links_are_followed(study: Study) -> None:
    handler = Ehr(ehr(observations_per_patient=7))
    got, _, _ = read(study, handler, page_size=3)  # 7 Observations a patient: three pages each
    for p in PATIENTS:
        assert sorted(r["id"] for r in got[p] if r["resourceType"] == "Observation") == \
            sorted(f"{p}-o{i}" for i in range(7))
    offsets = [u.params.get("_offset") for u in by_type(handler, "Observation")]
    assert offsets.count("3") == offsets.count("6") == len(PATIENTS)


def test_a_resource_of_no_patient_searched_for_is_reported_and_not_read(study: Study) -> None:
    stray = {"resourceType": "Condition", "id": "stray", "subject": {"reference": "Patient/elsewhere"}}
    got, _, log = read(study, Ehr(ehr(), extra=stray))
    assert all(r["id"] != "stray" for rs in got.values() for r in rs)
    [warning] = [w for w in log.warnings if w.get("rule") == "read-unassigned"]
    assert warning["resource"] == "Condition/stray" and "Patient/elsewhere" in warning["message"]
    assert log.counts["read.unassigned"] == 1


def test_a_failing_group_search_fails_only_the_subject_it_fails_for(study: Study) -> None:
    handler = Ehr(ehr(), failing="p2")
    got, source, _ = read(study, handler, circuit_breaker_failures=2, circuit_breaker_subjects=2)
    assert sorted(got) == ["p1", "p3"]  # read again one by one; the run goes on
    assert list(source.failed) == ["p2"] and "503" in str(source.failed["p2"])
    stats = source.request_stats()
    assert set(stats["per_subject"]) == set(PATIENTS)  # each read alone after its group searches failed
    assert not source.client.breaker.is_open


def test_observations_per_search_fill_about_a_page() -> None:
    sizer = PageSizer(page_size=1000, most=50)
    assert sizer.patients_per_search("Observation") == 1 and sizer.patients_per_search("Condition") == 50
    sizer.record("Observation", 2, 200)  # 100 a patient: 8 fill 80 % of a page
    sizer.record("Condition", 50, 0)
    assert sizer.patients_per_search("Observation") == 8 and sizer.patients_per_search("Condition") == 50
    sizer.record("Observation", 1, 2000)
    assert sizer.patients_per_search("Observation") == 1


@pytest.mark.parametrize(("max_url", "expected"), [(2048, 33), (8192, 50), (256, 1)])
def test_a_group_fits_the_url_limit(max_url: int, expected: int) -> None:
    pids = [f"{i:08d}-aaaa-bbbb-cccc-000000000000" for i in range(100)]  # uuid-long ids: 49 URL characters each
    size = group_size(pids, max_url, 50)
    assert size == expected
    if size > 1:
        url = httpx.URL(f"{BASE}/MedicationAdministration").copy_merge_params({
            "patient": ",".join(f"Patient/{p}" for p in pids[:size]),
            "_include": "MedicationAdministration:medication", "_count": "1000"})
        assert len(str(url)) <= max_url


def test_a_group_of_one_patient_is_counted_as_that_subjects_requests(study: Study) -> None:
    handler = Ehr(ehr())
    client = FhirClient(BASE, transport=httpx.MockTransport(handler), settings=ClientSettings(max_attempts=1))
    source = ServerSource(client, study, RunLog(), loop=asyncio.new_event_loop(), observation_code_param="none",
                          patients_per_search=50)
    source.label_subjects({"p2": "101-002"})
    try:
        assert [pid for pid, _ in source.subject_resources({"p2"})] == ["p2"]
    finally:
        source.close()
    stats = source.request_stats()
    assert stats["per_subject"] == {"101-002": len(SUBJECT_SEARCHES)} and LABEL not in stats["shared"]


def test_groups_are_even(study: Study) -> None:
    client = FhirClient(BASE, transport=httpx.MockTransport(Ehr([])))
    source = ServerSource(client, study, RunLog(), loop=asyncio.new_event_loop(), patients_per_search=33)
    try:
        assert [len(g) for g in source.groups.groups([f"p{i:02d}" for i in range(34)])] == [17, 17]
        assert [len(g) for g in source.groups.groups([f"p{i:02d}" for i in range(67)])] == [22, 22, 23]
        assert source.groups.groups(["p1"]) == [["p1"]] and source.groups.groups([]) == []
    finally:
        source.close()
