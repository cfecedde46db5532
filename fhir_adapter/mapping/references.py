"""What one resource says through references and extensions: the resource a Reference names (contained or
among the subject's resources), the identifier of a referenced AdverseEvent or Condition (CMAENO, CMMHNO,
PRAENO), and the laterality/directionality qualifiers of a target BodyStructure (--LAT, --DIR)."""

from __future__ import annotations

from typing import Any

from fhir_adapter.mapping.common import codings, identifier_value

#: extensions naming the BodyStructure of a site (R4 core for Procedure; the bodySite extension elsewhere)
BODY_STRUCTURE = ("http://hl7.org/fhir/StructureDefinition/procedure-targetBodyStructure",
                  "http://hl7.org/fhir/StructureDefinition/bodySite")


def site_qualifiers(r: dict[str, Any], siblings: list[dict[str, Any]] | None = None) -> tuple[str, ...]:
    """``locationQualifier`` codes (laterality, directionality) of the BodyStructure the resource's
    targetBodyStructure / bodySite extension names: contained (``#id``) or among ``siblings``."""
    codes: list[str] = []
    for ext in r.get("extension") or []:
        if ext.get("url") not in BODY_STRUCTURE:
            continue
        target = resolve(r, ext.get("valueReference"), siblings or [])
        for q in (target or {}).get("locationQualifier") or []:
            codes += [c for _, c in codings(q) if c]
    return tuple(codes)


def resolve(r: dict[str, Any], reference: Any, siblings: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The resource a Reference names: a contained one (``#id``) or one of ``siblings`` (``Type/id``)."""
    if not isinstance(reference, dict) or not isinstance(reference.get("reference"), str):
        return None
    ref = str(reference["reference"])
    if ref.startswith("#"):
        return next((c for c in r.get("contained") or [] if isinstance(c, dict) and c.get("id") == ref[1:]), None)
    rtype, _, rid = ref.partition("/")
    return next((s for s in siblings if s.get("resourceType") == rtype and s.get("id") == rid.split("/")[0]), None)


def referenced_identifier(r: dict[str, Any], element: str, rtype: str, siblings: list[dict[str, Any]]) -> str | None:
    """The identifier value of the first ``rtype`` among the references in ``element`` (e.g. reasonReference):
    the Reference's own identifier (a logical reference), else that of the resource it resolves to."""
    for reference in r.get(element) or []:
        if not isinstance(reference, dict):
            continue
        target = resolve(r, reference, siblings)
        named = reference.get("type") or str(reference.get("reference", "")).split("/")[0]
        if named != rtype and (target or {}).get("resourceType") != rtype:
            continue
        ident = reference.get("identifier")
        if isinstance(ident, dict) and ident.get("value"):
            return str(ident["value"])
        if target is not None:
            return identifier_value(target)
    return None


MITIGATING_ACTION = "AdverseEvent.mitigatingAction"


def mitigating_actions(r: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``item`` values (or own values) of an AdverseEvent's R5 mitigatingAction cross-version extensions:
    each a dict holding ``valueReference`` or ``valueCodeableConcept``."""
    out: list[dict[str, Any]] = []
    for ext in r.get("extension") or []:
        if not str(ext.get("url", "")).endswith(MITIGATING_ACTION):
            continue
        out += [v for v in [ext, *[x for x in ext.get("extension") or [] if x.get("url") == "item"]]
                if v.get("valueReference") or v.get("valueCodeableConcept")]
    return out


def mitigated_by(resources: list[dict[str, Any]]) -> dict[str, str]:
    """``Type/id`` of each treatment an AdverseEvent's mitigatingAction names → that event's identifier value
    (CMAENO, PRAENO: the event the medication or procedure was given for)."""
    out: dict[str, str] = {}
    for r in resources:
        if r.get("resourceType") != "AdverseEvent":
            continue
        spid = identifier_value(r)
        for action in mitigating_actions(r):
            ref = str((action.get("valueReference") or {}).get("reference") or "")
            if spid and ref:
                out.setdefault(ref.split("/_history/")[0], spid)
    return out
