"""The adapter as a Device, and one Provenance per write transaction (R4 Provenance: target = the results
written, agent = the adapter Device with its version, entity = the source resources, role ``source``;
https://hl7.org/fhir/R4/provenance.html)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from fhir_adapter.terminology.codes import (
    PROVENANCE_AGENT_TYPE,
    SD_PROVENANCE,
    SID_DEVICE,
    V3_DATA_OPERATION,
)
from fhir_adapter.version import __version__

DEVICE_IDENTIFIER = "fhir-adapter"


def adapter_device() -> dict[str, Any]:
    return {
        "resourceType": "Device",
        "identifier": [{"system": SID_DEVICE, "value": DEVICE_IDENTIFIER}],
        "status": "active",
        "manufacturer": "fhir-adapter project",
        "deviceName": [{"name": "fhir-adapter", "type": "model-name"}],
        "version": [{"value": __version__}],
    }


def provenance(targets: list[str], sources: list[str], device_ref: str, recorded: dt.datetime) -> dict[str, Any]:
    """``targets``/``device_ref``: fullUrls (urn:uuid) of entries in the same transaction, or references."""
    return {
        "resourceType": "Provenance",
        "meta": {"profile": [SD_PROVENANCE]},
        "target": [{"reference": t} for t in targets],
        "recorded": recorded.astimezone(dt.UTC).isoformat(timespec="seconds"),
        "activity": {"coding": [{"system": V3_DATA_OPERATION, "code": "UPDATE", "display": "revise"}]},
        "agent": [{
            "type": {"coding": [{"system": PROVENANCE_AGENT_TYPE, "code": "assembler", "display": "Assembler"}]},
            "who": {"reference": device_ref, "display": f"fhir-adapter {__version__}"},
        }],
        "entity": [{"role": "source", "what": {"reference": s}} for s in sorted(set(sources))],
    }
