"""The selection rule of an item (items.yaml `select`) when a visit window holds several results: `worst`
keeps the most abnormal value, in the direction the item declares (`worse: high | low`)."""

from __future__ import annotations

import dataclasses

import pytest

from fhir_adapter.mapping.visits import place, select
from fhir_adapter.review.candidates import item_candidates
from fhir_adapter.study.load import Study
from fhir_adapter.study.models import SelectRule
from tests.helpers import DAY1, crf, finding


def test_worst_keeps_the_highest_when_higher_is_worse_and_the_lowest_when_lower_is() -> None:
    early, high, low = finding("crp", 6, 12.0), finding("crp", 8, 40.0), finding("crp", 10, 3.0)
    assert select([early, high, low], "worst", 8, "high") is high
    assert select([early, high, low], "worst", 8, "low") is low
    assert select([early, high, low], "closest", 8) is high and select([low, early], "worst", 8, "low") is low


def test_worst_of_equal_values_is_the_earlier() -> None:
    later, earlier = finding("platelets", 9, 20.0), finding("platelets", 7, 20.0)
    assert select([later, earlier], "worst", 8, "low") is earlier


def test_worst_needs_a_direction() -> None:
    with pytest.raises(ValueError, match="worse: high or low"):
        select([finding("crp", 8, 1.0), finding("crp", 9, 2.0)], "worst", 8)


@pytest.mark.parametrize(("worse", "kept"), [("high", 40.0), ("low", 3.0)])
def test_a_visit_keeps_the_worst_value_of_its_window(study: Study, worse: str, kept: float) -> None:
    crp = study.items["crp"].model_copy(update={"select": "worst", "worse": worse})
    worst_study = dataclasses.replace(study, items={**study.items, "crp": crp})
    results = [finding("crp", 6, 12.0), finding("crp", 8, 5.0), finding("crp", 9, 40.0), finding("crp", 10, 3.0)]
    placed, visits = place(results, DAY1, worst_study)
    (w1,) = [v for v in visits if v.visit == "W1"]
    assert w1.values["crp"].value == kept
    # the review app shows the same pick as the rule's
    subject = crf(placed, {}).model_copy(update={"visits": visits})
    (entry,) = [e for e in item_candidates(subject, worst_study) if e["visit"] == "W1"]
    picked = next(c for c in entry["candidates"] if c["id"] == entry["picked"])
    assert (entry["rule"], picked["source"]["id"]) == ("worst", w1.values["crp"].source.id)
    _, shipped = place(results, DAY1, study)   # the shipped crp selects max
    assert next(v for v in shipped if v.visit == "W1").values["crp"].value == 40.0


@pytest.mark.parametrize("rule", ["first", "last", "closest", "max"])
def test_a_date_only_and_a_timed_result_on_one_day_are_ordered_not_a_failure(rule: SelectRule) -> None:
    """A repeated or hand-entered result is often sent with a date only beside the timed one of the same day.
    Both stay candidates; the date-only one counts as taken at 00:00 of its date (as a date-only sample in
    docs/clinical-rules.md#kinetics), so it is the earlier. Comparing a missing time with a time had failed
    the whole subject."""
    import datetime as dt

    dated = finding("upcr", 14, 0.61)
    assert dated.date is not None
    timed = finding("upcr", 14, 0.62, datetime=dt.datetime.combine(dated.date, dt.time(7), tzinfo=dt.UTC))
    kept = select([timed, dated], rule, 14, None)
    assert kept is {"first": dated, "last": timed, "closest": dated, "max": timed}[rule]


def test_the_review_app_lists_a_window_s_candidates_in_the_visit_s_order(study: Study) -> None:
    """A date-only result is at 00:00 of its date in the review list too, before a timed one of that day."""
    import datetime as dt

    dated = finding("crp", 8, 3.0)
    assert dated.date is not None
    timed = finding("crp", 8, 5.0, datetime=dt.datetime.combine(dated.date, dt.time(7), tzinfo=dt.UTC))
    placed, visits = place([timed, dated], DAY1, study)
    subject = crf(placed, {}).model_copy(update={"visits": visits})
    (entry,) = [e for e in item_candidates(subject, study) if e["visit"] == "W1" and e["item"] == "crp"]
    assert [c["source"]["id"] for c in entry["candidates"]] == [dated.source.id, timed.source.id]
