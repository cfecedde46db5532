"""Reading raw FHIR JSON elements, shared by every mapping and the roster: the quarantine signal, latest
versions, codings and texts of a concept, the unit of a Quantity. The study loader imports the CM and AE
mappings, so nothing here may import :mod:`fhir_adapter.study`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from fhir_adapter.fhir.versions import version_key
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.study.load import Study
from fhir_adapter.study.timeline import DateError, FhirDate, parse_fhir_date
from fhir_adapter.terminology.codes import UCUM

T = TypeVar("T")


class Unusable(Exception):
    """A resource cannot feed a CRF: the rule it broke, why, and what the EHR side can do about it."""

    def __init__(self, rule: str, reason: str, fix: str) -> None:
        super().__init__(reason)
        self.rule, self.reason, self.fix = rule, reason, fix


def latest(resources: Iterable[dict[str, Any]], log: RunLog | None = None,
           subject_id: str | None = None) -> list[dict[str, Any]]:
    """The latest version (``meta.versionId``, then ``meta.lastUpdated``) of each resource type/id, in order
    of first appearance. Two different resources with one type/id and nothing to tell which is newer: the first
    is kept, and ``log`` (when given) warns (``same-id-different-content``)."""
    best: dict[tuple[str, str], dict[str, Any]] = {}
    for r in resources:
        key = (str(r.get("resourceType")), str(r.get("id")))
        kept = best.get(key)
        if kept is None or version_key(r) > version_key(kept):
            best[key] = r
        elif log is not None and version_key(r) == version_key(kept) and r != kept:
            log.warn(f"{key[0]}/{key[1]} is in the input twice with different content and the same version "
                     "(meta.versionId, meta.lastUpdated): the first is used",
                     resource=f"{key[0]}/{key[1]}", subject_id=subject_id, rule="same-id-different-content",
                     fix="send each version with its meta.versionId or meta.lastUpdated, or only the current one")
    return list(best.values())


def codings(cc: Any) -> list[tuple[str, str]]:
    """(system, code) of every coding of a CodeableConcept."""
    if not isinstance(cc, dict):
        return []
    return [
        (str(c.get("system", "")), str(c.get("code", "")))
        for c in cc.get("coding") or []
        if isinstance(c, dict)
    ]


def indexed(cc: Any, index: Mapping[tuple[str, str], T]) -> T | None:
    """What ``index`` holds for the first of :func:`codings` of a CodeableConcept that it holds (one pass, no
    list)."""
    if not isinstance(cc, dict):
        return None
    for c in cc.get("coding") or []:
        if isinstance(c, dict):
            found = index.get((str(c.get("system", "")), str(c.get("code", ""))))
            if found is not None:
                return found
    return None


def indexed_all(cc: Any, index: Mapping[tuple[str, str], T]) -> list[T]:
    """Every distinct value ``index`` holds for the codings of a CodeableConcept, in coding order (a code
    whose codings name two items of a study is ambiguous; two codings of one item are one)."""
    found: list[T] = []
    if isinstance(cc, dict):
        for c in cc.get("coding") or []:
            if isinstance(c, dict):
                value = index.get((str(c.get("system", "")), str(c.get("code", ""))))
                if value is not None and value not in found:
                    found.append(value)
    return found


def first_code(cc: Any) -> str | None:
    """The first non-empty code among :func:`codings` of a CodeableConcept (without building the list)."""
    if not isinstance(cc, dict):
        return None
    for c in cc.get("coding") or []:
        if isinstance(c, dict):
            code = str(c.get("code", ""))
            if code:
                return code
    return None


def system_code(cc: Any, system: str) -> str | None:
    """The code of the first of :func:`codings` of a CodeableConcept in ``system`` (without building the list)."""
    if not isinstance(cc, dict):
        return None
    for c in cc.get("coding") or []:
        if isinstance(c, dict) and str(c.get("system", "")) == system:
            return str(c.get("code", ""))
    return None


def first_text(cc: Any) -> str | None:
    """The first of :func:`texts` of a CodeableConcept (without building the list)."""
    if not isinstance(cc, dict):
        return None
    if cc.get("text"):
        return str(cc["text"])
    for c in cc.get("coding") or []:
        if isinstance(c, dict) and c.get("display"):
            return str(c["display"])
    return None


def texts(cc: Any) -> list[str]:
    """``text``, then every coding ``display`` of a CodeableConcept."""
    if not isinstance(cc, dict):
        return []
    out = [str(cc["text"])] if cc.get("text") else []
    out += [str(c["display"]) for c in cc.get("coding") or [] if isinstance(c, dict) and c.get("display")]
    return out


#: referenceRange.type codes that make a range the normal range (R4 referencerange-meaning; no type = normal)
_NORMAL_RANGE = frozenset({"normal"})


def normal_range(ranges: Any) -> dict[str, Any] | None:
    """The Observation's normal range: the first ``referenceRange`` with a numeric ``low`` or ``high`` whose
    ``type`` is absent (R4: "normal" is the default meaning) or ``normal``. A text-only entry, or one for
    another meaning (``recommended``, ``treatment``, ``therapeutic``…), does not hide a numeric normal range after
    it; None when there is none."""
    for rr in ranges if isinstance(ranges, list) else []:
        if not isinstance(rr, dict):
            continue
        numeric = any(isinstance(rr.get(k), dict) and rr[k].get("value") is not None for k in ("low", "high"))
        meaning = {c for _, c in codings(rr.get("type"))}
        if numeric and (not meaning or meaning & _NORMAL_RANGE):
            return rr
    return None


def decimal_text(value: Any) -> str:
    """A FHIR decimal as text, the same whichever JSON parser or server carried it.

    JSON does not keep a number's trailing zeros through every hop (a server written in JavaScript returns
    ``37.0`` as ``37``), so an integral value is written without its fraction and any other value in its
    shortest round-trip form.

    >>> decimal_text(37.0), decimal_text(37), decimal_text(0.10), decimal_text("12.5")
    ('37', '37', '0.1', '12.5')
    """
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def quantity_unit(q: dict[str, Any]) -> str | None:
    """The UCUM code of a Quantity when it has one, else its human-readable unit."""
    if q.get("code") and q.get("system") in (None, UCUM):
        return str(q["code"])
    if q.get("unit"):
        return str(q["unit"])
    return str(q["code"]) if q.get("code") else None


def ucum_unit(study: Study, sent: str | None, log: RunLog) -> str | None:
    """The UCUM code of a unit as the EHR spelt it (a result's, a dose's): its synonym's (``µmol/L`` →
    ``umol/L``, :meth:`Study.ucum_unit`), counted per spelling (``units.synonym.<spelling>-><code>``) so a site
    sees what its EHR sends; else the unit itself."""
    if sent is None:
        return None
    ucum = study.ucum_unit(sent)
    if ucum != sent:
        log.count(f"units.synonym.{sent}->{ucum}")
    return ucum


def check_code_refs(refs: Iterable[str], code_systems: dict[str, str]) -> None:
    """Every ``alias|code`` names a declared code system alias and a non-empty code (else ValueError)."""
    for ref in refs:
        alias, _, code = ref.partition("|")
        if alias not in code_systems or not code:
            raise ValueError(f"code '{ref}' must be alias|code with an alias of code_systems {sorted(code_systems)}")


def resolve_code(ref: str, code_systems: dict[str, str]) -> tuple[str, str]:
    """``alias|code`` → (system URI, code)."""
    alias, code = ref.split("|", 1)
    return code_systems[alias], code


def parse_date_or_reject(value: Any, tz: str) -> FhirDate:
    """A FHIR date/dateTime in the site time zone, or :class:`Unusable` (rule ``bad-date``) naming the fix."""
    try:
        return parse_fhir_date(value, tz)
    except DateError as exc:
        raise Unusable("bad-date", str(exc), "send ISO 8601 dates (YYYY, YYYY-MM, YYYY-MM-DD or a dateTime)") from None


def identifier_value(r: dict[str, Any]) -> str | None:
    ident = r.get("identifier")
    first = ident[0] if isinstance(ident, list) and ident else ident
    return str(first["value"]) if isinstance(first, dict) and first.get("value") else None
