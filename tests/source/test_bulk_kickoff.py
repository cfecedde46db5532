"""BulkSource's kick-off against a mocked server (pytest-httpx): a 400 naming a ``_type`` the server does not
hold drops that type and asks again — the type its message names, as a whole word, never Patient when another
type is named."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from pytest_httpx import HTTPXMock

from fhir_adapter.fhir import FhirClient
from fhir_adapter.fhir.bulk import BulkExportError, load_job
from fhir_adapter.fhir.settings import BulkSettings
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.source.base import SourceError
from fhir_adapter.source.bulk import BulkSource, refused_type
from fhir_adapter.source.server import ServerSource
from fhir_adapter.study.load import Study
from tests.fhir.fhir_testkit import BASE, outcome

STATUS = f"{BASE}/$export-status/job-1"


def kickoff_types(request: httpx.Request) -> list[str]:
    return request.url.params["_type"].split(",")


def bulk_source(study: Study, tmp_path: Path, log: RunLog) -> BulkSource:
    server = ServerSource(FhirClient(BASE), study, log)
    return BulkSource(server, BulkSettings(type_filter=False), tmp_path / "bulk", log)


@pytest.mark.parametrize("message", [
    "Resource type Specimen is not supported for Patient level export",
    "Patient/$export: _type Specimen is not exportable",
    "Specimen: unknown resource type",
])
def test_the_type_a_refused_kickoff_names_is_dropped_and_the_export_asked_again(
        httpx_mock: HTTPXMock, study: Study, tmp_path: Path, message: str) -> None:
    kickoffs: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/metadata"):
            return httpx.Response(404)  # no CapabilityStatement: every type is asked for
        kickoffs.append(request)
        if "Specimen" in kickoff_types(request):
            return httpx.Response(400, json=outcome(message))
        return httpx.Response(202, headers={"Content-Location": STATUS})

    httpx_mock.add_callback(answer, is_reusable=True)
    log = RunLog()
    source = bulk_source(study, tmp_path, log)
    try:
        job = source.server.run(source._kickoff())
    finally:
        source.close()
    assert job.status_url == STATUS
    assert len(kickoffs) == 2 and kickoffs[0].url.path == "/r4/Patient/$export"
    first, second = kickoff_types(kickoffs[0]), kickoff_types(kickoffs[1])
    assert "Patient" in second and set(first) - set(second) == {"Specimen"}
    assert any("refused to export Specimen" in w["message"] for w in log.warnings)


def test_a_kickoff_refused_naming_only_patient_is_an_error(httpx_mock: HTTPXMock, study: Study,
                                                           tmp_path: Path) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/metadata"):
            return httpx.Response(404)
        return httpx.Response(400, json=outcome("Patient level export is disabled on this server"))

    httpx_mock.add_callback(answer, is_reusable=True)
    source = bulk_source(study, tmp_path, RunLog())
    try:
        with pytest.raises(BulkExportError, match="Patient level export is disabled"):
            source.server.run(source._kickoff())
    finally:
        source.close()


def test_refused_type_matches_whole_words_and_prefers_a_type_other_than_patient() -> None:
    types = ["Patient", "Medication", "MedicationRequest", "Specimen"]
    assert refused_type(types, ["Resource type Specimen is not supported for Patient level export"]) == "Specimen"
    assert refused_type(types, ["MedicationRequest is not exportable"]) == "MedicationRequest"
    assert refused_type(types, ["_type=MedicationRequest: not supported"]) == "MedicationRequest"
    assert refused_type(types, ["Patient export refused", "see Medication/_history"]) == "Medication"
    assert refused_type(types, ["Patients are exported only by Group"]) is None
    assert refused_type(types, ["Patient level export is disabled"]) == "Patient"
    assert refused_type(types, ["too many requests"]) is None


def test_an_export_job_the_server_says_failed_is_forgotten(httpx_mock: HTTPXMock, study: Study,
                                                           tmp_path: Path) -> None:
    """A status answer 5xx with a non-transient issue code: the job failed; its state is not kept, so the next run
    kicks off a new export instead of polling the failed job run after run."""
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/metadata"):
            return httpx.Response(404)
        if request.url.path.endswith("/$export"):
            return httpx.Response(202, headers={"Content-Location": STATUS})
        return httpx.Response(500, json=outcome("the export of Observation failed", code="exception"))

    httpx_mock.add_callback(answer, is_reusable=True)
    source = bulk_source(study, tmp_path, RunLog())
    try:
        with pytest.raises(BulkExportError, match="job failed") as err:
            source.server.run(source._export())
    finally:
        source.close()
    assert err.value.job_failed and load_job(tmp_path / "bulk") is None


def test_a_full_export_that_lists_no_file_says_what_to_check(httpx_mock: HTTPXMock, study: Study,
                                                             tmp_path: Path) -> None:
    """An export with no output and no error file: the error names the server's export and what to check (the
    Group, the types), not the local download folder."""
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/metadata"):
            return httpx.Response(404)
        if request.url.path.endswith("$export"):
            return httpx.Response(202, headers={"Content-Location": STATUS})
        if request.method == "DELETE":
            return httpx.Response(202)
        return httpx.Response(200, json={"transactionTime": "2024-05-01T00:00:00Z", "request": str(request.url),
                                         "requiresAccessToken": False, "output": [], "error": []})

    httpx_mock.add_callback(answer, is_reusable=True)
    source = bulk_source(study, tmp_path, RunLog())
    try:
        with pytest.raises(SourceError, match=r"the server's Bulk export \(.*\$export.*\) listed no file.*"
                                              r"bulk.group_id"):
            next(iter(source.subject_resources({"p1"})))
    finally:
        source.close()
