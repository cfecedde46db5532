"""``mappings/<study>/medications.yaml``: the drugs and their codes, the statuses and intents that count, and
the tables the dose arithmetic reads (periods, timing codes, routes, dose forms)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fhir_adapter.mapping.common import check_code_refs, resolve_code

DrugClass = Literal[
    "glucocorticoid", "immunosuppressant", "antimalarial", "crs_treatment", "lymphodepletion", "other"
]
CmClass = Literal["glucocorticoid", "immunosuppressant", "antimalarial", "crs_treatment", "other"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DrugCode(_Strict):
    """One code of a drug: an RxNorm SCD or a site-local code, with the strength of one unit of presentation."""

    code: str = Field(description="alias|code, the alias declared under code_systems")
    strength_mg: float | None = Field(None, gt=0, description="mg per tablet/unit of presentation")
    route: str | None = Field(None, description="route implied by the dose form (oral tablet → oral)")
    label: str = Field("", description="the code's name for the reader of the file (e.g. the RxNorm SCD name); the "
                       "adapter does not read it")


class DoseForm(_Strict):
    """An RxNorm dose form (lower case, as in the clinical drug name): the route it implies, and whether one
    unit of it (a tablet, a capsule) holds the strength the name gives."""

    route: str | None = Field(None, description="the route the form implies (a route name of route_codes/route_text) "
                              "when the dosage names none and the drug's code gives none")
    unit_dose: bool = Field(False, description="one unit of the form (a tablet, a capsule) holds the strength the "
                            "clinical drug name gives: a dose in units is that many times it")


class Drug(_Strict):
    """A drug of medications.yaml; for glucocorticoids the class and ``rxnorm`` come from glucocorticoids.yaml."""

    rxnorm: str = Field(description="RxNorm ingredient RxCUI")
    drug_class: DrugClass = Field(
        alias="class", description="the drug's class, written `class:`; a glucocorticoid's comes from "
        "glucocorticoids.yaml; `lymphodepletion` drugs are study treatment (EX), not CM")
    names: tuple[str, ...] = Field(default=(), description="lower-case words that name the drug in free text")
    codes: tuple[DrugCode, ...] = Field(
        default=(), description="product codes of the drug (RxNorm SCD or site codes) beside its RxNorm ingredient, "
        "with the strength of one unit")


class MedicationSettings(_Strict):
    """``mappings/<study>/medications.yaml``."""

    code_systems: dict[str, str] = Field(description="alias → URI of the code systems the drug and route codes of "
                                         "this file name (alias|code); must declare rxnorm")
    drugs: dict[str, Drug] = Field(description="the drugs recognised, by the name their CM records carry; any other "
                                   "medication is still a CM record, of class other")
    used_statuses: tuple[str, ...] = Field(
        ("active", "completed", "stopped", "on-hold", "in-progress"),
        description="record statuses that feed CM; a record of any other R4 status is counted "
        "(medications.not-used.<status>) and left out")
    evidence_statuses: tuple[str, ...] = Field(
        ("not-taken",), description="statuses kept in CM with their dates only (evidence that a drug was not taken)")
    range_choice: Literal["high", "mid", "low"] = Field(
        "high", description="the number read from a doseRange, frequency/frequencyMax or period/periodMax: high = "
        "upper dose, most frequent schedule; mid; low")
    tablet_units: tuple[str, ...] = Field(
        ("{tbl}", "TAB"),
        description="dose units that count as tablets: converted to mg by the strength of one tablet")
    period_days: dict[str, float] = Field(description="Timing.repeat periodUnit and Duration units (s, min, h, d, wk, "
                                          "mo, a) → days; must give d: 1")
    timing_codes: dict[str, float] = Field(
        description="Timing.code (e.g. BID) → administrations per day, used when Timing.repeat gives no frequency, "
        "period, timeOfDay, when or dayOfWeek")
    route_codes: dict[str, str] = Field(
        default_factory=dict, description="Dosage.route codes (alias|code, e.g. SNOMED CT) → route name")
    route_text: dict[str, str] = Field(
        default_factory=dict,
        description="words (lower case) in the Dosage.route text or a coding display → route name; used when no "
        "code matches")
    systemic_routes: tuple[str, ...] = Field(
        description="routes that count as systemic; owned by glucocorticoids.yaml, filled in by the study loader")
    dose_required_classes: tuple[DrugClass, ...] = Field(
        ("glucocorticoid",),
        description="drug classes whose record is quarantined (dose-not-mg) when its dose cannot be read in mg/day "
        "and its route is systemic or unknown")
    max_daily_dose_mg: dict[DrugClass, float] = Field(
        default_factory=dict,
        description="per drug class, the most mg a day a record may give: above it the record is quarantined "
                    "(implausible-dose: a unit error such as micrograms sent as mg)")
    default_frequency_per_day: float | None = Field(
        None, gt=0, description="administrations per day assumed for a dosage with a dose and no timing at all; null: "
        "none (the dose is not in mg/day)")
    dose_forms: dict[str, DoseForm] = Field(
        default_factory=dict,
        description="RxNorm dose forms, lower case as they end a clinical drug name (predniSONE 5 MG Oral Tablet → "
        "oral tablet): their route and unit_dose")
    request_intents: tuple[str, ...] = Field(
        ("order", "original-order", "reflex-order", "filler-order", "instance-order"),
        description="MedicationRequest.intent values that are orders and feed CM; any other intent is counted and "
        "left out")

    @field_validator("period_days")
    @classmethod
    def _has_day(cls, v: dict[str, float]) -> dict[str, float]:
        if v.get("d") != 1:
            raise ValueError("period_days must give d: 1 (the day is the unit of frequency_per_day)")
        return v

    @model_validator(mode="after")
    def _aliases_declared(self) -> MedicationSettings:
        if "rxnorm" not in self.code_systems:
            raise ValueError("code_systems must declare the alias 'rxnorm' (ingredient RxCUIs use it)")
        refs = [c.code for d in self.drugs.values() for c in d.codes] + list(self.route_codes)
        check_code_refs(refs, self.code_systems)
        known = set(self.route_codes.values()) | set(self.route_text.values())
        unknown = [r for r in self.systemic_routes if r not in known]
        unknown += [f"{f.route} (dose_forms: {name})" for name, f in self.dose_forms.items()
                    if f.route is not None and f.route not in known]
        if unknown:
            raise ValueError(f"routes {unknown} are not route names of route_codes/route_text")
        return self

    def resolve(self, ref: str) -> tuple[str, str]:
        return resolve_code(ref, self.code_systems)
