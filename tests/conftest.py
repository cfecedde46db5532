from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="session")
def study():  # type: ignore[no-untyped-def]
    from fhir_adapter.study.load import load_study

    return load_study(ROOT / "mappings" / "lcar-aio")


# the real FHIR R4 test server (tests/fhir_server/, started by the suite on 127.0.0.1)
from server_fixture import clean_fhir_server, fhir_server  # noqa: E402, F401
