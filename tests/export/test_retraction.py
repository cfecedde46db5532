"""Source status lifecycle across runs: a result used earlier that turns entered-in-error is retracted."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import orjson
import pytest

from fhir_adapter.fhir.r4 import r4_problem
from fhir_adapter.job.pipeline import run
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.source.files import FileSource
from fhir_adapter.terminology.codes import CS_TAGS, SID_RESULT
from tests.feedkit import Feed, at

DAY1 = dt.date(2024, 2, 1)
W4 = "LCAR-AIO-SLE.101-001.W4.sledai-2k"
W8 = "LCAR-AIO-SLE.101-001.W8.sledai-2k"


def _feed(retract: bool) -> Feed:
    f = Feed()
    f.subject("p1", "101-001", name="Carol Testperson", mrn="MRN-1", birth="1980-01-01", day1=DAY1)
    f.obs("p1", "777-3", at(DAY1, 29), value=210, unit="10*9/L", id_="plt-29")
    f.descriptor(
        "p1", "arthritis", at(DAY1, 29, "11:00:00+00:00"), True, id_="arth-29", meta={"versionId": "1"}
    )
    f.descriptor("p1", "rash", at(DAY1, 57, "11:00:00+00:00"), True, id_="rash-57")
    f.obs("p1", "777-3", at(DAY1, 57), value=80, unit="10*9/L", id_="plt-57", meta={"versionId": "1"})
    f.obs("p1", "777-3", at(DAY1, 57), value=80, unit="10*9/L", id_="plt-57-dup")
    if retract:
        # the EHR corrected both: a later version of each Observation, entered-in-error
        f.descriptor(
            "p1",
            "arthritis",
            at(DAY1, 29, "11:00:00+00:00"),
            True,
            id_="arth-29",
            status="entered-in-error",
            meta={"versionId": "2"},
        )
        f.obs(
            "p1",
            "777-3",
            at(DAY1, 57),
            value=80,
            unit="10*9/L",
            id_="plt-57",
            status="entered-in-error",
            meta={"versionId": "2"},
        )
        f.obs(
            "p1",
            "777-3",
            at(DAY1, 57),
            value=80,
            unit="10*9/L",
            id_="plt-57-dup",
            status="cancelled",
            meta={"versionId": "2"},
        )
    return f


def _run(tmp: Path, retract: bool, study: Any) -> dict[str, Any]:
    feed = _feed(retract).write(tmp / "feed")
    log = RunLog()
    run(FileSource(feed, log), study, tmp / "out", log)
    return {
        "report": orjson.loads((tmp / "out" / "run-report.json").read_bytes()),
        "bundle": orjson.loads((tmp / "out" / "writeback" / "101-001.json").read_bytes()),
        "crf": orjson.loads((tmp / "out" / "crf" / "101-001.json").read_bytes()),
        "study": orjson.loads((tmp / "out" / "results" / "study.json").read_bytes()),
    }


def _entries(bundle: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = {}
    for e in bundle["entry"]:
        r = e["resource"]
        ident = next((i["value"] for i in r.get("identifier", []) if i["system"] == SID_RESULT), None)
        if ident and ident.endswith("sledai-2k"):
            out[ident] = e
    return out


def _visit(res: dict[str, Any], visit: str) -> dict[str, Any]:
    (subject,) = res["study"]["subjects"]
    return next(v for v in subject["visits"] if v["visit"] == visit)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, study: Any) -> list[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("retraction")
    return [_run(tmp, False, study), _run(tmp, True, study), _run(tmp, True, study)]


def test_first_run_uses_the_results(runs: list[dict[str, Any]]) -> None:
    first = runs[0]
    entries = _entries(first["bundle"])
    assert entries[W4]["resource"]["valueInteger"] == 4  # arthritis
    assert entries[W8]["resource"]["valueInteger"] == 3  # rash 2 + thrombocytopenia 1 (platelets 80)
    assert {"reference": "Observation/plt-57"} in entries[W8]["resource"]["derivedFrom"]
    state = first["report"]["writeback_state"]
    assert (state["new"], state["retracted"], state["retractions"]) == (len(first["bundle"]["entry"]) - 2, 0, [])
    assert first["report"]["counts"]["observations.duplicates"] == 1, "same code, time, value counts once"


def test_crf_values_from_entered_in_error_results_disappear(runs: list[dict[str, Any]]) -> None:
    before, after = runs[0]["crf"], runs[1]["crf"]

    def values(crf: dict[str, Any], visit: str) -> dict[str, Any]:
        found: dict[str, Any] = next(v for v in crf["visits"] if v["visit"] == visit)["values"]
        return found

    assert "sledai2k.arthritis" in values(before, "W4") and "sledai2k.arthritis" not in values(after, "W4")
    assert values(before, "W8")["platelets"]["source"]["id"] in ("plt-57", "plt-57-dup")
    assert "platelets" not in values(after, "W8")
    assert not [f for f in after["findings"] if f["source"]["id"] in ("arth-29", "plt-57", "plt-57-dup")]
    counts = runs[1]["report"]["counts"]
    assert (
        counts["observations.not-used.entered-in-error"] == 2
        and counts["observations.not-used.cancelled"] == 1
    )


def test_derived_results_change_or_are_retracted(runs: list[dict[str, Any]]) -> None:
    assert _visit(runs[0], "W8")["sledai2k"] == 3 and _visit(runs[1], "W8")["sledai2k"] == 2
    assert _visit(runs[0], "W4")["sledai2k"] == 4 and _visit(runs[1], "W4")["sledai2k"] is None
    w8 = _entries(runs[1]["bundle"])[W8]["resource"]
    # a value that replaces one written before is amended (R4 Observation.status)
    assert w8["status"] == "amended" and w8["valueInteger"] == 2
    assert {"reference": "Observation/plt-57"} not in w8.get("derivedFrom", [])


def test_bundle_holds_the_entered_in_error_update(runs: list[dict[str, Any]]) -> None:
    entry = _entries(runs[1]["bundle"])[W4]
    obs = entry["resource"]
    assert obs["status"] == "entered-in-error" and "valueInteger" not in obs
    assert entry["request"] == {"method": "PUT", "url": f"Observation?identifier={SID_RESULT}|{W4}&patient=Patient/p1"
                                                        f"&_tag={CS_TAGS}|fhir-adapter"}
    assert obs["identifier"] == [{"system": SID_RESULT, "value": W4}]
    assert obs["subject"] == {"reference": "Patient/p1"}
    assert obs["code"]["coding"][0]["code"] == "sledai-2k"
    note = obs["note"][0]["text"]
    assert "Observation/arth-29 is now entered-in-error" in note and "(4)" in note
    assert r4_problem(obs) is None


def test_run_report_lists_the_retraction(runs: list[dict[str, Any]]) -> None:
    state = runs[1]["report"]["writeback_state"]
    assert state["retracted"] == len(state["retractions"]) >= 1 and state["updated"] >= 1
    (r,) = [r for r in state["retractions"] if r["identifier"] == W4]
    assert r["identifier"] == W4 and r["subject_id"] == "101-001" and r["previous_value"] == "4"
    assert (
        "Observation/arth-29" in r["sources"] and "Observation/arth-29 is now entered-in-error" in r["reason"]
    )


def test_a_retraction_is_sent_once(runs: list[dict[str, Any]]) -> None:
    third = runs[2]
    assert W4 not in _entries(third["bundle"])
    state = third["report"]["writeback_state"]
    assert (state["retracted"], state["new"], state["updated"]) == (0, 0, 0)
    assert state["unchanged"] == len(third["bundle"]["entry"]) - 2 >= 1   # less the Device and the Provenance
