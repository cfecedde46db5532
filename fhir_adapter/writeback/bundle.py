"""The per-subject transaction Bundle: every entry a conditional update on its stable identifier; the offline
write-back file is the very transaction a live write sends (:func:`offline_transaction`)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from fhir_adapter.terminology.codes import CS_TAGS, SID_RESULT
from fhir_adapter.writeback.identifiers import conditional_url
from fhir_adapter.writeback.ownership import OWNER_TAG, tagged
from fhir_adapter.writeback.sink import transaction_entries
from fhir_adapter.writeback.sources import result_sources


def offline_transaction(resources: list[dict[str, Any]], patient_id: str) -> dict[str, Any]:
    """``OUT/writeback/<subject>.json``: the transaction ``--post`` sends for these resources — the adapter
    Device, the results with the adapter's owner tag, and the Provenance whose entities are every source the
    results name — so what a site reviews or loads by hand is what the adapter would write. As the file cannot
    know the server's ids and versions, each result is a conditional update matched on its identifier and the
    subject's Patient and carrying the adapter's tag (``PUT Observation?identifier=…&patient=Patient/<id>&_tag=…``:
    a hospital resource holding the identifier is never overwritten, as ``--post`` never touches one), the Device
    and the Provenance are conditional creates (the Provenance on the key of the write it records): loading it
    twice duplicates nothing, and a retraction updates the result it retracts. ``Provenance.recorded`` is the
    latest effective date of the results (00:00 UTC), so the file is the same for the same data; a live write
    records the moment of posting."""
    if not resources:
        return {"resourceType": "Bundle", "type": "transaction", "entry": []}
    sources = sorted({s for r in resources for s in result_sources(r)})
    dates = [str(r["effectiveDateTime"])[:10] for r in resources if r.get("effectiveDateTime")]
    day = dt.date.fromisoformat(max(dates)) if dates else dt.date(1970, 1, 1)
    recorded = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
    # the bundle is serialised at once: tagged copies share all but their meta with ``resources``
    entries = transaction_entries([tagged(r) for r in resources], sources, recorded, patient_id)
    for entry in entries[1:-1]:
        r = entry["resource"]
        if not r.get("id"):  # the file cannot know the server's ids and versions: a conditional update
            ident = next(i["value"] for i in r["identifier"] if i.get("system") == SID_RESULT)
            url = conditional_url(r["resourceType"], ident)
            if r["resourceType"] == "Observation":  # the Patient it is about (a retraction may be about another)
                url += f"&patient={(r.get('subject') or {}).get('reference') or f'Patient/{patient_id}'}"
            # only the adapter's own copy matches: a hospital resource holding the identifier is never overwritten
            # (a new one is created beside it, and the next --post names the clash)
            entry["request"] = {"method": "PUT", "url": f"{url}&_tag={CS_TAGS}|{OWNER_TAG['code']}"}
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}
