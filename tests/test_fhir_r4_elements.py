"""The quick R4 check (fhir_adapter/fhir/r4_elements.py) is never more lenient than the R4B models: on the
synthetic feed, the bad-input corpus and thousands of mutations of both, ``r4_problem`` gives exactly what
parsing with the model gives; and it does vouch for the valid resources (else it would save nothing)."""

from __future__ import annotations

import copy
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from fhir_adapter.fhir.r4 import _r4b_model, model_problem, r4_problem
from fhir_adapter.fhir.r4_elements import _primitives, conforms, table
from fhir_adapter.synth import write_feed
from tests.bad_input import build


def _ndjson(folder: Path) -> list[dict[str, Any]]:
    found = []
    for f in sorted(folder.glob("*.ndjson")):
        for line in f.read_bytes().splitlines():
            try:
                doc = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(doc, dict) and isinstance(doc.get("resourceType"), str):
                found.append(doc)
    return found


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    folder = tmp_path_factory.mktemp("feed")
    write_feed(folder, subjects=3, seed=7)
    return _ndjson(folder)


@pytest.fixture(scope="module")
def bad(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    folder = tmp_path_factory.mktemp("bad")
    build(folder)
    return _ndjson(folder)


def _places(node: Any) -> Iterator[tuple[Any, Any]]:
    """(container, key or index) of every element below ``node``."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k != "resourceType":
                yield node, k
                yield from _places(v)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield node, i
            yield from _places(v)


_VALUES: list[Any] = ["", " x", "a  b", "x" * 70, "2024-13-01", "2024-02-30", "2024-03-05T10:00:00",
                      "2024-03-05T10:00:00+25:00", "2024-03-05T25:00:00Z", "2024", "12.5", "true", "urn:uuid:1",
                      12, -1, 0, 2**40, 12.5, True, False, None, {}, [], [None], {"foo": 1}, [{}], {"text": "x"}]


def _mutants(resource: dict[str, Any], rng: random.Random, n: int) -> Iterator[dict[str, Any]]:
    places = list(_places(resource))
    for _ in range(n):
        r = copy.deepcopy(resource)
        container, key = rng.choice(list(_places(r))) if places else (r, "id")
        how = rng.randrange(6)
        if how == 0 and isinstance(container, dict):
            del container[key]
        elif how == 1 and isinstance(container, dict):
            container[rng.choice(["foo", f"_{key}", "fhir_comments", "extension", "modifierExtension",
                                  "valueString", "valueQuantity", "effectivePeriod", "contained"])] = \
                rng.choice(_VALUES)
        elif how == 2:
            value = container[key]
            container[key] = [value] if not isinstance(value, list) else (value[0] if value else None)
        else:
            container[key] = copy.deepcopy(rng.choice(_VALUES))
        yield r


def _same(r: dict[str, Any]) -> None:
    assert r4_problem(r) == model_problem(r) == r4_problem(r, full=True), orjson.dumps(r).decode()


def test_the_quick_check_vouches_for_every_valid_resource_of_the_synthetic_feed(
        synthetic: list[dict[str, Any]]) -> None:
    assert len(synthetic) > 500
    for r in synthetic:
        model = _r4b_model(r["resourceType"])
        assert model is not None and model_problem(r) is None
        assert conforms(r, model), r["resourceType"]


def test_every_bad_input_gets_the_models_reason(bad: list[dict[str, Any]]) -> None:
    rejected = 0
    for r in bad:
        _same(r)
        rejected += r4_problem(r) is not None
    assert rejected >= 9  # the corpus' r4-invalid kinds (tests/bad_input.py)


def test_mutations_get_the_models_verdict_and_reason(synthetic: list[dict[str, Any]],
                                                     bad: list[dict[str, Any]]) -> None:
    rng = random.Random(18)
    by_type: dict[str, list[dict[str, Any]]] = {}
    for r in synthetic + bad:
        by_type.setdefault(r["resourceType"], []).append(r)
    cases = problems = 0
    for rtype in sorted(by_type):
        for base in rng.sample(by_type[rtype], min(12, len(by_type[rtype]))):
            for m in _mutants(base, rng, 25):
                _same(m)
                cases += 1
                problems += r4_problem(m) is not None
    assert cases > 2000 and problems > cases // 4  # the mutations do break resources, often


@pytest.mark.parametrize("resource", [
    {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "valueQuantity": {"value": "1"}},
    {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "valueBoolean": "true"},
    {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "_status": {"id": "s"}},
    {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "valueInteger": 2**31},
    {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "effectiveDateTime": "2024-02-29"},
    {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "effectiveDateTime": "2023-02-29"},
    {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "issued": "2024-02-01"},
    {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "category": []},
    {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "category": [None]},
    {"resourceType": "Observation", "status": "final", "code": {"coding": [{"code": " x"}]}},
    {"resourceType": "MedicationRequest", "status": "active", "intent": "order", "subject": {"reference": "P/1"},
     "medicationReference": {"reference": "#m"}, "contained": [{"resourceType": "Medication", "id": "m"}]},
    *({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "contained": [c]} for c in (
        {"resourceType": "BodyStructure", "id": "b", "patient": {"reference": "Patient/p"},
         "location": {"text": "left arm"}},
        {"resourceType": "BodyStructure", "id": "b"},                                      # patient is required
        {"resourceType": "BodyStructure", "id": "b", "patient": {"reference": "Patient/p"}, "foo": 1},
        {"resourceType": "BodyStructure", "id": "b c", "patient": {"reference": "Patient/p"}},
        {"resourceType": "Citation", "id": "c", "status": "active"},                       # R4B, not R4
        {"resourceType": "Observaton", "id": "o"},
        {"id": "b", "patient": {"reference": "Patient/p"}},
        {"resourceType": "Medication", "id": "m", "contained": [{"resourceType": "Medication", "id": "n"}]},
        "Medication/m",
    )),
    {"resourceType": "Patient", "id": "p" * 65},
    {"resourceType": "Patient", "birthDate": "1980-02-30"},
])
def test_edge_cases_get_the_models_reason(resource: dict[str, Any]) -> None:
    _same(resource)


def _times(rng: random.Random) -> Iterator[str]:
    """dateTime/instant strings near and across every edge of the format and the calendar."""
    years = ["0000", "0001", "1900", "2000", "2023", "2024", "9999", "999", "20245"]
    months = ["00", "01", "02", "04", "12", "13", "1"]
    days = ["00", "01", "28", "29", "30", "31", "32", "1"]
    times = ["T00:00:00", "T23:59:59", "T24:00:00", "T12:60:00", "T12:00:60", "T23:59:60", "T10:00", "T9:00:00",
             "T10:00:00.5", "T10:00:00.123456", "T10:00:00.1234567", "T10:00:00.", "t10:00:00", " T10:00:00"]
    tails = ["", "", " ", "\n"]
    zones = ["", "Z", "z", "+00:00", "-05:00", "+14:00", "+14:01", "-13:59", "+15:00", "+0100", "+01", " Z"]
    for y in years:
        yield y
        for m in months:
            yield f"{y}-{m}"
            for d in days:
                yield f"{y}-{m}-{d}"
    for _ in range(6000):
        yield (f"{rng.choice(years)}-{rng.choice(months)}-{rng.choice(days)}{rng.choice(times)}"
               f"{rng.choice(zones)}{rng.choice(tails)}")


def test_the_date_time_fast_path_accepts_nothing_the_validator_rejects() -> None:
    from fhir.resources.R4B.observation import Observation
    from pydantic import ValidationError

    table(Observation)  # the primitives of dateTime (effectiveDateTime) and instant (issued)
    paths = {name: p for name, p in _primitives.items() if p.fast is not None}
    assert {"DateTime", "Instant"} <= {k for k in ("DateTime", "Instant") for n in paths if f"{k}()" in n}
    rng = random.Random(7)
    accepted = 0
    for p in paths.values():
        for value in _times(rng):
            if p.fast is not None and p.fast(value):
                accepted += 1
                try:
                    p.validate(value)
                except (ValidationError, ValueError, TypeError):
                    pytest.fail(f"the fast path accepts {value!r}, fhir_core does not")
    assert accepted > 300  # and it does vouch for the common forms


@pytest.mark.parametrize(("element", "value"), [
    ("effectiveDateTime", "2024-02-30T10:00:00Z"),            # not on the calendar
    ("effectiveDateTime", "2024-03-05T10:00:00"),             # a time without an offset
    ("issued", "2024-03-05"),                                 # an instant needs a time
    ("issued", "2023-02-29T10:00:00Z"),
    ("valueQuantity", {"value": "12.5", "unit": "g/dL"}),     # a decimal as a JSON string
    ("valueQuantity", [{"value": 12.5}]),                     # a list where R4 has one
    ("code", [{"text": "x"}]),
    ("category", {"text": "laboratory"}),                     # one where R4 has a list
    ("category", [None]),
])
def test_a_malformed_date_quantity_or_cardinality_in_a_crf_feeding_observation_is_quarantined(
        element: str, value: Any) -> None:
    from fhir_adapter.job.runlog import RunLog
    from fhir_adapter.mapping.subject import valid_resources

    good = {"resourceType": "Observation", "id": "o1", "status": "final", "subject": {"reference": "Patient/p"},
            "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}]},
            "effectiveDateTime": "2024-03-05T10:00:00+01:00", "issued": "2024-03-05T12:00:00.123+01:00",
            "valueQuantity": {"value": 12.5, "unit": "g/dL", "system": "http://unitsofmeasure.org", "code": "g/dL"}}
    log = RunLog()
    assert valid_resources([good], "S-1", log) == [good] and not log.quarantine
    bad = {**good, element: value}
    assert valid_resources([bad], "S-1", log) == []
    (q,) = log.quarantine
    assert q.rule == "r4-invalid" and element in q.reason and q.reason == f"not valid FHIR R4: {model_problem(bad)}"
