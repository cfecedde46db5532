"""One Source interface: every source reads the same resource types and answers the same questions."""

from __future__ import annotations

import inspect
from pathlib import Path

from fhir_adapter.fhir import FhirClient, FhirError
from fhir_adapter.fhir.settings import BulkSettings
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.source.base import SUBJECT_TYPES, Source
from fhir_adapter.source.bulk import BulkSource
from fhir_adapter.source.files import FileSource
from fhir_adapter.source.server import SUBJECT_SEARCHES, ServerSource
from fhir_adapter.study.load import Study


def test_server_and_files_read_the_same_types() -> None:
    assert set(SUBJECT_SEARCHES) == set(SUBJECT_TYPES)


def test_every_source_implements_the_whole_protocol() -> None:
    members = {name for name, _ in inspect.getmembers(Source) if not name.startswith("_")}
    assert {"roster", "label_subjects", "subject_resources", "unchanged_subjects", "request_stats"} <= members
    # what the run sets or reads on every source, declared, not probed with hasattr
    assert {"description", "since", "reusable"} <= set(Source.__annotations__)
    assert "failed" in members  # the patients whose reads failed: the run reports each
    for cls in (FileSource, ServerSource, BulkSource):
        for name in ("roster", "label_subjects", "subject_resources", "unchanged_subjects", "request_stats"):
            assert callable(getattr(cls, name)), (cls, name)


def test_a_bulk_runs_failed_rest_read_is_the_bulk_sources_own(study: Study, tmp_path: Path) -> None:
    """An incremental Bulk run reads the changed patients over REST: a read that fails there is reported as the
    Bulk source's (the run asks ``source.failed``; a Bulk source without it lost the subject silently)."""
    log = RunLog()
    server = ServerSource(FhirClient("https://ehr.example.org/fhir"), study, log)
    bulk = BulkSource(server, BulkSettings(), tmp_path / "bulk", log)
    server.failed["p1"] = FhirError("GET Observation failed")
    assert dict(bulk.failed) == {"p1": server.failed["p1"]}
    assert FileSource(tmp_path, log).failed == {}
