"""Dose escalation: the Beta CDF, BOIN boundaries/tables/MTD and 3+3.

Rules: docs/clinical-rules.md#boin and docs/clinical-rules.md#three-plus-three.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pytest

from fhir_adapter.derive.escalation import (
    BoinSettings,
    DltOutcome,
    EscalationSettings,
    beta_cdf,
    boin_boundaries,
    boin_row,
    boin_select_mtd,
    derive_escalation,
    pava,
    prob_above,
)
from fhir_adapter.endpoints import escalation as escalation_endpoint
from fhir_adapter.endpoints.registry import StudyInput
from fhir_adapter.study.load import Study

# --- regularised incomplete beta -------------------------------------------------------------------------


def _binomial_tail(x: float, a: int, b: int) -> float:
    """I_x(a, b) for integers = P(Binomial(a + b − 1, x) ≥ a)."""
    n = a + b - 1
    return sum(math.comb(n, k) * x**k * (1 - x) ** (n - k) for k in range(a, n + 1))


@pytest.mark.parametrize("x", [0.01, 0.1, 0.25, 0.3, 0.33, 0.5, 0.77, 0.99])
@pytest.mark.parametrize(("a", "b"), [(1, 1), (1, 4), (4, 1), (3, 5), (7, 13), (20, 2), (2, 30)])
def test_beta_cdf_equals_the_binomial_identity_for_integers(x: float, a: int, b: int) -> None:
    assert beta_cdf(x, a, b) == pytest.approx(_binomial_tail(x, a, b), abs=1e-13)


def test_beta_cdf_closed_forms_and_edges() -> None:
    assert beta_cdf(0.5, 0.5, 0.5) == pytest.approx(0.5, abs=1e-13)  # arcsine law, symmetric
    assert beta_cdf(0.25, 0.5, 0.5) == pytest.approx(2 / math.pi * math.asin(math.sqrt(0.25)), abs=1e-12)
    assert beta_cdf(0.3, 2.5, 1) == pytest.approx(0.3**2.5, abs=1e-13)  # I_x(a, 1) = x^a
    assert beta_cdf(0.0, 2, 3) == 0.0 and beta_cdf(1.0, 2, 3) == 1.0
    with pytest.raises(ValueError):
        beta_cdf(0.5, 0, 1)


def test_posterior_probability_above_target() -> None:
    # 3/3 at phi 0.30: Beta(4, 1) → 1 − 0.3^4
    assert prob_above(0.30, 3, 3) == pytest.approx(1 - 0.3**4)
    # 2/3 at phi 0.30: Beta(3, 2) → 1 − (4·0.3³·0.7 + 0.3⁴) = 0.9163 ≤ 0.95 → no elimination
    assert prob_above(0.30, 2, 3) == pytest.approx(1 - (4 * 0.3**3 * 0.7 + 0.3**4))


# --- BOIN ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("phi", "lam_e", "lam_d"), [(0.25, 0.197, 0.298), (0.30, 0.236, 0.358),
                                                     (0.33, 0.260, 0.395)])
def test_boin_boundaries_liu_yuan_2015(phi: float, lam_e: float, lam_d: float) -> None:
    # the 3-decimal values as quoted (Liu & Yuan 2015): 0.3585 is quoted as 0.358
    e, d = boin_boundaries(phi)
    assert e == pytest.approx(lam_e, abs=6e-4) and d == pytest.approx(lam_d, abs=6e-4)


def test_boin_boundaries_four_decimals() -> None:
    assert [round(v, 4) for v in boin_boundaries(0.30)] == [0.2365, 0.3585]
    assert [round(v, 4) for v in boin_boundaries(0.25)] == [0.1968, 0.2984]
    assert [round(v, 4) for v in boin_boundaries(0.33)] == [0.2604, 0.3947]


TABLES = {  # BOIN get.boundary() integer tables, n = 1..18
    0.25: ([0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 3, 3, 3],
           [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 5, 5, 5, 6, 6],
           [None, None, 3, 3, 3, 4, 4, 4, 5, 5, 6, 6, 6, 7, 7, 7, 8, 8]),
    0.30: ([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4],
           [1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5, 5, 6, 6, 6, 7, 7],
           [None, None, 3, 3, 4, 4, 5, 5, 5, 6, 6, 7, 7, 8, 8, 8, 9, 9]),
    0.33: ([0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4],
           [1, 1, 2, 2, 2, 3, 3, 4, 4, 4, 5, 5, 6, 6, 6, 7, 7, 8],
           [None, None, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 8, 9, 9, 10]),
}


@pytest.mark.parametrize("phi", sorted(TABLES))
def test_boin_integer_tables(phi: float) -> None:
    esc, de, elim = TABLES[phi]
    rows = [boin_row(n, phi) for n in range(1, 19)]
    assert [r.escalate_max for r in rows] == esc
    assert [r.deescalate_min for r in rows] == de
    assert [r.eliminate_min for r in rows] == elim


def test_pava_pools_violators_with_weights() -> None:
    assert pava([0.1, 0.3, 0.2, 0.4], [1, 1, 1, 1]) == pytest.approx([0.1, 0.25, 0.25, 0.4])
    assert pava([0.5, 0.1], [3, 1]) == pytest.approx([0.4, 0.4])
    assert pava([0.3, 0.2, 0.1], [1, 1, 1]) == pytest.approx([0.2, 0.2, 0.2])


def test_boin_worked_mtd_selections() -> None:
    r = boin_select_mtd(0.30, [3, 6, 12, 6], [0, 1, 3, 3])
    assert r.index == 2
    assert [round(e, 3) for e in r.estimates if e is not None] == [0.016, 0.172, 0.252, 0.500]
    r = boin_select_mtd(0.30, [6, 9, 6], [2, 2, 2])  # PAVA pools doses 1-2; the tie below φ goes up
    assert r.index == 1
    assert [round(e, 4) for e in r.estimates if e is not None] == [0.2646, 0.2646, 0.3361]
    r = boin_select_mtd(0.25, [3, 6, 9, 3], [0, 1, 4, 2])
    assert r.index == 1
    assert [round(e, 3) for e in r.estimates if e is not None] == [0.016, 0.172, 0.445, 0.661]


def test_boin_elimination_removes_the_dose_and_above_and_dose1_means_no_mtd() -> None:
    r = boin_select_mtd(0.30, [3, 3, 3], [0, 3, 0])
    assert r.eliminated == [False, True, True] and r.index == 0
    r = boin_select_mtd(0.30, [3, 0], [3, 0])
    assert r.index is None and r.eliminated == [True, True]
    # 2 treated with 2 DLTs: fewer than 3 treated, never eliminated
    assert boin_select_mtd(0.30, [2], [2]).eliminated == [False]


def test_boin_settings_change_the_boundaries() -> None:
    wide = BoinSettings(phi1_factor=0.5, phi2_factor=1.5)
    assert (boin_row(9, 0.30, wide).escalate_max, boin_row(9, 0.30).escalate_max) == (1, 2)
    assert (boin_row(11, 0.30, wide).deescalate_min, boin_row(11, 0.30).deescalate_min) == (5, 4)
    assert boin_boundaries(0.30, 0.5, 1.5) != boin_boundaries(0.30)


# --- 3+3 and the per-arm report -------------------------------------------------------------------------

S33 = EscalationSettings(dose_levels=("DL1", "DL2", "DL3"), expansion_arms={"EXP": "DL2"})


def cohort(arm: str, dlt: Sequence[bool | None], not_infused: int = 0) -> list[DltOutcome]:
    return [DltOutcome(arm, True, x) for x in dlt] + [DltOutcome(arm, False, None)] * not_infused


def test_three_plus_three_synthetic_trial() -> None:
    subjects = (cohort("DL1", [False] * 3) + cohort("DL2", [True] + [False] * 5, not_infused=1)
                + cohort("DL3", [True, True, False]) + cohort("EXP", [False] * 9 + [True, None]))
    r = derive_escalation(subjects, S33)
    rows = {x.arm: x for x in r.dose_levels}
    assert [x.arm for x in r.dose_levels] == ["DL1", "DL2", "DL3", "EXP"]
    assert (rows["DL1"].decision, rows["DL2"].decision, rows["DL3"].decision) == (
        "escalate", "MTD", "exceeds MTD: de-escalate")
    assert (rows["DL2"].n_treated, rows["DL2"].n_dlt_evaluable, rows["DL2"].n_dlt) == (6, 6, 1)
    assert (rows["EXP"].n_treated, rows["EXP"].n_dlt_evaluable, rows["EXP"].n_dlt) == (11, 10, 1)
    assert (rows["DL2"].n_dlt_not_evaluable, rows["EXP"].n_dlt_not_evaluable) == (0, 1)
    assert rows["EXP"].role == "expansion" and "not used for escalation" in rows["EXP"].decision
    assert r.rp2d.arm == "DL2" and r.rp2d.method == "3+3"
    assert "DL3 exceeds the MTD" in r.rp2d.rationale and "EXP" in r.rp2d.rationale


@pytest.mark.parametrize(("dlts", "decision"), [
    ([False] * 3, "escalate"),
    ([True, False, False], "expand to 6"),
    ([True, True, False], "exceeds MTD: de-escalate"),
    ([True] + [False] * 5, "escalate"),
    ([True, True] + [False] * 4, "exceeds MTD: de-escalate"),
    ([False, False], "cohort incomplete (2/3 evaluable)"),
    ([True, False, False, False], "cohort incomplete (4/6 evaluable)"),
    ([False] * 4, "cohort incomplete (4/6 evaluable)"),  # docs/clinical-rules.md#three-plus-three: the choice
    ([False] * 5, "cohort incomplete (5/6 evaluable)"),
    ([], "not treated"),
])
def test_three_plus_three_level_decisions(dlts: list[bool], decision: str) -> None:
    s = EscalationSettings(dose_levels=("DL1", "DL2"))
    r = derive_escalation(cohort("DL1", dlts), s)
    assert r.dose_levels[0].decision == decision


def test_not_evaluable_subjects_are_treated_but_not_evaluable() -> None:
    r = derive_escalation(cohort("DL1", [None, False, False]), S33)
    assert (r.dose_levels[0].n_treated, r.dose_levels[0].n_dlt_evaluable) == (3, 2)
    assert r.dose_levels[0].n_dlt_not_evaluable == 1  # to be replaced
    assert r.dose_levels[0].decision == "cohort incomplete (2/3 evaluable)"
    r = derive_escalation(cohort("DL1", [None]), S33)
    assert r.dose_levels[0].decision == "no DLT-evaluable subjects"


def test_three_plus_three_expand_lower_level_when_next_exceeds_and_mtd_pending() -> None:
    r = derive_escalation(cohort("DL1", [False] * 3) + cohort("DL2", [True, True, False]), S33)
    assert r.dose_levels[0].decision == "expand to 6: next level exceeds MTD"
    assert r.rp2d.arm is None and "needs 6 evaluable" in r.rp2d.rationale


@pytest.mark.parametrize("dl3", [[True, False, False], [False] * 3, [True] + [False] * 5, [False, False]])
def test_three_plus_three_never_doses_above_a_level_that_exceeds_the_mtd(dl3: list[bool]) -> None:
    """A DLT reported late at DL2, after DL3 was dosed: DL3 is closed whatever its own counts (it said "expand to
    6", "escalate" or "cohort incomplete" before), a level above that exceeds the MTD itself says so, and a level
    never treated stays "not treated"."""
    s = EscalationSettings(dose_levels=("DL1", "DL2", "DL3", "DL4", "DL5"))
    r = derive_escalation(cohort("DL1", [False] * 3) + cohort("DL2", [True, True] + [False] * 4)
                          + cohort("DL3", dl3) + cohort("DL4", [True, True, False]), s)
    assert [x.decision for x in r.dose_levels] == [
        "expand to 6: next level exceeds MTD", "exceeds MTD: de-escalate", "closed: DL2 exceeds MTD",
        "exceeds MTD: de-escalate", "not treated"]
    assert r.rp2d.arm is None and "DL2 exceeds the MTD, DL1 needs 6" in r.rp2d.rationale


def test_three_plus_three_names_no_rp2d_while_a_lower_level_must_still_expand() -> None:
    """docs/clinical-rules.md#rp2d: none while escalation is ongoing. DL2 1/3 (a DLT reported late, after DL3 was
    dosed) must expand to 6; if it then has 2/6, DL3 is closed — so DL3 (0/3, the top) is no RP2D yet, nor is the
    MTD DL3 below a DL4 that exceeds it."""
    r = derive_escalation(cohort("DL1", [False] * 3) + cohort("DL2", [True, False, False])
                          + cohort("DL3", [False] * 3), S33)
    assert [x.decision for x in r.dose_levels][:3] == ["escalate", "expand to 6", "highest level: MTD not reached"]
    assert r.rp2d.arm is None and r.rp2d.rationale.startswith(
        "escalation ongoing: DL2 expand to 6 — a lower level can still exceed the MTD; on the data so far it would "
        "be DL3: MTD not reached")
    s = EscalationSettings(dose_levels=("DL1", "DL2", "DL3", "DL4"))
    r = derive_escalation(cohort("DL1", [False] * 3) + cohort("DL2", [True, False]) + cohort("DL3", [False] * 6)
                          + cohort("DL4", [True, True, False]), s)
    assert r.rp2d.arm is None and "DL2 cohort incomplete (2/3 evaluable)" in r.rp2d.rationale
    # once DL2 has its six with one DLT, DL3 is the MTD
    r = derive_escalation(cohort("DL1", [False] * 3) + cohort("DL2", [True] + [False] * 5)
                          + cohort("DL3", [False] * 6) + cohort("DL4", [True, True, False]), s)
    assert r.rp2d.arm == "DL3"


def test_three_plus_three_lowest_level_too_toxic_and_mtd_not_reached() -> None:
    r = derive_escalation(cohort("DL1", [True, True, False]), S33)
    assert r.rp2d.arm is None and "lowest level" in r.rp2d.rationale
    top = cohort("DL1", [False] * 3) + cohort("DL2", [False] * 3) + cohort("DL3", [True] + [False] * 5)
    r = derive_escalation(top, S33)
    assert r.dose_levels[2].decision == "highest level: MTD not reached"
    assert r.rp2d.arm == "DL3" and "MTD not reached" in r.rp2d.rationale
    ongoing = derive_escalation(cohort("DL1", [False] * 3) + cohort("DL2", [False]), S33)
    assert ongoing.rp2d.arm is None and "ongoing" in ongoing.rp2d.rationale


def test_expansion_arms_never_drive_escalation() -> None:
    base = (cohort("DL1", [False] * 3) + cohort("DL2", [True] + [False] * 5)
            + cohort("DL3", [True, True, False]))
    with_exp = derive_escalation(base + cohort("EXP", [True] * 6), S33)
    alone = derive_escalation(base, S33)
    assert [x.decision for x in with_exp.dose_levels] == [x.decision for x in alone.dose_levels]
    assert with_exp.rp2d.arm == alone.rp2d.arm == "DL2"
    assert with_exp.dose_levels[3].n_dlt == 6


def test_boin_method_per_level_and_rp2d() -> None:
    s = EscalationSettings(method="boin", target_dlt_rate=0.30, dose_levels=("D1", "D2", "D3", "D4"))
    subjects = (cohort("D1", [False] * 3) + cohort("D2", [True] + [False] * 5)
                + cohort("D3", [True] * 3 + [False] * 9) + cohort("D4", [True] * 3 + [False] * 3))
    r = derive_escalation(subjects, s)
    assert [x.decision for x in r.dose_levels] == ["escalate", "escalate", "stay", "de-escalate"]
    assert r.rp2d.arm == "D3" and r.rp2d.method == "BOIN (target 0.3)"
    assert r.boundaries is not None and round(r.boundaries["lambda_e"], 4) == 0.2365


def test_boin_eliminated_levels_reported() -> None:
    s = EscalationSettings(method="boin", dose_levels=("D1", "D2", "D3"))
    r = derive_escalation(cohort("D1", [False] * 3) + cohort("D2", [True] * 3), s)
    # D1's own data would escalate, but BOIN (get.oc) never moves to an eliminated level: it stays
    assert [x.decision for x in r.dose_levels] == ["stay: next level eliminated", "eliminated", "eliminated"]
    assert r.rp2d.arm is None and "needs 6 DLT-evaluable subjects (3 so far)" in r.rp2d.rationale
    r = derive_escalation(cohort("D1", [False] * 6) + cohort("D2", [True] * 3), s)
    assert r.rp2d.arm == "D1"
    r = derive_escalation(cohort("D1", [True] * 3), s)
    assert r.rp2d.arm is None and "lowest level is eliminated" in r.rp2d.rationale


def test_boin_never_escalates_into_an_eliminated_level_nor_de_escalates_below_the_lowest() -> None:
    s = EscalationSettings(method="boin", dose_levels=("D1", "D2", "D3"))
    r = derive_escalation(cohort("D1", [False] * 3) + cohort("D2", [True] + [False] * 5) + cohort("D3", [True] * 3), s)
    assert [x.decision for x in r.dose_levels] == ["escalate", "stay: next level eliminated", "eliminated"]
    r = derive_escalation(cohort("D1", [True, True] + [False] * 4), s)  # 2/6: between the boundaries
    assert r.dose_levels[0].decision == "stay"
    r = derive_escalation(cohort("D1", [True] * 3 + [False] * 5), s)  # 3/8 ≥ ceiling(0.3585·8) = 3: de-escalate
    assert r.dose_levels[0].decision == "stay: lowest level (at the de-escalation boundary)"


def test_boin_mtd_is_never_a_dose_the_design_de_escalates_from() -> None:
    """boundMTD = TRUE (docs/clinical-rules.md#boin): DL2 3/6 has the isotonic estimate 0.5 ≥ λd; closest to 0.3
    it would be the MTD (boundMTD = FALSE), but the design de-escalates from it."""
    s = EscalationSettings(method="boin", dose_levels=("D1", "D2"))
    r = derive_escalation(cohort("D1", [False] * 6) + cohort("D2", [True] * 3 + [False] * 3), s)
    assert [x.decision for x in r.dose_levels] == ["escalate", "de-escalate"]
    assert r.rp2d.arm == "D1"
    r = derive_escalation(cohort("D1", [True] * 4 + [False] * 4), s)
    assert r.rp2d.arm is None and "at or above λd 0.3585" in r.rp2d.rationale
    unbounded = s.model_copy(update={"boin": s.boin.model_copy(update={"bound_mtd": False})})
    r = derive_escalation(cohort("D1", [False] * 6) + cohort("D2", [True] * 3 + [False] * 3), unbounded)
    assert r.rp2d.arm == "D2", "the package's default, when a study asks for it"


@pytest.mark.parametrize("method", ["3+3", "boin"])
def test_no_rp2d_while_a_subject_is_still_in_its_dlt_window(method: str) -> None:
    """A DLT still to come at any escalation level can change the MTD: the RP2D waits for it and says what it
    would be on the data so far. A subject whose follow-up ended (replaced) does not make it wait."""
    s = EscalationSettings(method=method, dose_levels=("D1", "D2", "D3"))
    base = cohort("D1", [False] * 3) + cohort("D2", [True] + [False] * 5) + cohort("D3", [True, True, False])
    assert derive_escalation(base, s).rp2d.arm == "D2"
    waiting = derive_escalation([*base, DltOutcome("D2", True, None, pending=True)], s)
    assert waiting.rp2d.arm is None
    assert waiting.rp2d.rationale.startswith("RP2D pending: subjects still in their DLT window (1 at D2); on the "
                                             "data so far it would be D2")
    replaced = derive_escalation([*base, DltOutcome("D3", True, None, pending=False)], s)
    assert replaced.rp2d.arm == "D2"


def test_under_3_3_a_subject_pending_at_a_level_that_exceeds_the_mtd_or_above_it_changes_nothing() -> None:
    """More DLTs cannot undo "exceeds MTD", and the levels above are closed: only a subject pending at or below
    the MTD holds the RP2D back; a closed level with nobody evaluable yet says it is closed."""
    s = EscalationSettings(dose_levels=("D1", "D2", "D3"))
    base = cohort("D1", [False] * 6) + cohort("D2", [True, True, False])
    for arm in ("D2", "D3"):
        r = derive_escalation([*base, DltOutcome(arm, True, None, pending=True)], s)
        assert r.rp2d.arm == "D1", arm
    r = derive_escalation([*base, DltOutcome("D3", True, None, pending=True)], s)
    assert r.dose_levels[2].decision == "closed: D2 exceeds MTD"
    r = derive_escalation([*base, DltOutcome("D1", True, None, pending=True)], s)
    assert r.rp2d.arm is None and r.rp2d.rationale.startswith("RP2D pending")


def test_settings_reject_inconsistent_arms() -> None:
    with pytest.raises(ValueError, match="not in dose_levels"):
        EscalationSettings(dose_levels=("DL1",), expansion_arms={"EXP": "DL9"})
    with pytest.raises(ValueError, match="unique"):
        EscalationSettings(dose_levels=("DL1", "DL1"))


def test_boin_names_no_rp2d_while_escalation_is_ongoing() -> None:
    """docs/clinical-rules.md#rp2d: none while escalation is ongoing — BOIN escalating to a level nobody was
    evaluated at is ongoing, whatever the isotonic estimate of the data so far (the rationale gives it)."""
    s = EscalationSettings(method="boin", dose_levels=("D1", "D2", "D3"))
    r = derive_escalation(cohort("D1", [False] * 6), s)
    assert [x.decision for x in r.dose_levels][:1] == ["escalate"]
    assert r.rp2d.arm is None and r.rp2d.rationale.startswith("escalation ongoing: BOIN escalates to D2")
    assert "MTD estimate so far D1" in r.rp2d.rationale
    # a level that stays with 3 subjects: an estimate, not yet the RP2D; with 6 it is
    r = derive_escalation(cohort("D1", [False] * 3) + cohort("D2", [False] * 3) + cohort("D3", [True] + [False] * 2), s)
    assert r.dose_levels[2].decision.startswith("stay") and r.rp2d.arm is None
    r = derive_escalation(cohort("D1", [False] * 3) + cohort("D2", [False] * 3) + cohort("D3", [True] + [False] * 5), s)
    assert r.rp2d.arm == "D3"


def test_the_study_step_reads_pending_follow_up_from_the_subject_rows(study: Study) -> None:
    """results/study.json rows (as read back from disk) carry the DLT reasons; the escalation step makes a subject
    still in its window wait for the RP2D, and one whose participation ended not."""
    rows: list[dict[str, Any]] = [{"arm": "DL1", "day1": "2024-01-01", "dlt": False} for _ in range(3)]
    rows += [{"arm": "DL2", "day1": "2024-02-01", "dlt": x} for x in [True] + [False] * 5]
    rows += [{"arm": "DL3", "day1": "2024-03-01", "dlt": x} for x in (True, True, False)]
    settings = study.rule("escalation", EscalationSettings)
    keys = escalation_endpoint.study_keys(StudyInput(study=study, settings=settings, rows=rows))
    assert keys["rp2d"]["arm"] == "DL2"
    still = {"arm": "DL2", "day1": "2024-03-20", "dlt": None, "dlt_pending": True,
             "dlt_not_evaluable": ["DLT window not completed: last data on study day 12 (window ends day 30)"]}
    keys = escalation_endpoint.study_keys(StudyInput(study=study, settings=settings, rows=[*rows, still]))
    assert keys["rp2d"]["arm"] is None and keys["rp2d"]["rationale"].startswith("RP2D pending")
    left = {**still, "dlt_pending": False, "dlt_not_evaluable": [
        "DLT window not followed to its end: participation ended on study day 12 (window ends day 30)"]}
    keys = escalation_endpoint.study_keys(StudyInput(study=study, settings=settings, rows=[*rows, left]))
    assert keys["rp2d"]["arm"] == "DL2"

