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
    label: str = ""


class DoseForm(_Strict):
    """An RxNorm dose form (lower case, as in the clinical drug name): the route it implies, and whether one
    unit of it (a tablet, a capsule) holds the strength the name gives."""

    route: str | None = None
    unit_dose: bool = False


class Drug(_Strict):
    """A drug of medications.yaml; for glucocorticoids the class and ``rxnorm`` come from glucocorticoids.yaml."""

    rxnorm: str = Field(description="RxNorm ingredient RxCUI")
    drug_class: DrugClass = Field(alias="class")
    names: tuple[str, ...] = Field(default=(), description="lower-case words that name the drug in free text")
    codes: tuple[DrugCode, ...] = ()


class MedicationSettings(_Strict):
    """``mappings/<study>/medications.yaml``."""

    code_systems: dict[str, str]
    drugs: dict[str, Drug]
    used_statuses: tuple[str, ...] = ("active", "completed", "stopped", "on-hold", "in-progress")
    evidence_statuses: tuple[str, ...] = Field(
        ("not-taken",), description="statuses kept in CM with their dates only (evidence that a drug was not taken)")
    range_choice: Literal["high", "mid", "low"] = "high"
    tablet_units: tuple[str, ...] = ("{tbl}", "TAB")
    period_days: dict[str, float]
    timing_codes: dict[str, float]
    route_codes: dict[str, str] = Field(default_factory=dict)
    route_text: dict[str, str] = Field(default_factory=dict)
    systemic_routes: tuple[str, ...] = Field(
        description="routes that count as systemic; owned by glucocorticoids.yaml, filled in by the study loader")
    dose_required_classes: tuple[DrugClass, ...] = ("glucocorticoid",)
    max_daily_dose_mg: dict[DrugClass, float] = Field(
        default_factory=dict,
        description="per drug class, the most mg a day a record may give: above it the record is quarantined "
                    "(implausible-dose: a unit error such as micrograms sent as mg)")
    default_frequency_per_day: float | None = Field(None, gt=0)
    dose_forms: dict[str, DoseForm] = Field(default_factory=dict)
    request_intents: tuple[str, ...] = ("order", "original-order", "reflex-order", "filler-order", "instance-order")

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
