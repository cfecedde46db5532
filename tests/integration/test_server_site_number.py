"""SITEID from the Patient's managing Organization is the site number (the Organization's identifier), read with
the roster from files and from the real local FHIR server alike; a server that refuses the read is said once and
SITEID falls back to the Organization's id (docs/cdisc-mapping.md)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from fhir_adapter.fhir import FhirClient
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.roster.enrollees import build_roster
from fhir_adapter.source.files import FileSource
from fhir_adapter.source.server.source import ServerSource
from fhir_adapter.study.load import Study, load_study
from fhir_adapter.testing.feed_loader import load_feed
from fhir_adapter.testing.fhir_server import ServerHandle
from tests.feedkit import Feed

ROOT = Path(__file__).resolve().parents[2]
DAY1 = dt.date(2024, 2, 1)


def _feed() -> Feed:
    f = Feed()
    f.subject("p1", "103-001", name="Ines Varrow", mrn="MRN-1", birth="1990-02-03", day1=DAY1)
    f.subject("p2", "103-002", name="Oda Pellwick", mrn="MRN-2", birth="1985-06-07", day1=DAY1)
    f.subject("p3", "103-003", name="Ulla Brenmoor", mrn="MRN-3", birth="1979-09-10", day1=DAY1)
    patients = {p["id"]: p for p in f.resources["Patient"]}
    # p1: an Organization with the site number as its identifier (an NPI-like one after it is not chosen)
    patients["p1"]["managingOrganization"] = {"reference": "Organization/org-103", "display": "Ward 3"}
    f.add({"resourceType": "Organization", "id": "org-103", "name": "Ward 3",
           "identifier": [{"system": "https://hospital.example.org/site", "value": "103"},
                          {"system": "https://hospital.example.org/npi", "value": "9999999999"}]})
    # p2: a logical reference that carries the site number itself
    patients["p2"]["managingOrganization"] = {"reference": "Organization/org-103b",
                                              "identifier": {"value": "103B"}}
    # p3: an Organization the source does not hold: its id, as the reference names it
    patients["p3"]["managingOrganization"] = {"reference": "Organization/org-gone"}
    return f


EXPECTED = {"103-001": "103", "103-002": "103B", "103-003": "org-gone"}


def _sites(source: Any) -> dict[str, str | None]:
    study = load_study(ROOT / "mappings" / "lcar-aio")
    roster = build_roster(source.roster(), study, RunLog())
    return {e.subject_id: e.site for e in roster.enrolled.values()}


def test_files_give_the_organizations_identifier(tmp_path: Path) -> None:
    feed = _feed().write(tmp_path / "feed")
    assert _sites(FileSource(feed, RunLog())) == EXPECTED


def test_organizations_in_a_bundle_count_too(tmp_path: Path) -> None:
    folder = tmp_path / "feed"
    folder.mkdir()
    resources = [r for rs in _feed().resources.values() for r in rs]
    bundle = {"resourceType": "Bundle", "type": "collection",
              "entry": [{"fullUrl": f"https://ehr.example.org/fhir/{r['resourceType']}/{r['id']}", "resource": r}
                        for r in resources]}
    (folder / "export.json").write_bytes(orjson.dumps(bundle))
    assert _sites(FileSource(folder, RunLog())) == EXPECTED


@pytest.fixture
def loaded(fhir_server: ServerHandle, tmp_path: Path) -> Iterator[str]:
    fhir_server.clear_faults()
    fhir_server.reset()
    load_feed(fhir_server.base_url, _feed().write(tmp_path / "feed"))
    yield fhir_server.base_url


@pytest.mark.server
def test_the_server_gives_the_organizations_identifier(loaded: str) -> None:
    study = load_study(ROOT / "mappings" / "lcar-aio")
    source = ServerSource(FhirClient(loaded), study, RunLog())
    try:
        assert _sites(source) == EXPECTED
    finally:
        source.close()


def _mock_roster(feed: Feed, study: Study, *, refuse: bool = False) -> tuple[dict[str, str | None], RunLog, list[str]]:
    """The subjects' SITEID from a server answering with ``feed`` (refusing Organization reads with 403), the
    run log and the resource types the roster asked for."""
    by_type, asked = feed.resources, []

    def handler(request: httpx.Request) -> httpx.Response:
        rtype = request.url.path.rstrip("/").split("/")[-1]
        asked.append(rtype)
        if rtype == "metadata":
            return httpx.Response(200, json={"resourceType": "CapabilityStatement", "status": "active"})
        if rtype == "Organization" and refuse:
            return httpx.Response(403, json={"resourceType": "OperationOutcome", "issue": [
                {"severity": "error", "code": "forbidden", "diagnostics": "no access to Organization"}]})
        entries = [{"resource": r, "search": {"mode": "match"}} for r in by_type.get(rtype, [])]
        if rtype == "ResearchSubject":  # _include: the Patients come with their subjects
            entries += [{"resource": p, "search": {"mode": "include"}} for p in by_type["Patient"]]
        return httpx.Response(200, json={"resourceType": "Bundle", "type": "searchset", "entry": entries})

    log = RunLog()
    source = ServerSource(FhirClient("https://ehr.example.org/fhir", transport=httpx.MockTransport(handler)),
                          study, log)
    try:
        roster = build_roster(source.roster(), study, log)
    finally:
        source.close()
    return {e.subject_id: e.site for e in roster.enrolled.values()}, log, asked


def test_a_server_that_refuses_organizations_is_said_once_and_siteid_is_the_id() -> None:
    sites, log, _ = _mock_roster(_feed(), load_study(ROOT / "mappings" / "lcar-aio"), refuse=True)
    assert sites == {**EXPECTED, "103-001": "org-103"}
    [said] = [w for w in log.warnings if w.get("rule") == "roster-organization"]
    assert "(403)" in said["message"] and "Organization" in said["fix"]


def test_subjects_of_site_studies_need_no_organization_read_unless_the_site_says_so(tmp_path: Path) -> None:
    """SITEID of a subject enrolled in a site-level ResearchStudy is that study's identifier: the server is not
    asked for Organizations (no request, no warning from a server that refuses them), unless the site overlay
    says ``siteid: organization``."""
    feed = _feed()
    feed.add({"resourceType": "ResearchStudy", "id": "site-103", "status": "active",
              "identifier": [{"value": "SITE-103"}], "partOf": [{"reference": "ResearchStudy/study"}]})
    for rs in feed.resources["ResearchSubject"]:
        rs["study"] = {"reference": "ResearchStudy/site-103"}
    sites, log, asked = _mock_roster(feed, load_study(ROOT / "mappings" / "lcar-aio"), refuse=True)
    assert "Organization" not in asked and not log.warnings
    assert sites == {"103-001": "org-103", "103-002": "103B", "103-003": "org-gone"}, "not read: the ids"
    overlay = tmp_path / "site.yaml"
    overlay.write_text("site: ward-3\nsiteid: organization\n", encoding="utf-8")
    sites, log, asked = _mock_roster(feed, load_study(ROOT / "mappings" / "lcar-aio", overlay))
    assert sites == EXPECTED and asked.count("Organization") == 1 and not log.warnings
