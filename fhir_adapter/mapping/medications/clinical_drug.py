"""Strength and dose form from an RxNorm clinical drug name.

RxNorm names a semantic clinical drug (SCD) ``<ingredient> <strength> <unit> <dose form>`` and a branded one
(SBD) the same with ``[<brand>]`` appended (RxNorm Technical Documentation, "Semantic Clinical Drug":
https://www.nlm.nih.gov/research/umls/rxnorm/docs/techdoc.html), e.g. ``predniSONE 5 MG Oral Tablet``,
``prednisolone 5 MG Oral Tablet [Stintisone]``. EHRs send that name as the coding's display or the
concept's text. Only single-ingredient names with a mass strength are read (a ``/`` or a concentration such
as ``MG/ML`` gives None): a tablet count times that strength is a dose in mg.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_NAME = re.compile(
    r"^\s*(?P<ingredient>[A-Za-z][A-Za-z ,.\-]*?)\s+(?P<value>\d+(?:\.\d+)?)\s+(?P<unit>MG|MCG|G)"
    r"\s+(?P<form>[A-Za-z][A-Za-z \-]*?)\s*(?:\[(?P<brand>[^\]]+)\])?\s*$",
    re.IGNORECASE,
)
_MG = {"mg": 1.0, "mcg": 0.001, "g": 1000.0}


@dataclass(frozen=True)
class ClinicalDrug:
    ingredient: str
    strength_mg: float
    form: str
    brand: str | None = None


def parse_clinical_drug(name: str | None) -> ClinicalDrug | None:
    """``predniSONE 5 MG Oral Tablet`` → prednisone, 5.0 mg, ``oral tablet``; None for anything else.

    >>> parse_clinical_drug("prednisolone 5 MG Oral Tablet [Stintisone]")
    ClinicalDrug(ingredient='prednisolone', strength_mg=5.0, form='oral tablet', brand='Stintisone')
    >>> parse_clinical_drug("Acetaminophen 325 MG / HYDROcodone Bitartrate 7.5 MG Oral Tablet") is None
    True
    """
    if not isinstance(name, str) or "/" in name:
        return None
    m = _NAME.match(name)
    if m is None:
        return None
    mg = float(m["value"]) * _MG[m["unit"].lower()]
    return ClinicalDrug(ingredient=m["ingredient"].strip().lower(), strength_mg=float(f"{mg:.10g}"),
                        form=" ".join(m["form"].lower().split()), brand=m["brand"])
