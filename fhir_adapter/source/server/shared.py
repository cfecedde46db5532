"""Shared resources (Medication, Organization, Location, Specimen) that a subject's resources reference and
its searches did not ``_include``: read by id (``Medication?_id=a,b``), once per run."""

from __future__ import annotations

from fhir_adapter.fhir import FhirClient
from fhir_adapter.source.base import SHARED_TYPES, Resource, shared_references


class SharedResources:
    """A run's cache of shared resources, by (type, id); None: asked for and not on the server."""

    def __init__(self, client: FhirClient) -> None:
        self.client = client
        self._cache: dict[tuple[str, str], Resource | None] = {}

    async def complete(self, resources: list[Resource], label: str) -> list[Resource]:
        """``resources`` followed by the shared resources they reference and do not hold themselves."""
        have = {(str(r.get("resourceType")), str(r.get("id"))) for r in resources}
        for r in resources:
            if r.get("resourceType") in SHARED_TYPES:
                self._cache[(str(r["resourceType"]), str(r.get("id")))] = r
        referenced = shared_references(resources)
        await self.fetch(sorted(k for k in referenced if k not in have), label)
        extra = [x for k in sorted(referenced) if k not in have and (x := self._cache.get(k))]
        return resources + extra

    async def fetch(self, wanted: list[tuple[str, str]], label: str) -> None:
        """Read the ones of ``wanted`` not asked for yet, one search per type (``_id=a,b,...``)."""
        missing = [k for k in wanted if k not in self._cache]
        for rtype in sorted({t for t, _ in missing}):
            ids = [i for t, i in missing if t == rtype]
            for i in ids:
                self._cache[(rtype, i)] = None
            found = await self.client.search_all(rtype, {"_id": ",".join(ids)}, label=label)
            for res in found:
                if res.get("resourceType") == rtype and isinstance(res.get("id"), str):
                    self._cache[(rtype, res["id"])] = res
