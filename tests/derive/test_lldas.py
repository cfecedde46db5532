"""LLDAS per visit (docs/clinical-rules.md#lldas; Franklyn 2016) and the response rate, built from hand-made
SLEDAI-2K, PGA and dose results."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import yaml

from fhir_adapter.crf.models import ConMed
from fhir_adapter.derive.glucocorticoids import PredEqVisit
from fhir_adapter.derive.lldas import CRITERIA, LldasSettings, LldasVisit, derive_lldas, lldas_rate
from fhir_adapter.derive.pga import PgaVisit
from fhir_adapter.derive.sledai2k import DescriptorScore, Sledai2kPrior, Sledai2kVisit
from tests.efficacy_helpers import STUDY, conmed, rule
from tests.helpers import DAY1, d

S = rule("lldas", LldasSettings)
GROUPS = {x["code"]: x["group"] for x in yaml.safe_load((STUDY / "sledai2k.yaml").read_text())["descriptors"]}
WEIGHTS = {"arthritis": 4, "rash": 2, "proteinuria": 4, "low-complement": 2, "increased-dna-binding": 2,
           "fever": 1, "pleurisy": 2, "thrombocytopenia": 1, "vasculitis": 8}


def sledai(visit: str, day: int, scored: list[str] | None) -> Sledai2kVisit:
    """A SLEDAI-2K visit whose ``scored`` descriptors score their weight (None = not assessed)."""
    if scored is None:
        return Sledai2kVisit(visit=visit, date=d(day), total=None, descriptors=[])
    desc = [DescriptorScore(code=c, weight=WEIGHTS[c], score=WEIGHTS[c], basis="clinician",
                            sources=[f"Observation/{c}"]) for c in scored]
    return Sledai2kVisit(visit=visit, date=d(day), total=sum(x.score for x in desc), descriptors=desc)


def pga(visit: str, day: int, value: float | None) -> PgaVisit:
    return PgaVisit(visit=visit, date=d(day), pga=value, source="Observation/pga-" + visit)


def dose(visit: str, day: int, mg: float | None, reason: str | None = None) -> PredEqVisit:
    return PredEqVisit(visit=visit, date=d(day), mg_per_day=mg, reason=reason)


Visit = tuple[str, int, list[str] | None, float | None, float | None]


def run(visits: list[Visit], settings: LldasSettings = S, cm: Sequence[ConMed] = (),
        day1: dt.date | None = DAY1) -> dict[str, LldasVisit]:
    """visits: (id, day, scored descriptors or None, pga, mg/day)."""
    sl = [sledai(v, day, sc) for v, day, sc, _, _ in visits]
    pg = [pga(v, day, p) for v, day, _, p, _ in visits]
    pr = [dose(v, day, mg) for v, day, _, _, mg in visits]
    return {x.visit: x for x in derive_lldas(sl, pg, pr, day1, GROUPS, settings, cm)}


def test_shipped_settings() -> None:
    assert (S.sledai_max, S.pga_max, S.pred_eq_max_mg, S.maintenance_criterion) == (4, 1.0, 7.5, False)
    assert set(S.major_organ_groups) == {"cns", "vascular", "renal", "cardiorespiratory", "constitutional"}
    assert {c for c, g in GROUPS.items() if g in S.major_organ_groups} == {
        "seizure", "psychosis", "organic-brain-syndrome", "visual-disturbance", "cranial-nerve-disorder",
        "lupus-headache", "cva", "vasculitis", "urinary-casts", "hematuria", "proteinuria", "pyuria",
        "pleurisy", "pericarditis", "fever"}


def test_all_criteria_exactly_at_their_limits_meet_lldas() -> None:
    r = run([("BL", -7, ["arthritis"], 2.0, 20), ("W4", 29, ["arthritis"], 1.0, 7.5)])
    assert r["W4"].lldas is True and r["W4"].failed == [] and r["W4"].previous_visit == "BL"
    assert r["W4"].criteria == dict.fromkeys(CRITERIA[:5], True)
    assert "Observation/arthritis" in r["W4"].sources and "Observation/pga-W4" in r["W4"].sources


def test_each_criterion_fails_just_over_its_limit() -> None:
    r = run([("BL", -7, ["arthritis", "rash"], 2.0, 20), ("W4", 29, ["arthritis", "rash"], 1.1, 7.51)])
    assert r["W4"].lldas is False and r["W4"].failed == ["sledai_le_4", "pga_le_1", "pred_eq_le_7_5"]


def test_major_organ_activity_fails_even_with_total_le_4() -> None:
    r = run([("BL", -7, ["proteinuria"], 1.0, 5), ("W4", 29, ["proteinuria"], 0.5, 5)])
    assert r["W4"].failed == ["no_major_organ_activity"]
    r = run([("BL", -7, ["fever"], 1.0, 5), ("W4", 29, ["fever"], 0.5, 5)])
    assert r["W4"].failed == ["no_major_organ_activity"]   # fever scores 1 but is constitutional
    r = run([("BL", -7, ["low-complement", "increased-dna-binding"], 1.0, 5),
             ("W4", 29, ["low-complement", "increased-dna-binding"], 0.5, 5)])
    assert r["W4"].lldas is True   # serology alone is allowed with total <= 4


def test_new_feature_compared_with_the_previous_assessed_visit() -> None:
    r = run([("BL", -7, ["arthritis"], 2.0, 10), ("W4", 29, ["rash"], 0.5, 5), ("W8", 57, ["rash"], 0.5, 5),
             ("W12", 85, None, 0.5, 5), ("W24", 169, ["rash", "thrombocytopenia"], 0.5, 5)])
    assert r["W4"].failed == ["no_new_features"]      # rash not at BL
    assert r["W8"].lldas is True                      # rash also at W4
    assert r["W12"].lldas is None                     # SLEDAI not assessed
    assert r["W24"].previous_visit == "W8" and r["W24"].failed == ["no_new_features"]
    # a descriptor that stops scoring is not a new feature
    assert run([("BL", -7, ["arthritis", "rash"], 2.0, 10), ("W4", 29, [], 0.0, 0)])["W4"].lldas is True


def test_not_evaluable_cases_in_order_with_reasons() -> None:
    r = run([("SCR", -28, ["arthritis"], 1.0, 5), ("BL", -7, ["arthritis"], 1.0, 5), ("D1", 1, [], 0.0, 0),
             ("W1", 8, None, 0.5, 0), ("W2", 15, [], None, 0)])
    assert r["SCR"].lldas is None and "baseline" in (r["SCR"].reason or "")
    assert r["D1"].lldas is None and "on or before Day 1" in (r["D1"].reason or "")   # Day 1 itself
    assert r["W1"].lldas is None and "SLEDAI-2K not assessed" in (r["W1"].reason or "")
    assert r["W2"].lldas is None and "PGA missing" in (r["W2"].reason or "")
    first = run([("W4", 29, [], 0.5, 0), ("W8", 57, [], 0.5, 0)])
    assert first["W4"].lldas is None and "no previous" in (first["W4"].reason or "")
    assert first["W8"].lldas is True
    assert run([("W4", 29, [], 0.5, 0)], day1=None)["W4"].reason == "Day 1 unknown"


def test_dose_not_evaluable_makes_the_visit_not_evaluable() -> None:
    sl = [sledai("BL", -7, []), sledai("W4", 29, [])]
    pg = [pga("BL", -7, 1.0), pga("W4", 29, 0.5)]
    pr = [dose("BL", -7, 0), dose("W4", 29, None, "prednisone (MedicationStatement/1): no frequency_per_day")]
    w4 = derive_lldas(sl, pg, pr, DAY1, GROUPS, S)[1]
    assert w4.lldas is None and "no frequency_per_day" in (w4.reason or "")


def test_fifth_criterion_is_off_by_default_and_works_when_on() -> None:
    visits: list[Visit] = [("BL", -7, [], 1.0, 5), ("W4", 29, [], 0.5, 5)]
    cms = [conmed("mycophenolate mofetil", 1, None, daily=3000, kind="statement")]
    assert run(visits, cm=cms)["W4"].lldas is True
    on = S.model_copy(update={"maintenance_criterion": True})
    w4 = run(visits, on, cms)["W4"]
    assert w4.lldas is False and w4.failed == ["maintenance_therapy"]
    assert run(visits, on, [conmed("mycophenolate mofetil", 1, None, daily=2000)])["W4"].lldas is True
    assert run(visits, on, [conmed("cyclophosphamide", 20, 30, daily=1000)])["W4"].failed == ["maintenance_therapy"]
    assert run(visits, on, [conmed("cyclophosphamide", -5, -3, daily=1000)])["W4"].lldas is True   # ended
    unknown = run(visits, on, [conmed("azathioprine", 1, None, dose=None)])["W4"]
    assert unknown.lldas is None and "azathioprine" in (unknown.reason or "")


def test_response_rate_per_visit() -> None:
    pairs = [("W4", True), ("W4", False), ("W4", None), ("W8", True), ("W8", True), ("UNS40", True)]
    rates = {r.visit: r for r in lldas_rate(pairs, ["BL", "W4", "W8"])}
    assert (rates["W4"].n, rates["W4"].responders, rates["W4"].rate) == (2, 1, 0.5)
    assert rates["W8"].rate == 1.0
    assert rates["BL"].n == 0 and rates["BL"].rate is None
    assert [r.visit for r in lldas_rate(pairs, ["BL", "W4", "W8"])] == ["BL", "W4", "W8"]


def test_previous_assessment_in_no_visit_is_the_comparator() -> None:
    """docs/clinical-rules.md#lldas-new-features: the previous assessment, visit or not."""
    def off(day: int, scored: list[str]) -> Sledai2kPrior:
        desc = [DescriptorScore(code=c, weight=WEIGHTS[c], score=WEIGHTS[c], basis="clinician") for c in scored]
        return Sledai2kPrior(date=d(day), total=sum(x.score for x in desc), sources=[], descriptors=desc)

    sl = [sledai("W4", 29, ["rash"]), sledai("W12", 85, ["rash", "arthritis"])]
    pg = [pga("W4", 29, 0.5), pga("W12", 85, 0.5)]
    pr = [dose("W4", 29, 5), dose("W12", 85, 5)]
    alone = {x.visit: x for x in derive_lldas(sl, pg, pr, DAY1, GROUPS, S)}
    assert alone["W4"].lldas is None and "no previous" in (alone["W4"].reason or "")
    r = {x.visit: x for x in derive_lldas(sl, pg, pr, DAY1, GROUPS, S,
                                          off_visit=[off(-40, ["rash"]), off(50, ["rash", "arthritis"])])}
    assert r["W4"].lldas is True and (r["W4"].previous_visit, r["W4"].previous_date) == (None, d(-40))
    # the one between the windows (day 50) is later than W4: arthritis is not new at W12
    assert r["W12"].failed == ["sledai_le_4"] and r["W12"].previous_date == d(50)
    # on one date a visit's assessment wins over one in no visit
    same = derive_lldas(sl, pg, pr, DAY1, GROUPS, S, off_visit=[off(29, [])])
    assert (same[1].previous_visit, same[1].previous_date) == ("W4", d(29))


