"""Bad input never stops the run and is never silently dropped (DESIGN.md "Habits").

The corpus (``tests/bad_input.py``) mixes more than 30 kinds of bad input with valid data of the same
subjects; each kind must be reported where expected, with its rule, and every valid value must still reach
the CRF.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from fhir_adapter.job.pipeline import run
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.source.files import FileSource
from tests.bad_input import SUBJECTS, Expect, build


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, study: Any) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("bad_input")
    expected, valid = build(base / "feed")
    log = RunLog()
    summary = run(FileSource(base / "feed", log), study, base / "out", log)
    report = orjson.loads((base / "out" / "run-report.json").read_bytes())
    crfs = {
        sid: orjson.loads((base / "out" / "crf" / f"{sid}.json").read_bytes()) for sid in SUBJECTS.values()
    }
    return {
        "expected": expected,
        "valid": valid,
        "summary": summary,
        "report": report,
        "crfs": crfs,
        "out": base / "out",
    }


def test_the_corpus_has_at_least_30_kinds(corpus: dict[str, Any]) -> None:
    kinds = [e.kind for e in corpus["expected"]]
    assert len(set(kinds)) == len(kinds) >= 30


def test_the_run_completes_for_every_subject(corpus: dict[str, Any]) -> None:
    s = corpus["summary"]
    assert s.subjects == 3 and s.subjects_failed == [] and s.exit_code == 2


def _matches(entry: dict[str, Any], e: Expect) -> bool:
    return (
        entry.get("rule") == e.rule
        and (e.resource_type is None or entry.get("resource_type") == e.resource_type)
        and (e.id is None or entry.get("id") == e.id)
        and (e.file is None or entry.get("file") == e.file)
    )


@pytest.mark.parametrize("where", ["quarantine", "warning", "count"])
def test_every_kind_is_reported_with_its_rule(corpus: dict[str, Any], where: str) -> None:
    report = corpus["report"]
    missing = []
    for e in (x for x in corpus["expected"] if x.where == where):
        if where == "quarantine":
            found = any(_matches(q, e) for q in report["quarantine"])
        elif where == "warning":
            found = any(
                w.get("rule") == e.rule and (e.id is None or str(w.get("resource", "")).endswith(f"/{e.id}"))
                for w in report["warnings"]
            )
        else:
            found = report["counts"].get(e.rule, 0) > 0
        if not found:
            missing.append(f"{e.kind} (rule {e.rule})")
    assert not missing, missing


def test_each_quarantine_entry_says_what_to_do(corpus: dict[str, Any]) -> None:
    for q in corpus["report"]["quarantine"]:
        assert q["rule"] and q["reason"] and q["fix"], q
        assert q.get("id") or q.get("file") or q["rule"] == "missing-id", q


def test_quarantined_resources_are_kept_in_the_quarantine_folder(corpus: dict[str, Any]) -> None:
    qdir: Path = corpus["out"] / "quarantine"
    kept = [orjson.loads(line) for p in qdir.glob("*.ndjson") for line in p.read_bytes().splitlines()]
    assert len(kept) == len(corpus["report"]["quarantine"])
    ids = {k["reason"].get("id") for k in kept}  # type, id, file, line, reason (no whole copies by default)
    assert {"o-hot", "o-unknown-unit", "o-wrong-type", "typo"} <= ids
    assert not any("resource" in k for k in kept)


def test_every_valid_value_still_reaches_the_crf(corpus: dict[str, Any]) -> None:
    for sid, ids in corpus["valid"].items():
        crf = corpus["crfs"][sid]
        used = {f["source"]["id"] for f in crf["findings"]}
        assert ids <= used, (sid, ids - used)
        w4 = next(v for v in crf["visits"] if v["visit"] == "W4")
        assert {"platelets", "hemoglobin", "sledai2k.arthritis"} <= set(w4["values"])
        w8 = next(v for v in crf["visits"] if v["visit"] == "W8")
        assert {"temperature", "c3"} <= set(w8["values"])


def test_no_quarantined_resource_feeds_a_crf(corpus: dict[str, Any]) -> None:
    bad = {q.get("id") for q in corpus["report"]["quarantine"] if q.get("id")}
    for crf in corpus["crfs"].values():
        assert not bad & {f["source"]["id"] for f in crf["findings"]}


def test_adverse_events_without_onset_or_grade_are_kept(corpus: dict[str, Any]) -> None:
    kept = {a["source"]["id"]: a for crf in corpus["crfs"].values() for a in crf["ae"]}
    assert kept["ae-no-onset"]["onset_date"] is None and kept["ae-no-onset"]["grade"] == 1
    assert kept["ae-no-grade"]["grade"] is None and kept["ae-no-grade"]["onset_date"] == "2024-02-05"
    warned = {w["resource"]: w for w in corpus["report"]["warnings"] if w.get("rule", "").startswith("ae-no-")}
    assert set(warned) == {"AdverseEvent/ae-no-onset", "AdverseEvent/ae-no-grade"}
    assert all(w["fix"] and w["subject_id"] for w in warned.values())


def test_day1_survives_a_second_infusion_and_an_undated_one(corpus: dict[str, Any]) -> None:
    for crf in corpus["crfs"].values():
        assert crf["day1"] == "2024-02-01"


def test_a_result_never_takes_another_patients_specimen_details(corpus: dict[str, Any]) -> None:
    """o-other-specimen (101-001) names 101-002's Specimen: it keeps its own date, and neither that Specimen's
    collection time nor its accession reaches the CRF or LB."""
    (finding,) = [f for f in corpus["crfs"]["101-001"]["findings"] if f["source"]["id"] == "o-other-specimen"]
    assert finding["date"] == "2024-02-29" and finding["collected"] is None and finding["accession"] is None
    assert "ACC-OF-P2" not in (corpus["out"] / "export" / "LB.csv").read_text()


def test_a_specimen_read_twice_gives_its_first_copy(corpus: dict[str, Any]) -> None:
    """spec-twice is in the export twice, same version, different collection times: the first is used (and warned
    of), not the copy read last."""
    (finding,) = [f for f in corpus["crfs"]["101-003"]["findings"] if f["source"]["id"] == "o-spec-twice"]
    assert finding["collected"] == "2024-02-29T08:00:00Z"


def test_lymphodepletion_with_a_dose_not_a_dose_keeps_its_date_and_one_with_no_r4_status_neither(
        corpus: dict[str, Any]) -> None:
    """ld-negative-dose (101-001) is an EX row dated 2024-01-28 without a dose; ld-given (101-002, status 'given')
    is quarantined and is in no EX row, so it dates no lymphodepletion start."""
    ex1 = {x["source"]["id"]: x for x in corpus["crfs"]["101-001"]["ex"]}
    assert ex1["ld-negative-dose"]["start_date"] == "2024-01-28" and ex1["ld-negative-dose"]["dose"] is None
    assert "ld-given" not in {x["source"]["id"] for x in corpus["crfs"]["101-002"]["ex"]}
