"""Load a synthetic NDJSON feed (``fhir_adapter.synth.write_feed``) into a FHIR server.

Resources keep their ids (``PUT Type/id`` entries, update-as-create), so the feed's references resolve on
the server exactly as in the files. Sent as transaction Bundles of ``chunk`` entries.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx

FHIR_JSON = "application/fhir+json"
# referenced before referencing (the test server does not check references; a real one may)
LOAD_ORDER = ("Organization", "Medication", "ResearchStudy", "Patient", "ResearchSubject", "Procedure",
              "MedicationStatement", "MedicationRequest", "MedicationAdministration", "MedicationDispense",
              "Observation", "AdverseEvent")


def feed_resources(feed_dir: Path) -> Iterator[dict[str, Any]]:
    """Every resource of the feed, types in :data:`LOAD_ORDER` first, then any other NDJSON file."""
    files = {p.stem: p for p in Path(feed_dir).glob("*.ndjson")}
    order = [t for t in LOAD_ORDER if t in files] + sorted(set(files) - set(LOAD_ORDER))
    for rtype in order:
        with files[rtype].open(encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)


def put_bundle(resources: list[dict[str, Any]], kind: str = "transaction") -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": [
        {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}} for r in resources]}


def post_bundle(client: httpx.Client, bundle: dict[str, Any]) -> dict[str, Any]:
    response = client.post("", content=json.dumps(bundle), headers={"Content-Type": FHIR_JSON})
    if response.status_code != 200:
        raise RuntimeError(f"loading the feed: HTTP {response.status_code}: {response.text[:500]}")
    reply: dict[str, Any] = response.json()
    return reply


def prior_versions(feed_dir: Path) -> list[list[dict[str, Any]]]:
    """For resources whose ``meta.versionId`` is n > 1, n - 1 earlier versions (a loader tag tells them apart),
    by round: loaded first, they make the server give the final content the feed's version number, so source
    references (``Type/id/_history/n``) in CRFs are the same from the files and from the server."""
    rounds: list[list[dict[str, Any]]] = []
    for r in feed_resources(feed_dir):
        version = str((r.get("meta") or {}).get("versionId") or "1")
        for n in range(1, int(version) if version.isdigit() else 1):
            while len(rounds) < n:
                rounds.append([])
            rounds[n - 1].append({**r, "meta": {"tag": [{"system": "urn:test:feed-loader", "code": f"v{n}"}]}})
    return rounds


def load_feed(base_url: str, feed_dir: Path, *, chunk: int = 500, timeout: float = 300,
              headers: Mapping[str, str] | None = None) -> int:
    """PUT every resource of ``feed_dir`` to ``base_url`` (earlier versions first, see :func:`prior_versions`);
    returns the number of resources of the feed. ``headers``: sent with every request (an access token)."""
    sent = 0
    batch: list[dict[str, Any]] = []
    with httpx.Client(base_url=base_url, timeout=timeout, headers={"Accept": FHIR_JSON, **(headers or {})}) as client:
        for earlier in prior_versions(feed_dir):
            for i in range(0, len(earlier), chunk):
                post_bundle(client, put_bundle(earlier[i:i + chunk]))
        for resource in feed_resources(feed_dir):
            batch.append(resource)
            if len(batch) >= chunk:
                post_bundle(client, put_bundle(batch))
                sent += len(batch)
                batch = []
        if batch:
            post_bundle(client, put_bundle(batch))
            sent += len(batch)
    return sent


def put_resources(base_url: str, resources: list[dict[str, Any]]) -> dict[str, Any]:
    """One transaction of ``PUT Type/id`` (changing or adding a few resources in a test)."""
    with httpx.Client(base_url=base_url, timeout=60, headers={"Accept": FHIR_JSON}) as client:
        return post_bundle(client, put_bundle(resources))


def search_all(base_url: str, rtype: str, params: dict[str, str]) -> list[dict[str, Any]]:
    """Every match of a search (following ``next`` links), plain httpx: the tests' independent view."""
    out: list[dict[str, Any]] = []
    with httpx.Client(timeout=60, headers={"Accept": FHIR_JSON}) as client:
        response = client.get(f"{base_url}/{rtype}", params={**params, "_count": "1000"})
        while True:
            response.raise_for_status()
            page = response.json()
            out.extend(e["resource"] for e in page.get("entry") or []
                       if (e.get("search") or {}).get("mode", "match") == "match")
            nxt = next((link["url"] for link in page.get("link") or [] if link.get("relation") == "next"), None)
            if nxt is None:
                return out
            response = client.get(nxt)
