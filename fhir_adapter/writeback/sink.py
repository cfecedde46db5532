"""Writing results back to the EHR's FHIR server, without ever corrupting a chart.

Per subject, one transaction (split by ``max_transaction_entries`` when a server needs smaller ones):

1. **Guard**: every resource must be about the enrolled subject's Patient and carry an identifier in the
   adapter's system (``https://fhir-adapter.org/fhir/sid/result``); anything else is refused before any
   request. Each resource written carries the adapter's ``meta.tag`` (:mod:`.ownership`).
2. **Diff**: the adapter's resources already on the server for that Patient are read in one search
   (``identifier=<system>|``). Only a resource with the adapter's identifier *and* tag *and* the subject's
   Patient is the adapter's; another one holding an identifier the adapter wants to write stops that
   subject's write (it is never overwritten), as does an identifier held more than once. A resource whose
   content is unchanged is not written, so a second run over unchanged data makes **zero writes**. A result
   the adapter wrote before that is no longer produced (its inputs were retracted) is updated to
   ``status = entered-in-error`` — unless that would retract more than ``max_retraction_share`` of the
   subject's results on the server in one run, which needs ``allow_mass_retraction``
   (``--allow-mass-retraction``) and is otherwise reported for the subject before anything is sent.
3. **Validate**: each resource to write is parsed as FHIR R4 — the results and the Device and Provenance that
   go with them; a failure stops that subject's write (with the reason in the report), not the run.
4. **Write**: new resources as conditional creates (``POST`` with ``If-None-Exist: identifier=<system>|<value>
   &patient=Patient/<id>``), changed and retracted ones as updates of the server's resource
   (``PUT <Type>/<id>`` with ``If-Match`` on the version the adapter read: a resource changed meanwhile gives
   412, reported, never overwritten), the adapter Device (conditional create) and one Provenance naming the
   sources of the results it writes (conditional create on the key of the write, :mod:`.provenance`), in
   transactions of at most
   ``max_transaction_entries`` entries (a subject with more changes gets several, each with its own
   Provenance). ``dry_run`` returns the diff instead.

Only one transaction is atomic. A write split into several cannot be all-or-nothing: when a later part fails
the earlier ones stay on the server. The result then says which (:attr:`WriteResult.written` holds the confirmed
parts' identifiers, :attr:`WriteResult.pending` the others, the error "partially written: n of N results"), the
pipeline records just those in ``state/written.json``, and the next run writes the rest (its diff against the
server finds the confirmed parts unchanged). No part is sent once the circuit breaker is open; the server going
down part-way (or the credentials rejected) still stops the run, after what was confirmed is recorded
(:attr:`WriteResult.stop`). Undoing the confirmed parts instead (deleting what they created) was not done: it
cannot undo their updates of earlier results, and it would be sent to a server that is failing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import difflib
import json
import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from fhir_adapter.fhir.errors import FhirAuthError, FhirHttpError, FhirServerUnavailable, FhirTransportError
from fhir_adapter.fhir.r4 import r4_problem
from fhir_adapter.roster.enrollees import Enrollee
from fhir_adapter.terminology.codes import SID_DEVICE, SID_RESULT
from fhir_adapter.writeback.identifiers import full_url, in_query, subject_prefix
from fhir_adapter.writeback.ownership import why_not_owned, with_owner_tag
from fhir_adapter.writeback.provenance import activity, adapter_device, provenance, provenance_request, write_key
from fhir_adapter.writeback.sources import result_sources
from fhir_adapter.writeback.state import result_value, server_retraction

if TYPE_CHECKING:
    from fhir_adapter.fhir.client import FhirClient

log = logging.getLogger(__name__)

#: default share of a subject's results on the server one run may retract without --allow-mass-retraction
MAX_RETRACTION_SHARE = 0.5

_VOLATILE_META = ("versionId", "lastUpdated", "source", "author", "project", "compartment", "accounts")


class UnsafeWrite(RuntimeError):
    """A resource would be written outside what the adapter may touch."""


class MassRetraction(RuntimeError):
    """A run would retract more of a subject's results than allowed without ``--allow-mass-retraction``."""


