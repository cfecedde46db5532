"""FHIR R4 parsing with ``fhir.resources.R4B`` models (never the default R5 import, which silently drops
R4-only fields). Used to check every input resource before it feeds a CRF and every output before it is
written; the mapping itself reads the checked JSON."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError


@lru_cache(maxsize=64)
def model_class(resource_type: str) -> Any:
    return get_fhir_model_class(resource_type)


def is_r4_type(resource_type: str) -> bool:
    """True when ``resource_type`` names a FHIR R4 resource (``Observation``, not ``Observaton``)."""
    try:
        model_class(resource_type)
    except (KeyError, ValueError, AttributeError):
        return False
    return True


def r4_problem(resource: dict[str, Any]) -> str | None:
    """None when ``resource`` parses as FHIR R4, else a one-line reason naming the element."""
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str):
        return "no resourceType"
    try:
        cls = model_class(rtype)
    except (KeyError, ValueError):
        return f"'{rtype}' is not a FHIR R4 resource type"
    try:
        cls.model_validate(resource)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or rtype
        extra = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        return f"{where}: {first['msg'].removeprefix('Value error, ')}{extra}"
    return None


def parse(resource: dict[str, Any]) -> Any:
    """The R4B model of ``resource`` (raises pydantic.ValidationError)."""
    return model_class(resource["resourceType"]).model_validate(resource)
