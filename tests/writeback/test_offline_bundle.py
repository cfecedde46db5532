"""OUT/writeback/<subject>.json is the transaction ``--post`` sends: the adapter Device, every result as a
conditional update matched on its identifier AND the subject's Patient, and the Provenance naming every
source the results rest on."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from fhir_adapter.job.pipeline import run
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.source.files import FileSource
from fhir_adapter.study.load import Study
from fhir_adapter.synth import plan_trial, write_feed
from fhir_adapter.terminology.codes import CS_TAGS, CS_WRITE_KEY, SID_DEVICE, SID_RESULT
from fhir_adapter.writeback.identifiers import full_url
from fhir_adapter.writeback.sink import transaction_entries
from fhir_adapter.writeback.sources import result_sources
from fhir_adapter.writeback.state import result_value


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory, study: Study) -> Path:
    root = tmp_path_factory.mktemp("offline")
    write_feed(root / "feed", subjects=4, seed=7)
    log = RunLog()
    run(FileSource(root / "feed", log), study, root / "out", log)
    return root / "out"


def test_the_offline_bundle_is_the_posted_transaction(out: Path) -> None:
    plan = {s.subject_id: s for s in plan_trial(4, 7).subjects}
    for path in sorted((out / "writeback").glob("*.json")):
        bundle = json.loads(path.read_text())
        patient = plan[path.stem].patient_id
        entries = bundle["entry"]
        device, results, prov = entries[0], entries[1:-1], entries[-1]
        assert device["resource"]["resourceType"] == "Device"
        assert device["request"] == {"method": "POST", "url": "Device",
                                     "ifNoneExist": f"identifier={SID_DEVICE}|fhir-adapter"}
        for e in results:
            r = e["resource"]
            assert r["subject"] == {"reference": f"Patient/{patient}"}
            ident = r["identifier"][0]["value"]
            # only the adapter's own copy matches (its tag): a hospital resource with the identifier is never
            # overwritten
            assert e["request"] == {"method": "PUT", "url": f"Observation?identifier={SID_RESULT}|{ident}"
                                                           f"&patient=Patient/{patient}&_tag={CS_TAGS}|fhir-adapter"}
        p = prov["resource"]
        [key] = [t["code"] for t in p["meta"]["tag"] if t["system"] == CS_WRITE_KEY]
        # R4 Provenance has no identifier: created once per write, matched on the key of the write it records
        assert prov["request"] == {"method": "POST", "url": "Provenance",
                                   "ifNoneExist": f"_tag={CS_WRITE_KEY}|{key}"}
        assert [t["reference"] for t in p["target"]] == [e["fullUrl"] for e in results]
        assert p["agent"][0]["who"]["reference"] == full_url(SID_DEVICE, "fhir-adapter") == device["fullUrl"]
        sources = sorted({s for e in results for s in result_sources(e["resource"])})
        assert sorted(x["what"]["reference"] for x in p["entity"]) == sources   # every result's sources
        # the Device, resources (owner tag included) and Provenance the live write sends for these results; only
        # the result requests differ: the file cannot know server ids and versions, so it updates conditionally
        recorded = dt.datetime.fromisoformat(p["recorded"])
        live = json.loads(json.dumps(
            transaction_entries([e["resource"] for e in results], sources, recorded, patient)))
        assert [device, prov] == [live[0], live[-1]]
        assert [(e["fullUrl"], e["resource"]) for e in results] == [(e["fullUrl"], e["resource"]) for e in live[1:-1]]
        assert all(r["resource"]["meta"]["tag"] for r in results)


def test_no_dlt_names_the_infusion_and_the_aes_considered(out: Path) -> None:
    seen = 0
    for path in sorted((out / "writeback").glob("*.json")):
        bundle = json.loads(path.read_text())
        for e in bundle["entry"]:
            r = e["resource"]
            if r["resourceType"] == "Observation" and r["code"]["coding"][0]["code"] == "dlt" \
                    and r["valueBoolean"] is False:
                srcs = result_sources(r)
                assert any(s.startswith("Procedure/") for s in srcs)
                assert "judged from the infusion Procedure/" in r["method"]["text"]
                entity = {x["what"]["reference"] for x in bundle["entry"][-1]["resource"]["entity"]}
                assert set(srcs) <= entity
                seen += 1
    assert seen >= 1


def test_same_data_same_file(out: Path, study: Study, tmp_path: Path) -> None:
    feed = out.parent / "feed"
    log = RunLog()
    run(FileSource(feed, log), study, tmp_path / "again", log)
    for path in sorted((out / "writeback").glob("*.json")):
        assert (tmp_path / "again" / "writeback" / path.name).read_bytes() == path.read_bytes()


def test_a_changed_result_is_amended_and_stays_amended(out: Path, study: Study, tmp_path: Path) -> None:
    """A result whose value replaces one written before is `amended` in the offline bundle (as --post makes it on
    the server), and stays so while its value stays; the others stay `final`."""
    shutil.copytree(out.parent / "feed", tmp_path / "feed")
    shutil.copytree(out, tmp_path / "out")
    first = {p.stem: _results(p) for p in sorted((out / "writeback").glob("*.json"))}
    feed = tmp_path / "feed" / "Observation.ndjson"
    lines = [json.loads(line) for line in feed.read_text().splitlines()]
    by_id = {o["id"]: o for o in lines}
    # the clinician's "present" of a descriptor no lab rule scores (rash), corrected to absent: the total drops
    subject, sledai, source = next(
        (s, r, src) for s, rs in first.items() for r in rs.values() if r["code"]["coding"][0]["code"] == "sledai-2k"
        for src in (x["reference"].split("/")[1] for x in r.get("derivedFrom", []))
        if by_id.get(src, {}).get("valueBoolean") is True and by_id[src]["code"]["coding"][0]["code"] == "rash")
    feed.write_text("".join(json.dumps({**o, "valueBoolean": False} if o["id"] == source else o) + "\n"
                            for o in lines))
    for _ in range(2):  # changed, then unchanged since
        log = RunLog()
        run(FileSource(tmp_path / "feed", log), study, tmp_path / "out", log)
        now = {p.stem: _results(p) for p in sorted((tmp_path / "out" / "writeback").glob("*.json"))}
        changed = {(s, i) for s, rs in now.items() for i, r in rs.items() if i in first[s]
                   and result_value(r) != result_value(first[s][i])}
        assert (subject, sledai["identifier"][0]["value"]) in changed and all(s == subject for s, _ in changed)
        for s, rs in now.items():
            for i, r in rs.items():
                assert r["status"] == ("amended" if (s, i) in changed else "final"), (s, i)


def _but_status(r: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in r.items() if k != "status"}


def _results(path: Path) -> dict[str, dict[str, Any]]:
    return {e["resource"]["identifier"][0]["value"]: e["resource"] for e in json.loads(path.read_text())["entry"]
            if e["resource"]["resourceType"] == "Observation" and e["resource"].get("status") != "entered-in-error"}
