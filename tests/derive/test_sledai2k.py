"""SLEDAI-2K on hand-built subjects; totals from Gladman 2002 (docs/clinical-rules.md#sledai2k-thresholds)."""

from __future__ import annotations

from typing import Any

import pytest

from fhir_adapter.crf.models import Finding
from fhir_adapter.derive.sledai2k import DescriptorScore, Sledai2kSettings, Sledai2kVisit, derive_sledai2k
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.mapping.observations import ObservationMapper
from fhir_adapter.mapping.visits import select
from fhir_adapter.study.load import Study
from tests.helpers import crf, d, descriptor, finding


def score(study: Study, findings: list[Finding], visit_day: int = 40, **kw: Any) -> Sledai2kVisit:
    visits = derive_sledai2k(crf(findings, {"V": visit_day}, **kw), study.rule("sledai2k", Sledai2kSettings))
    return visits[0]


def by_code(v: Sledai2kVisit) -> dict[str, DescriptorScore]:
    return {d.code: d for d in v.descriptors}


def test_clinical_plus_lab_descriptors_add_up(study: Study) -> None:
    # arthritis 4 + rash 2 (clinician) + proteinuria 4 (0.6 g/24 h) + low complement 2 (C3 below its range)
    v = score(study, [
        descriptor("arthritis", 40, True), descriptor("rash", 39, True), descriptor("seizure", 40, False),
        finding("protein_24h", 38, 0.6, unit="g/(24.h)"),
        finding("c3", 40, 0.8, ref_low=0.9, ref_high=1.8),
    ])
    assert v.total == 12
    c = by_code(v)
    assert c["arthritis"].basis == "clinician" and c["proteinuria"].basis == "lab" and c["seizure"].score == 0
    assert "pleurisy" in v.not_assessed and "arthritis" not in v.not_assessed
    assert len(v.descriptors) == 24


def test_thresholds_are_strict(study: Study) -> None:
    at_limit = [descriptor("rash", 40, False), finding("protein_24h", 40, 0.5), finding("urine_rbc_hpf", 40, 5),
                finding("urine_wbc_hpf", 40, 5), finding("temperature", 40, 38.0), finding("platelets", 40, 100),
                finding("leukocytes", 40, 3.0)]
    assert score(study, at_limit).total == 0
    over = [descriptor("rash", 40, False), finding("protein_24h", 40, 0.51), finding("urine_rbc_hpf", 40, 6),
            finding("urine_wbc_hpf", 40, 6), finding("temperature", 40, 38.1), finding("platelets", 40, 99),
            finding("leukocytes", 40, 2.9)]
    # proteinuria 4 + hematuria 4 + pyuria 4 + fever 1 + thrombocytopenia 1 + leukopenia 1
    assert score(study, over).total == 15


