"""A second study runs from its folder alone: the synthetic lupus-nephritis study (mappings/syn-ln/), copied
without any other study folder to a temporary directory, goes through ``synth --study``, ``run`` (CRFs,
results, CSV / ODM / Dataset-JSON exports, write-back bundles), ``report`` and ``run --post`` against the test
FHIR server. No output names LCAR-AIO, no LCAR-AIO file is opened, and the modules only LCAR-AIO needs are
never imported; the write-back bundles pass the independent validator."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fhir_adapter.terminology.codes import SID_RESULT
from fhir_adapter.testing.feed_loader import load_feed
from fhir_adapter.testing.fhir_server import ServerHandle
from tests.serverkit import adapter_observations, write_config

ROOT = Path(__file__).resolve().parents[1]
SYN_LN = ROOT / "mappings" / "syn-ln"
SERVER_DIR = ROOT / "tests" / "fhir_server"
SUBJECTS = 6
#: modules only a CAR-T lupus study needs (its endpoints and their derivations, its synthetic feed)
LCAR_ONLY_ENDPOINTS = ("sledai2k", "pga", "lldas", "safety", "dlt", "escalation", "kinetics")
LCAR_ONLY_PREFIXES = (
    "fhir_adapter.synth.cart_sle",
    *(f"fhir_adapter.derive.{name}" for name in LCAR_ONLY_ENDPOINTS),
    *(f"fhir_adapter.endpoints.{name}" for name in LCAR_ONLY_ENDPOINTS),
)

#: runs the commands in a fresh interpreter, records every file it opens, prints what it imported
DRIVER = r"""
import json, sys
opened = []
sys.addaudithook(lambda event, args: opened.append(str(args[0])) if event == "open" and args and
                 isinstance(args[0], str) else None)
from fhir_adapter.cli.commands import main
codes = []
for argv in json.loads(sys.argv[1]):
    try:
        main(argv, standalone_mode=False)
        codes.append(0)
    except SystemExit as exc:
        codes.append(exc.code)
