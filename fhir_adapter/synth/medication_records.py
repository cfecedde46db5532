"""Medication records any trial's feed holds, as the EHR writes them: MedicationStatements (standing
prescriptions) and MedicationAdministrations (what the ward gave), with RxNorm-coded drugs and SNOMED routes."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from random import Random
from typing import Any

from fhir_adapter.terminology.codes import ROUTE_SNOMED, RXNORM

from .ids import new_id, ref
from .lab_catalog import quantity
from .sink import Resource
from .timeline import DATA_CUT, LAST_INSTANT, at, fmt_local, fmt_utc

#: drug key -> (RxNorm ingredient RxCUI, ingredient name, product text as the EHR prints it)
DRUGS: dict[str, tuple[str, str, str]] = {
    "prednisone": ("8640", "prednisone", "Prednisone 5 mg oral tablet"),
    "methylprednisolone": ("6902", "methylprednisolone", "Methylprednisolone 4 mg oral tablet"),
    "hydrocortisone": ("5492", "hydrocortisone", "Hydrocortisone 1% cream"),
    "hydroxychloroquine": ("5521", "hydroxychloroquine", "Hydroxychloroquine sulfate 200 mg oral tablet"),
    "mycophenolate": ("68149", "mycophenolate mofetil", "Mycophenolate mofetil 500 mg oral tablet"),
    "valaciclovir": ("73645", "valacyclovir", "Valaciclovir 500 mg oral tablet"),
    "fludarabine": ("24698", "fludarabine", "Fludarabine phosphate 50 mg powder for injection"),
    "cyclophosphamide": ("3002", "cyclophosphamide", "Cyclophosphamide 1 g powder for injection"),
    "tocilizumab": ("612865", "tocilizumab", "Tocilizumab 20 mg/mL concentrate for infusion"),
    "dexamethasone": ("3264", "dexamethasone", "Dexamethasone 4 mg/mL injection"),
}
#: drug key -> WHO ATC code (the class code EHRs send beside RxNorm; CMCLASCD)
ATC_CODES: dict[str, str] = {
    "prednisone": "H02AB07", "methylprednisolone": "H02AB04", "hydrocortisone": "D07AA02",
    "hydroxychloroquine": "P01BA02", "mycophenolate": "L04AA06", "valaciclovir": "J05AB11",
    "fludarabine": "L01BB05", "cyclophosphamide": "L01AA01", "tocilizumab": "L04AC07", "dexamethasone": "H02AB02",
}
ATC = "http://www.whocc.no/atc"
ROUTES: dict[str, tuple[str, str]] = {
    "oral": ("26643006", "Oral route"), "iv": ("47625008", "Intravenous route"),
    "topical": ("6064005", "Topical route"),
}
ROUTE_WORDS = {"oral": "orally", "iv": "intravenously", "topical": "topically"}

def medication(drug: str) -> dict[str, Any]:
    code, name, text = DRUGS[drug]
    coding = [{"system": RXNORM, "code": code, "display": name}]
    if drug in ATC_CODES:
        coding.append({"system": ATC, "code": ATC_CODES[drug], "display": name})
    return {"coding": coding, "text": text}


def formulary_id(site: int, drug: str) -> str:
    """The id of a site pharmacy's formulary Medication (shared by every record that references it)."""
    return f"formulary-{site}-{drug}"


def formulary_medication(site: int, drug: str) -> dict[str, Any]:
    """A shared Medication of a site's formulary: the product code and its active ingredient (Medication.ingredient
    — CMINGRD), as pharmacy systems send the products their prescriptions reference."""
    code, name, _ = DRUGS[drug]
    return {
        "resourceType": "Medication", "id": formulary_id(site, drug),
        "meta": {"versionId": "1", "lastUpdated": "2023-06-01T08:00:00Z"},
        "code": medication(drug), "status": "active",
        "ingredient": [{"itemCodeableConcept": {"coding": [{"system": RXNORM, "code": code, "display": name}],
                                                "text": FORMULARY_INGREDIENTS[drug]}, "isActive": True}],
    }


#: drugs the sites' pharmacies send as a shared Medication (medicationReference) → the active ingredient's name
FORMULARY_INGREDIENTS: dict[str, str] = {"valaciclovir": "Valaciclovir hydrochloride"}


