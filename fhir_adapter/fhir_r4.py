"""FHIR R4 (4.0.1) checks of every input resource before it feeds a CRF and every output before it is written;
the mapping itself reads the checked JSON.

Which types exist is R4's own list (:mod:`fhir_adapter.fhir_r4_types`). ``fhir.resources`` ships R5 (default),
R4B and STU3 models but no R4 ones, so the content of a resource is parsed with the ``R4B`` model of the same
type (never the default R5 import, which silently drops R4-only fields); an R4 type that R4B removed
(``MedicinalProduct``, ``EffectEvidenceSynthesis``…) is checked for its shape only (a JSON object with
``resourceType``). An R4B-only type (``Citation``, ``SubscriptionTopic``…) is not R4."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from fhir_adapter.fhir_r4_types import R4_RESOURCE_TYPES


@lru_cache(maxsize=64)
def model_class(resource_type: str) -> Any:
    return get_fhir_model_class(resource_type)


def is_r4_type(resource_type: str) -> bool:
    """True when ``resource_type`` names a FHIR R4 (4.0.1) resource (``Observation``, not ``Observaton``)."""
    return resource_type in R4_RESOURCE_TYPES


def _r4b_model(resource_type: str) -> Any | None:
    try:
        return model_class(resource_type)
    except (KeyError, ValueError, AttributeError):
        return None


def r4_problem(resource: dict[str, Any]) -> str | None:
    """None when ``resource`` parses as FHIR R4, else a one-line reason naming the element."""
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str):
        return "no resourceType"
    if not is_r4_type(rtype):
        return f"'{rtype}' is not a FHIR R4 resource type"
    cls = _r4b_model(rtype)
    if cls is None:  # an R4 type with no R4B model: shape only
        return None
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
