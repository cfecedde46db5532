"""Writing results back to the EHR's FHIR server, without ever corrupting a chart.

Per subject, one transaction (split by ``max_transaction_entries`` when a server needs smaller ones):

1. **Guard**: every resource must be about the enrolled subject's Patient and carry an identifier in the
   adapter's system (``https://fhir-adapter.org/fhir/sid/result``); anything else is refused before any
   request. Conditional updates match on that identifier and the subject's Patient
   (``PUT Observation?identifier=<system>|<value>&patient=Patient/<id>``), so the adapter can never update a
   resource it did not create, nor one about another patient.
2. **Diff**: the adapter's resources already on the server for that Patient are read in one search
   (``identifier=<system>|``); a resource whose content is unchanged is not written, so a second run over
   unchanged data makes **zero writes**. A result the adapter wrote before that is no longer produced (its
   inputs were retracted) is updated to ``status = entered-in-error``.
3. **Validate**: each resource to write is parsed as FHIR R4; a failure stops that subject's write (with the
   reason in the report), not the run.
4. **Write**: the changed resources as conditional updates, the adapter Device (conditional update) and one
   Provenance naming the sources, in transactions of at most ``max_transaction_entries`` entries (a subject
   with more changes gets several, each with its own Provenance). ``dry_run`` returns the diff instead.
   A 412 (a conditional update matched several resources) is reported for the subject with the identifiers
   the server holds more than once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import difflib
import json
from dataclasses import dataclass, field
from typing import Any

from fhir_adapter.fhir import FhirClient, FhirHttpError
from fhir_adapter.fhir_r4 import r4_problem
from fhir_adapter.roster import Enrollee
from fhir_adapter.terminology import SID_DEVICE, SID_RESULT
from fhir_adapter.writeback.identifiers import conditional_url, full_url
from fhir_adapter.writeback.provenance import adapter_device, provenance

_VOLATILE_META = ("versionId", "lastUpdated", "source", "author", "project", "compartment", "accounts")


class UnsafeWrite(RuntimeError):
    """A resource would be written outside what the adapter may touch."""


@dataclass
class WriteResult:
    subject_id: str
    written: list[str] = field(default_factory=list)     # identifier values created or updated
    unchanged: int = 0
    retracted: list[str] = field(default_factory=list)
    diff: str = ""
    error: str | None = None


def _identifier(res: dict[str, Any], system: str = SID_RESULT) -> str | None:
    return next((i.get("value") for i in res.get("identifier") or [] if i.get("system") == system), None)


def comparable(res: dict[str, Any]) -> dict[str, Any]:
    """The content that matters: id, version, timestamps and narrative removed."""
    out = {k: v for k, v in res.items() if k not in ("id", "text")}
    meta = {k: v for k, v in (res.get("meta") or {}).items() if k not in _VOLATILE_META}
    if meta:
        out["meta"] = meta
    else:
        out.pop("meta", None)
    normal: dict[str, Any] = json.loads(json.dumps(out, sort_keys=True))
    return normal


def _pretty(res: dict[str, Any] | None) -> list[str]:
    return json.dumps(comparable(res), indent=2, sort_keys=True).splitlines(keepends=True) if res else []


def check_safe(e: Enrollee, resources: list[dict[str, Any]], enrolled_patients: set[str]) -> None:
    if e.patient_id not in enrolled_patients:
        raise UnsafeWrite(f"Patient/{e.patient_id} is not an enrolled subject of the study: nothing is written")
    for r in resources:
        if _identifier(r) is None:
            raise UnsafeWrite(f"{r.get('resourceType')} without an identifier in {SID_RESULT}: the adapter only "
                              "writes resources it owns")
        if r.get("resourceType") == "ResearchStudy":  # the adapter's own study (from study.yaml): no patient
            continue
        subj = (r.get("subject") or r.get("individual") or {}).get("reference")
        if subj != f"Patient/{e.patient_id}":
            raise UnsafeWrite(f"{r.get('resourceType')} {_identifier(r)} points at {subj}, not at the subject's "
                              f"Patient/{e.patient_id}")


async def existing_results(client: FhirClient, e: Enrollee, by_id: list[dict[str, Any]] | None = None,
                           duplicates: dict[str, list[str]] | None = None) -> dict[str, dict[str, Any]]:
    """The adapter's Observations already on the server for this Patient, by identifier value; and the
    resources the adapter writes under a fixed id (its own ResearchSubject), which must carry its identifier.
    ``duplicates`` collects identifier values held by more than one Observation (``Observation/id`` list)."""
    found: dict[str, dict[str, Any]] = {}
    for want in by_id or []:
        try:
            held = await client.read(want["resourceType"], want["id"], label=e.subject_id)
        except FhirHttpError as exc:
            if exc.status in (404, 410):
                continue
            raise
        ident = _identifier(held)
        if ident is None:
            raise UnsafeWrite(f"{want['resourceType']}/{want['id']} exists on the server and was not created by the "
                              "adapter (no identifier in its system): it is left untouched")
        found[ident] = held
    async for res in client.search("Observation", {"patient": f"Patient/{e.patient_id}",
                                                   "identifier": f"{SID_RESULT}|"}, label=e.subject_id):
        ident = _identifier(res)
        if ident is not None and res.get("resourceType") == "Observation":
            if ident in found and duplicates is not None:
                twice = duplicates.setdefault(ident, [f"Observation/{found[ident].get('id')}"])
                twice.append(f"Observation/{res.get('id')}")
            found[ident] = res
    return found


def plan_writes(desired: list[dict[str, Any]], existing: dict[str, dict[str, Any]],
                result: WriteResult) -> list[dict[str, Any]]:
    """The resources that must be written: new, changed, or retracted."""
    wanted = {_identifier(r): r for r in desired}
    to_write: list[dict[str, Any]] = []
    diffs: list[str] = []
    for ident, res in wanted.items():
        assert ident is not None
        before = existing.get(ident)
        if before is not None and comparable(before) == comparable(res):
            result.unchanged += 1
            continue
        to_write.append(res)
        result.written.append(ident)
        diffs.extend(difflib.unified_diff(_pretty(before), _pretty(res), f"server:{ident}", f"adapter:{ident}"))
    for ident, before in sorted(existing.items()):
        if ident in wanted or before.get("status") == "entered-in-error" or before.get("resourceType") != "Observation":
            continue
        retracted = {k: v for k, v in before.items() if k not in ("id", "meta", "text")}
        retracted["status"] = "entered-in-error"
        retracted["note"] = [{"text": "Retracted by fhir-adapter: the EHR data this result was derived from was "
                                      "corrected or entered in error."}]
        to_write.append(retracted)
        result.retracted.append(ident)
        diffs.extend(difflib.unified_diff(_pretty(before), _pretty(retracted), f"server:{ident}",
                                          f"adapter:{ident}"))
    result.diff = "".join(diffs)
    return to_write


def transaction_entries(to_write: list[dict[str, Any]], sources: list[str], now: dt.datetime,
                        patient_id: str | None = None) -> list[dict[str, Any]]:
    """Device, the resources (conditional updates, narrowed to ``patient_id`` when given) and a Provenance."""
    device = adapter_device()
    device_url = full_url(SID_DEVICE, "fhir-adapter")
    entries: list[dict[str, Any]] = [{
        "fullUrl": device_url, "resource": device,
        "request": {"method": "PUT", "url": conditional_url("Device", "fhir-adapter", SID_DEVICE)},
    }]
    targets = []
    for r in to_write:
        ident = _identifier(r)
        assert ident is not None
        url = full_url(SID_RESULT, ident)
        targets.append(url)
        if r.get("id"):
            request_url = f"{r['resourceType']}/{r['id']}"
        else:
            request_url = conditional_url(r["resourceType"], ident)
            if patient_id is not None and r["resourceType"] == "Observation":
                request_url += f"&patient=Patient/{patient_id}"
        entries.append({"fullUrl": url, "resource": r, "request": {"method": "PUT", "url": request_url}})
    prov = provenance(targets, sources, device_url, now)
    entries.append({"fullUrl": full_url(SID_RESULT, f"provenance-{now.isoformat()}-{targets[0]}"),
                    "resource": prov, "request": {"method": "POST", "url": "Provenance"}})
    return entries


async def write_subject(client: FhirClient, e: Enrollee, desired: list[dict[str, Any]], sources: list[str],
                        enrolled_patients: set[str], *, dry_run: bool = False,
                        now: dt.datetime | None = None) -> WriteResult:
    result = WriteResult(subject_id=e.subject_id)
    duplicates: dict[str, list[str]] = {}
    try:
        check_safe(e, desired, enrolled_patients)
        for r in desired:
            problem = r4_problem(r)
            if problem:
                raise ValueError(f"{r['resourceType']} {_identifier(r)} is not valid FHIR R4: {problem}")
        existing = await existing_results(client, e, [r for r in desired if r.get("id")], duplicates)
        to_write = plan_writes(desired, existing, result)
        check_safe(e, to_write, enrolled_patients)
        if not to_write or dry_run:
            return result
        # each part is its own transaction with the Device and a Provenance (2 entries of overhead)
        size = max(1, client.settings.max_transaction_entries - 2)
        for i in range(0, len(to_write), size):
            entries = transaction_entries(to_write[i:i + size], sources, now or dt.datetime.now(dt.UTC), e.patient_id)
            await client.transaction({"resourceType": "Bundle", "type": "transaction", "entry": entries},
                                     label=e.subject_id)
    except Exception as exc:  # reported per subject; never stops the run
        result.error = str(exc)
        if isinstance(exc, FhirHttpError) and exc.status == 412:
            held = "; ".join(f"{ident} by {', '.join(refs)}" for ident, refs in sorted(duplicates.items()))
            result.error += (f" — the server holds adapter identifiers more than once ({held}): remove the "
                             "duplicates, then run again" if held else
                             " — a conditional update matched several resources on the server")
        result.written = []
        result.retracted = []
    return result


class ServerSink:
    """The pipeline's sink for a FHIR server: drives :func:`write_subject` on the given event loop."""

    def __init__(self, client: FhirClient, loop: asyncio.AbstractEventLoop, *, dry_run: bool = False) -> None:
        self.client = client
        self.loop = loop
        self.dry_run = dry_run
        self.enrolled: set[str] = set()

    def start(self, enrolled_patients: set[str]) -> None:
        self.enrolled = set(enrolled_patients)

    def write(self, e: Enrollee, resources: list[dict[str, Any]], sources: list[str]) -> WriteResult:
        return self.loop.run_until_complete(
            write_subject(self.client, e, resources, sources, self.enrolled, dry_run=self.dry_run))
