"""The UCUM registry's answers kept in fhir_adapter/terminology/known_units.py: equal to what the registry answers,
enough for the shipped studies to load without building the registry, and never a way around the check for a
unit that is not in them."""

from __future__ import annotations

import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fhir_adapter.study.known_units_build import build
from fhir_adapter.study.load import load_study
from fhir_adapter.study.yamlfile import MappingError
from fhir_adapter.terminology import units
from fhir_adapter.terminology.known_units import CONVERSIONS, VALID

ROOT = Path(__file__).resolve().parents[2]
STUDY = ROOT / "mappings" / "lcar-aio"


def test_the_table_is_what_the_registry_answers_for_the_shipped_studies_now() -> None:
    """Fails after a unit is added to a shipped study or ucumvert/pint answer differently: rebuild the table
    (python -m fhir_adapter.study.known_units_build)."""
    assert build() == (VALID, CONVERSIONS)


def test_the_shipped_studies_load_without_building_the_registry() -> None:
    script = (
        "from fhir_adapter.study.load import PROJECT_ROOT, load_study\n"
        "from fhir_adapter.terminology import units\n"
        "m = PROJECT_ROOT / 'mappings'\n"
        "load_study(m / 'lcar-aio', m / 'sites' / 'example-site.yaml')\n"
        "load_study(m / 'syn-ln')\n"
        "print(units._registry.cache_info().currsize)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=True)
    assert done.stdout.strip() == "0"


def test_units_not_in_the_table_are_asked_of_the_registry() -> None:
    assert "mm/h" not in VALID and units.is_valid("mm/h")
    assert "mg/dLx" not in VALID and not units.is_valid("mg/dLx")
    assert ("mg/dL", "mmol/L") not in CONVERSIONS
    with pytest.raises(units.UnitError, match="different dimensions"):
        units.converter("mg/dL", "mmol/L")


def test_a_crf_unit_that_is_not_ucum_still_fails_the_study_naming_the_item(tmp_path: Path) -> None:
    study = tmp_path / "study"
    shutil.copytree(STUDY, study)
    items = study / "items.yaml"
    text = items.read_text(encoding="utf-8")
    old = 'testcd: PLAT, codes: ["loinc|777-3", "loinc|26515-7"], unit: "10*9/L"'
    assert text.count(old) == 1
    items.write_text(text.replace(old, old.replace('"10*9/L"', '"10*9/Lx"')), encoding="utf-8")
    with pytest.raises(MappingError) as err:
        load_study(study)
    assert err.value.file.endswith("items.yaml") and "'10*9/Lx' is not a UCUM unit" in err.value.reason
    assert "platelets" in (text.splitlines()[err.value.line - 1] if err.value.line else "")


def test_a_process_handed_the_study_converts_its_units_without_the_registry(tmp_path: Path) -> None:
    """A worker gets the study's conversions with the study (SubjectEngine): a unit an overlay accepts that the
    table does not hold is converted there as the registry computed it when the study was loaded."""
    site = tmp_path / "site.yaml"
    site.write_text("site: x\nitems:\n  platelets:\n    accept_units: ['10*3/mL']\n", encoding="utf-8")
    assert ("10*3/mL", "10*9/L") not in CONVERSIONS
    study = load_study(STUDY, site)
    expected = units.registry_converter("10*3/mL", "10*9/L")
    assert study.unit_conversions[("10*3/mL", "10*9/L")] == (expected.a, expected.b)
    (tmp_path / "study.pickle").write_bytes(pickle.dumps(study))
    script = (
        "import pickle, sys\n"
        "from fhir_adapter.engine.subject import SubjectEngine, SubjectWork\n"
        "from fhir_adapter.terminology import units\n"
        "study = pickle.loads(open(sys.argv[1], 'rb').read())\n"
        "SubjectEngine(SubjectWork(study=study))\n"
        "print(units.convert(7.0, '10*3/mL', '10*9/L'), units._registry.cache_info().currsize)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "study.pickle")], capture_output=True,
                          text=True, cwd=ROOT, check=True)
    assert done.stdout.split() == [str(expected(7.0)), "0"]