@dataclass
class WriteResult:
    subject_id: str
    written: list[str] = field(default_factory=list)     # identifier values created or updated
    unchanged: int = 0
    retracted: list[str] = field(default_factory=list)
    diff: str = ""
    error: str | None = None
    exception: BaseException | None = field(default=None, repr=False)  # what ended the write, for the report
    #: a write split into several transactions that ended part-way: the identifier values planned but not
    #: confirmed by the server (``written``/``retracted`` then hold only the confirmed ones)
    pending: list[str] = field(default_factory=list)
    #: the server went down (or the credentials were rejected) after some of the transactions were confirmed:
    #: the run stops once those are recorded
    stop: BaseException | None = field(default=None, repr=False)
    #: results of the subject on a Patient it is no longer about (its ResearchSubject was pointed at another
    #: Patient), retracted there: ``Patient/<id>: <identifier>`` (:func:`moved_away`)
    moved: list[str] = field(default_factory=list)
    #: identifier → the status (final, amended) the server holds for each result once the write is done: what was
    #: sent, or the server's copy of an unchanged result (:meth:`~.state.Plan.settle`)
    statuses: dict[str, str] = field(default_factory=dict)

    @property
    def partial(self) -> bool:
        """Some of the subject's writes were confirmed, others not."""
        return bool(self.pending) and bool(self.written or self.retracted)


#: what the run report says to do about a subject written in part (``max_transaction_entries`` split its write)
PARTIAL_WHAT_TO_DO = ("the transactions the server confirmed are recorded in state/written.json; the next run "
                      "(full or --since last) writes the rest and nothing twice. Only one transaction per subject "
                      "is atomic: set max_transaction_entries (server config) to at least the subject's results + "
                      "2, if the server accepts transactions that large, so that a subject goes in one")


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


#: statuses of a result the chart shows as current: a new value of it is ``amended``
_SHOWN = ("final", "amended", "corrected")


def as_revision(res: dict[str, Any], before: dict[str, Any] | None) -> dict[str, Any]:
    """``res`` as it goes to the server that holds ``before`` (None: nothing): a result Observation whose value
    replaces another value the chart showed (``before`` final, amended or corrected) is ``amended`` — R4
    Observation.status: "subsequent to being final, the observation has been modified" — so a clinician sees that
    the score changed, and stays so (an amended result whose method text changes is still amended); one whose value
    is the chart's (only its method text, sources or profile differ: a new adapter version), one the server does
    not hold, or one that replaces a retracted result (``entered-in-error``: as if it never existed) is ``final``.
    The server's copy decides: the write-back state may say otherwise (it was lost, or another OUT wrote)."""
    if res.get("resourceType") != "Observation" or res.get("status") not in ("final", "amended"):
        return res
    shown = before is not None and before.get("status") in _SHOWN
    revised = shown and before is not None and (before.get("status") in ("amended", "corrected")
                                                or result_value(before) != result_value(res))
    status = "amended" if revised else "final"
    return res if res["status"] == status else {**res, "status": status}


def same_result(before: dict[str, Any], res: dict[str, Any]) -> bool:
    """Whether the server's ``before`` holds ``res``: the same content, ``final`` and ``amended`` alike (an
    amendment is the status of an update, not a value: :func:`as_revision`)."""
    def content(r: dict[str, Any]) -> dict[str, Any]:
        return {**r, "status": "final"} if r.get("status") == "amended" else r

    return comparable(content(before)) == comparable(content(res))


