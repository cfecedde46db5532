"""The trial plan: who was screened and enrolled where and when, on which dose level, and what the
generator intends to happen to them (DLT scenarios, irregular resources).

``plan_trial`` is the generator's own ground truth for tests; it is never read back from the feed. The feed
writer re-creates the same plan from the same seed and draws every subject's resources from a per-subject
``Random`` seeded by the plan, so the plan and the files always agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from random import Random

from ..ids import new_id
from ..people import ClinicPatient
from ..sites import SITE_NUMBERS, SITES, SiteConventions
from ..timeline import DATA_CUT
from .irregularities import Irregularity, place_irregularities
from .scenarios import assign_scenarios
from .schedule import SCREENING_DAYS

#: dose levels: arm name -> 10^6 CAR+ T cells/kg (EXP runs at the RP2D = DL2)
ARM_DOSE: dict[str, float] = {"DL1": 1.0, "DL2": 2.0, "DL3": 4.0, "EXP": 2.0}
#: 3+3 escalation as it happened: cohorts of 3 in this order (DL2 expanded to 6 after 1 DLT in 3)
ESCALATION_COHORTS: tuple[str, ...] = ("DL1", "DL2", "DL2", "DL3")
FIRST_INFUSION = date(2024, 3, 11)
SENTINEL_GAP_DAYS = 14     # sentinel dosing: the next subject of a cohort is infused >= 14 days later
DLT_WINDOW_DAYS = 30
SRC_REVIEW_DAYS = 10       # safety review committee before the next cohort
EXPANSION_END = DATA_CUT - timedelta(days=70)
FOLLOW_UP_LAST_DAY = 750   # end of the W104 window (study day)
FEMALE_SHARE = 0.88
LN_SHARE = 0.40
NON_RESPONDER_SHARE = 0.15


@dataclass(frozen=True, slots=True)
class SubjectPlan:
    index: int                 # enrolment order, 0-based
    subject_id: str            # "<site>-<seq>", e.g. 101-001
    patient_id: str
    research_subject_id: str
    infusion_procedure_id: str
    site: int
    arm: str                   # DL1 | DL2 | DL3 | EXP
    dose_per_kg: float         # 10^6 CAR+ T cells/kg
    sex: str
    birth_date: date
    consent_date: date
    screening_date: date
    day1: date                 # infusion date
    status: str                # ResearchSubject.status
    followup_end: date         # min(end of the W104 window, data cut)
    ln_at_baseline: bool
    responder: bool
    dlt_expected: bool
    dlt_not_evaluable: bool
    scenarios: tuple[str, ...]
    seed: int                  # seed of the subject's own Random stream in the feed


@dataclass(frozen=True, slots=True)
class ScreenFailurePlan:
    subject_id: str
    patient_id: str
    research_subject_id: str
    site: int
    sex: str
    birth_date: date
    consent_date: date
    screening_date: date
    reason: str
    seed: int


#: a patient of the sites never enrolled (the generic clinic patient; the name the plan has always exported)
NonEnrolledPlan = ClinicPatient


@dataclass(frozen=True, slots=True)
class TrialPlan:
    seed: int
    data_cut: date
    study_id: str
    organization_ids: dict[int, str]
    subjects: tuple[SubjectPlan, ...]
    screen_failures: tuple[ScreenFailurePlan, ...]
    non_enrolled: tuple[ClinicPatient, ...]
    irregularities: tuple[Irregularity, ...]
    site_conventions: dict[int, SiteConventions] = field(default_factory=lambda: dict(SITES))

    @property
    def screen_failure_patient_ids(self) -> tuple[str, ...]:
        return tuple(s.patient_id for s in self.screen_failures)

    @property
    def non_enrolled_patient_ids(self) -> tuple[str, ...]:
        return tuple(p.patient_id for p in self.non_enrolled)

    def subject(self, subject_id: str) -> SubjectPlan:
        return next(s for s in self.subjects if s.subject_id == subject_id)


SCREEN_FAILURE_REASONS: tuple[str, ...] = (
    "SLEDAI-2K below 8 at screening",
    "eGFR below 30 mL/min/1.73m2 at screening",
    "Positive hepatitis B core antibody",
)


def _arms(n: int) -> list[str]:
    arms = [arm for arm in ESCALATION_COHORTS for _ in range(3)]
    return (arms + ["EXP"] * max(0, n - len(arms)))[:n]


def _infusion_dates(rng: Random, arms: list[str]) -> list[date]:
    """Sentinel-spaced escalation cohorts, then expansion spread evenly up to shortly before the data cut."""
    days: list[date] = []
    for i, arm in enumerate(arms):
        if arm == "EXP":
            break
        if i == 0:
            days.append(FIRST_INFUSION)
        elif i % 3 == 0:   # next cohort after the last one's DLT window and the safety review
            days.append(days[-1] + timedelta(days=DLT_WINDOW_DAYS + SRC_REVIEW_DAYS + rng.randint(0, 7)))
        else:
            days.append(days[-1] + timedelta(days=SENTINEL_GAP_DAYS + rng.randint(0, 4)))
    n_exp = len(arms) - len(days)
    if n_exp:
        first = (days[-1] if days else FIRST_INFUSION) + timedelta(days=DLT_WINDOW_DAYS + SRC_REVIEW_DAYS)
        span = max(0, (EXPANSION_END - first).days)
        regular = n_exp - 1 if n_exp > 1 else n_exp
        for k in range(regular):
            offset = span * k // (regular - 1) if regular > 1 else 0
            days.append(first + timedelta(days=max(0, offset + rng.randint(-3, 3))))
        if n_exp > 1:   # the last subject was infused a few days before the data cut
            days.append(DATA_CUT - timedelta(days=rng.randint(3, 8)))
    return days


def _status(day1: date) -> str:
    since = (DATA_CUT - day1).days
    if since < 10:
        return "on-study-intervention"
    if since < 120:
        return "on-study-observation"
    return "follow-up"


def _birth_date(rng: Random, on: date) -> date:
    age_days = rng.randint(18 * 365 + 10, 62 * 365)
    return on - timedelta(days=age_days)


def _site_blocks(rng: Random, n: int) -> list[int]:
    sites: list[int] = []
    while len(sites) < n:
        block = list(SITE_NUMBERS)
        rng.shuffle(block)
        sites.extend(block)
    return sites[:n]


def _number_subjects(entries: list[tuple[int, date, int, str]]) -> dict[tuple[str, int], str]:
    """entries: (site, consent, index, kind) -> subject ids '<site>-<seq>' in consent order per site."""
    ids: dict[tuple[str, int], str] = {}
    seq: dict[int, int] = {}
    for site, _consent, index, kind in sorted(entries, key=lambda e: (e[0], e[1], e[3] != "E", e[2])):
        seq[site] = seq.get(site, 0) + 1
        ids[(kind, index)] = f"{site}-{seq[site]:03d}"
    return ids


def plan_trial(subjects: int = 34, seed: int = 7) -> TrialPlan:
    """The generator's intended truth for ``subjects`` enrolled subjects (not read back from any feed)."""
    if subjects < 1:
        raise ValueError("subjects must be >= 1")
    rng = Random(seed)
    study_id = new_id(rng)
    organization_ids = {site: new_id(rng) for site in SITE_NUMBERS}
    arms = _arms(subjects)
    day1s = _infusion_dates(rng, arms)
    sites = _site_blocks(rng, subjects)

    drafts: list[SubjectPlan] = []
    for i in range(subjects):
        day1 = day1s[i]
        screening = day1 + timedelta(days=rng.randint(*SCREENING_DAYS))
        consent = screening - timedelta(days=rng.randint(0, 6))
        sex = "female" if rng.random() < FEMALE_SHARE else "male"
        drafts.append(SubjectPlan(
            index=i, subject_id="", patient_id=new_id(rng), research_subject_id=new_id(rng),
            infusion_procedure_id=new_id(rng), site=sites[i], arm=arms[i], dose_per_kg=ARM_DOSE[arms[i]],
            sex=sex, birth_date=_birth_date(rng, consent), consent_date=consent, screening_date=screening,
            day1=day1, status=_status(day1),
            followup_end=min(day1 + timedelta(days=FOLLOW_UP_LAST_DAY - 1), DATA_CUT),
            ln_at_baseline=rng.random() < LN_SHARE, responder=rng.random() >= NON_RESPONDER_SHARE,
            dlt_expected=False, dlt_not_evaluable=False, scenarios=(), seed=rng.getrandbits(63),
        ))

    n_other = max(3, round(3 * subjects / 34))
    first_consent = min(d.consent_date for d in drafts)
    last_consent = max(d.consent_date for d in drafts)
    span = max(1, (last_consent - first_consent).days)
    failures: list[ScreenFailurePlan] = []
    for k in range(n_other):
        consent = first_consent + timedelta(days=rng.randint(0, span))
        screening = consent + timedelta(days=rng.randint(0, 6))
        sex = "female" if rng.random() < FEMALE_SHARE else "male"
        failures.append(ScreenFailurePlan(
            subject_id="", patient_id=new_id(rng), research_subject_id=new_id(rng),
            site=rng.choice(SITE_NUMBERS), sex=sex, birth_date=_birth_date(rng, consent), consent_date=consent,
            screening_date=screening, reason=SCREEN_FAILURE_REASONS[k % len(SCREEN_FAILURE_REASONS)],
            seed=rng.getrandbits(63),
        ))
    non_enrolled: list[ClinicPatient] = []
    for _ in range(n_other):
        sex = "female" if rng.random() < 0.7 else "male"
        non_enrolled.append(ClinicPatient(
            patient_id=new_id(rng), site=rng.choice(SITE_NUMBERS), sex=sex,
            birth_date=_birth_date(rng, date(2025, 1, 1)), seed=rng.getrandbits(63),
        ))

    numbers = _number_subjects(
        [(d.site, d.consent_date, d.index, "E") for d in drafts]
        + [(f.site, f.consent_date, k, "F") for k, f in enumerate(failures)]
    )
    drafts = [replace(d, subject_id=numbers[("E", d.index)]) for d in drafts]
    failures = [replace(f, subject_id=numbers[("F", k)]) for k, f in enumerate(failures)]

    scenarios = assign_scenarios(rng, drafts)
    irregularities = place_irregularities(rng, drafts, scenarios)
    final: list[SubjectPlan] = []
    for d in drafts:
        sc = scenarios.get(d.index, ())
        own = [ir for ir in irregularities if ir.subject_id == d.subject_id]
        not_evaluable = any(ir.kind == "ae-missing-grade" for ir in own)
        final.append(replace(
            d, scenarios=sc, dlt_expected=any(s.startswith("dlt:") for s in sc),
            dlt_not_evaluable=not_evaluable,
        ))
    return TrialPlan(
        seed=seed, data_cut=DATA_CUT, study_id=study_id, organization_ids=organization_ids,
        subjects=tuple(final), screen_failures=tuple(failures), non_enrolled=tuple(non_enrolled),
        irregularities=tuple(irregularities),
    )