def route(kind: str) -> dict[str, Any]:
    code, display = ROUTES[kind]
    return {"coding": [{"system": ROUTE_SNOMED, "code": code, "display": display}]}


def statement(rng: Random, site: int, patient_id: str, drug: str, dose_mg: float, start: date, end: date | None,
              reason: list[dict[str, Any]], *, frequency: int = 1, period: int = 1, route_kind: str = "oral",
              text: str | None = None, rid: str | None = None) -> Resource | None:
    """A MedicationStatement (a standing prescription as the EHR's medication list holds it); None when it
    starts after the data cut (an end after the cut is left open)."""
    if start >= DATA_CUT:
        return None
    if end is not None and end >= DATA_CUT:
        end = None
    dose: float | int = int(dose_mg) if float(dose_mg).is_integer() else dose_mg
    if text is None:
        how = "once daily" if (frequency, period) == (1, 1) else (
            "every other day" if (frequency, period) == (1, 2) else f"{frequency} times daily")
        text = f"{dose} mg {ROUTE_WORDS[route_kind]} {how}"
    eff: dict[str, str] = {"start": start.isoformat()}
    if end is not None:
        eff["end"] = end.isoformat()
    updated = at(min(end or start, DATA_CUT - timedelta(days=1)), rng.randint(480, 1080))
    mid = rid or new_id(rng)
    return {
        "resourceType": "MedicationStatement", "id": mid,
        "meta": {"versionId": "1", "lastUpdated": fmt_utc(updated)},
        "identifier": [{"system": f"https://hospital.example.org/site-{site}/medication", "value": mid}],
        "status": "completed" if end is not None else "active",
        "category": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/medication-statement-category",
                                 "code": "community", "display": "Community"}]},
        **({"medicationReference": ref("Medication", formulary_id(site, drug))} if drug in FORMULARY_INGREDIENTS
           else {"medicationCodeableConcept": medication(drug)}),
        "subject": ref("Patient", patient_id),
        "effectivePeriod": eff,
        "dateAsserted": start.isoformat(),
        "reasonCode": reason,
        "dosage": [{
            "sequence": 1, "text": text,
            "timing": {"repeat": {"frequency": frequency, "period": period, "periodUnit": "d"}},
            "route": route(route_kind),
            "doseAndRate": [{"doseQuantity": quantity(dose, "mg")}],
        }],
    }


def taper_doses(start: float, target: float, include: float | None = None) -> list[float]:
    doses = [start]
    while doses[-1] > target:
        d = doses[-1]
        nxt = d - 5.0 if d > 10.0 else (d - 2.5)
        doses.append(max(nxt, target))
    if include is not None and include not in doses and doses[0] > include > doses[-1]:
        doses.append(include)
        doses.sort(reverse=True)
    return doses


def administration(rng: Random, site: int, patient_id: str, drug: str, dose_mg: float, start: datetime,
                   minutes: int | None, text: str, reason: dict[str, Any] | None = None, *,
                   medication_concept: dict[str, Any] | None = None, route_kind: str = "iv") -> Resource | None:
    """A completed MedicationAdministration (``minutes``: an infusion's duration); None after the data cut.
    ``medication_concept`` replaces the RxNorm coding of ``drug`` (a product of a local code system)."""
    if start >= LAST_INSTANT or start.date() >= DATA_CUT:
        return None
    mid = new_id(rng)
    res: Resource = {
        "resourceType": "MedicationAdministration", "id": mid,
        "identifier": [{"system": f"https://hospital.example.org/site-{site}/medication", "value": mid}],
        "meta": {"versionId": "1", "lastUpdated": fmt_utc(start + timedelta(minutes=(minutes or 0) + 30))},
        "status": "completed",
        "category": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/medication-admin-category",
                                 "code": "inpatient", "display": "Inpatient"}]},
        "medicationCodeableConcept": medication_concept or medication(drug),
        "subject": ref("Patient", patient_id),
    }
    if minutes:
        res["effectivePeriod"] = {"start": fmt_local(start), "end": fmt_local(start + timedelta(minutes=minutes))}
    else:
        res["effectiveDateTime"] = fmt_local(start)
    if reason is not None:
        res["reasonCode"] = [reason]
    dose: float | int = int(dose_mg) if float(dose_mg).is_integer() else dose_mg
    res["dosage"] = {"text": text, "route": route(route_kind), "dose": quantity(dose, "mg")}
    return res
