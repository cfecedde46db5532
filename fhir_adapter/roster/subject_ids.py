"""The subject ID of a ResearchSubject: which identifier holds it is a rule of the study (``study.yaml``
``subject_identifier_system``) that a site overlay may replace (``subject_identifier: {system|type|only}``),
because hospitals keep trial IDs under their own identifier systems."""

from __future__ import annotations

from typing import Any

from fhir_adapter.study.load import Study
from fhir_adapter.study.models import SubjectIdentifierRule


def _identifiers(rs: dict[str, Any]) -> list[dict[str, Any]]:
    return [i for i in rs.get("identifier") or [] if isinstance(i, dict) and i.get("value")]


def _type_matches(ident: dict[str, Any], wanted: str) -> bool:
    system, _, code = wanted.rpartition("|")
    for c in (ident.get("type") or {}).get("coding") or []:
        if isinstance(c, dict) and c.get("code") == code and (not system or c.get("system") == system):
            return True
    return False


def subject_id(rs: dict[str, Any], rule: SubjectIdentifierRule | None) -> str | None:
    """The subject ID of ``rs`` under ``rule`` (no rule: its first identifier with a value)."""
    idents = _identifiers(rs)
    if rule is None:
        return str(idents[0]["value"]) if idents else None
    if rule.only:
        return str(idents[0]["value"]) if len(idents) == 1 else None
    for i in idents:
        if (rule.system and i.get("system") == rule.system) or (rule.type and _type_matches(i, rule.type)):
            return str(i["value"])
    return None


def describe(rule: SubjectIdentifierRule | None) -> str:
    if rule is None:
        return "the first identifier"
    if rule.only:
        return "the only identifier"
    return f"the identifier with system {rule.system}" if rule.system else f"the identifier of type {rule.type}"


def overlay_line(systems: list[str]) -> str:
    """The overlay line that takes the subject ID from the identifier system the source uses."""
    if len(systems) == 1:
        return f"subject_identifier: {{system: {systems[0]}}}"
    return "subject_identifier: {system: <one of the systems above>}  (or {only: true}, or {type: <code>})"


def missing_fix(rs: dict[str, Any], study: Study) -> tuple[str, str]:
    """Reason and fix of the quarantine of a ResearchSubject without the subject-ID identifier."""
    systems = sorted({str(i.get("system")) for i in _identifiers(rs)})
    reason = (f"no subject ID: {describe(study.subject_id_rule)} is missing "
              f"(identifier systems present: {', '.join(systems) or 'none'})")
    where = study.subject_id_rule_origin or "study.yaml"
    fix = (f"say in your site overlay (mappings/sites/<site>.yaml, --site) which identifier holds the subject ID: "
           f"`{overlay_line(systems)}` (the rule in force comes from {where})")
    return reason, fix


def subject_id_system(study: Study) -> str | None:
    """The identifier system the subject ID is written under (adapter-created ResearchSubjects)."""
    rule = study.subject_id_rule
    return rule.system if rule is not None and rule.system else study.info.subject_identifier_system
