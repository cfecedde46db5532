"""``fhir-adapter synth --study``: the generic feed follows a study folder's schedule and items; the CAR-T
lupus generator is a plug-in that only a study naming its endpoints loads."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from collections import Counter
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from fhir_adapter.cli.commands import main
from fhir_adapter.study.load import load_study
from fhir_adapter.study.timeline import study_day
from fhir_adapter.synth import write_feed, write_study_feed
from fhir_adapter.synth.plugins import plugin_for

ROOT = Path(__file__).resolve().parent.parent
SYN_LN = ROOT / "mappings" / "syn-ln"
LCAR = ROOT / "mappings" / "lcar-aio"
#: modules of the CAR-T lupus generator plug-in
PLUGIN_PREFIX = "fhir_adapter.synth.cart_sle"


def _hashes(directory: Path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(directory.iterdir())}


def _lines(folder: Path, rtype: str) -> list[dict[str, Any]]:
    path = folder / f"{rtype}.ndjson"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def test_the_cart_plugin_is_chosen_by_the_endpoints_a_study_names() -> None:
    plugin = plugin_for(LCAR)
    assert plugin is not None and plugin.name == "cart-sle"
    assert plugin_for(SYN_LN) is None


def test_synth_study_of_lcar_aio_is_the_cart_generator_byte_for_byte(tmp_path: Path) -> None:
    write_feed(tmp_path / "direct", subjects=4, seed=11)
    result = CliRunner().invoke(main, ["synth", "--study", "mappings/lcar-aio", "--subjects", "4", "--seed", "11",
                                       "--out", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    assert _hashes(tmp_path / "cli") == _hashes(tmp_path / "direct")


def test_synth_refuses_the_cart_generator_for_another_study_id(tmp_path: Path) -> None:
    """The CAR-T generator writes LCAR-AIO's trial (its ResearchStudy, arms, schedule): for a study of another id
    that names its endpoints, synth says so (exit 1) instead of writing a feed the run then finds no study in."""
    study = tmp_path / "nx"
    shutil.copytree(LCAR, study)
    yaml_file = study / "study.yaml"
    yaml_file.write_text(yaml_file.read_text(encoding="utf-8").replace("id: LCAR-AIO-SLE", "id: NX-LN-202", 1),
                         encoding="utf-8")
    result = CliRunner().invoke(main, ["synth", "--study", str(study), "--subjects", "2", "--out",
                                       str(tmp_path / "feed")])
    assert result.exit_code == 1
    assert "writes the trial LCAR-AIO-SLE" in result.output and "not NX-LN-202" in result.output
    assert str(yaml_file) in result.output and not (tmp_path / "feed").exists()


def test_the_generic_feed_loads_no_plugin_module(tmp_path: Path) -> None:
    code = (
        "import sys, json\n"
        "from pathlib import Path\n"
        "from fhir_adapter.synth.plugins import write_synthetic_feed\n"
        f"write_synthetic_feed(Path({str(SYN_LN)!r}), Path({str(tmp_path / 'feed')!r}), 3, 5)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('fhir_adapter.synth'))))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert "fhir_adapter.synth.study_feed" in loaded
    assert not [m for m in loaded if m.startswith(PLUGIN_PREFIX)], loaded


@pytest.fixture(scope="module")
def ln_feed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("syn-ln") / "feed"
    write_study_feed(SYN_LN, out, subjects=8, seed=3)
    return out


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path, ln_feed: Path) -> None:
    write_study_feed(SYN_LN, tmp_path / "again", subjects=8, seed=3)
    assert _hashes(tmp_path / "again") == _hashes(ln_feed)
    write_study_feed(SYN_LN, tmp_path / "other", subjects=8, seed=4)
    assert _hashes(tmp_path / "other")["Observation.ndjson"] != _hashes(ln_feed)["Observation.ndjson"]


def test_manifest_and_study_identity_come_from_the_study_folder(ln_feed: Path) -> None:
    manifest = json.loads((ln_feed / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["request"].endswith("/Group/syn-ln-0001/$export")
    for entry in manifest["output"]:
        assert entry["count"] == len(_lines(ln_feed, entry["type"]))
    (rs,) = _lines(ln_feed, "ResearchStudy")
    assert rs["identifier"] == [{"system": "https://fhir-adapter.org/fhir/sid/research-study", "value": "SYN-LN-0001"}]
    subjects = _lines(ln_feed, "ResearchSubject")
    statuses = Counter(str(s["status"]) for s in subjects)
    assert statuses["ineligible"] == 1 and sum(statuses.values()) == 9
    assert {i["system"] for s in subjects for i in s["identifier"]} == {
        "https://fhir-adapter.org/fhir/sid/syn-ln-subject"}
    patients = _lines(ln_feed, "Patient")
    assert len(patients) == 10   # 8 enrolled, 1 screen failure, 1 clinic patient outside the study


def test_day1_is_the_first_dose_and_labs_follow_the_schedule_and_items(ln_feed: Path) -> None:
    study = load_study(SYN_LN)
    product = next(iter(study.infusion_medication_codes))
    doses: dict[str, list[date]] = {}
    for ma in _lines(ln_feed, "MedicationAdministration"):
        coding = ma["medicationCodeableConcept"]["coding"][0]
        assert (coding["system"], coding["code"]) == product
        doses.setdefault(ma["subject"]["reference"], []).append(
            date.fromisoformat(ma["effectivePeriod"]["start"][:10]))
    assert len(doses) == 8
    item_of = {c.split("|")[1]: item for item in ("upcr", "protein_24h", "egfr", "creatinine", "c3", "c4",
                                                   "anti_dsdna", "cd19") for c in study.items[item].codes}
    windows = [v.window for v in study.schedule.visits]
    items_seen: set[str] = set()
    for obs in _lines(ln_feed, "Observation"):
        ref = obs["subject"]["reference"]
        code = obs["code"]["coding"][-1]["code"]
        items_seen.add(item_of[code])
        if ref not in doses:
            continue   # screen failure or clinic patient
        when = obs.get("effectiveDateTime") or obs["effectivePeriod"]["end"]
        sd = study_day(date.fromisoformat(str(when)[:10]), min(doses[ref]))
        assert any(lo <= sd <= hi for lo, hi in windows), (code, sd)
    assert items_seen == set(item_of.values())


def test_synth_study_by_name_on_the_command_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["synth", "--study", "syn-ln", "--subjects", "2", "--seed", "1",
                                       "--out", str(tmp_path / "feed")])
    assert result.exit_code == 0, result.output
    assert "for 2 enrolled subjects" in result.output
    assert (tmp_path / "feed" / "manifest.json").is_file()


def test_a_schedule_without_a_day1_visit_still_doses_on_day1_and_once_without_repeated_doses(
        tmp_path: Path) -> None:
    """The first dose is Day 1 whatever the schedule: a study with no Day 1 visit (screening, W12, W24) gets its
    dose on each subject's Day 1, not at W12 (which moved every study day by ~84 and put the screening labs out of
    their window), and a study without repeated_doses gets one dose, not one per visit."""
    study_dir = tmp_path / "study"
    shutil.copytree(SYN_LN, study_dir)
    (study_dir / "schedule.yaml").write_text(
        "visits:\n"
        "  - {id: SCR, label: Screening, day: -21, window: [-42, -1]}\n"
        "  - {id: W12, label: Week 12, day: 85, window: [71, 99]}\n"
        "  - {id: W24, label: Week 24, day: 169, window: [155, 183]}\n", encoding="utf-8")
    info = study_dir / "study.yaml"
    info.write_text(info.read_text(encoding="utf-8").replace("repeated_doses: true", "repeated_doses: false"),
                    encoding="utf-8")
    study = load_study(study_dir)
    assert not study.info.repeated_doses
    write_study_feed(study_dir, tmp_path / "feed", subjects=6, seed=3)
    doses: dict[str, list[date]] = {}
    for ma in _lines(tmp_path / "feed", "MedicationAdministration"):
        if (ma["medicationCodeableConcept"]["coding"][0]["code"]) == next(iter(study.infusion_medication_codes))[1]:
            doses.setdefault(ma["subject"]["reference"], []).append(
                date.fromisoformat(ma["effectivePeriod"]["start"][:10]))
    assert doses and all(len(d) == 1 for d in doses.values()), doses
    windows = {v.id: v.window for v in study.schedule.visits}
    seen: Counter[str] = Counter()
    for obs in _lines(tmp_path / "feed", "Observation"):
        ref = obs["subject"]["reference"]
        if ref not in doses:
            continue
        when = obs.get("effectiveDateTime") or obs["effectivePeriod"]["end"]
        sd = study_day(date.fromisoformat(str(when)[:10]), doses[ref][0])
        inside = [v for v, (lo, hi) in windows.items() if lo <= sd <= hi]
        assert len(inside) == 1, (ref, sd)
        seen[inside[0]] += 1
    assert seen["SCR"] and seen["W12"]
