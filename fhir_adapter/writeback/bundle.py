"""The per-subject transaction Bundle: every entry a conditional update on its stable identifier."""

from __future__ import annotations

from typing import Any

from fhir_adapter.terminology import SID_RESULT
from fhir_adapter.writeback.identifiers import conditional_url, full_url


def transaction(resources: list[dict[str, Any]]) -> dict[str, Any]:
    """``PUT <Type>?identifier=system|value`` for each resource (posting twice never duplicates); a resource
    the adapter writes under its own fixed id (its ResearchSubject) as ``PUT <Type>/<id>``."""
    entries = []
    for r in resources:
        ident = next((i for i in r["identifier"] if i.get("system") == SID_RESULT), r["identifier"][0])
        entries.append({
            "fullUrl": full_url(ident["system"], ident["value"]),
            "resource": r,
            "request": {"method": "PUT",
                        "url": f"{r['resourceType']}/{r['id']}" if r.get("id")
                        else conditional_url(r["resourceType"], ident["value"], ident["system"])},
        })
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}
