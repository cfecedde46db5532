"""Which drug a medication resource names, and the strength of one tablet of it.

Every coding of ``medicationCodeableConcept``, or of the code and the ingredients of a contained or referenced
Medication, is looked up among the drugs' ingredient RxCUIs, SCD codes and site codes; else the medication
text is searched for a drug's ``names``. Unknown drugs are kept with class ``other``; a resource naming no
medication at all is quarantined (``no-medication``), one whose ``medicationReference`` names a Medication that
is neither contained nor in the export as ``unresolved-medication-reference``. The strength per tablet comes
from the matched SCD/site code, else the Medication's ``ingredient.strength``, else the strength in the RxNorm
clinical drug name of the coding display or text (``predniSONE 5 MG Oral Tablet`` → 5 mg per tablet;
:mod:`.clinical_drug`) when its dose form is listed under ``dose_forms`` with ``unit_dose: true``; the route
implied by the code or dose form comes along.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from fhir_adapter.job.runlog import RunLog
from fhir_adapter.mapping.common import Unusable, codings, quantity_unit, texts
from fhir_adapter.mapping.medication_codes import medication_concept, medication_resource
from fhir_adapter.mapping.medications.clinical_drug import ClinicalDrug, parse_clinical_drug
from fhir_adapter.mapping.medications.dose import mass_mg
from fhir_adapter.mapping.medications.settings import DrugClass, DrugCode, MedicationSettings


@dataclass(frozen=True)
class IdentifiedDrug:
    name: str
    rxnorm: str | None
    drug_class: DrugClass
    strength_mg: float | None
    code_route: str | None


def _label(clinical: ClinicalDrug | None, words: list[str], keys: list[tuple[str, str]]) -> str:
    """Name of a drug the mapping does not list: the clinical drug's ingredient, else its text or code."""
    if clinical is not None:
        return clinical.ingredient
    return words[0].lower() if words else f"{keys[0][0]}|{keys[0][1]}"


def _dangling_reference(r: dict[str, Any], med: dict[str, Any] | None) -> str | None:
    """The ``medicationReference.reference`` of a resource whose Medication is not at hand (neither contained
    nor among the subject's resources), else None."""
    if med is not None or isinstance(r.get("medicationCodeableConcept"), dict):
        return None
    ref = (r.get("medicationReference") or {}).get("reference")
    return ref if isinstance(ref, str) and ref else None


class DrugIdentifier:
    """Indexes the drugs of medications.yaml by code and name once; identifies the drug of each resource."""

    def __init__(self, settings: MedicationSettings, log: RunLog) -> None:
        self.s = settings
        self.log = log
        self._index: dict[tuple[str, str], tuple[str, DrugCode | None]] = {}
        rx = settings.code_systems["rxnorm"]
        for name, drug in settings.drugs.items():
            self._index[(rx, drug.rxnorm)] = (name, None)
            for c in drug.codes:
                self._index[settings.resolve(c.code)] = (name, c)
        words = sorted(
            ((w.lower(), n) for n, d in settings.drugs.items() for w in (n, *d.names)), key=lambda x: -len(x[0])
        )
        self._names = [(re.compile(rf"(?<![\w-]){re.escape(w)}(?![\w-])"), n) for w, n in words]
        self._tablets = set(settings.tablet_units)

    def identify(self, r: dict[str, Any], siblings: list[dict[str, Any]]) -> IdentifiedDrug:
        cc = medication_concept(r, siblings)
        med = medication_resource(r, siblings)
        ingredients = [i for i in (med or {}).get("ingredient") or [] if isinstance(i, dict)]
        keys = codings(cc) + [k for i in ingredients for k in codings(i.get("itemCodeableConcept"))]
        words = texts(cc) + [t for i in ingredients for t in texts(i.get("itemCodeableConcept"))]
        name: str | None = None
        code: DrugCode | None = None
        for key in keys:
            if key in self._index:
                name, code = self._index[key]
                if code is not None:
                    break
        if name is None:
            text = " ".join(words).lower()
            name = next((n for pattern, n in self._names if pattern.search(text)), None)
        clinical = next((c for c in map(parse_clinical_drug, texts(cc)) if c is not None), None)
        form = self.s.dose_forms.get(clinical.form) if clinical else None
        strength = code.strength_mg if code else None
        if strength is None:
            strength = self._ingredient_strength(ingredients)
        if strength is None and clinical is not None and form is not None and form.unit_dose:
            strength = clinical.strength_mg
            self.log.count("medications.strength-from-rxnorm-name")
        route = (code.route if code else None) or (form.route if form else None)
        if name is not None:
            d = self.s.drugs[name]
            return IdentifiedDrug(name, d.rxnorm, d.drug_class, strength, route)
        if not keys and not words:
            reference = _dangling_reference(r, med)
            if reference is not None:
                raise Unusable(
                    "unresolved-medication-reference",
                    f"medicationReference '{reference}' does not resolve: "
                    + ("the resource contains no such Medication" if reference.startswith("#")
                       else "the export holds no such Medication"),
                    "include the Medication in the export (or contain it in the resource), or correct the "
                    "reference",
                )
            raise Unusable(
                "no-medication",
                "the resource names no medication (no code, no text)",
                "send medicationCodeableConcept or a medicationReference the source also holds",
            )
        self.log.count("medications.other-drug")
        rx = self.s.code_systems["rxnorm"]
        rxnorm = next((c for s, c in keys if s == rx), None)
        label = _label(clinical, words, keys)
        return IdentifiedDrug(label, rxnorm, "other", strength, route)

    def _ingredient_strength(self, ingredients: list[dict[str, Any]]) -> float | None:
        """mg per tablet of a single-ingredient Medication (``ingredient.strength`` numerator/denominator)."""
        strengths = [i["strength"] for i in ingredients if isinstance(i.get("strength"), dict)]
        if len(strengths) != 1:
            return None
        num, den = strengths[0].get("numerator") or {}, strengths[0].get("denominator") or {}
        if num.get("value") is None:
            return None
        den_unit = quantity_unit(den) if den else None
        if den_unit not in (None, "1", *self._tablets):
            return None
        mg = mass_mg(float(num["value"]), quantity_unit(num))
        den_value = float(den.get("value") or 1)
        return mg / den_value if mg is not None and den_value > 0 else None