def _pretty(res: dict[str, Any] | None) -> list[str]:
    """The lines a diff compares, each with its newline (the last one too: the next result's diff starts on a
    line of its own, so OUT/writeback-diff is a unified diff that patch tools read)."""
    return [f"{line}\n" for line in json.dumps(comparable(res), indent=2, sort_keys=True).splitlines()] if res else []


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
                           duplicates: dict[str, list[str]] | None = None,
                           foreign: dict[str, list[str]] | None = None,
                           study_id: str | None = None, former: Collection[str] = (),
                           others: Collection[str] = ()) -> dict[str, dict[str, Any]]:
    """The adapter's resources already on the server for this Patient, by identifier value: its Observations
    (one search) and the resources it writes under a fixed id (its own ResearchSubject), which must be the
    adapter's (:func:`~.ownership.why_not_owned`). ``duplicates`` collects identifier values held by more than
    one Observation (``Observation/id`` list); ``foreign`` the identifier values held by Observations that are
    not the adapter's (``Observation/id (why)``): never part of the result, never touched. ``study_id``: only
    the subject's results of that study (their identifier starts with both): a patient in two trials holds the
    other study's results too, and a patient enrolled again under a new subject ID the first subject's, which
    this subject's write never counts, updates nor retracts. ``former``: Patients the subject
    was linked to before (:func:`moved_away`): a resource written under a fixed id about one of them is the
    adapter's too (its own ResearchSubject, moved with the subject). ``others``: the study's other subject IDs the
    run knows. Identifiers keep the ``.`` of an ID, so one may start as two subjects' do (``101``'s visit ``2`` and
    ``101.2``'s results both start with ``<study>.101.2.``): it is the subject's whose prefix leaves
    ``<scope>.<code>`` (one ``.``: visit ids and result codes have none), and when that does not tell (both or
    neither), the subject's whose ResearchSubject its ``focus`` names (:func:`_whose`)."""
    # this subject's results only: another study's on the same Patient, or another subject's of this study (a
    # patient enrolled again under a new subject ID keeps the first subject's results)
    prefix = subject_prefix(study_id, e.subject_id) if study_id is not None else ""
    # another subject whose ID and this one's differ by a '.' suffix: an identifier may start as both do
    rivals = tuple(p for s in others if s != e.subject_id and study_id is not None
                   and ((p := subject_prefix(study_id, s)).startswith(prefix) or prefix.startswith(p))) \
        if prefix else ()
    found: dict[str, dict[str, Any]] = {}
    for want in by_id or []:
        try:
            held = await client.read(want["resourceType"], want["id"], label=e.subject_id)
        except FhirHttpError as exc:
            if exc.status in (404, 410):
                continue
            raise
        why = why_not_owned(held, e.patient_id)
        if why is not None and any(why_not_owned(held, pid) is None for pid in former):
            why = None  # the adapter's own, about the Patient the subject was linked to before: it moves too
        if why is not None:
            raise UnsafeWrite(f"{want['resourceType']}/{want['id']} exists on the server and is not the adapter's "
                              f"({why}): it is left untouched")
        ident = _identifier(held)
        assert ident is not None
        found[ident] = held
    holders: dict[str, list[str]] = {}
    async for res in client.search("Observation", {"patient": f"Patient/{e.patient_id}",
                                                   "identifier": f"{SID_RESULT}|"}, label=e.subject_id):
        ident = _identifier(res)
        if ident is None or res.get("resourceType") != "Observation" or not ident.startswith(prefix):
            continue
        if ident.startswith(rivals) and not _whose(ident, res, prefix, rivals, e):
            continue  # the result of a subject whose ID and this one's differ by a dotted suffix
        holders.setdefault(ident, []).append(f"Observation/{res.get('id')}")
        why = why_not_owned(res, e.patient_id)
        if why is not None:
            if foreign is not None:
                foreign.setdefault(ident, []).append(f"Observation/{res.get('id')} ({why})")
            continue
        found[ident] = res
    if duplicates is not None:
        duplicates.update({i: refs for i, refs in holders.items() if len(refs) > 1})
    return found


def _whose(ident: str, res: dict[str, Any], prefix: str, rivals: tuple[str, ...], e: Enrollee) -> bool:
    """Whether the result ``ident`` — which starts with this subject's ``prefix`` and a rival subject's — is this
    subject's: the prefix after which ``<scope>.<code>`` is left (one ``.``) owns it; when that does not tell
    (visit ids with a '.'), the ResearchSubject its ``focus`` names does."""
    def fits(p: str) -> bool:
        return ident.startswith(p) and ident[len(p):].count(".") == 1

    if fits(prefix) != any(fits(p) for p in rivals):
        return fits(prefix)
    return f"ResearchSubject/{e.research_subject.id}" in [(f or {}).get("reference") for f in res.get("focus") or []]


