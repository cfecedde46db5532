"""Whose a deleted resource was, read from its instance history, when no CRF of the last run names it.

Type-level history (``[type]/_history?_since=``) lists the whole server's deletions — other patients' records,
records the mapping did not use, the adapter's own results — as DELETE entries without the resource. A server
keeps the versions of a deleted resource: ``GET [type]/[id]/_history`` lists them under the DELETE entry,
newest first (FHIR R4 http.html#history), and a version names the resource's patient (``subject``/``patient``).
Its ``next`` pages are followed until a version names someone, at most :data:`MAX_HISTORY_PAGES` pages (a
version with no ``subject``/``patient`` at all, e.g. one whose subject was removed, says nothing: the older ones
are read). So, for each deletion no CRF of the last run names
(:func:`fhir_adapter.source.bulk_deletions.attribute`):

* a version names an enrolled patient → that subject is read again in full;
* its versions name only patients not enrolled, or it is a result the adapter wrote → the deletion does not
  concern the trial: ignored (counted as ``incremental.deletions_ignored``);
* no version readable (none within :data:`MAX_HISTORY_PAGES` pages), a version naming no Patient of this server
  (or only versions naming nobody), a shared resource (Medication/Organization/Location/Specimen) or the read
  failing → it stays unattributable: every enrolled subject is read again in full, as without this look-up.

At most ``client.max_deletion_lookups`` resources are looked up per run (none when there are more: every
subject is read again anyway); they are read as many at a time as the client sends, and the look-ups stop at
the first one that stays unattributable (the rest could change nothing). Requests are counted under
``history``, the resources looked up as ``incremental.deletion_lookups``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field

from fhir_adapter.fhir import FhirClient, FhirError
from fhir_adapter.source.base import SHARED_TYPES, SUBJECT_TYPES, Resource, patient_id_of
from fhir_adapter.source.bulk_deletions import Ref, shown_problems
from fhir_adapter.source.server.groups import raise_if_fatal
from fhir_adapter.source.server.searches import adapter_owned

#: instance-history pages read per deleted resource, at most
MAX_HISTORY_PAGES = 5


@dataclass
class Owners:
    """What the instance histories said."""

    #: enrolled patient id -> the deleted resources its versions name it in
    subjects: dict[str, list[Ref]] = field(default_factory=dict)
    #: deleted resources of patients not enrolled, or results the adapter wrote
    ignored: list[Ref] = field(default_factory=list)
    #: deleted resources whose owner is not known ("Type/id: why")
    unknown: list[str] = field(default_factory=list)
    #: deleted resources not looked up: more than the bound (0: within it)
    over_bound: int = 0
    #: the bound (client.max_deletion_lookups)
    bound: int = 0
    #: instance histories read
    lookups: int = 0

    def why(self) -> list[str]:
        """Why some deletions stay unattributable (empty: each one was attributed or ignored)."""
        why = []
        if self.over_bound:
            why.append(f"{self.over_bound} deleted resource(s) are named by no subject's CRF of the last run, more "
                       f"than the {self.bound} whose history a run reads (client.max_deletion_lookups) to find "
                       "whose they were")
        if self.unknown:
            why.append(f"{len(self.unknown)} deleted resource(s) are named by no subject's CRF of the last run and "
                       f"their history names no patient ({shown_problems(self.unknown)})")
        return why


async def deletion_owners(client: FhirClient, refs: Iterable[Ref], enrolled: set[str], base: str,
                          bound: int) -> Owners:
    """Whose each deleted resource of ``refs`` was (patient ids of ``enrolled`` are the trial's subjects)."""
    todo = sorted(refs)
    owners = Owners(bound=bound)
    looked = [r for r in todo if r[0] not in SHARED_TYPES]
    owners.unknown += [f"{t}/{i}: a shared resource, records of any subject may reference it"
                       for t, i in todo if (t, i) not in looked]
    if owners.unknown:
        return owners
    if len(looked) > bound:
        owners.over_bound = len(looked)
        return owners
    step = max(1, client.settings.max_concurrency)
    for start in range(0, len(looked), step):
        part = looked[start:start + step]
        answers = await asyncio.gather(*(_versions(client, ref) for ref in part))
        owners.lookups += len(part)
        for ref, answer in zip(part, answers, strict=True):
            _settle(owners, ref, answer, enrolled, base)
        if owners.unknown:  # every subject is read again: the other look-ups could change nothing
            break
    return owners


async def _versions(client: FhirClient, ref: Ref) -> list[Resource] | str:
    """The versions ``ref``'s instance history lists (newest first), its ``next`` pages followed until a version
    names someone (its ``subject``/``patient``), at most :data:`MAX_HISTORY_PAGES` pages; or why none could be
    read."""
    rtype, rid = ref
    versions: list[Resource] = []
    pages = 0
    try:
        async for page in client.search_bundles(rtype, label="history", history=True, resource_id=rid,
                                                trips_breaker=False):
            pages += 1
            versions += [e["resource"] for e in page.get("entry") or []
                         if isinstance(e, dict) and isinstance(e.get("resource"), dict)]
            if any(_names_someone(v) for v in versions) or pages >= MAX_HISTORY_PAGES:
                break
    except FhirError as exc:
        raise_if_fatal(exc)
        return f"its history could not be read ({exc})"
    if versions:
        return versions
    return "its history lists no version of it" + (f" in the first {pages} pages" if pages >= MAX_HISTORY_PAGES
                                                   else "")


def _names_someone(version: Resource) -> bool:
    """Whether a version names whom it is about (a Patient, or its ``subject``/``patient`` element is there)."""
    rtype = str(version.get("resourceType"))
    return rtype == "Patient" or any(isinstance(version.get(k), dict) for k in SUBJECT_TYPES.get(rtype, ("subject",)))


def _settle(owners: Owners, ref: Ref, answer: list[Resource] | str, enrolled: set[str], base: str) -> None:
    shown = f"{ref[0]}/{ref[1]}"
    if isinstance(answer, str):
        owners.unknown.append(f"{shown}: {answer}")
        return
    inputs = [v for v in answer if not adapter_owned(v)]
    naming = [v for v in inputs if _names_someone(v)]  # a version naming nobody says nothing about whose it was
    patients = {patient_id_of(v, base) for v in naming}
    if None in patients or (inputs and not naming):
        owners.unknown.append(f"{shown}: a version of it names no Patient of this server")
        return
    ours = sorted(p for p in patients if p is not None and p in enrolled)
    for pid in ours:
        owners.subjects.setdefault(pid, []).append(ref)
    if not ours:  # another patient's, or a result the adapter wrote (no input version)
        owners.ignored.append(ref)
