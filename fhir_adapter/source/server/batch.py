"""Searches sent as ``batch`` Bundles (``read_mode: batch``): each entry a ``GET`` search with ``_count`` at the
client's page size, at most ``max_transaction_entries`` entries a Bundle; a result longer than its first page is
read on through the server's ``next`` links."""

from __future__ import annotations

from urllib.parse import urlencode

from fhir_adapter.fhir import FhirClient, FhirError, FhirHttpError
from fhir_adapter.source.base import Resource
from fhir_adapter.source.server.searches import Search


async def batch_search(client: FhirClient, searches: list[Search], label: str) -> list[Resource]:
    """The resources every search finds (matches and includes); an entry that failed raises
    :class:`FhirHttpError` naming the search."""
    found: list[Resource] = []
    for outcome in await batch_searches(client, searches, label):
        if isinstance(outcome, FhirError):
            raise outcome
        found.extend(outcome)
    return found


async def batch_searches(client: FhirClient, searches: list[Search], label: str, *,
                         trips_breaker: bool = True) -> list[list[Resource] | FhirError]:
    """Per search, in order: the resources it finds, or the error of its entry (:class:`FhirHttpError` naming
    the search). A Bundle the server does not answer raises."""
    size = client.settings.page_size
    count = {"_count": str(size)} if size is not None else {}
    per_bundle = client.settings.max_transaction_entries
    outcomes: list[list[Resource] | FhirError] = []
    for start in range(0, len(searches), per_bundle):
        part = searches[start:start + per_bundle]
        entries = [{"request": {"method": "GET", "url": f"{t}?{urlencode({**p, **count})}"}} for t, p in part]
        reply = await client.batch({"resourceType": "Bundle", "type": "batch", "entry": entries}, label=label,
                                   trips_breaker=trips_breaker)
        answers = list(reply.get("entry") or [])
        for i, asked in enumerate(part):
            entry = answers[i] if i < len(answers) else {}
            status = str((entry.get("response") or {}).get("status", ""))
            page = entry.get("resource") or {}
            if not status.startswith("2") or page.get("resourceType") != "Bundle":
                code = int(status[:3]) if status[:3].isdigit() else 0
                outcomes.append(FhirHttpError(method="POST", url=f"{client.base_url} (batch: {asked[0]} for {label})",
                                              status=code, reason=status or "no status in the batch response"))
                continue
            found = [e["resource"] for e in page.get("entry") or [] if isinstance(e.get("resource"), dict)]
            if any(link.get("relation") == "next" for link in page.get("link") or []):
                # a result longer than one page: the search again, through the server's next links
                try:
                    found = await client.search_all(asked[0], asked[1], label=label, trips_breaker=trips_breaker)
                except FhirError as exc:
                    outcomes.append(exc)
                    continue
            outcomes.append(found)
    return outcomes
