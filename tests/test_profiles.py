"""profiles/: valid FHIR R4, consistent CodeSystems, and the codes the adapter uses are defined."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fhir_adapter.fhir.r4 import r4_problem
from fhir_adapter.terminology.codes import SLEDAI2K_DESCRIPTOR_CODES

PROFILES = Path(__file__).resolve().parent.parent / "profiles"
FILES = sorted(PROFILES.glob("*.json"))


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_profile_is_valid_r4(path: Path) -> None:
    res = json.loads(path.read_text())
    assert r4_problem(res) is None
    assert path.name == f"{res['resourceType']}-{res['id']}.json"
    assert res["url"].endswith(f"/{res['resourceType']}/{res['id']}")


def codes(cs_id: str) -> list[str]:
    cs = json.loads((PROFILES / f"CodeSystem-{cs_id}.json").read_text())
    assert cs["count"] == len(cs["concept"])
    assert all(c.get("definition") for c in cs["concept"]), "every code needs a definition"
    return [c["code"] for c in cs["concept"]]


def test_sledai_descriptor_codesystem_has_the_24_codes_and_weights() -> None:
    assert codes("sledai-2k-descriptor") == list(SLEDAI2K_DESCRIPTOR_CODES)
    cs = json.loads((PROFILES / "CodeSystem-sledai-2k-descriptor.json").read_text())
    assert sum(p["valueInteger"] for c in cs["concept"] for p in c["property"]) == 105


def test_clinical_input_codes() -> None:
    assert set(codes("clinical-input")) >= {"sle-pga", "car-transgene-copies", "car-positive-cells"}


def test_results_codes_unique() -> None:
    rc = codes("results")
    assert len(rc) == len(set(rc)) and "sledai-2k" in rc
