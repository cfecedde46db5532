"""Fixtures of the whole suite: the LCAR-AIO study and the real FHIR R4 test server
(:mod:`fhir_adapter.testing.fhir_server`, Node/Medplum in ``tests/fhir_server/``, started once on 127.0.0.1)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from fhir_adapter.study.load import Study, load_study
from fhir_adapter.testing.fhir_server import FhirServerError, ServerHandle, start_fhir_server

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def study() -> Study:
    return load_study(ROOT / "mappings" / "lcar-aio")


@pytest.fixture(scope="session")
def fhir_server() -> Iterator[ServerHandle]:
    """A test FHIR server shared by the whole session (data persists between tests)."""
    try:
        server = start_fhir_server()
    except FhirServerError as err:
        pytest.fail(str(err), pytrace=False)
    with server:
        yield server


@pytest.fixture
def clean_fhir_server(fhir_server: ServerHandle) -> ServerHandle:
    """The session server, emptied (store, counters, faults) before the test."""
    fhir_server.clear_faults()
    fhir_server.reset()
    return fhir_server


@pytest.fixture(scope="module", autouse=True)
def _module_folders_removed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """What a module's tests wrote under the session's temporary folder (its shared runs from
    ``tmp_path_factory.mktemp``, its tests' ``tmp_path``) is removed once the module is done and none of its tests
    failed, so the suite needs the disk of a few modules at a time, not of all of them (a full run wrote 5.4 GB, and
    a CI machine ran out of disk). A failed module's folders stay, to be looked at."""
    base = tmp_path_factory.getbasetemp()
    before = set(base.iterdir())
    failed = request.session.testsfailed
    yield
    if request.session.testsfailed != failed:
        return
    for path in set(base.iterdir()) - before:
        shutil.rmtree(path, ignore_errors=True)
