"""Per-subject generation context shared by the resource builders of one patient."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from random import Random

from ..observations import ObservationFactory
from ..sink import Emit, Resource, Sink
from ..sites import SiteConventions
from ..timeline import at, date_to_study_day, study_day_to_date
from .course import DiseaseCourse
from .irregularities import Irregularity

__all__ = ["Emit", "Resource", "Sink", "SubjectContext"]


@dataclass(slots=True)
class SubjectContext:
    rng: Random
    patient_id: str
    site: SiteConventions
    day1: date
    course: DiseaseCourse
    obs: ObservationFactory
    emit: Emit
    study_id: str | None = None
    procedure_id: str | None = None
    infusion: datetime | None = None
    followup_end: date = date(2100, 1, 1)
    visits: dict[str, datetime] = field(default_factory=dict)
    irregular: dict[tuple[str | None, str], Irregularity] = field(default_factory=dict)

    def sd(self, d: date) -> int:
        return date_to_study_day(self.day1, d)

    def on_day(self, study_day: int, minutes: int) -> datetime:
        return at(study_day_to_date(self.day1, study_day), minutes)

    def patient_ref(self) -> dict[str, str]:
        return {"reference": f"Patient/{self.patient_id}"}
