"""``Patient.link`` between a subject's Patient and another (the EHR's master patient index: a merge, or a
duplicate record of the same person), said in the run report — never followed. A link is the EHR's claim about
identity: following it would let any record pose as a subject, so the resources filed under the other Patient
are not read as the subject's. Every source says it the same way (rule ``patient-link``).

Where the subject's own Patient is the one merged away (``replaced-by`` on it, or ``replaces`` on the other), the
EHR has moved the person's records to the surviving Patient: the subject's ResearchSubject (or the site's roster
CSV row) must be pointed at that Patient, or the subject's data is missing from every run.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from fhir_adapter.job.runlog import RunLog
from fhir_adapter.source.base import Resource, ref_id


def links(patient: Resource, base: str | None) -> Iterator[tuple[str, str | None]]:
    """The other Patients ``patient`` is linked to: (its id, the link's type), itself left out."""
    for link in patient.get("link") or []:
        if not isinstance(link, dict):
            continue
        other = ref_id((link.get("other") or {}).get("reference"), "Patient", base)
        if other and other != patient.get("id"):
            kind = link.get("type")
            yield other, kind if isinstance(kind, str) else None


def warn_link(log: RunLog, enrolled: str, unread: str, kind: str | None, *, enrolled_replaced: bool,
              both_enrolled: bool = False) -> None:
    """The run report's warning for the enrolled Patient ``enrolled`` linked to ``unread`` (link type ``kind``);
    ``enrolled_replaced``: the enrolled Patient is the one merged away into ``unread``; ``both_enrolled``: the
    other is a subject's Patient too (one person enrolled twice?)."""
    how = f"link type {kind}" if kind else "no link type"
    if both_enrolled:
        log.warn(f"the enrolled Patients {enrolled} and {unread} are linked as the same person ({how}): each is "
                 "read as its own subject's", resource=f"Patient/{enrolled}", rule="patient-link",
                 fix="check that the two subjects are two people; if not, withdraw one of them in the EHR")
        return
    if enrolled_replaced:
        log.warn(f"the enrolled Patient/{enrolled} was replaced by Patient/{unread} (a merge in the EHR, {how}): "
                 f"the person's records filed under Patient/{unread} are not read as that subject's",
                 resource=f"Patient/{enrolled}", rule="patient-link",
                 fix=f"once the merge is confirmed, point the subject's ResearchSubject.individual (or its row of the "
                     f"roster CSV) at Patient/{unread}")
        return
    log.warn(f"Patient/{unread} is linked to the enrolled Patient/{enrolled} ({how}): resources filed "
             f"under Patient/{unread} are not read as that subject's", resource=f"Patient/{enrolled}",
             rule="patient-link",
             fix=f"merge or re-file Patient/{unread}'s records under Patient/{enrolled} in the EHR (or enrol it) if "
                 "they are the same person's")


def say_links(log: RunLog, patients: Iterable[Resource], named: set[str], base: str | None,
              said: set[frozenset[str]]) -> None:
    """Every link of ``patients`` to or from a subject's Patient (``named``: the Patients the subjects name),
    said once per pair (``said``: the pairs said so far)."""
    for res in patients:
        for other, kind in links(res, base):
            pair = {res["id"], other} & named
            if pair and frozenset((res["id"], other)) not in said:
                said.add(frozenset((res["id"], other)))
                on_enrolled = res["id"] in named
                enrolled, unread = (res["id"], other) if on_enrolled else (other, res["id"])
                warn_link(log, enrolled, unread, kind, enrolled_replaced=replaced(on_enrolled, kind),
                          both_enrolled=len(pair) == 2)


def replaced(enrolled_side: bool, kind: str | None) -> bool:
    """Whether a link of type ``kind`` says the enrolled Patient is the one merged away: ``replaced-by`` on the
    enrolled Patient (``enrolled_side``), or ``replaces`` on the other."""
    return kind == ("replaced-by" if enrolled_side else "replaces")
