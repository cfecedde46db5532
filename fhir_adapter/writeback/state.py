"""What earlier runs wrote back, so a result whose inputs are gone is retracted on the next run.

``OUT/state/written.json`` keeps, per result identifier, the subject, the source references the result was
derived from, a content hash and the few elements needed to address it again (identifier, code, subject,
focus, category). It survives between runs. With a FHIR server as sink it records only writes the server
confirmed, subject by subject (a subject written in several transactions that stopped part-way: the results of
the confirmed ones, :meth:`WrittenState.commit` ``pending``); a run that fails or is killed leaves it as it was
(fhir_adapter/job/staging.py).

For each subject processed in a run, comparing its new result resources with the state gives, the first
case that applies:

1. **new** — the identifier was never written;
2. **unchanged** — same content hash as last time;
3. **updated** — written before, the content changed (e.g. a SLEDAI-2K total after a source correction);
4. **retracted** — written before and not produced any more: its inputs were retracted (entered-in-error,
   cancelled, removed) or no longer qualify. The subject's write-back bundle gets a conditional update of that
   Observation with ``status: entered-in-error``, the same identifier, code and subject, and a ``note``
   naming the source resources and their current status. A retracted identifier is retracted once; if the
   result comes back on a later run it is simply written again.

A subject that is not processed in a run (failed, or no longer enrolled) keeps its state untouched.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import tempfile
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from fhir_adapter.fhir.versions import version_key
from fhir_adapter.terminology.codes import EXT_RESULT_SOURCE, SID_RESULT
from fhir_adapter.version import __version__
from fhir_adapter.writeback.sources import derived_from_allowed, result_sources

STATE_VERSION = 1
_KEEP = ("resourceType", "meta", "extension", "identifier", "category", "code", "subject", "individual", "focus",
         "effectiveDateTime")
_VALUE_KEYS = ("valueInteger", "valueQuantity", "valueBoolean", "valueString", "valueCodeableConcept")


#: what a result reports besides value[x]: a SLEDAI-2K total's descriptors, an LLDAS result's criteria
_REPORTED_KEYS = ("component", "dataAbsentReason")


def result_value(resource: dict[str, Any]) -> dict[str, Any]:
    """What a result reports — ``value[x]``, its components (a SLEDAI-2K total's descriptors) and a data-absent
    reason: a change of it makes an update an amendment (R4 Observation.status ``amended``); another method text,
    source list or profile is no new value."""
    return {k: resource[k] for k in (*_VALUE_KEYS, *_REPORTED_KEYS) if k in resource}


def _reported(resource: dict[str, Any]) -> str:
    """:func:`result_value` as a hash, kept in the state (the components themselves are not)."""
    return content_hash(result_value(resource))


def content_hash(resource: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(resource, option=orjson.OPT_SORT_KEYS)).hexdigest()


def result_id(resource: dict[str, Any]) -> str:
    """The adapter's business identifier value of a result resource."""
    for ident in resource.get("identifier") or []:
        if ident.get("system") == SID_RESULT:
            return str(ident["value"])
    raise ValueError(f"{resource.get('resourceType')} without an identifier in {SID_RESULT}")


def _sources(resource: dict[str, Any]) -> list[str]:
    return result_sources(resource)


def _value_text(entry: dict[str, Any]) -> str:
    value = entry.get("value")
    if not isinstance(value, dict) or not value:
        return "no value"
    v = next(iter(value.values()))
    if isinstance(v, dict) and "value" in v:
        return f"{v['value']} {v.get('unit') or v.get('code') or ''}".strip()
    return str(v)


def source_statuses(resources: list[dict[str, Any]]) -> dict[str, str]:
    """``Type/id`` → status of the latest version present in this run's source."""
    best: dict[str, tuple[tuple[int, float], str]] = {}
    for r in resources:
        if not isinstance(r.get("id"), str):
            continue
        key = version_key(r)
        ref = f"{r.get('resourceType')}/{r['id']}"
        if ref not in best or key > best[ref][0]:
            best[ref] = (key, str(r.get("status") or "unknown"))
    return {ref: status for ref, (_, status) in best.items()}


def retraction(entry: dict[str, Any], reason: str, on: dt.date, gone: Collection[str] = ()) -> dict[str, Any]:
    """The entered-in-error update of a result written by an earlier run. ``gone``: its sources no longer in the
    source data (``Type/id``): the retraction names them in its note, not in a reference — a server that checks
    references (HAPI's referential integrity on write) would refuse a reference to a deleted resource, and the
    stale result would stay current."""
    obs = {k: v for k, v in entry["resource"].items() if k in _KEEP}
    if gone and obs.get("extension"):
        obs["extension"] = [x for x in obs["extension"] if x.get("url") != EXT_RESULT_SOURCE
                            or str((x.get("valueReference") or {}).get("reference") or "").split("/_history/")[0]
                            not in gone]
        if not obs["extension"]:
            del obs["extension"]
    obs["status"] = "entered-in-error"
    allowed = [r for r in entry.get("sources") or []
               if derived_from_allowed(r) and r.split("/_history/")[0] not in gone]
    if allowed:
        obs["derivedFrom"] = [{"reference": r} for r in allowed]
    obs["note"] = [{"text": (f"Retracted by fhir-adapter {__version__} on {on.isoformat()}: {reason}. "
                             f"The value written earlier ({_value_text(entry)}) no longer holds.")}]
    return obs


def server_retraction(held: dict[str, Any], why: str | None = None) -> dict[str, Any]:
    """The entered-in-error update of an adapter result the server holds that the state does not know (the
    state file was lost, or another OUT wrote it), or that is on a Patient the subject no longer is (``why``):
    the same elements as :func:`retraction` keeps, from the server's copy (its profile without the server's own
    meta), with the sources it names."""
    obs = {k: v for k, v in held.items() if k in _KEEP and k != "meta"}
    if profile := (held.get("meta") or {}).get("profile"):
        obs["meta"] = {"profile": profile}
    obs["status"] = "entered-in-error"
    if held.get("derivedFrom"):
        obs["derivedFrom"] = held["derivedFrom"]
    obs["note"] = [{"text": f"Retracted by fhir-adapter {__version__}: " + (
        why or "the EHR data this result was derived from was corrected or entered in error.")}]
    return obs


@dataclass
class Plan:
    """What one subject's write-back does compared with the state (applied by :meth:`WrittenState.commit`)."""

    subject_id: str
    entries: dict[str, dict[str, Any]]
    retractions: list[dict[str, Any]] = field(default_factory=list)
    report: list[dict[str, Any]] = field(default_factory=list)
    changes: dict[str, int] = field(default_factory=lambda: {"new": 0, "updated": 0, "unchanged": 0})
    #: identifier -> new | unchanged | updated (the results the subject has now)
    kinds: dict[str, str] = field(default_factory=dict)
    #: the subject's results on Patients it is no longer about, as retractions there — for the offline bundle; a
    #: server write searches those Patients itself (fhir_adapter/writeback/sink.py moved_away)
    moved: list[dict[str, Any]] = field(default_factory=list)

    def amend(self, resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``resources`` with the result Observations whose value replaced one written before — this run, or
        since — ``amended`` (R4 Observation.status), as the server write makes them
        (fhir_adapter/writeback/sink.py as_revision): the offline bundle shows what ``--post`` sends."""
        return [{**r, "status": "amended"} if r.get("resourceType") == "Observation" and r.get("status") == "final"
                and self.entries.get(result_id(r), {}).get("amended") else r for r in resources]

    def settle(self, resources: list[dict[str, Any]], held: dict[str, str]) -> list[dict[str, Any]]:
        """After a write to a server: ``resources`` with the status the server holds for each result (``held``,
        identifier → final or amended: the server's copy decides, :func:`~.sink.as_revision`), and the
        entries' ``amended`` flags as the server has them — so ``OUT/writeback`` and the next run's plan follow
        what was sent, not this state's history (runs without --post, a subject moved to another Patient)."""
        out = []
        for r in resources:
            ident = result_id(r)
            status = held.get(ident)
            if r.get("resourceType") == "Observation" and r.get("status") in ("final", "amended") and status in (
                    "final", "amended"):
                r = r if r["status"] == status else {**r, "status": status}
                if ident in self.entries:
                    if status == "amended":
                        self.entries[ident]["amended"] = True
                    else:
                        self.entries[ident].pop("amended", None)
            out.append(r)
        return out

    def moved_away_done(self) -> None:
        """The server confirmed the subject's write, its results on former Patients retracted first: the entries
        need not remember those Patients any more."""
        for entry in self.entries.values():
            entry.pop("former_patients", None)


def _about(resource: dict[str, Any]) -> str:
    """The Patient reference a result (``subject``) or the adapter's ResearchSubject (``individual``) is about."""
    return str((resource.get("subject") or resource.get("individual") or {}).get("reference") or "")


def _patient_of(entry: dict[str, Any]) -> str:
    return _about(entry.get("resource") or {})


def _former_patients(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The Patients (ids) a result was written about before and is not about now — kept in its entry, whatever
    runs come in between (a run without a server records the new Patient too), until a write to the server has
    retracted it there (:meth:`Plan.moved_away_done`)."""
    was = _patient_of(old)
    now = _about(new)
    former = {str(p) for p in old.get("former_patients") or []}
    if was.startswith("Patient/") and now.startswith("Patient/") and was != now:
        former.add(was.removeprefix("Patient/"))
    former.discard(now.removeprefix("Patient/"))
    return sorted(former)


class WrittenState:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.results: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            data = orjson.loads(self.path.read_bytes())
            if data.get("version") == STATE_VERSION:
                self.results = data.get("results") or {}
        self.by_subject: dict[str, set[str]] = {}
        for ident, entry in self.results.items():
            self.by_subject.setdefault(entry["subject_id"], set()).add(ident)
        self.retracted: list[dict[str, Any]] = []
        self.changes = {"new": 0, "updated": 0, "unchanged": 0, "retracted": 0}
        #: the entries committed in this run, on disk until :meth:`save` (memory stays flat in the number of
        #: subjects): identifier → (offset, length) of the entry's JSON in ``_spill``; ``results`` keeps the
        #: entries of earlier runs not replaced yet
        # lives as long as the state (an anonymous file: gone when closed or when the process ends)
        self._spill: IO[bytes] = tempfile.TemporaryFile(prefix="fhir-adapter-state-")  # noqa: SIM115
        self._committed: dict[str, tuple[int, int]] = {}

    def _entries_of(self, subject_id: str) -> list[dict[str, Any]]:
        # (an identifier several subjects share, the adapter's own ResearchStudy, may have left ``results`` when
        # another subject committed it)
        return [entry for i in self.by_subject.get(subject_id, ()) if (entry := self.results.get(i)) is not None]

    def written_about(self, subject_id: str) -> set[str]:
        """The Patient ids the subject's current results (written by earlier runs, not retracted) are about: the
        Patient its last CRF was read from."""
        refs = {_patient_of(entry) for entry in self._entries_of(subject_id) if not entry.get("retracted")}
        return {r.removeprefix("Patient/") for r in refs if r.startswith("Patient/")}

    def patients_of(self, subject_id: str) -> set[str]:
        """The Patient ids the subject's results may be on: :meth:`written_about`, and the Patients its results
        were written about before its ResearchSubject was pointed at another (``former_patients``, until a write
        to the server has retracted them there)."""
        return self.written_about(subject_id) | {str(p) for entry in self._entries_of(subject_id)
                                                  for p in entry.get("former_patients") or []}

    def plan(self, subject_id: str, resources: list[dict[str, Any]], source: list[dict[str, Any]],
             today: dt.date | None = None, statuses: dict[str, str] | None = None,
             hashes: list[str] | None = None, retract_reason: str | None = None,
             patient_id: str | None = None) -> Plan:
        """Compare the subject's new result resources with what was written before (``statuses``: those of
        :func:`source_statuses` of ``source``, when computed where the source resources are; ``hashes``: the
        :func:`content_hash` of each resource, when computed where the resources were made; ``today``: the
        date a retraction gives, the site's — else today in UTC, never the machine's own time zone;
        ``patient_id``: the Patient the subject's ResearchSubject names now — results written about another are
        remembered there (``former_patients``) and retracted there in the offline bundle (:attr:`Plan.moved`))."""
        today = today or dt.datetime.now(dt.UTC).date()
        entries: dict[str, dict[str, Any]] = {}
        plan = Plan(subject_id=subject_id, entries=entries)
        for r, h in zip(resources, hashes if hashes is not None else map(content_hash, resources), strict=True):
            ident = result_id(r)
            old = self.results.get(ident) or self._committed_entry(ident)
            kind = "new" if old is None or old.get("retracted") else "unchanged" if old["hash"] == h else "updated"
            plan.changes[kind] += 1
            plan.kinds[ident] = kind
            entries[ident] = {
                "subject_id": subject_id, "hash": h, "sources": _sources(r),
                "resource": {k: v for k, v in r.items() if k in _KEEP},
                "value": (value := {k: r[k] for k in _VALUE_KEYS if k in r}), "reported": (reported := _reported(r)),
            }
            # what it reports replaced what was written before (not only its method text or sources), now or since
            # (an entry of an older version has no "reported": its value[x] is compared)
            was = old.get("reported") if old is not None else None
            changed = was != reported if was is not None else (old is not None and (old.get("value") or {}) != value)
            amended = kind != "new" and old is not None and (bool(old.get("amended"))
                                                             or (kind == "updated" and changed))
            if amended and r.get("resourceType") == "Observation":
                entries[ident]["amended"] = True  # Plan.amend
            if old is not None and (former := _former_patients(old, r)):
                entries[ident]["former_patients"] = former
        for ident in sorted(self.by_subject.get(subject_id, set()) - set(entries)):
            old = self.results.get(ident)
            if old is None:  # an identifier several subjects share, committed by another this run: theirs now
                continue
            if old.get("retracted") or (old.get("resource") or {}).get("resourceType") == "ResearchStudy":
                entries[ident] = old  # the adapter's own ResearchStudy is the study's: never retracted with a subject
                continue
            statuses = statuses if statuses is not None else source_statuses(source)
            why = []
            gone = set()
            for ref in old.get("sources") or []:
                status = statuses.get(ref.split("/_history/")[0])
                if status is None:
                    why.append(f"{ref} is no longer in the source")
                    if retract_reason is None:  # read this run (a subject who left is not: its sources stay named)
                        gone.add(ref.split("/_history/")[0])
                elif status in ("entered-in-error", "cancelled"):
                    why.append(f"{ref} is now {status}")
            reason = retract_reason or (("its source data changed: " + "; ".join(why)) if why else
                                        "the result is no longer derived from the current source data")
            plan.retractions.append(retraction(old, reason, today, gone))
            plan.report.append({"subject_id": subject_id, "identifier": ident,
                                "sources": old.get("sources") or [], "previous_value": _value_text(old),
                                "reason": reason})
            entries[ident] = {**old, "retracted": today.isoformat()}
            was = _patient_of(old)
            if patient_id is not None and was.startswith("Patient/") and was != f"Patient/{patient_id}":
                entries[ident]["former_patients"] = sorted({*(old.get("former_patients") or []),
                                                            was.removeprefix("Patient/")})
        if patient_id is not None:
            moved_why = (f"the subject's ResearchSubject now names Patient/{patient_id}: this result is about "
                         "another patient")
            retracted_now = {result_id(r) for r in plan.retractions}
            for ident, entry in sorted(entries.items()):
                if (entry.get("resource") or {}).get("resourceType") != "Observation":
                    continue
                for pid in entry.get("former_patients") or []:
                    if ident not in retracted_now or _patient_of(entry) != f"Patient/{pid}":
                        # (a result retracted this run and about that Patient is in ``retractions`` already)
                        about = {**entry, "resource": {**entry["resource"],
                                                       "subject": {"reference": f"Patient/{pid}"}}}
                        plan.moved.append(retraction(about, moved_why, today))
        return plan

    def _committed_entry(self, ident: str) -> dict[str, Any] | None:
        """The entry another subject committed in this run under ``ident`` (an identifier several subjects share:
        the adapter's own ResearchStudy of a roster-CSV site, in every subject's bundle) — written, or planned to
        be, once: the next subject's is no new result."""
        at = self._committed.get(ident)
        return None if at is None else orjson.loads(os.pread(self._spill.fileno(), at[1], at[0]))

    def commit(self, plan: Plan, pending: Collection[str] = ()) -> None:
        """Record a subject's plan once its write-back bundle is written. ``pending``: identifiers whose write
        the server did not confirm (a write split into several transactions that stopped part-way): their
        earlier entries stay as they were, so the next run writes them."""
        if pending:
            plan = self._confirmed(plan, set(pending))
        # written first, recorded after: a failed write (disk full) leaves the state as it was
        data = [orjson.dumps(entry, option=orjson.OPT_SORT_KEYS) for entry in plan.entries.values()]
        at = self._spill.seek(0, os.SEEK_END)
        self._spill.write(b"".join(data))
        self._spill.flush()
        for ident in self.by_subject.get(plan.subject_id, set()):
            # (a subject commits once per run: what ``_committed`` holds of its earlier identifiers is another
            # subject's this run — the shared ResearchStudy — and stays)
            self.results.pop(ident, None)
        for ident, d in zip(plan.entries, data, strict=True):
            self.results.pop(ident, None)
            self._committed[ident] = (at, len(d))
            at += len(d)
        self.by_subject[plan.subject_id] = set(plan.entries)
        self.retracted.extend(plan.report)
        for k, n in plan.changes.items():
            self.changes[k] += n
        self.changes["retracted"] += len(plan.report)

    def _confirmed(self, plan: Plan, pending: set[str]) -> Plan:
        """The part of ``plan`` the server confirmed: the entries of ``pending`` identifiers are those of the
        earlier runs (none when never written)."""
        entries = {i: (self.results[i] if i in pending else e) for i, e in plan.entries.items()
                   if i not in pending or i in self.results}
        kinds = {i: k for i, k in plan.kinds.items() if i not in pending}
        changes = {k: sum(1 for kind in kinds.values() if kind == k) for k in plan.changes}
        return Plan(subject_id=plan.subject_id, entries=entries, changes=changes, kinds=kinds,
                    report=[r for r in plan.report if r["identifier"] not in pending])

    def save(self, path: Path | None = None) -> None:
        """Write the state to ``path`` (default: where it was read from; the pipeline saves into its staging
        folder, which is moved into OUT when the run has finished)."""
        path = Path(path) if path is not None else self.path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        # orjson.dumps({"version": ..., "results": ...}, option=OPT_SORT_KEYS), one entry at a time
        spill = self._spill.fileno()
        with tmp.open("wb") as out:
            out.write(b'{"results":{')
            for n, ident in enumerate(sorted(self.results.keys() | self._committed.keys())):
                at = self._committed.get(ident)
                # a committed entry read from the spill file by one pread (not through a memory map: its pages
                # would stay in the run's resident memory, 200 MB on 3,400 subjects)
                entry = orjson.dumps(self.results[ident], option=orjson.OPT_SORT_KEYS) if at is None \
                    else os.pread(spill, at[1], at[0])
                out.write((b"," if n else b"") + orjson.dumps(ident) + b":" + entry)
            out.write(b'},"version":' + orjson.dumps(STATE_VERSION) + b"}")
        os.replace(tmp, path)

    def report(self) -> dict[str, Any]:
        """The ``writeback`` section of the run report."""
        return {"state_file": "state/written.json", **self.changes, "retractions": self.retracted}
