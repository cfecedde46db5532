"""Synthetic EHR feeds: deterministic Bulk-Data-style FHIR R4 exports that look like a hospital's (site
conventions, irregular results, patients outside the study), for any study folder.

The generic part (:mod:`.study_feed`) draws patients, enrolment, the first dose of the study product, the
study's scheduled visits with lab values for its items and the glucocorticoid medications from the study
folder. A study whose endpoints need more than that (SLEDAI-2K descriptors, CRS/ICANS, CAR-T kinetics, DLT
scenarios) brings its own generator as a plug-in (:mod:`.plugins`). Nothing is imported before it is used:
a study's feed loads only the modules that study needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .cart_sle.feed import RESOURCE_TYPES, write_feed
    from .cart_sle.irregularities import Irregularity
    from .cart_sle.plan import NonEnrolledPlan, ScreenFailurePlan, SubjectPlan, TrialPlan, plan_trial
    from .study_feed import write_study_feed
    from .timeline import DATA_CUT, TRANSACTION_TIME

#: public names -> the module that defines them (imported on first use)
_EXPORTS: dict[str, str] = {
    "write_study_feed": ".study_feed",
    "DATA_CUT": ".timeline", "TRANSACTION_TIME": ".timeline",
    # the CAR-T lupus trial's generator (LCAR-AIO's feed, and its plan as the tests' ground truth)
    "RESOURCE_TYPES": ".cart_sle.feed", "write_feed": ".cart_sle.feed",
    "Irregularity": ".cart_sle.irregularities",
    "NonEnrolledPlan": ".cart_sle.plan", "ScreenFailurePlan": ".cart_sle.plan", "SubjectPlan": ".cart_sle.plan",
    "TrialPlan": ".cart_sle.plan", "plan_trial": ".cart_sle.plan",
}

__all__ = [
    "DATA_CUT", "RESOURCE_TYPES", "TRANSACTION_TIME", "Irregularity", "NonEnrolledPlan", "ScreenFailurePlan",
    "SubjectPlan", "TrialPlan", "plan_trial", "write_feed", "write_study_feed",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)
