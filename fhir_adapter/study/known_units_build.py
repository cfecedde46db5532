"""Writes :mod:`fhir_adapter.terminology.known_units`: the UCUM registry's answers for the units the shipped
studies check when they load (``mappings/*/``, with each overlay of ``mappings/sites/`` on the default study)
and for common dose units. Run it after changing a unit in a shipped study or upgrading ucumvert or pint::

    python -m fhir_adapter.study.known_units_build

tests/terminology/test_known_units.py fails while the written table and a fresh build differ.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fhir_adapter.study.load import PROJECT_ROOT, load_study
from fhir_adapter.terminology import units

#: dose units the medication mapping converts to mg (a mass) and to mg/d (a rate)
DOSE_MASSES = ("g", "ug", "ng", "kg")
DOSE_RATES = ("mg/h", "mg/min", "g/d", "ug/d", "ug/h", "mg/(24.h)")

TARGET = Path(units.__file__).with_name("known_units.py")

HEADER = '''"""The UCUM registry's answers (ucumvert and pint at the versions of constraints.txt) for the units
the shipped studies check when they load and for common dose units: :mod:`fhir_adapter.terminology.units`
answers these without building the registry. Anything not here is asked of the registry.

Written by ``python -m fhir_adapter.study.known_units_build`` — do not edit by hand.
"""
'''


@contextmanager
def _recording() -> Iterator[tuple[set[str], set[tuple[str, str]]]]:
    """The units :func:`units.is_valid` found valid and the pairs :func:`units.converter` converted, meanwhile."""
    valid: set[str] = set()
    pairs: set[tuple[str, str]] = set()
    is_valid, converter = units.is_valid, units.converter

    def recorded_is_valid(unit: str) -> bool:
        ok = is_valid(unit)
        if ok:
            valid.add(unit)
        return ok

    def recorded_converter(from_unit: str, to_unit: str) -> units.Affine:
        affine = converter(from_unit, to_unit)
        if from_unit != to_unit:
            pairs.add((from_unit, to_unit))
        return affine

    units.is_valid = recorded_is_valid
    units.converter = recorded_converter  # type: ignore[assignment]  # (the original is an lru_cache wrapper)
    try:
        yield valid, pairs
    finally:
        units.is_valid = is_valid
        units.converter = converter


def asked_units() -> tuple[set[str], set[tuple[str, str]]]:
    """The valid units and the convertible pairs loading the shipped studies asks about, and the dose units."""
    mappings = PROJECT_ROOT / "mappings"
    with _recording() as (valid, pairs):
        for study in sorted(p.parent for p in mappings.glob("*/study.yaml")):
            load_study(study)
        for site in sorted((mappings / "sites").glob("*.yaml")):
            load_study(mappings / "lcar-aio", site)
    pairs |= {(u, "mg") for u in DOSE_MASSES} | {(u, "mg/d") for u in DOSE_RATES}
    valid |= {u for pair in pairs for u in pair}
    return valid, pairs


def build() -> tuple[frozenset[str], dict[tuple[str, str], tuple[float, float]]]:
    """The table as the registry answers it now: valid units, and (from, to) → (a, b) of ``to = a·from + b``."""
    valid, pairs = asked_units()
    for u in valid:
        if not units.registry_is_valid(u):
            raise units.UnitError(f"'{u}' is not a valid UCUM unit")
    conversions = {}
    for from_unit, to_unit in sorted(pairs):
        affine = units.registry_converter(from_unit, to_unit)
        conversions[(from_unit, to_unit)] = (affine.a, affine.b)
    return frozenset(valid), conversions


def source(valid: frozenset[str], conversions: dict[tuple[str, str], tuple[float, float]]) -> str:
    """The text of known_units.py."""
    lines = [HEADER, "#: units the registry parses", "VALID: frozenset[str] = frozenset({"]
    lines += [f"    {json.dumps(u)}," for u in sorted(valid)]
    lines += ["})", "", "#: (from, to) → (a, b) of ``to = a * from + b``",
              "CONVERSIONS: dict[tuple[str, str], tuple[float, float]] = {"]
    lines += [f"    ({json.dumps(f)}, {json.dumps(t)}): ({a!r}, {b!r}),"
              for (f, t), (a, b) in sorted(conversions.items())]
    lines += ["}", ""]
    return "\n".join(lines)


def main() -> None:
    TARGET.write_text(source(*build()), encoding="utf-8")
    print(f"wrote {TARGET}")


if __name__ == "__main__":
    main()