def test_sources_name_the_results_behind_every_criterion() -> None:
    """An evaluated visit's sources (the write-back's derivedFrom) include the previous assessment it was compared
    with for new features, and the records the fifth criterion looked at."""
    def visit(name: str, day: int, scored: list[str]) -> Sledai2kVisit:
        desc = [DescriptorScore(code=c, weight=WEIGHTS[c], score=WEIGHTS[c], basis="clinician",
                                sources=[f"Observation/{c}-{name}"]) for c in scored]
        return Sledai2kVisit(visit=name, date=d(day), total=sum(x.score for x in desc), descriptors=desc)

    sl = [visit("BL", -7, ["arthritis"]), visit("W4", 29, ["arthritis"])]
    pg = [pga("BL", -7, 1.0), pga("W4", 29, 0.5)]
    pr = [PredEqVisit(visit=v, date=d(day), mg_per_day=5, sources=[f"MedicationStatement/pred-{v}"])
          for v, day in (("BL", -7), ("W4", 29))]
    w4 = derive_lldas(sl, pg, pr, DAY1, GROUPS, S)[1]
    assert w4.lldas is True
    assert w4.sources == ["MedicationStatement/pred-W4", "Observation/arthritis-BL", "Observation/arthritis-W4",
                          "Observation/pga-W4"]
    prior = Sledai2kPrior(date=d(10), total=4, sources=["Observation/clinician-day10"],
                          descriptors=[DescriptorScore(code="arthritis", weight=4, score=4, basis="clinician")])
    w4 = derive_lldas(sl, pg, pr, DAY1, GROUPS, S, off_visit=[prior])[1]
    assert "Observation/clinician-day10" in w4.sources and "Observation/arthritis-BL" not in w4.sources
    on = S.model_copy(update={"maintenance_criterion": True})
    cms = [conmed("mycophenolate mofetil", 1, None, daily=2000)]
    w4 = derive_lldas(sl, pg, pr, DAY1, GROUPS, on, cms)[1]
    assert w4.lldas is True and cms[0].source.reference in w4.sources
