"""FHIR R4 (4.0.1) checks of every input resource before it feeds a CRF and every output before it is written;
the mapping itself reads the checked JSON.

Which types exist is R4's own list (:mod:`fhir_adapter.fhir.r4_types`). ``fhir.resources`` ships R5 (default),
R4B and STU3 models but no R4 ones, so the content of a resource is parsed with the ``R4B`` model of the same
type (never the default R5 import, which silently drops R4-only fields); an R4 type that R4B removed
(``MedicinalProduct``, ``EffectEvidenceSynthesis``…) is checked for its shape only (a JSON object with
``resourceType``). An R4B-only type (``Citation``, ``SubscriptionTopic``…) is not R4.

Input resources are first given the quick check of :mod:`fhir_adapter.fhir.r4_elements` (the same models'
element tables walked over the JSON, never more lenient than the models); only a resource it cannot vouch for
is parsed with the model, which decides and names the reason. Resources the adapter writes (``full=True``) get
the quick check and, besides, the model itself on the first resource of each distinct shape (the element tree
with the JSON type of every value): the model's verdict depends on the values only through its primitives'
validators, which the quick check runs on every value, so a resource of a shape the model accepted and whose
values the validators accept is one the model accepts; a written resource the quick check cannot vouch for
is parsed with the model as before."""

from __future__ import annotations

from decimal import Decimal
from functools import lru_cache
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from fhir_adapter.fhir.r4_elements import conforms
from fhir_adapter.fhir.r4_types import R4_RESOURCE_TYPES

#: shapes of written resources the model accepted, remembered up to this many (bounds memory in long runs)
MAX_SHAPES = 10_000
_accepted_shapes: set[Any] = set()


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


def shape(node: Any) -> Any:
    """The element tree of a JSON value with the JSON type of each primitive in place of the value (a list:
    the distinct shapes of its items)."""
    if type(node) is dict:
        return tuple((k, shape(v)) for k, v in node.items())
    if type(node) is list:
        return frozenset(shape(v) for v in node), "list"
    return type(node)


def r4_problem(resource: dict[str, Any], *, full: bool = False) -> str | None:
    """None when ``resource`` parses as FHIR R4, else a one-line reason naming the element. ``full`` (what the
    adapter writes): besides the quick check, parse each distinct :func:`shape` with the model once."""
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str):
        return "no resourceType"
    if not is_r4_type(rtype):
        return f"'{rtype}' is not a FHIR R4 resource type"
    cls = _r4b_model(rtype)
    if cls is None:  # an R4 type with no R4B model: shape only
        return None
    if conforms(resource, cls):
        if not full:
            return None
        form = shape(resource)
        if form in _accepted_shapes:
            return None
        problem = _model_problem(resource, cls, rtype)
        if problem is None:
            if len(_accepted_shapes) >= MAX_SHAPES:
                _accepted_shapes.clear()
            _accepted_shapes.add(form)
        return problem
    return _model_problem(resource, cls, rtype)


def model_problem(resource: dict[str, Any]) -> str | None:
    """What parsing with the model alone says of ``resource`` (what :func:`r4_problem` must agree with)."""
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str) or not is_r4_type(rtype) or _r4b_model(rtype) is None:
        return r4_problem(resource)
    return _model_problem(resource, _r4b_model(rtype), rtype)


def _model_problem(resource: dict[str, Any], cls: Any, rtype: str) -> str | None:
    """What the model says of ``resource`` (None: it parses)."""
    try:
        parsed = cls.model_validate(resource)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or rtype
        extra = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        return f"{where}: {first['msg'].removeprefix('Value error, ')}{extra}"
    except KeyError as exc:  # fhir_core looks a contained resource's type up by name
        return f"{rtype} cannot be parsed: a contained resource has an unknown resourceType ({exc})"
    except (AttributeError, TypeError, ValueError) as exc:  # a model validator that trips over odd JSON
        return f"{rtype} cannot be parsed ({type(exc).__name__}: {exc}); an element has the wrong JSON type"
    quoted = _quoted_scalar(resource, parsed, "")
    if quoted is not None:
        where, value = quoted
        return (f"{where}: {value!r} is a JSON string where FHIR R4 requires a JSON "
                f"{'boolean' if value in ('true', 'false') else 'number'} (json.html#primitive)")
    return None


def _quoted_scalar(raw: Any, model: Any, path: str) -> tuple[str, str] | None:
    """The first element the JSON gives as a string where the model holds a number or boolean: pydantic
    coerces ``"12.5"`` to a decimal, FHIR R4 JSON does not (a decimal is a JSON number)."""
    if isinstance(raw, dict) and hasattr(type(model), "model_fields"):
        for key, value in raw.items():
            if key == "resourceType" or not isinstance(key, str):
                continue
            attr = getattr(model, key, None)
            if attr is None:
                attr = getattr(model, key + "__ext", None) if key.startswith("_") else getattr(model, key + "_", None)
            here = f"{path}.{key}" if path else key
            if isinstance(value, str) and isinstance(attr, (int, float, Decimal)):
                return here, value
            if isinstance(value, (dict, list)):
                found = _quoted_scalar(value, attr, here)
                if found is not None:
                    return found
    elif isinstance(raw, list) and isinstance(model, list):
        for i, (value, attr) in enumerate(zip(raw, model, strict=False)):
            found = _quoted_scalar(value, attr, f"{path}.{i}")
            if found is not None:
                return found
    return None


def parse(resource: dict[str, Any]) -> Any:
    """The R4B model of ``resource`` (raises pydantic.ValidationError)."""
    return model_class(resource["resourceType"]).model_validate(resource)
