"""The adapter as a Device, and one Provenance per write transaction (R4 Provenance: target = the results
written, agent = the adapter Device with its version, entity = the source resources, role ``source``;
https://hl7.org/fhir/R4/provenance.html).

R4 Provenance has no identifier, so what makes posting one write twice create one Provenance is a ``meta.tag``
in :data:`~fhir_adapter.terminology.codes.CS_WRITE_KEY` whose code is :func:`write_key` of the entries it
records, and the conditional create :func:`provenance_request` (``If-None-Exist: _tag=<system>|<key>``)."""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

import orjson

from fhir_adapter.terminology.codes import (
    CS_WRITE_KEY,
    PROVENANCE_AGENT_TYPE,
    SD_ADAPTER_DEVICE,
    SD_PROVENANCE,
    SID_DEVICE,
    V3_DATA_OPERATION,
)
from fhir_adapter.version import __version__

DEVICE_IDENTIFIER = "fhir-adapter"
#: hex digits of the SHA-256 kept in a write key (128 bits)
WRITE_KEY_DIGITS = 32


def adapter_device() -> dict[str, Any]:
    return {
        "resourceType": "Device",
        "meta": {"profile": [SD_ADAPTER_DEVICE]},
        "identifier": [{"system": SID_DEVICE, "value": DEVICE_IDENTIFIER}],
        "status": "active",
        "manufacturer": "fhir-adapter project",
        "deviceName": [{"name": "fhir-adapter", "type": "model-name"}],
        "version": [{"value": __version__}],
    }


def write_key(entries: list[dict[str, Any]]) -> str:
    """The key of one write: a hash of the resources it writes and the versions it updates (``If-Match``),
    never of the time — the same write posted again has the same key, any other write another one."""
    content = [{"resource": e["resource"], "ifMatch": (e.get("request") or {}).get("ifMatch")} for e in entries]
    return hashlib.sha256(orjson.dumps(content, option=orjson.OPT_SORT_KEYS)).hexdigest()[:WRITE_KEY_DIGITS]


def provenance_request(key: str) -> dict[str, str]:
    """The Provenance's conditional create: created once per write key."""
    return {"method": "POST", "url": "Provenance", "ifNoneExist": f"_tag={CS_WRITE_KEY}|{key}"}


#: Provenance.activity (HL7 v3 DataOperation): a write that only makes new results creates them; one that changes
#: or retracts a result the chart held (an update, an amended or an entered-in-error result) revises
CREATE = {"system": V3_DATA_OPERATION, "code": "CREATE", "display": "create"}
UPDATE = {"system": V3_DATA_OPERATION, "code": "UPDATE", "display": "revise"}


def activity(written: list[dict[str, Any]], revises: bool | None = None) -> dict[str, str]:
    """The activity of a write of ``written``: UPDATE when it ``revises`` what the server holds (a live write knows:
    it updates a resource the server holds), else CREATE. Without that knowledge (the offline bundle, which cannot
    know what the server holds) it is read from the results: UPDATE when one is amended or entered-in-error (it
    replaces or retracts a value written before), else CREATE."""
    if revises is None:
        revises = any(r.get("status") in ("amended", "entered-in-error") for r in written)
    return UPDATE if revises else CREATE


def provenance(targets: list[str], sources: list[str], device_ref: str, recorded: dt.datetime,
               key: str, done: dict[str, str] = UPDATE) -> dict[str, Any]:
    """``targets``/``device_ref``: fullUrls (urn:uuid) of entries in the same transaction, or references;
    ``key``: :func:`write_key` of the entries written with it; ``done``: its :func:`activity`."""
    return {
        "resourceType": "Provenance",
        "meta": {"profile": [SD_PROVENANCE], "tag": [{"system": CS_WRITE_KEY, "code": key}]},
        "target": [{"reference": t} for t in targets],
        "recorded": recorded.astimezone(dt.UTC).isoformat(timespec="seconds"),
        "activity": {"coding": [dict(done)]},
        "agent": [{
            "type": {"coding": [{"system": PROVENANCE_AGENT_TYPE, "code": "assembler", "display": "Assembler"}]},
            "who": {"reference": device_ref, "display": f"fhir-adapter {__version__}"},
        }],
        "entity": [{"role": "source", "what": {"reference": s}} for s in sorted(set(sources))],
    }
