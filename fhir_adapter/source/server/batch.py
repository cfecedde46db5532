"""Searches sent as one ``batch`` Bundle (``read_mode: batch``): each entry a ``GET`` search with ``_count`` at
the client's page size; a result longer than its first page is read on through the server's ``next`` links."""

from __future__ import annotations

from urllib.parse import urlencode

from fhir_adapter.fhir import FhirClient, FhirHttpError
from fhir_adapter.source.base import Resource
from fhir_adapter.source.server.searches import Search


async def batch_search(client: FhirClient, searches: list[Search], label: str) -> list[Resource]:
    """The resources every search finds (matches and includes); an entry that failed raises
    :class:`FhirHttpError` naming the search."""
    size = client.settings.page_size
    count = {"_count": str(size)} if size is not None else {}
    entries = [{"request": {"method": "GET", "url": f"{t}?{urlencode({**p, **count})}"}} for t, p in searches]
    reply = await client.batch({"resourceType": "Bundle", "type": "batch", "entry": entries}, label=label)
    found: list[Resource] = []
    for entry, asked in zip(reply.get("entry") or [], searches, strict=False):
        status = str((entry.get("response") or {}).get("status", ""))
        page = entry.get("resource") or {}
        if not status.startswith("2") or page.get("resourceType") != "Bundle":
            code = int(status[:3]) if status[:3].isdigit() else 0
            raise FhirHttpError(method="POST", url=f"{client.base_url} (batch: {asked[0]} for {label})",
                                status=code, reason=status or "no status in the batch response")
        found.extend(e["resource"] for e in page.get("entry") or [] if isinstance(e.get("resource"), dict))
        if any(link.get("relation") == "next" for link in page.get("link") or []):
            # the rest of a long result: follow the server's paging from the first page's query
            found.extend(await client.search_all(asked[0], asked[1], label=label))
    return found
