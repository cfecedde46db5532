"""The candidates of a (visit, item): who is in the window, who is shown from near it, in which order."""

from __future__ import annotations

from fhir_adapter.crf.models import Demographics, SourceRef, SubjectCRF, VisitRecord
from fhir_adapter.review.candidates import finding_for, item_candidates
from fhir_adapter.study.load import Study
from tests.helpers import DAY1, d, finding


def test_window_results_near_it_unscheduled_visits_and_a_resource_feeding_twice(study: Study) -> None:
    twice = SourceRef(resource_type="Observation", id="c3-twice", version="2")
    w8 = [finding("c3", 57, 1.0, visit="W8"), finding("c3", 58, 1.1, visit="W8").model_copy(update={"source": twice}),
          finding("c3", 64, 1.2, visit="W8").model_copy(update={"source": twice})]
    near = finding("c3", 43, 0.9)            # W8 window 50-64: 7 days before it, in no visit
    too_far = finding("c3", 42, 0.8)         # 8 days before it
    uns = finding("c3", 71, 0.7, visit="UNS-71")  # 7 days after it, in an unscheduled visit
    other = finding("c4", 57, 0.2, visit="W8")
    visits = [VisitRecord(visit="W8", label="Week 8", target_day=57, date=d(57), study_day=57),
              VisitRecord(visit="UNS-71", date=d(71), study_day=71, unscheduled=True)]
    crf = SubjectCRF(subject_id="T-001", arm="DL1", day1=DAY1, dm=Demographics(subject_id="T-001", status="follow-up"),
                     findings=[uns, *w8, other, too_far, near], visits=visits)
    entries = {(e["visit"], e["item"]): e for e in item_candidates(crf, study)}
    assert list(entries) == [("W8", "c3"), ("W8", "c4"), ("UNS-71", "c3")]
    e = entries[("W8", "c3")]
    assert [c["id"] for c in e["candidates"]] == [near.source.reference, w8[0].source.reference,
                                                  "Observation/c3-twice", "Observation/c3-twice#2",
                                                  uns.source.reference]
    assert [c["flags"]["out_of_window"] for c in e["candidates"]] == [True, False, False, False, True]
    assert e["picked"] == w8[0].source.reference and e["window"] == [50, 64] and e["visit_date"] == "2024-03-28"
    assert [c["flags"]["amended"] for c in e["candidates"]] == [False, False, True, True, False]
    u = entries[("UNS-71", "c3")]
    assert [(c["id"], c["flags"]["out_of_window"]) for c in u["candidates"]] == [(uns.source.reference, False)]
    assert u["window"] is None and u["visit_label"] == "UNS-71"
    assert finding_for(crf, study, "W8", "c3", "Observation/c3-twice#2") is w8[2]
    assert finding_for(crf, study, "W8", "c3", too_far.source.reference) is too_far
