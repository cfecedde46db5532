"""The write-back passes an independent validator: Medplum's ``validateResource`` (@medplum/core, installed
with the test FHIR server in tests/fhir_server/) on the FHIR R4 base definitions, and on the adapter's own
profiles (profiles/, with snapshots) for every resource that claims one. Every write-back bundle of the
demo run must give 0 errors and 0 warnings."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from fhir_adapter.job.pipeline import run
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.roster.site_csv import research_study_resource
from fhir_adapter.source.files import FileSource
from fhir_adapter.study.load import Study
from fhir_adapter.synth import write_feed
from fhir_adapter.terminology.codes import SD_ADAPTER_DEVICE, SD_RESEARCH_STUDY
from fhir_adapter.writeback.ownership import with_owner_tag
from fhir_adapter.writeback.provenance import adapter_device

ROOT = Path(__file__).resolve().parents[1]
SERVER_DIR = ROOT / "tests" / "fhir_server"
PROFILES = ROOT / "profiles"


def _node() -> str:
    node = shutil.which("node")
    assert node, "node is needed for the independent validator (Node.js >= 20; `make test` installs the packages)"
    assert (SERVER_DIR / "node_modules" / "@medplum" / "core").is_dir(), "run `make fhir-test-server` first"
    return node


def validate(files: list[Path]) -> dict[str, Any]:
    proc = subprocess.run([_node(), "validate.mjs", str(PROFILES), *map(str, files)], cwd=SERVER_DIR,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory: pytest.TempPathFactory, study: Study) -> Path:
    root = tmp_path_factory.mktemp("validator")
    write_feed(root / "feed", subjects=34, seed=7)
    log = RunLog()
    run(FileSource(root / "feed", log), study, root / "out", log)
    return root / "out"


def test_every_writeback_bundle_of_the_demo_has_no_error_and_no_warning(demo_out: Path) -> None:
    bundles = sorted((demo_out / "writeback").glob("*.json"))
    assert len(bundles) == 34
    result = validate(bundles)
    resources = sum(len(json.loads(b.read_text())["entry"]) for b in bundles)
    assert result["checked"] >= resources  # every bundle, and every entry that claims a profile against it
    assert result["issues"] == []


def test_the_validator_catches_what_the_issue_found(tmp_path: Path, demo_out: Path) -> None:
    bundle = json.loads(sorted((demo_out / "writeback").glob("*.json"))[0].read_text())
    obs = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation")
    bad = json.loads(json.dumps(obs))
    bad["derivedFrom"] = [{"reference": "MedicationStatement/m1"}]   # not a type R4 allows there
    del bad["identifier"]                                             # the profile requires it
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"resourceType": "Bundle", "type": "transaction",
                                "entry": [{"resource": bad, "request": {"method": "POST", "url": "Observation"}}]}))
    issues = validate([path])["issues"]
    assert any(i["severity"] == "warning" and "MedicationStatement" in i["message"] for i in issues)
    assert any(i["severity"] == "error" and i["profile"] and "identifier" in (i["where"] + i["message"]).lower()
               for i in issues)


def test_profiles_carry_up_to_date_snapshots() -> None:
    proc = subprocess.run([_node(), "snapshots.mjs", str(PROFILES), "--check"], cwd=SERVER_DIR,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    for path in PROFILES.glob("StructureDefinition-*.json"):
        sd = json.loads(path.read_text())
        assert sd["snapshot"]["element"][0]["id"] == sd["type"], path.name
        assert not any(":" in e["path"] for e in sd["differential"]["element"]), path.name  # slice name in id only


def test_every_written_resource_declares_its_profile(demo_out: Path) -> None:
    """Issue 5.5: every resource written declares its profile in meta.profile — the Device and Provenance
    that travel with the results included."""
    for path in sorted((demo_out / "writeback").glob("*.json")):
        for entry in json.loads(path.read_text())["entry"]:
            profile = entry["resource"].get("meta", {}).get("profile") or []
            assert len(profile) == 1 and (PROFILES / f"StructureDefinition-{profile[0].rsplit('/', 1)[1]}.json"
                                          ).is_file(), (path.name, entry["resource"]["resourceType"])


def test_the_adapter_device_and_study_pass_their_profiles(tmp_path: Path, study: Study) -> None:
    """The Device (every --post) and the ResearchStudy the adapter writes for an EHR without one (roster CSV)
    claim their profiles and pass them."""
    resources = [with_owner_tag(adapter_device()), with_owner_tag(research_study_resource(study))]
    path = tmp_path / "adapter.json"
    path.write_text(json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": r, "request": {"method": "POST", "url": r["resourceType"]}} for r in resources]}))
    result = validate([path])
    assert [r["meta"]["profile"] for r in resources] == [[SD_ADAPTER_DEVICE], [SD_RESEARCH_STUDY]]
    assert result["checked"] == 1 + len(resources) and result["issues"] == []  # the Bundle, then each profile
    bad = json.loads(json.dumps(resources[1]))
    del bad["title"]  # the profile requires it
    path.write_text(json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": bad, "request": {"method": "POST", "url": "ResearchStudy"}}]}))
    assert any(i["profile"] == SD_RESEARCH_STUDY and "title" in (i["where"] + i["message"]).lower()
               for i in validate([path])["issues"])
