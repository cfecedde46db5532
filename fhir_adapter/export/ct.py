"""CDISC Controlled Terminology for the coded export columns (``mappings/cdisc/ct.yaml``).

:meth:`Terminology.term` turns what the EHR sent (a FHIR code, a UCUM code, a word) into the codelist's
submission value. A value that has no term gives an empty cell and is remembered per column and value, so the
run report can list it (``cdisc.no_ct_term``): nothing outside a codelist reaches a coded column.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

CT_FILE = Path(__file__).resolve().parents[2] / "mappings" / "cdisc" / "ct.yaml"


@dataclass(frozen=True)
class Codelist:
    name: str
    code: str
    terms: tuple[str, ...]
    map: dict[str, str]
    #: NCI term code (C-code) of each submission value, as checked against the named CT release
    nci: dict[str, str] = field(default_factory=dict)

    def lookup(self, value: str) -> str | None:
        if value in self.terms:
            return value
        if value in self.map:
            return self.map[value]
        if self.name == "UNIT":  # units are case-sensitive (mg ≠ Mg)
            return None
        low = value.strip().lower()
        for term in self.terms:
            if term.lower() == low:
                return term
        return next((t for k, t in self.map.items() if k.lower() == low), None)


@dataclass
class Terminology:
    package: str
    codelists: dict[str, Codelist]
    seriousness: dict[str, tuple[frozenset[str], tuple[str, ...]]] = field(default_factory=dict)
    missing: Counter[tuple[str, str]] = field(default_factory=Counter)

    def serious_flags(self, criteria: tuple[str, ...]) -> set[str]:
        """The AESDTH…AESMIE flags the criteria (``system|code`` or words) set."""
        found: set[str] = set()
        for crit in criteria:
            code = crit.rsplit("|", 1)[-1]
            low = crit.lower()
            for flag, (codes, words) in self.seriousness.items():
                if code in codes or any(w in low for w in words):
                    found.add(flag)
        return found

    def term(self, codelist: str, value: str | None, column: str, shown: str | None = None) -> str:
        """The submission value of ``value`` in ``codelist``; "" (and remembered, as ``shown`` when the value
        looked up is not what a reader would recognise, e.g. "6 per day" for a FREQ count) when it has none."""
        if value is None or value == "":
            return ""
        found = self.codelists[codelist].lookup(str(value))
        if found is None:
            self.missing[(column, shown or str(value))] += 1
            return ""
        return found

    def first(self, codelist: str, values: list[str], column: str) -> str:
        """The term of the first of ``values`` that has one; all of them remembered when none has."""
        for v in values:
            found = self.codelists[codelist].lookup(v)
            if found is not None:
                return found
        for v in values[:1]:
            self.missing[(column, v)] += 1
        return ""

    def report(self) -> dict[str, Any]:
        return {
            "ct_package": self.package,
            "no_ct_term": [{"column": c, "value": v, "rows": n} for (c, v), n in sorted(self.missing.items())],
        }


@cache
def _load(path: Path) -> tuple[str, dict[str, Codelist], dict[str, tuple[frozenset[str], tuple[str, ...]]]]:
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    lists = {
        name: Codelist(name=name, code=str(spec["code"]), terms=tuple(str(t) for t in spec["terms"]),
                       map={str(k): str(v) for k, v in (spec.get("map") or {}).items()},
                       nci={str(t): str(c) for t, c in spec["terms"].items() if c})
        for name, spec in doc["codelists"].items()
    }
    for cl in lists.values():
        bad = sorted(v for v in cl.map.values() if v not in cl.terms)
        if bad:
            raise ValueError(f"{path}: codelist {cl.name} maps to {bad}, which are not among its terms")
    serious = {flag: (frozenset(str(c) for c in spec.get("codes") or []),
                      tuple(str(w).lower() for w in spec.get("words") or []))
               for flag, spec in (doc.get("seriousness_criteria") or {}).items()}
    return str(doc["package"]), lists, serious


def load_terminology(path: Path = CT_FILE) -> Terminology:
    """A fresh :class:`Terminology` (its own record of values without a term) over the CT tables."""
    package, lists, serious = _load(path)
    return Terminology(package=package, codelists=lists, seriousness=serious)
