"""Proteinuria per visit and the KDIGO 2024 renal response (fhir_adapter/derive/renal.py)."""

from __future__ import annotations

from fhir_adapter.crf.models import Finding
from fhir_adapter.derive.renal import RenalResponse, RenalSettings, derive_renal
from tests.efficacy_helpers import rule, visit_crf
from tests.helpers import finding

S = rule("renal", RenalSettings)
ON = S.model_copy(update={"response": S.response.model_copy(update={"enabled": True})})


def test_shipped_settings() -> None:
    r = S.response
    assert not r.enabled and r.ln_at_baseline == "proteinuria" and r.ln_min_proteinuria == 0.5
    assert (r.complete_below, r.partial_reduction, r.partial_below, r.egfr_max_decline) == (0.5, 0.5, 3.0, 0.15)
    assert r.measures == ("upcr", "protein_24h")


def test_values_and_changes_of_both_measures() -> None:
    crf = visit_crf({"BL": (-7, {"upcr": 2.4, "protein_24h": 3.1}), "W4": (29, {"upcr": 1.2}),
                     "W12": (85, {"upcr": 0.3, "protein_24h": 0.4})})
    res = derive_renal(crf, S)
    v = {x.visit: x for x in res.visits}
    assert v["BL"].upcr_change == 0 and v["BL"].protein_24h_change == 0
    assert v["W4"].upcr_change == -1.2 and v["W4"].protein_24h is None and v["W4"].protein_24h_change is None
    assert v["W12"].upcr_change == -2.1 and v["W12"].protein_24h_change == -2.7   # no float noise
    assert res.response is None   # off by default


def test_unit_variant_already_normalised_by_mapping() -> None:
    # 226.24 mg/mmol converted by the mapping factor 0.00884017 -> 2.0 mg/mg
    crf = visit_crf({"BL": (-7, {"upcr": 226.24 * 0.00884017}), "W4": (29, {"upcr": 1.0})})
    assert derive_renal(crf, S).visits[1].upcr_change == -1.0


def response(bl: float, w: float, egfr_bl: float | None = 100, egfr_w: float | None = 100,
             settings: RenalSettings = ON) -> RenalResponse | None:
    bl_vals: dict[str, float] = {"upcr": bl}
    w_vals: dict[str, float] = {"upcr": w}
    if egfr_bl is not None:
        bl_vals["egfr"] = egfr_bl
    if egfr_w is not None:
        w_vals["egfr"] = egfr_w
    return derive_renal(visit_crf({"BL": (-7, bl_vals), "W24": (169, w_vals)}), settings).response


def test_response_grades_at_the_limits() -> None:
    def grade(bl: float, w: float, egfr_bl: float | None = 100, egfr_w: float | None = 100) -> str | None:
        r = response(bl, w, egfr_bl, egfr_w)
        assert r is not None and r.ln_at_baseline
        return r.visits[0].response

    assert grade(2.0, 0.45) == "complete"
    assert grade(2.0, 0.5) == "partial"        # 0.5 is not < 0.5; 75 % reduction
    assert grade(4.0, 2.0) == "partial"        # exactly 50 %
    assert grade(4.0, 2.01) == "none"          # 49.75 %
    assert grade(6.0, 3.0) == "none"           # 50 % but not < 3.0
    assert grade(2.0, 0.4, egfr_w=85) == "complete"   # -15 %: still stable
    assert grade(2.0, 0.4, egfr_w=84) == "none"       # -16 %
    assert grade(2.0, 0.4, egfr_w=130) == "complete"  # improvement


def test_ln_at_baseline_needs_proteinuria_over_0_5() -> None:
    r = response(0.5, 0.1)
    assert r is not None and r.ln_at_baseline is False and r.visits == [] and "no lupus nephritis" in (r.reason or "")
    every = ON.model_copy(update={"response": ON.response.model_copy(update={"ln_at_baseline": "all"})})
    r = response(0.5, 0.1, settings=every)
    assert r is not None and r.ln_at_baseline and r.visits[0].response == "complete"


def test_missing_egfr_and_missing_values() -> None:
    r = response(2.0, 0.3, egfr_w=None)
    assert r is not None and r.visits[0].response is None and "eGFR" in (r.visits[0].reason or "")
    lax = ON.model_copy(update={"response": ON.response.model_copy(update={"require_egfr": False})})
    r = response(2.0, 0.3, egfr_w=None, settings=lax)
    assert r is not None and r.visits[0].response == "complete"
    none = derive_renal(visit_crf({"W4": (29, {"upcr": 1.0})}), ON).response
    assert none is not None and none.ln_at_baseline is None and "no baseline" in (none.reason or "")
    # consented, screened, not dosed yet: the reason is the missing Day 1, not a missing value
    screened = visit_crf({"SCR": (-30, {"upcr": 2.3})})
    r = derive_renal(screened.model_copy(update={"day1": None}), ON).response
    assert r is not None and r.reason == "no Day 1 (not dosed): no baseline, no response"