@pytest.mark.parametrize(("code", "value", "unit", "descriptor_code"), [
    ("2889-4", 504, "mg/(24.h)", "proteinuria"),      # 0.504 g/24 h > 0.5
    ("2890-2", 57, "mg/mmol", "proteinuria"),         # UPCR 0.5039 mg/mg > 0.5
    ("777-3", 99600, "/uL", "thrombocytopenia"),      # 99.6 x 10^9/L < 100
    ("6690-2", 2999, "/uL", "leukopenia"),            # 2.999 x 10^9/L < 3
    ("8310-5", 100.45, "[degF]", "fever"),            # 38.03 Cel > 38.0
])
def test_a_result_in_another_unit_scores_as_the_lab_measured_it(
        study: Study, code: str, value: float, unit: str, descriptor_code: str) -> None:
    """A strict threshold sees the converted value at full precision (docs/clinical-rules.md#converted-precision),
    never one rounded to the CRF's usual digits, which would put each of these on the wrong side of it."""
    obs = {"resourceType": "Observation", "id": "o1", "status": "final", "subject": {"reference": "Patient/p"},
           "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
           "effectiveDateTime": f"{d(40).isoformat()}T08:00:00Z",
           "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}}
    mapped = ObservationMapper(study, RunLog()).map([obs], "S")
    assert len(mapped) == 1
    found = [m.model_copy(update={"study_day": 40}) for m in mapped]
    v = score(study, [descriptor("rash", 40, False), *found])
    assert by_code(v)[descriptor_code].score > 0, (mapped[0].value, by_code(v)[descriptor_code])


def test_look_back_window_is_visit_minus_10_through_visit(study: Study) -> None:
    base = [descriptor("rash", 40, False)]
    assert score(study, [*base, finding("protein_24h", 30, 1.0)]).total == 4   # 10 days before: counts
    assert score(study, [*base, finding("protein_24h", 29, 1.0)]).total == 0   # 11 days before: out
    assert score(study, [*base, finding("protein_24h", 41, 1.0)]).total == 0   # after the visit: out


def test_window_setting_30_days(study: Study) -> None:
    s30 = study.rule("sledai2k", Sledai2kSettings).model_copy(update={"window_days": 30})
    f = [descriptor("rash", 40, False), finding("protein_24h", 15, 1.0)]
    assert derive_sledai2k(crf(f, {"V": 40}), s30)[0].total == 4
    assert derive_sledai2k(crf(f, {"V": 40}), study.rule("sledai2k", Sledai2kSettings))[0].total == 0


def test_clinician_entry_wins_over_lab(study: Study) -> None:
    v = score(study, [descriptor("leukopenia", 40, False), finding("leukocytes", 40, 2.0),
                      descriptor("proteinuria", 40, True), finding("protein_24h", 40, 0.1)])
    c = by_code(v)
    assert c["leukopenia"].score == 0 and c["leukopenia"].basis == "clinician"
    assert c["proteinuria"].score == 4 and c["proteinuria"].basis == "clinician"
    assert v.total == 4


def test_latest_clinician_entry_in_window_wins(study: Study) -> None:
    v = score(study, [descriptor("arthritis", 32, True), descriptor("arthritis", 40, False)])
    assert by_code(v)["arthritis"].score == 0


def test_an_earlier_visits_absent_does_not_outweigh_the_labs_of_this_visit(study: Study) -> None:
    """docs/clinical-rules.md#sledai2k-clinician-first: the clinician's entry *for the visit* wins over the labs.
    W3 (day 33) recorded no proteinuria; W4 (day 40) recorded arthritis only, and a 24-h protein of 2.0 g is dated
    day 39: proteinuria scores 4 from the lab, not 0 from W3's entry (which speaks for its own date)."""
    earlier = descriptor("proteinuria", 33, False).model_copy(update={"visit": "W3"})
    v = score(study, [earlier, descriptor("arthritis", 40, True), finding("protein_24h", 39, 2.0)])
    assert (by_code(v)["proteinuria"].score, by_code(v)["proteinuria"].basis) == (4, "lab")
    assert v.total == 8
    # with no lab in the window, the earlier "absent" is what there is: 0, by the clinician
    v = score(study, [earlier, descriptor("arthritis", 40, True)])
    assert (by_code(v)["proteinuria"].score, by_code(v)["proteinuria"].basis) == (0, "clinician")
    # an earlier "present" inside the window is present in the window (and wins over a normal lab)
    present = descriptor("proteinuria", 33, True).model_copy(update={"visit": "W3"})
    v = score(study, [present, descriptor("arthritis", 40, True), finding("protein_24h", 39, 0.1)])
    assert (by_code(v)["proteinuria"].score, by_code(v)["proteinuria"].sources) == (4, [present.source.reference])
    # the visit's own "absent" still wins over a high lab (the clinician applies the exclusions)
    v = score(study, [present, descriptor("proteinuria", 40, False), finding("protein_24h", 39, 2.0)])
    assert by_code(v)["proteinuria"].score == 0


def test_window_edges_and_order_of_results_in_the_crf(study: Study) -> None:
    # results arrive in any date order; the window V-10 … V is inclusive at both ends whatever the order
    rash = descriptor("rash", 40, False)
    assert score(study, [finding("protein_24h", 41, 1.0), rash, finding("protein_24h", 30, 1.0),
                         finding("protein_24h", 29, 1.0)]).total == 4
    assert score(study, [finding("protein_24h", 41, 1.0), rash, finding("protein_24h", 29, 1.0)]).total == 0
    late, early = descriptor("arthritis", 40, False), descriptor("arthritis", 31, True)
    assert by_code(score(study, [late, early]))["arthritis"].score == 0
    # two entries of one date and no time: the score takes the one the visit keeps (select: last), in any order
    yes, no = descriptor("arthritis", 40, True), descriptor("arthritis", 40, False)
    kept = select([yes, no], "last", None)
    for order in ([early, yes, no], [no, early, yes], [yes, no], [no, yes]):
        assert by_code(score(study, order))["arthritis"].sources == [kept.source.reference]
    high = finding("protein_24h", 35, 1.0)
    v = score(study, [finding("protein_24h", 41, 0.1), rash, high, finding("protein_24h", 30, 0.2)])
    assert by_code(v)["proteinuria"].sources == [high.source.reference]


def test_upcr_only_when_no_24h_protein(study: Study) -> None:
    rash = descriptor("rash", 40, False)
    assert score(study, [rash, finding("upcr", 40, 0.6)]).total == 4
    assert score(study, [rash, finding("upcr", 40, 0.5)]).total == 0
    assert score(study, [rash, finding("protein_24h", 39, 0.3), finding("upcr", 40, 0.8)]).total == 0


def test_censored_results(study: Study) -> None:
    rash = descriptor("rash", 40, False)
    assert score(study, [rash, finding("upcr", 40, 0.2, comparator="<")]).total == 0
    assert score(study, [rash, finding("platelets", 40, 20, comparator="<")]).total == 1


def test_complement_range_interpretation_default(study: Study) -> None:
    rash = descriptor("rash", 40, False)
    # own range first: 0.85 is below 0.9
    assert score(study, [rash, finding("c3", 40, 0.85, ref_low=0.9)]).total == 2
    # a lab whose own range starts at 0.8: 0.85 is normal
    assert score(study, [rash, finding("c3", 40, 0.85, ref_low=0.8)]).total == 0
    # no range: interpretation L
    assert score(study, [rash, finding("c4", 40, 0.2, interpretation=("L",))]).total == 2
    # no range, no interpretation: study default C3 low 0.9 g/L
    assert score(study, [rash, finding("c3", 40, 0.85)]).total == 2
    assert score(study, [rash, finding("c3", 40, 0.95)]).total == 0


def test_dna_binding_above_range(study: Study) -> None:
    rash = descriptor("rash", 40, False)
    assert score(study, [rash, finding("anti_dsdna", 40, 31, ref_high=30)]).total == 2
    assert score(study, [rash, finding("anti_dsdna", 40, 30, ref_high=30)]).total == 0
    assert score(study, [rash, finding("anti_dsdna", 40, 80, ref_high=100)]).total == 0


def test_cytopenias_after_lymphodepletion_are_excluded(study: Study) -> None:
    # lymphodepletion starts on study day -5; exclusion runs through 30 days after it (study day 26)
    low = [finding("platelets", 10, 50), finding("leukocytes", 10, 1.0)]
    v = score(study, [descriptor("rash", 10, False), *low], visit_day=10, ld_start_day=-5)
    assert v.total == 0 and by_code(v)["thrombocytopenia"].basis == "excluded"
    v = score(study, [descriptor("rash", 26, False), finding("platelets", 26, 50)], visit_day=26, ld_start_day=-5)
    assert v.total == 0
    v = score(study, [descriptor("rash", 27, False), finding("platelets", 27, 50)], visit_day=27, ld_start_day=-5)
    assert v.total == 1
    # a clinician entry still counts inside the exclusion period
    v = score(study, [descriptor("thrombocytopenia", 10, True), *low], visit_day=10, ld_start_day=-5)
    assert v.total == 1


def test_visit_without_clinician_assessment_has_no_total(study: Study) -> None:
    v = score(study, [finding("protein_24h", 40, 1.0), finding("platelets", 40, 50)])
    assert v.total is None
    labs_suffice = study.rule("sledai2k", Sledai2kSettings).model_copy(update={"min_clinician_descriptors": 0})
    v = derive_sledai2k(crf([finding("protein_24h", 40, 1.0)], {"V": 40}), labs_suffice)[0]
    assert v.total == 4


def test_baseline_and_change(study: Study) -> None:
    f = [descriptor("arthritis", -28, True), descriptor("rash", -28, True),       # SCR 6
         descriptor("arthritis", -7, True), finding("protein_24h", -8, 1.2),     # BL 8 (baseline)
         descriptor("arthritis", 29, False), finding("protein_24h", 29, 0.7),    # W4 4
         descriptor("arthritis", 85, False), finding("protein_24h", 85, 0.2)]    # W12 0
    settings = study.rule("sledai2k", Sledai2kSettings)
    visits = derive_sledai2k(crf(f, {"SCR": -28, "BL": -7, "W4": 29, "W12": 85}), settings)
    got = {v.visit: (v.total, v.change, v.baseline) for v in visits}
    assert got == {"SCR": (6, None, False), "BL": (8, 0, True), "W4": (4, -4, False), "W12": (0, -8, False)}


def test_an_assessment_is_not_reused_by_a_later_visit(study: Study) -> None:
    # BL assessment on day -7; a D1 visit on day 1 with labs only lies within BL's 10-day look-back
    f = [descriptor("arthritis", -7, True), finding("protein_24h", -8, 1.2), finding("platelets", 1, 250)]
    visits = derive_sledai2k(crf(f, {"BL": -7, "D1": 1}), study.rule("sledai2k", Sledai2kSettings))
    got = {v.visit: (v.total, v.baseline) for v in visits}
    assert got == {"BL": (8, True), "D1": (None, False)}
