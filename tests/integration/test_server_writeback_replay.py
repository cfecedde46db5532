"""Posting a write twice duplicates nothing on the real local FHIR server: the offline write-back bundles
(OUT/writeback/<subject>.json) loaded twice leave the same resources — results, Device and each Provenance once."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from fhir_adapter.synth import write_feed
from fhir_adapter.testing.feed_loader import load_feed, post_bundle, search_all
from fhir_adapter.testing.fhir_server import ServerHandle
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