def test_measure_preference_and_first_and_last_response() -> None:
    crf = visit_crf({
        "BL": (-7, {"protein_24h": 3.0, "egfr": 90}), "W4": (29, {"protein_24h": 2.0, "upcr": 0.1, "egfr": 90}),
        "W12": (85, {"protein_24h": 1.2, "egfr": 90}), "W24": (169, {"protein_24h": 0.3, "egfr": 90}),
        "W52": (365, {"protein_24h": 0.8, "egfr": 90}),
    })
    r = derive_renal(crf, ON).response
    assert r is not None and r.measure == "protein_24h"   # no baseline UPCR: the 24-h protein grades every visit
    assert [v.response for v in r.visits] == ["none", "partial", "complete", "partial"]
    assert r.first_partial_or_better is not None and r.first_partial_or_better.visit == "W12"
    assert r.first_complete is not None and r.first_complete.visit == "W24" and r.first_complete.study_day == 169
    assert r.last is not None and r.last.visit == "W52"


def test_censored_results() -> None:
    crf = visit_crf({"BL": (-7, {"upcr": 2.0, "egfr": 90}),
                     "W24": (169, {"upcr": finding("upcr", 169, 0.1, comparator="<"), "egfr": 90}),
                     "W52": (365, {"upcr": finding("upcr", 365, 3.0, comparator=">"), "egfr": 90})})
    r = derive_renal(crf, ON).response
    assert r is not None and [v.response for v in r.visits] == ["complete", None]


def test_a_censored_egfr_decides_stability_only_when_its_bound_does() -> None:
    """Labs report eGFR as ">90" or ">60". Against an exact baseline 100 (limit 85): a visit ">90" is stable,
    ">60" may or may not be — not evaluable, not "none". Against a baseline ">90": a visit of 77 may be stable
    or not (the true limit is above 76.5) — not evaluable, not "complete"; 70 is certainly below. No eGFR change
    is stored against a censored value."""
    def graded(egfr_bl: Finding | float, egfr_w: Finding | float) -> tuple[str | None, float | None]:
        crf = visit_crf({"BL": (-7, {"upcr": 2.0, "egfr": egfr_bl}), "W24": (169, {"upcr": 0.3, "egfr": egfr_w})})
        r = derive_renal(crf, ON).response
        assert r is not None
        return r.visits[0].response, r.visits[0].egfr_change

    assert graded(100, finding("egfr", 169, 90, comparator=">")) == ("complete", None)
    assert graded(100, finding("egfr", 169, 60, comparator=">")) == (None, None)
    assert graded(finding("egfr", -7, 90, comparator=">"), 77) == (None, None)
    assert graded(finding("egfr", -7, 90, comparator=">"), 70) == ("none", None)
    assert graded(100, finding("egfr", 169, 15, comparator="<")) == ("none", None)   # certainly below 85
    assert graded(finding("egfr", -7, 30, comparator="<"), 80) == ("complete", None)  # limit below 25.5
    # proteinuria that meets neither threshold decides alone: "none", whatever the eGFR
    crf = visit_crf({"BL": (-7, {"upcr": 4.0, "egfr": 100}),
                     "W24": (169, {"upcr": 3.8, "egfr": finding("egfr", 169, 60, comparator=">")})})
    r = derive_renal(crf, ON).response
    assert r is not None and r.visits[0].response == "none"


def test_limits_are_compared_on_the_decimal_numbers() -> None:
    """0.85 x 21.1 = 17.935: a visit eGFR of 17.935 is stable (the float product is 17.935000000000002); a
    reduction of 49.99995 % is not 50 % (it had been rounded before the comparison)."""
    stable = visit_crf({"BL": (-7, {"upcr": 2.0, "egfr": 21.1}), "W24": (169, {"upcr": 0.3, "egfr": 17.935})})
    r = derive_renal(stable, ON).response
    assert r is not None and r.visits[0].response == "complete"
    short = visit_crf({"BL": (-7, {"upcr": 2.0, "egfr": 90}), "W24": (169, {"upcr": 1.000001, "egfr": 90})})
    r = derive_renal(short, ON).response
    assert r is not None and r.visits[0].response == "none" and 0.4999 < (r.visits[0].reduction or 0) < 0.5
