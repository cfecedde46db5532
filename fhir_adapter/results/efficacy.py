"""The efficacy endpoints of one subject (PGA, glucocorticoids, LLDAS, renal, immunology) and their keys in
``results/study.json``.

Per visit: ``pga``, ``pga_change``, ``lldas`` (true/false/null), ``lldas_failed`` (criterion ids),
``lldas_reason`` (why null), ``pred_eq_mg_per_day``, ``upcr_mg_mg``, ``upcr_change``, ``protein_24h_g``,
``protein_24h_change``, ``c3``, ``c3_change``, ``c4``, ``c4_change``, ``anti_dsdna``, ``anti_dsdna_change``,
``anti_sm``, ``anti_sm_change``, ``igg``, ``igg_change``, ``iga``, ``iga_change``, ``igm``, ``igm_change``,
``cd19``. Per subject: ``seroconversion`` ({anti_dsdna, anti_sm}), ``b_cell_aplasia``, ``ada_status``,
``renal_response`` (null when the setting is off), ``glucocorticoid_series``. Study level: ``lldas_rate``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from fhir_adapter.crf.models import SubjectCRF
from fhir_adapter.derive.baseline import VisitValue
from fhir_adapter.derive.glucocorticoids import (
    GlucocorticoidSeries,
    GlucocorticoidSettings,
    PredEqVisit,
    derive_pred_eq,
    glucocorticoid_series,
)
from fhir_adapter.derive.immunology import ImmunologyResults, ImmunologySettings, derive_immunology
from fhir_adapter.derive.lldas import LldasSettings, LldasVisit, derive_lldas, lldas_rate
from fhir_adapter.derive.pga import PgaSettings, PgaVisit, derive_pga
from fhir_adapter.derive.renal import RenalResults, RenalSettings, derive_renal
from fhir_adapter.derive.sledai2k import Sledai2kVisit
from fhir_adapter.study.load import Study

#: immunology items reported per visit with their change (``cd19`` is reported without one)
IMMUNOLOGY_WITH_CHANGE = ("c3", "c4", "anti_dsdna", "anti_sm", "igg", "iga", "igm")


@dataclass
class EfficacyResults:
    pga: list[PgaVisit] = field(default_factory=list)
    pred_eq: list[PredEqVisit] = field(default_factory=list)
    lldas: list[LldasVisit] = field(default_factory=list)
    renal: RenalResults | None = None
    immunology: ImmunologyResults | None = None
    glucocorticoid_series: GlucocorticoidSeries | None = None

    def visit_keys(self, visit: str) -> dict[str, Any]:
        """The efficacy keys of one visit row (null where the visit has no value)."""
        p = next((x for x in self.pga if x.visit == visit), None)
        ld = next((x for x in self.lldas if x.visit == visit), None)
        dose = next((x for x in self.pred_eq if x.visit == visit), None)
        rn = next((x for x in self.renal.visits if x.visit == visit), None) if self.renal else None
        row: dict[str, Any] = {
            "pga": p.pga if p else None,
            "pga_change": p.change if p else None,
            "lldas": ld.lldas if ld else None,
            "lldas_failed": list(ld.failed) if ld else [],
            "lldas_reason": ld.reason if ld else None,
            "pred_eq_mg_per_day": dose.mg_per_day if dose else None,
            "upcr_mg_mg": rn.upcr if rn else None,
            "upcr_change": rn.upcr_change if rn else None,
            "protein_24h_g": rn.protein_24h if rn else None,
            "protein_24h_change": rn.protein_24h_change if rn else None,
        }
        values = self.immunology.values if self.immunology else {}
        for item in (*IMMUNOLOGY_WITH_CHANGE, "cd19"):
            vv: VisitValue | None = next((x for x in values.get(item, []) if x.visit == visit), None)
            row[item] = vv.value if vv else None
            if item != "cd19":
                row[f"{item}_change"] = vv.change if vv else None
        return row

    def subject_keys(self) -> dict[str, Any]:
        """The per-subject efficacy keys of ``results/study.json``."""
        imm = self.immunology
        sero = {k: v.model_dump(mode="json") for k, v in imm.seroconversion.items()} if imm else {}
        return {
            "seroconversion": sero,
            "b_cell_aplasia": imm.b_cell_aplasia.model_dump(mode="json") if imm else None,
            "ada_status": imm.ada.model_dump(mode="json") if imm else None,
            "renal_response": self.renal.response.model_dump(mode="json")
            if self.renal and self.renal.response else None,
            "glucocorticoid_series": self.glucocorticoid_series.model_dump(mode="json")
            if self.glucocorticoid_series else None,
        }


def derive_efficacy(crf: SubjectCRF, study: Study, sledai2k: list[Sledai2kVisit]) -> EfficacyResults:
    """PGA, dose, LLDAS (from the SLEDAI-2K already derived), renal and immunology of one subject."""
    gc = study.rule("glucocorticoids", GlucocorticoidSettings)
    pga = derive_pga(crf, study.rule("pga", PgaSettings))
    pred_eq = derive_pred_eq(crf, gc)
    groups = {d.code: d.group for d in study.sledai2k.descriptors}
    lldas = derive_lldas(sledai2k, pga, pred_eq, crf.day1, groups, study.rule("lldas", LldasSettings), crf.cm)
    return EfficacyResults(
        pga=pga, pred_eq=pred_eq, lldas=lldas,
        renal=derive_renal(crf, study.rule("renal", RenalSettings)),
        immunology=derive_immunology(crf, study.rule("immunology", ImmunologySettings)),
        glucocorticoid_series=glucocorticoid_series(crf, gc),
    )


def lldas_rate_rows(study: Study, subjects: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """``lldas_rate`` of ``results/study.json``: {visit, n, responders, rate} per scheduled visit, from the
    subjects' visit rows."""
    pairs = [(v["visit"], v.get("lldas")) for s in subjects for v in s.get("visits", [])]
    return [r.model_dump() for r in lldas_rate(pairs, [v.id for v in study.schedule.visits])]
