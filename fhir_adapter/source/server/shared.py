"""Shared resources (Medication, Organization, Location, Specimen) that a subject's resources reference and
its searches did not return (``_include``, a group's Specimen search: :mod:`.groups`): read by id
(``Medication?_id=a,b``, :data:`IDS_PER_SEARCH` ids a search), once per run."""

from __future__ import annotations

from fhir_adapter.fhir import FhirClient
from fhir_adapter.source.base import SHARED_TYPES, Resource, shared_references

#: ids per search: one page each (a next link would repeat the ids), and a list servers match quickly (the test
#: server, like many, compares each candidate with the whole list)
IDS_PER_SEARCH = 100


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
                self.add(r)
        referenced = shared_references(resources)
        await self.fetch(sorted(k for k in referenced if k not in have), label)
        extra = [x for k in sorted(referenced) if k not in have and (x := self._cache.get(k))]
        return resources + extra

    def add(self, resource: Resource) -> None:
        """A shared resource a search returned (``_include``, a Specimen search)."""
        self._cache[(str(resource.get("resourceType")), str(resource.get("id")))] = resource

    async def fetch(self, wanted: list[tuple[str, str]], label: str, *, trips_breaker: bool = True) -> None:
        """Read the ones of ``wanted`` not asked for yet, one search per type (``_id=a,b,...``)."""
        missing = [k for k in wanted if k not in self._cache]
        per_search = min(IDS_PER_SEARCH, self.client.settings.page_size or IDS_PER_SEARCH)
        for rtype in sorted({t for t, _ in missing}):
            all_ids = [i for t, i in missing if t == rtype]
            for start in range(0, len(all_ids), per_search):
                ids = all_ids[start:start + per_search]
                found = await self.client.search_all(rtype, {"_id": ",".join(ids)}, label=label,
                                                     trips_breaker=trips_breaker)
                for i in ids:
                    self._cache[(rtype, i)] = None
                for res in found:
                    if res.get("resourceType") == rtype and isinstance(res.get("id"), str):
                        self._cache[(rtype, res["id"])] = res
