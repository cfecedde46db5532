"""Posting a write twice duplicates nothing on the real local FHIR server: the offline write-back bundles
(OUT/writeback/<subject>.json) loaded twice leave the same resources — results, Device and each Provenance once."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from fhir_adapter.synth import write_feed
from fhir_adapter.terminology.codes import SID_RESULT
from fhir_adapter.testing.feed_loader import load_feed, post_bundle, search_all
from fhir_adapter.testing.fhir_server import ServerHandle
from fhir_adapter.writeback.bundle import offline_transaction
from fhir_adapter.writeback.identifiers import result_identifier
from fhir_adapter.writeback.ownership import with_owner_tag
from fhir_adapter.writeback.sink import transaction_entries
from tests.serverkit import adapter_observations, cli_run, identifier_counts, offline_results

pytestmark = pytest.mark.server

SUBJECTS = 4


def adapter_resources(base_url: str) -> dict[str, int]:
    return {"Observation": len(adapter_observations(base_url)),
            "Provenance": len(search_all(base_url, "Provenance", {})),
            "Device": len(search_all(base_url, "Device", {}))}


def test_an_offline_bundle_posted_twice_duplicates_nothing(clean_fhir_server: ServerHandle, tmp_path: Path) -> None:
    write_feed(tmp_path / "feed", subjects=SUBJECTS, seed=7)
    cli_run(str(tmp_path / "feed"), tmp_path / "out")
    load_feed(clean_fhir_server.base_url, tmp_path / "feed")
    bundles = [json.loads(p.read_text()) for p in sorted((tmp_path / "out" / "writeback").glob("*.json"))]
    expected = offline_results(tmp_path / "out")
    with httpx.Client(base_url=clean_fhir_server.base_url, timeout=60) as client:
        for bundle in bundles:
            post_bundle(client, bundle)
        once = adapter_resources(clean_fhir_server.base_url)
        clean_fhir_server.reset("stats")
        for bundle in bundles:
            post_bundle(client, bundle)
    assert adapter_resources(clean_fhir_server.base_url) == once
    assert once == {"Observation": sum(len(v) for v in expected.values()),
                    "Provenance": sum(1 for v in expected.values() if v), "Device": 1}
    assert set(identifier_counts(adapter_observations(clean_fhir_server.base_url)).values()) == {1}
    assert clean_fhir_server.stats()["writes"]["total"] == 0  # the second load changed nothing at all


def test_a_subject_id_with_characters_a_url_escapes_is_matched_on_replay(clean_fhir_server: ServerHandle) -> None:
    """A subject "101/001 #2" has the identifier value LCAR-AIO-SLE.101%2F001%20%232.W4.sledai-2k: its conditional
    create and conditional update must find that value again (the server decodes the query once), so the offline
    bundle and the live transaction posted twice leave one Observation each, not two."""
    def obs(scope: str) -> dict[str, Any]:
        ident = result_identifier("LCAR-AIO-SLE", "101/001 #2", scope, "sledai-2k")
        return {"resourceType": "Observation", "identifier": [{"system": SID_RESULT, "value": ident}],
                "status": "final", "code": {"coding": [{"system": "https://fhir-adapter.org/fhir/CodeSystem/results",
                                                        "code": "sledai-2k"}]},
                "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2024-02-29", "valueInteger": 4}

    assert "%2F" in result_identifier("LCAR-AIO-SLE", "101/001 #2", "W4", "sledai-2k")
    offline = offline_transaction([obs("W4")], "p1")
    live = {"resourceType": "Bundle", "type": "transaction",
            "entry": transaction_entries([with_owner_tag(obs("W8"))], [], dt.datetime(2026, 12, 7, tzinfo=dt.UTC),
                                         "p1")}
    with httpx.Client(base_url=clean_fhir_server.base_url, timeout=60) as client:
        for bundle in (offline, offline, live, live):
            post_bundle(client, bundle)
    counts = identifier_counts(adapter_observations(clean_fhir_server.base_url))
    assert sorted(counts.values()) == [1, 1] and len(counts) == 2


def test_the_offline_bundle_never_overwrites_a_hospital_resource_holding_the_adapters_identifier(
        clean_fhir_server: ServerHandle) -> None:
    """A hospital Observation (no adapter tag) carries the identifier of an adapter result: --post refuses to
    touch it, and so does the offline bundle loaded by hand — its conditional update matches the adapter's own
    copy only, so the hospital's keeps its version and value."""
    ident = result_identifier("LCAR-AIO-SLE", "101-001", "W4", "sledai-2k")
    ours = {"resourceType": "Observation", "identifier": [{"system": SID_RESULT, "value": ident}],
            "status": "final", "code": {"coding": [{"system": "https://fhir-adapter.org/fhir/CodeSystem/results",
                                                    "code": "sledai-2k"}]},
            "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2024-02-29", "valueInteger": 4}
    hospital = {**ours, "id": "hosp1", "valueInteger": 9}
    with httpx.Client(base_url=clean_fhir_server.base_url, timeout=60) as client:
        client.put("/Observation/hosp1", json=hospital).raise_for_status()
        post_bundle(client, offline_transaction([ours], "p1"))
        [held] = [o for o in search_all(clean_fhir_server.base_url, "Observation", {"_id": "hosp1"})]
    assert held["valueInteger"] == 9 and held["meta"]["versionId"] == "1"