def plan_writes(desired: list[dict[str, Any]], existing: dict[str, dict[str, Any]],
                result: WriteResult, retractions: Sequence[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """The resources that must be written: new, changed, or retracted — by the planned retraction of that
    result when there is one (its reason, its sources: what the offline bundle holds), else
    :func:`~.state.server_retraction` of the server's copy."""
    wanted = {_identifier(r): r for r in desired}
    planned = {_identifier(r): r for r in retractions}
    to_write: list[dict[str, Any]] = []
    diffs: list[str] = []
    for ident, res in wanted.items():
        assert ident is not None
        before = existing.get(ident)
        if before is not None and same_result(before, res):
            result.unchanged += 1
            result.statuses[ident] = str(before.get("status"))
            continue
        res = as_revision(res, before) if before is None else {**as_revision(res, before), "id": before["id"]}
        result.statuses[ident] = str(res.get("status"))
        to_write.append(res)
        result.written.append(ident)
        diffs.extend(difflib.unified_diff(_pretty(before), _pretty(res), f"server:{ident}", f"adapter:{ident}"))
    for ident, before in sorted(existing.items()):
        if ident in wanted or before.get("status") == "entered-in-error" or before.get("resourceType") != "Observation":
            continue
        retracted = {**with_owner_tag(planned.get(ident) or server_retraction(before)), "id": before["id"]}
        to_write.append(retracted)
        result.retracted.append(ident)
        diffs.extend(difflib.unified_diff(_pretty(before), _pretty(retracted), f"server:{ident}",
                                          f"adapter:{ident}"))
    result.diff = "".join(diffs)
    return to_write


async def moved_away(client: FhirClient, e: Enrollee, former: Collection[str], study_id: str,
                     result: WriteResult, others: Collection[str] = ()) -> list[tuple[str, list[dict[str, Any]],
                                                                                     dict[str, str]]]:
    """The subject's results on Patients it is no longer about — its ResearchSubject named another Patient when
    they were written (``former``: the Patients the write-back state has them on), and was corrected since — as
    entered-in-error updates of the server's copies, per Patient with the versions read (for ``If-Match``): a
    result about the wrong patient must not stay current in that patient's chart. Only the adapter's own results
    of this study and subject (identifier, tag and that Patient) are touched, and only to retract them."""
    why = (f"the trial subject's ResearchSubject now names Patient/{e.patient_id}, not this Patient: this result "
           "is not about this patient.")
    out = []
    for pid in sorted(set(former) - {e.patient_id}):
        # (existing_results keeps this subject's results of this study only)
        there = await existing_results(client, replace(e, patient_id=pid), study_id=study_id, others=others)
        retract, versions = [], {}
        for ident, held in sorted(there.items()):
            if held.get("resourceType") != "Observation" or held.get("status") == "entered-in-error":
                continue
            retraction = {**with_owner_tag(server_retraction(held, why)), "id": held["id"]}
            if (retraction.get("subject") or {}).get("reference") != f"Patient/{pid}":
                raise UnsafeWrite(f"Observation/{held['id']} ({ident}) is not about Patient/{pid}: not retracted")
            retract.append(retraction)
            versions[ident] = str((held.get("meta") or {}).get("versionId") or "")
            result.moved.append(f"Patient/{pid}: {ident}")  # planned; what a failed write did not send is dropped
            where = f"Patient/{pid}:{ident}"
            result.diff += "".join(difflib.unified_diff(_pretty(held), _pretty(retraction), f"server:{where}",
                                                        f"adapter:{where}"))
        if retract:
            out.append((pid, retract, versions))
    return out


def transaction_entries(to_write: list[dict[str, Any]], sources: list[str], now: dt.datetime,
                        patient_id: str | None = None, versions: dict[str, str] | None = None,
                        revises: bool | None = None) -> list[dict[str, Any]]:
    """Device (conditional create), the resources and a Provenance. A resource with a server id is updated
    with ``If-Match`` on ``versions[identifier]`` (the version the adapter read); one without is created
    with ``If-None-Exist`` on its identifier (and ``patient_id``, for an Observation); the Provenance with
    ``If-None-Exist`` on the key of this write (:func:`~.provenance.write_key`). Every entry is conditional, so
    the transaction may be posted again: a replay duplicates nothing (an update already made answers 412)."""
    device = with_owner_tag(adapter_device())
    device_url = full_url(SID_DEVICE, "fhir-adapter")
    entries: list[dict[str, Any]] = [{
        "fullUrl": device_url, "resource": device,
        "request": {"method": "POST", "url": "Device", "ifNoneExist": f"identifier={SID_DEVICE}|fhir-adapter"},
    }]
    targets = []
    for r in to_write:
        ident = _identifier(r)
        assert ident is not None
        about = (r.get("subject") or {}).get("reference")
        # a retraction on a Patient the subject is no longer about has the identifier of its result on this one
        url = full_url(SID_RESULT, ident if patient_id is None or about in (None, f"Patient/{patient_id}")
                       else f"{ident}|{about}")
        targets.append(url)
        request: dict[str, str]
        if r.get("id"):
            request = {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}
            version = (versions or {}).get(ident)
            if version:
                request["ifMatch"] = f'W/"{version}"'
        else:
            condition = f"identifier={SID_RESULT}|{in_query(ident)}"
            if patient_id is not None and r["resourceType"] == "Observation":
                condition += f"&patient=Patient/{patient_id}"
            request = {"method": "POST", "url": r["resourceType"], "ifNoneExist": condition}
        entries.append({"fullUrl": url, "resource": r, "request": request})
    key = write_key(entries[1:])
    prov = with_owner_tag(provenance(targets, sources, device_url, now, key, activity(to_write, revises)))
    entries.append({"fullUrl": full_url(SID_RESULT, f"provenance-{key}"), "resource": prov,
                    "request": provenance_request(key)})
    return entries


async def already_written(client: FhirClient, e: Enrollee, part: list[dict[str, Any]],
                          by_id: list[dict[str, Any]], study_id: str | None = None,
                          others: Collection[str] = ()) -> bool:
    """Whether the server holds every resource of ``part`` (one transaction's resources) as the adapter meant
    to write it, each once: then that transaction was committed (it is atomic), e.g. by an attempt whose answer
    was lost. ``by_id``: the resources the adapter writes under a fixed id (:func:`existing_results`)."""
    duplicates: dict[str, list[str]] = {}
    held = await existing_results(client, e, by_id, duplicates, study_id=study_id, others=others)
    if duplicates:
        return False
    return all((h := held.get(str(_identifier(r)))) is not None and comparable(h) == comparable(r) for r in part)


def maybe_committed(exc: BaseException) -> bool:
    """A failed transaction the server may have committed all the same: its answer was lost (a timeout, a
    dropped connection, an answer too large) or a gateway/server error came after it was sent."""
    if getattr(exc, "method", None) != "POST":
        return False
    if isinstance(exc, FhirTransportError):
        return exc.kind in ("timeout", "dropped", "too-large", "other")
    return isinstance(exc, FhirHttpError) and exc.status in (500, 502, 504)


def check_retraction_share(result: WriteResult, existing: dict[str, dict[str, Any]], max_share: float) -> None:
    """Refuse (before any request) a run that would retract more than ``max_share`` of the subject's results
    on the server — its result Observations not retracted yet (the adapter's own ResearchSubject and
    ResearchStudy, also in ``existing``, are no results: counting them let a run retract all of a roster-CSV
    subject's results)."""
    live = sum(1 for r in existing.values()
               if r.get("resourceType") == "Observation" and r.get("status") != "entered-in-error")
    if result.retracted and len(result.retracted) > max_share * live:
        raise MassRetraction(
            f"this run would retract {len(result.retracted)} of the subject's {live} results on the server "
            f"(more than {max_share:.0%}): nothing was sent for this subject. Check that the source export is "
            "complete (the diff is in OUT/writeback-diff/); if the retractions are right, run again with "
            "--allow-mass-retraction")


async def write_subject(client: FhirClient, e: Enrollee, desired: list[dict[str, Any]],
                        enrolled_patients: set[str], *, dry_run: bool = False,
                        now: dt.datetime | None = None, allow_mass_retraction: bool = False,
                        max_retraction_share: float = MAX_RETRACTION_SHARE,
                        retractions: Sequence[dict[str, Any]] = (), held: Collection[str] = (),
                        study_id: str | None = None, former_patients: Collection[str] = (),
                        others: Collection[str] = ()) -> WriteResult:
    """Write one subject's results: compare with what the server holds, then create, update and retract.
    ``retractions``: the retractions the write-back state planned (:meth:`WrittenState.plan`, the ones the
    offline bundle holds) — a result the server holds and the run no longer derives is retracted with that
    resource, so the server gets what ``OUT/writeback`` shows. ``held``: identifiers of results held back for
    review (``--reviewed-only``): the server's copy stays as it is, neither updated nor retracted. ``study_id``:
    the study whose results these are (another study's results on the same Patient are left alone).
    ``former_patients``: Patients the subject's results were written about before (:func:`moved_away`, with
    ``study_id``): its results there are retracted first. ``others``: the study's other subject IDs
    (:func:`existing_results`)."""
    result = WriteResult(subject_id=e.subject_id)
    confirmed: set[str] = set()  # identifier values of the transactions the server confirmed
    moved_sent: list[str] = []  # the results on former Patients whose retraction the server confirmed
    done, parts = 0, list[list[dict[str, Any]]]()
    duplicates: dict[str, list[str]] = {}
    foreign: dict[str, list[str]] = {}
    try:
        desired = [with_owner_tag(r) for r in desired]
        check_safe(e, desired, enrolled_patients)
        for r in desired:
            problem = r4_problem(r, full=True)
            if problem:
                raise ValueError(f"{r['resourceType']} {_identifier(r)} is not valid FHIR R4: {problem}")
        existing = await existing_results(client, e, [r for r in desired if r.get("id")], duplicates, foreign,
                                          study_id=study_id, former=set(former_patients) - {e.patient_id},
                                          others=others)
        wanted = {_identifier(r) for r in desired}
        if clash := sorted(i for i in foreign if i in wanted):
            held = "; ".join(f"{i} by {', '.join(foreign[i])}" for i in clash)
            raise UnsafeWrite(f"the server holds resources with the adapter's identifiers that are not the "
                              f"adapter's ({held}): they are left untouched and nothing is written for this "
                              "subject; remove the adapter identifier from them (or the resources), then run again")
        if duplicates:
            held = "; ".join(f"{ident} by {', '.join(refs)}" for ident, refs in sorted(duplicates.items()))
            raise UnsafeWrite(f"the server holds adapter identifiers more than once ({held}): remove the "
                              "duplicates, then run again")
        to_write = plan_writes(desired, {i: r for i, r in existing.items() if i not in held}, result, retractions)
        check_safe(e, to_write, enrolled_patients)
        moved = await moved_away(client, e, former_patients, study_id, result, others) \
            if study_id is not None and set(former_patients) - {e.patient_id} else []
        if not allow_mass_retraction:
            check_retraction_share(result, existing, max_retraction_share)
        if (not to_write and not moved) or dry_run:
            return result
        # each part is its own transaction with the Device and a Provenance (2 entries of overhead; the setting
        # is at least 3): only one transaction is atomic, so a split subject is recorded part by part
        size = max(1, client.settings.max_transaction_entries - 2)
        for pid, retract, former_versions in moved:  # the wrong chart first, whatever happens to the right one
            for i in range(0, len(retract), size):
                client.breaker.check()
                chunk = retract[i:i + size]
                entries = transaction_entries(chunk, sorted({ref for r in chunk for ref in result_sources(r)}),
                                              now or dt.datetime.now(dt.UTC), None, former_versions, revises=True)
                await client.transaction({"resourceType": "Bundle", "type": "transaction", "entry": entries},
                                         label=e.subject_id)
                moved_sent += [f"Patient/{pid}: {_identifier(r)}" for r in chunk]
            log.info("%s: %d results on Patient/%s, which the subject is no longer about, retracted", e.subject_id,
                     len(retract), pid)
        versions = {ident: str((r.get("meta") or {}).get("versionId") or "") for ident, r in existing.items()}
        parts = [to_write[i:i + size] for i in range(0, len(to_write), size)]
        for part in parts:
            client.breaker.check()  # the server seen down: no further part is sent (a subject is not started)
            # its Provenance names the sources of the results it writes, not those of the subject's other results
            part_sources = sorted({ref for r in part for ref in result_sources(r)})
            # it revises when it updates a resource the server holds (what the server holds decides: the adapter's
            # own ResearchSubject has its fixed id from its first write on)
            revises = any(str(_identifier(r)) in existing for r in part)
            entries = transaction_entries(part, part_sources, now or dt.datetime.now(dt.UTC), e.patient_id, versions,
                                          revises)
            for entry in (entries[0], entries[-1]):  # the Device and the Provenance, validated as the results are
                if problem := r4_problem(entry["resource"], full=True):
                    raise ValueError(f"{entry['resource']['resourceType']} of this write is not valid FHIR R4: "
                                     f"{problem}")
            try:
                await client.transaction({"resourceType": "Bundle", "type": "transaction", "entry": entries},
                                         label=e.subject_id)
            except FhirHttpError as exc:
                # every entry is conditional, so the client sends the transaction again when its answer was lost
                # (a read timeout, a dropped connection, a 5xx); a 412 then may mean the first attempt was
                # committed (its If-Match updates are done): written when the server holds it all as meant
                if exc.status != 412 or exc.attempts < 2 or \
                        not await already_written(client, e, part, [r for r in desired if r.get("id")], study_id,
                                                  others):
                    raise
                log.info("%s: a transaction sent again answered 412, and the server holds its %d resources as "
                         "written: the first attempt was committed", e.subject_id, len(part))
            confirmed.update(str(_identifier(r)) for r in part)
            done += 1
    except Exception as exc:  # reported per subject; the server down or the credentials rejected stop the run
        stops = isinstance(exc, FhirServerUnavailable) or (isinstance(exc, FhirAuthError) and not exc.transient)
        if stops and not confirmed:
            raise  # exit 3 (server unavailable) or 4 (authentication failed); nothing of this subject written
        result.error = str(exc)
        result.exception = exc
        if maybe_committed(exc):
            result.error = (f"write outcome unknown: the server may have committed ({exc}); the next run reads "
                            "the subject's results again and writes only what is missing")
        if isinstance(exc, FhirHttpError) and exc.status == 412:
            result.error += (" — a result changed on the server since the adapter read it (If-Match), or a "
                             "conditional create matched several resources: nothing of this transaction was "
                             "written; run again")
        result.moved = moved_sent
        planned = result.written + result.retracted
        result.pending = [i for i in planned if i not in confirmed]
        result.written = [i for i in result.written if i in confirmed]
        result.retracted = [i for i in result.retracted if i in confirmed]
        if confirmed:
            result.error = (f"partially written: {len(confirmed)} of {len(planned)} results, in {done} of "
                            f"{len(parts)} transactions (only one transaction per subject is atomic); then "
                            f"{result.error}; the next run completes it")
        if stops:
            result.stop = exc
    return result


class ServerSink:
    """The pipeline's sink for a FHIR server: drives :func:`write_subject` on the given event loop."""

    def __init__(self, client: FhirClient, loop: asyncio.AbstractEventLoop, *, dry_run: bool = False,
                 allow_mass_retraction: bool = False, max_retraction_share: float = MAX_RETRACTION_SHARE,
                 study_id: str | None = None) -> None:
        self.client = client
        self.study_id = study_id
        self.loop = loop
        self.dry_run = dry_run
        self.allow_mass_retraction = allow_mass_retraction
        self.max_retraction_share = max_retraction_share
        self.enrolled: set[str] = set()
        #: patients of subjects who left the study, carried forward: their results are written as any subject's
        #: (docs/clinical-rules.md#withdrawn-subjects)
        self.left: set[str] = set()
        #: every subject ID of the study the run knows (:func:`existing_results` ``others``)
        self.subject_ids: frozenset[str] = frozenset()

    def start(self, enrolled_patients: set[str], left_patients: set[str] | None = None,
              subject_ids: Collection[str] = ()) -> None:
        self.enrolled = set(enrolled_patients)
        self.left = set(left_patients or ())
        self.subject_ids = frozenset(subject_ids)

    def write(self, e: Enrollee, resources: list[dict[str, Any]], retractions: Sequence[dict[str, Any]] = (),
              held: Collection[str] = (), former_patients: Collection[str] = ()) -> WriteResult:
        return self.loop.run_until_complete(
            write_subject(self.client, e, resources, self.enrolled | self.left, dry_run=self.dry_run,
                          allow_mass_retraction=self.allow_mass_retraction,
                          max_retraction_share=self.max_retraction_share, retractions=retractions, held=held,
                          study_id=self.study_id, former_patients=former_patients, others=self.subject_ids))