print(json.dumps({"codes": codes, "modules": sorted(sys.modules), "opened": sorted(set(opened))}))
"""


@dataclass
class SecondStudy:
    study: Path
    feed: Path
    out: Path
    codes: list[Any]
    modules: list[str]
    opened: list[str]


def _drive(commands: list[list[str]], cwd: Path) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(commands)], cwd=cwd, capture_output=True,
                          text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.fixture(scope="module")
def second(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecondStudy]:
    tmp = tmp_path_factory.mktemp("second-study")
    study = tmp / "studies" / "syn-ln"
    shutil.copytree(SYN_LN, study)
    feed, out = tmp / "feed", tmp / "out"
    result = _drive([
        ["-q", "synth", "--study", str(study), "--subjects", str(SUBJECTS), "--seed", "5", "--out", str(feed)],
        ["-q", "run", "--study", str(study), "--source", str(feed), "--out", str(out)],
        ["-q", "report", "--results", str(out)],
    ], cwd=tmp)
    yield SecondStudy(study, feed, out, result["codes"], result["modules"], result["opened"])


def _text_files(folder: Path) -> Iterator[Path]:
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix in {".json", ".ndjson", ".csv", ".xml", ".html", ".jsonl", ".txt"}:
            yield path


def test_synth_run_and_report_succeed(second: SecondStudy) -> None:
    assert second.codes == [0, 0, 0]
    study = json.loads((second.out / "results" / "study.json").read_text(encoding="utf-8"))
    assert study["study"] == "SYN-LN-0001"
    assert len(study["subjects"]) == SUBJECTS
    assert (second.out / "report" / "index.html").is_file()
    export = second.out / "export"
    assert (export / "odm.xml").is_file()
    assert (export / "LB.csv").is_file() and (export / "LB.json").is_file()
    assert len(list((second.out / "writeback").glob("*.json"))) == SUBJECTS


def test_the_report_shows_the_study_s_endpoints_only(second: SecondStudy) -> None:
    html = (second.out / "report" / "index.html").read_text(encoding="utf-8")
    titles = re.findall(r"<h2>(.*?)</h2>", html)
    assert "Renal response" in titles and "Renal and serological markers" in titles
    assert not [t for t in titles if any(w in t for w in ("SLEDAI", "LLDAS", "kinetics", "adverse events"))]
    assert "Renal response per visit" in html
    # no dose escalation in this study: nothing to miss, no "No data: dose_levels / rp2d"
    assert "dose_levels" not in html and "No data: rp2d" not in html and "escalation decisions" not in html


def test_renal_response_is_derived_from_the_study_yaml(second: SecondStudy) -> None:
    study = json.loads((second.out / "results" / "study.json").read_text(encoding="utf-8"))
    grades = []
    for subject in study["subjects"]:
        response = subject["renal_response"]
        assert response["ln_at_baseline"] is True     # ln_at_baseline: all in renal.yaml
        assert response["measure"] == "upcr"
        grades += [v["response"] for v in response["visits"] if v["response"] is not None]
        assert subject["visits"], subject["subject_id"]
    assert {"complete", "partial", "none"} & set(grades)
    assert study["settings"]["renal"]["response"]["enabled"] is True
    written: dict[tuple[str, str], str] = {}
    for bundle in (second.out / "writeback").glob("*.json"):
        for entry in json.loads(bundle.read_text(encoding="utf-8"))["entry"]:
            res = entry["resource"]
            if res["resourceType"] == "Observation" and res["code"]["coding"][0]["code"] == "renal-response":
                assert res.get("derivedFrom"), res["identifier"]
                ident = res["identifier"][0]["value"]          # SYN-LN-0001.<subject>.<visit>.renal-response
                written[(ident.split(".")[1], ident.split(".")[2])] = res["valueCodeableConcept"]["coding"][0]["code"]
    graded = {(s["subject_id"], v["visit"]): f"renal-response-{v['response']}" for s in study["subjects"]
              for v in s["renal_response"]["visits"] if v["response"] is not None}
    assert written == graded


def test_every_dose_of_the_study_drug_is_exposure_not_a_concomitant_medication(second: SecondStudy) -> None:
    doses = 0
    for crf_file in (second.out / "crf").glob("*.json"):
        crf = json.loads(crf_file.read_text(encoding="utf-8"))
        ex = [x for x in crf["ex"] if x["kind"] == "infusion"]
        assert ex and ex[0]["study_day"] == 1 and all(x["treatment"] == "SYNLN study drug" for x in ex)
        assert not [c for c in crf["cm"] if "synln" in json.dumps(c).lower()]
        doses += len(ex)
    feed_doses = len((second.feed / "MedicationAdministration.ndjson").read_text(encoding="utf-8").splitlines())
    assert doses == feed_doses


def test_epochs_follow_the_study_drug_not_a_single_infusion(second: SecondStudy) -> None:
    """EPOCH (docs/cdisc-mapping.md): TREATMENT through the last dose of the study product — every dose of a
    repeated-dose study is in it, a result after the last dose is FOLLOW-UP (not FOLLOW-UP after Day 1)."""
    import csv

    export = second.out / "export"
    ex = list(csv.DictReader((export / "EX.csv").open(encoding="utf-8")))
    assert ex and {r["EPOCH"] for r in ex} == {"TREATMENT"}
    last: dict[str, str] = {}
    for r in ex:
        last[r["USUBJID"]] = max(last.get(r["USUBJID"], ""), r["EXENDTC"][:10] or r["EXSTDTC"][:10])
    lb = [r for r in csv.DictReader((export / "LB.csv").open(encoding="utf-8")) if r["LBDTC"] and r["EPOCH"]]
    after = [r for r in lb if r["LBDTC"][:10] > last[r["USUBJID"]]]
    during = [r for r in lb if r["LBDY"] and int(r["LBDY"]) > 1 and r["LBDTC"][:10] <= last[r["USUBJID"]]]
    assert after and {r["EPOCH"] for r in after} == {"FOLLOW-UP"}
    assert during and {r["EPOCH"] for r in during} == {"TREATMENT"}


def test_no_output_names_lcar_aio(second: SecondStudy) -> None:
    named = [str(p.relative_to(second.out.parent)) for folder in (second.feed, second.out)
             for p in _text_files(folder) if "lcar" in p.read_text(encoding="utf-8", errors="replace").lower()]
    assert named == []


def test_no_export_names_an_endpoint_the_study_does_not_have(second: SecondStudy) -> None:
    """syn-ln derives no SLEDAI-2K or PGA: its QS dataset is labelled as SDTM labels it, "Questionnaires"."""
    named = [str(p.relative_to(second.out)) for p in _text_files(second.out / "export")
             if re.search(r"SLEDAI|\bPGA\b", p.read_text(encoding="utf-8"))]
    assert named == []
    assert json.loads((second.out / "export" / "QS.json").read_text())["label"] == "Questionnaires"


def test_no_lcar_aio_file_is_read_and_no_lcar_aio_module_imported(second: SecondStudy) -> None:
    lcar_files = [f for f in second.opened if "lcar-aio" in f.lower()]
    assert lcar_files == []
    assert not [m for m in second.modules if m.startswith(LCAR_ONLY_PREFIXES)]
    assert "fhir_adapter.synth.study_feed" in second.modules


def test_write_back_bundles_pass_the_independent_validator(second: SecondStudy) -> None:
    node = shutil.which("node")
    assert node, "node is needed for the independent validator (Node.js >= 20)"
    bundles = sorted((second.out / "writeback").glob("*.json"))
    done = subprocess.run([node, "validate.mjs", str(ROOT / "profiles"), *map(str, bundles)], cwd=SERVER_DIR,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["checked"] >= sum(len(json.loads(b.read_text())["entry"]) for b in bundles)
    assert result["issues"] == []


@pytest.mark.server
def test_post_writes_the_second_study_results_to_the_server(second: SecondStudy, fhir_server: ServerHandle,
                                                             tmp_path: Path) -> None:
    fhir_server.clear_faults()
    fhir_server.reset()
    load_feed(fhir_server.base_url, second.feed)
    config = write_config(tmp_path / "adapter.yaml")
    out = tmp_path / "server-out"
    result = _drive([["-q", "run", "--study", str(second.study), "--source", fhir_server.base_url, "--out", str(out),
                      "--config", str(config), "--post"]], cwd=tmp_path)
    assert result["codes"] == [0]
    assert not [m for m in result["modules"] if m.startswith(LCAR_ONLY_PREFIXES)]
    written = adapter_observations(fhir_server.base_url)
    values = {i["value"] for o in written for i in o["identifier"] if i["system"] == SID_RESULT}
    assert values and all(v.startswith("SYN-LN-0001.") for v in values)
    offline = {i["value"] for b in (second.out / "writeback").glob("*.json")
               for e in json.loads(b.read_text())["entry"] for i in e["resource"].get("identifier") or []
               if i.get("system") == SID_RESULT}
    assert values == offline
    assert not any("lcar" in json.dumps(o).lower() for o in written)
