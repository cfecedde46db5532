"""The subjects to read again for deletions since the last run — one rule for the REST path (type-level history,
:mod:`.incremental`) and the Bulk path (the manifest's ``deleted[]``, :mod:`fhir_adapter.source.bulk`).

1. attribute: the subject whose last CRF (``OUT/crf``) names a deleted resource, or whose own Patient was
   deleted, is read again in full (:func:`fhir_adapter.source.bulk_deletions.attribute`);
2. look up the rest: a deletion no CRF names is looked up in its instance history (:mod:`.deletion_owners`, at
   most ``client.max_deletion_lookups`` per run): a version naming an enrolled patient has that subject read
   again; one of a patient not enrolled, or an adapter result, is ignored (``incremental.deletions_ignored``);
3. decide: when some deletion cannot be attributed — a listing that cannot be read (the caller's ``problems``),
   a CRF that cannot be read, a history naming no patient, more deletions than the bound — every subject is read
   again in full (warning ``incremental`` saying why), never a CRF that may be stale reused.

Counted as ``incremental.deletion_lookups`` (instance histories read), ``incremental.deletions_ignored`` and
``incremental.deletion_subjects`` (the subjects read again for deletions alone).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from fhir_adapter.fhir import FhirClient
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.source.bulk_deletions import (
    Attribution,
    Ref,
    attribute,
    crfs_at_hand,
    crfs_naming,
    shown_refs,
    unattributable,
)
from fhir_adapter.source.server.deletion_owners import deletion_owners

log = logging.getLogger(__name__)


@dataclass
class DeletionContext:
    """What the run knows to attribute deletions: its FHIR client and log, the server's base, the enrolled
    patients and their subject IDs, the last CRFs, and since when the deletions are listed."""

    client: FhirClient
    log: RunLog
    base: str
    #: the enrolled patients' ids
    pids: set[str]
    #: patient id -> subject ID
    labels: Mapping[str, str]
    #: a subject ID's CRF of the last run; None: not known (a deletion then makes every subject read again)
    last_crf: Callable[[str], Path] | None
    #: since when the deletions are listed, as the log shows it
    since: str


async def deletion_subjects(ctx: DeletionContext, refs: Iterable[Ref], unchanged: set[str], problems: list[str],
                            listed: str) -> set[str]:
    """The patients of ``unchanged`` to read again because of the deleted resources ``refs``: those whose last
    CRF or instance history names one, or all of them when a deletion cannot be attributed. ``problems``: why
    some listed deletions could not be read at all; ``listed``: what the warning says was listed."""
    refs = list(refs)
    found = attribute(refs, crfs_naming(refs, crfs_at_hand(ctx.pids, ctx.labels, ctx.last_crf)), ctx.pids)
    for pid, named in sorted(found.subjects.items()):
        log.info("%s: read again in full: its last CRF holds %s, deleted since %s",
                 ctx.labels.get(pid, pid), shown_refs(named), ctx.since)
    why = list(problems) + unattributable(Attribution(found.subjects, [], found.unreadable_crfs))
    subjects = set(found.subjects)
    if found.unattributed and not why:  # else every subject is read again: nothing to look up
        owners = await deletion_owners(ctx.client, found.unattributed, ctx.pids, ctx.base,
                                       ctx.client.settings.max_deletion_lookups)
        ctx.log.count("incremental.deletion_lookups", owners.lookups)
        ctx.log.count("incremental.deletions_ignored", len(owners.ignored))
        for pid, named in sorted(owners.subjects.items()):
            log.info("%s: read again in full: its record %s was deleted since %s (its history names it)",
                     ctx.labels.get(pid, pid), shown_refs(named), ctx.since)
        if owners.ignored:
            log.info("%d deletion(s) since %s of patients not enrolled or of the adapter's results ignored (%s)",
                     len(owners.ignored), ctx.since, shown_refs(owners.ignored))
        subjects |= set(owners.subjects)
        why += owners.why()
    elif found.unattributed:
        why += unattributable(Attribution({}, found.unattributed, {}))
    again = set(unchanged) if why else subjects & unchanged
    if why:
        ctx.log.warn(f"{listed}; {'; '.join(why)}: every enrolled subject is read again in full, no CRF of the "
                     "last run is reused", rule="incremental")
    ctx.log.count("incremental.deletion_subjects", len(again))
    return again
