"""One Source interface: every source reads the same resource types and answers the same questions."""

from __future__ import annotations

import inspect

from fhir_adapter.source.base import SUBJECT_TYPES, Source
from fhir_adapter.source.bulk import BulkSource
from fhir_adapter.source.files import FileSource
from fhir_adapter.source.server import SUBJECT_SEARCHES, ServerSource


def test_server_and_files_read_the_same_types() -> None:
    assert set(SUBJECT_SEARCHES) == set(SUBJECT_TYPES)


def test_every_source_implements_the_whole_protocol() -> None:
    members = {name for name, _ in inspect.getmembers(Source) if not name.startswith("_")}
    assert {"roster", "label_subjects", "subject_resources", "unchanged_subjects", "request_stats"} <= members
    # what the run sets or reads on every source, declared, not probed with hasattr
    assert {"description", "since", "reusable"} <= set(Source.__annotations__)
    for cls in (FileSource, ServerSource, BulkSource):
        for name in ("roster", "label_subjects", "subject_resources", "unchanged_subjects", "request_stats"):
            assert callable(getattr(cls, name)), (cls, name)
