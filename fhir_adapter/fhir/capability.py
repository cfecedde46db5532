"""What a server's CapabilityStatement (``GET [base]/metadata``) declares of a resource type — the one reading
shared by ``fhir-adapter check`` (fhir_adapter/job/preflight.py) and the incremental run's probes
(fhir_adapter/source/server/incremental.py): the interactions it offers (``search-type``, ``history-type``) and
the search parameters it names.
"""

from __future__ import annotations

from typing import Any


def interactions(res: dict[str, Any] | None) -> set[str]:
    """The interaction codes a CapabilityStatement ``rest.resource`` entry offers."""
    return {str(i.get("code")) for i in (res or {}).get("interaction") or [] if isinstance(i, dict)}


def search_params(res: dict[str, Any] | None) -> set[str]:
    """The search parameter names a ``rest.resource`` entry declares."""
    return {str(p.get("name")) for p in (res or {}).get("searchParam") or [] if isinstance(p, dict)}


def resource_entry(cap: dict[str, Any], rtype: str) -> dict[str, Any] | None:
    """The first ``rest.resource`` entry of ``rtype`` (None: the type is not declared)."""
    for rest in cap.get("rest") or []:
        for res in rest.get("resource") or []:
            if isinstance(res, dict) and res.get("type") == rtype:
                return res
    return None


def searchable(cap: dict[str, Any], rtype: str, params: tuple[str, ...]) -> bool:
    """Does the CapabilityStatement declare a search of ``rtype`` by each of ``params``?

    >>> cap = {"rest": [{"resource": [{"type": "Specimen", "interaction": [{"code": "search-type"}],
    ...                                "searchParam": [{"name": "patient"}]}]}]}
    >>> searchable(cap, "Specimen", ("patient",)), searchable(cap, "Specimen", ("patient", "_lastUpdated"))
    (True, False)
    """
    res = resource_entry(cap, rtype)
    return "search-type" in interactions(res) and set(params) <= search_params(res)
