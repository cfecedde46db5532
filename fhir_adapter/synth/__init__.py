"""Synthetic EHR feed for LCAR-AIO: a deterministic Bulk-Data-style FHIR R4 export that looks like a
hospital's (site conventions, irregular results, patients outside the study), plus the plan it was drawn
from, which tests use as ground truth."""

from __future__ import annotations

from .feed import RESOURCE_TYPES, write_feed
from .irregularities import Irregularity
from .plan import NonEnrolledPlan, ScreenFailurePlan, SubjectPlan, TrialPlan, plan_trial
from .timeline import DATA_CUT, TRANSACTION_TIME

__all__ = [
    "DATA_CUT", "RESOURCE_TYPES", "TRANSACTION_TIME", "Irregularity", "NonEnrolledPlan", "ScreenFailurePlan",
    "SubjectPlan", "TrialPlan", "plan_trial", "write_feed",
]
