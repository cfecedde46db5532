"""UCUM unit conversion.

Units are parsed as UCUM (https://ucum.org/ucum) by ``ucumvert`` into ``pint`` quantities; a conversion
between two units is computed once and cached as an affine map ``y = a·x + b`` (``b`` is non-zero only for
temperature scales), so the hot path is two float operations. UCUM annotations in braces (``{creat}``,
``{copies}``, ``{1.73_m2}``) carry no dimension: UCUM reads them as 1. Two units whose annotations differ are
refused (:class:`UnitError`); when the annotations are absent on one side the registry converts as if they were
not there (``mL/min`` → ``mL/min/{1.73_m2}``: factor 1), so a study refuses such a unit under ``accept_units``
when it loads (:func:`annotations_differ`) — only the mapping can say, with an explicit factor, that the two
measure the same quantity.
Analyte-specific factors (creatinine mg/dL↔umol/L, PGA mm→score) are data in ``mappings/``, not here.

Building the registry costs about a second of CPU, so the registry's answers for the units the shipped studies
check and for common dose units are kept in :mod:`fhir_adapter.terminology.known_units`: a unit or a conversion
found there is answered without the registry; anything else is asked of the registry, as strictly as ever.
A worker process is handed the conversions its study computed when it was loaded (:func:`learn`), so it builds
the registry only for a unit neither gives (an unusual dose unit).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from fhir_adapter.terminology.known_units import CONVERSIONS, VALID

_ANNOTATION = re.compile(r"\{[^}]*\}")
# an annotation standing alone as a term ("{score}", "mL/min/{1.73_m2}") is the unit 1 in UCUM
_STANDALONE = re.compile(r"(?:(?<=^)|(?<=[/.]))\{[^}]*\}(?=$|[/.])")


class UnitError(ValueError):
    """A unit is not valid UCUM, or two units cannot be converted into each other."""


@dataclass(frozen=True)
class Affine:
    """``to = a * from + b``."""

    a: float
    b: float = 0.0

    def __call__(self, value: float) -> float:
        # 12 significant digits: removes binary noise (95 mg/dL -> 0.95 g/L, not 0.9500000000000001)
        return float(f"{self.a * value + self.b:.12g}")


#: conversions computed in another process and handed over with :func:`learn`: (from, to) → (a, b)
_learned: dict[tuple[str, str], tuple[float, float]] = {}


@lru_cache(maxsize=1)
def _registry() -> Any:
    from ucumvert import PintUcumRegistry  # imported lazily: building the registry takes ~0.5 s

    return PintUcumRegistry()


def _annotations(unit: str) -> tuple[str, ...]:
    return tuple(sorted(_ANNOTATION.findall(unit)))


def annotations_differ(from_unit: str, to_unit: str) -> bool:
    """Whether two units carry different annotations, or one carries one the other lacks. UCUM reads an
    annotation as 1, so :func:`converter` turns a non-indexed clearance into an indexed eGFR unchanged; whether
    the annotation is a mere label of the same quantity is for the mapping to say.

    >>> annotations_differ("mL/min", "mL/min/{1.73_m2}"), annotations_differ("mg/g{creat}", "mg/mg")
    (True, True)
    >>> annotations_differ("mg/g{creat}", "g/g{creat}"), annotations_differ("10*3/uL", "10*9/L")
    (False, False)
    """
    return _annotations(from_unit) != _annotations(to_unit)


@lru_cache(maxsize=4096)
def _parse(unit: str) -> Any:
    reg = _registry()
    stripped = _ANNOTATION.sub("", _STANDALONE.sub("1", unit)) or "1"
    if stripped.startswith("/"):
        stripped = "1" + stripped
    if stripped in ("1", "1/1", ""):
        return reg.Quantity(1, "dimensionless")
    try:
        return reg.from_ucum(stripped)
    except Exception as exc:  # ucumvert raises lark / pint errors of several types
        raise UnitError(f"'{unit}' is not a valid UCUM unit") from exc


def is_valid(unit: str) -> bool:
    return unit in VALID or registry_is_valid(unit)


def registry_is_valid(unit: str) -> bool:
    """:func:`is_valid` as the registry answers it (never from :mod:`~fhir_adapter.terminology.known_units`)."""
    try:
        _parse(unit)
    except UnitError:
        return False
    return True


@lru_cache(maxsize=4096)
def converter(from_unit: str, to_unit: str) -> Affine:
    """The affine map from ``from_unit`` to ``to_unit``; raises :class:`UnitError` when inconvertible."""
    if from_unit == to_unit:
        return Affine(1.0)
    ann_from, ann_to = _annotations(from_unit), _annotations(to_unit)
    if ann_from and ann_to and ann_from != ann_to:
        raise UnitError(f"'{from_unit}' and '{to_unit}' measure different things (annotations differ)")
    known = CONVERSIONS.get((from_unit, to_unit)) or _learned.get((from_unit, to_unit))
    return Affine(*known) if known is not None else registry_converter(from_unit, to_unit)


def learn(conversions: Mapping[tuple[str, str], tuple[float, float]]) -> None:
    """Take ``(from, to) → (a, b)`` conversions computed by :func:`converter` in another process (the study's,
    when it was loaded), so this process answers them without building the registry."""
    _learned.update(conversions)


def registry_converter(from_unit: str, to_unit: str) -> Affine:
    """:func:`converter` of two units whose annotations agree, as the registry computes it."""
    q_from, q_to = _parse(from_unit), _parse(to_unit)
    reg = _registry()
    try:
        u_from, u_to = q_from.units, q_to.units
        m_from, m_to = float(q_from.magnitude), float(q_to.magnitude)
        y0 = float(reg.Quantity(0.0 * m_from, u_from).to(u_to).magnitude) / m_to
        y1 = float(reg.Quantity(1.0 * m_from, u_from).to(u_to).magnitude) / m_to
    except Exception as exc:
        raise UnitError(f"cannot convert '{from_unit}' to '{to_unit}' (different dimensions)") from exc
    return Affine(y1 - y0, y0)


def convert(value: float, from_unit: str, to_unit: str) -> float:
    return converter(from_unit, to_unit)(value)
