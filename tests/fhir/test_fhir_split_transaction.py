"""split_transaction: size bound, references kept together, order, header copied."""

from __future__ import annotations

from typing import Any

import pytest

from fhir_adapter.fhir import split_transaction


def obs(n: int, subject: str = "Patient/p1", **extra: Any) -> dict[str, Any]:
    return {
        "fullUrl": f"urn:uuid:obs-{n}",
        "resource": {
            "resourceType": "Observation",
            "status": "final",
            "subject": {"reference": subject},
            **extra,
        },
        "request": {"method": "PUT", "url": f"Observation?identifier=urn:trial|{n}"},
    }


def tx(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "meta": {"tag": [{"code": "x"}]},
        "entry": entries,
    }


def urls(part: dict[str, Any]) -> list[str]:
    return [e["fullUrl"] for e in part["entry"]]


def test_independent_entries_are_split_by_size_in_order() -> None:
    parts = split_transaction(tx([obs(i) for i in range(7)]), 3)
    assert [urls(p) for p in parts] == [
        ["urn:uuid:obs-0", "urn:uuid:obs-1", "urn:uuid:obs-2"],
        ["urn:uuid:obs-3", "urn:uuid:obs-4", "urn:uuid:obs-5"],
        ["urn:uuid:obs-6"],
    ]
    for part in parts:
        assert part["resourceType"] == "Bundle" and part["type"] == "transaction"
        assert part["meta"] == {"tag": [{"code": "x"}]}


def test_small_bundle_is_one_part() -> None:
    bundle = tx([obs(1), obs(2)])
    assert split_transaction(bundle, 100) == [bundle]
    assert split_transaction(tx([]), 10) == []


def test_entries_referring_to_each_other_stay_together() -> None:
    provenance = {
        "fullUrl": "urn:uuid:prov-1",
        "resource": {
            "resourceType": "Provenance",
            "target": [{"reference": "urn:uuid:obs-1"}, {"reference": "urn:uuid:obs-3"}],
        },
        "request": {"method": "POST", "url": "Provenance"},
    }
    derived = obs(4, derivedFrom=[{"reference": "urn:uuid:obs-0"}])
    entries = [obs(0), obs(1), obs(2), obs(3), derived, provenance]
    parts = split_transaction(tx(entries), 3)
    together = {frozenset(urls(p)) for p in parts}
    assert any({"urn:uuid:prov-1", "urn:uuid:obs-1", "urn:uuid:obs-3"} <= s for s in together)
    assert any({"urn:uuid:obs-0", "urn:uuid:obs-4"} <= s for s in together)
    assert sorted(u for p in parts for u in urls(p)) == sorted(e["fullUrl"] for e in entries)
    assert all(len(p["entry"]) <= 3 for p in parts)
    for part in parts:  # relative order kept inside each part
        indexes = [entries.index(e) for e in part["entry"]]
        assert indexes == sorted(indexes)


def test_reference_to_a_put_type_id_keeps_entries_together() -> None:
    subject = {
        "fullUrl": "https://fhir.example.org/r4/ResearchSubject/rs-1",
        "resource": {"resourceType": "ResearchSubject", "id": "rs-1"},
        "request": {"method": "PUT", "url": "ResearchSubject/rs-1"},
    }
    entries = [subject, obs(0), obs(1), obs(2, focus=[{"reference": "ResearchSubject/rs-1"}])]
    parts = split_transaction(tx(entries), 2)
    part_of = {u: i for i, p in enumerate(parts) for u in urls(p)}
    assert part_of["https://fhir.example.org/r4/ResearchSubject/rs-1"] == part_of["urn:uuid:obs-2"]


def test_group_larger_than_the_limit_is_an_error() -> None:
    provenance = {
        "fullUrl": "urn:uuid:prov-1",
        "resource": {
            "resourceType": "Provenance",
            "target": [{"reference": f"urn:uuid:obs-{i}"} for i in range(4)],
        },
    }
    with pytest.raises(ValueError, match="5 entries refer to each other"):
        split_transaction(tx([*(obs(i) for i in range(4)), provenance]), 4)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        split_transaction(tx([obs(1)]), 0)
    with pytest.raises(ValueError, match="Bundle"):
        split_transaction({"resourceType": "Patient"}, 10)
