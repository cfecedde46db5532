"""One owner per rule: each clinical fact is written in one place and read from there everywhere else.

* the glucocorticoid list (which drugs, their RxNorm ingredients) and the systemic routes:
  ``mappings/<study>/glucocorticoids.yaml``; ``medications.yaml`` only adds brand names and product codes;
* result code display names: ``profiles/CodeSystem-results.json``;
* the SLEDAI-2K descriptors and weights: ``sledai2k.yaml`` agrees with ``CodeSystem-sledai-2k-descriptor.json``.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from fhir_adapter.derive.glucocorticoids import GlucocorticoidSettings, pred_eq_on
from fhir_adapter.derive.sledai2k import Sledai2kSettings
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.mapping.medications.mapper import MedicationMapper
from fhir_adapter.mapping.medications.settings import MedicationSettings
from fhir_adapter.study.load import Study, load_study
from fhir_adapter.study.yamlfile import MappingError
from fhir_adapter.terminology.codes import CS_RESULTS, SLEDAI2K_DESCRIPTOR_CODES, codesystem_displays
from fhir_adapter.writeback.observations import result_display

ROOT = Path(__file__).resolve().parents[1]
LCAR = ROOT / "mappings" / "lcar-aio"
PROFILES = ROOT / "profiles"


# -- glucocorticoids and systemic routes ---------------------------------------------------------------
def test_the_glucocorticoid_list_and_routes_are_read_from_glucocorticoids_yaml(study: Study) -> None:
    gc = study.rule("glucocorticoids", GlucocorticoidSettings)
    meds = study.rule("medications", MedicationSettings)
    table = {g.name: g.rxnorm for g in gc.drugs}
    mapped = {name: d.rxnorm for name, d in meds.drugs.items() if d.drug_class == "glucocorticoid"}
    assert mapped == table
    assert meds.systemic_routes == gc.systemic_routes
    # brand names and product codes stay in medications.yaml and still recognise the drug
    assert "deltasone" in meds.drugs["prednisone"].names and meds.drugs["prednisone"].codes


def test_medications_yaml_does_not_restate_what_glucocorticoids_yaml_owns() -> None:
    meds = yaml.safe_load((LCAR / "medications.yaml").read_text(encoding="utf-8"))
    gc = yaml.safe_load((LCAR / "glucocorticoids.yaml").read_text(encoding="utf-8"))
    steroids = {g["name"] for g in gc["drugs"]}
    assert "systemic_routes" not in meds
    restated = {name: sorted({"class", "rxnorm"} & set(entry or {})) for name, entry in meds["drugs"].items()
                if name in steroids and {"class", "rxnorm"} & set(entry or {})}
    assert restated == {}
    assert [n for n, e in meds["drugs"].items() if (e or {}).get("class") == "glucocorticoid"] == []


def _copy(tmp_path: Path) -> Path:
    shutil.copytree(LCAR, tmp_path / "s")
    return tmp_path / "s"


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


@pytest.mark.parametrize(("old", "new", "message"), [
    ("  methylprednisolone:\n", '  methylprednisolone:\n    rxnorm: "6903"\n', "RxNorm 6903 differs from 6902"),
    ("  methylprednisolone:\n", "  methylprednisolone:\n    class: immunosuppressant\n", "is a glucocorticoid"),
    ("  # Other drug classes\n",
     '  budesonide:\n    rxnorm: "19831"\n    class: glucocorticoid\n  # Other drug classes\n',
     "glucocorticoid 'budesonide' is not in glucocorticoids.yaml"),
    ("default_frequency_per_day: null", "default_frequency_per_day: null\nsystemic_routes: [oral]",
     "systemic routes are set in glucocorticoids.yaml"),
])
def test_disagreement_between_the_two_files_is_a_load_error(
    tmp_path: Path, old: str, new: str, message: str,
) -> None:
    root = _copy(tmp_path)
    _edit(root / "medications.yaml", old, new)
    with pytest.raises(MappingError) as exc:
        load_study(root)
    assert "medications.yaml" in str(exc.value) and message in str(exc.value)


def test_a_glucocorticoid_added_to_the_table_is_recognised_by_the_medication_mapping(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    _edit(root / "glucocorticoids.yaml", "drugs:\n", 'drugs:\n  - {name: budesonide, rxnorm: "19831", factor: 1.25}\n')
    meds = load_study(root).rule("medications", MedicationSettings)
    assert (meds.drugs["budesonide"].drug_class, meds.drugs["budesonide"].rxnorm) == ("glucocorticoid", "19831")


def _sc_dexamethasone() -> dict[str, Any]:
    return {
        "resourceType": "MedicationStatement", "id": "sc", "status": "active",
        "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2024-01-10",
        "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                                                  "code": "3264", "display": "dexamethasone"}]},
        "dosage": [{"route": {"coding": [{"system": "http://snomed.info/sct", "code": "34206005"}]},
                    "timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}},
                    "doseAndRate": [{"doseQuantity": {"value": 3, "unit": "mg", "system": "http://unitsofmeasure.org",
                                                      "code": "mg"}}]}],
    }


def test_routes_come_from_one_list_read_by_the_mapping_and_the_dose(study: Study) -> None:
    """docs/clinical-rules.md#glucocorticoid-routes: one list, read by CM.systemic and the dose alike.

    The study list is oral, intravenous and intramuscular: a subcutaneous record is kept in CM but is neither
    systemic nor counted; a site that adds subcutaneous to the one list changes both at once."""
    (cm,) = MedicationMapper(study, RunLog()).map([_sc_dexamethasone()], "T-001")
    assert (cm.drug, cm.route, cm.systemic) == ("dexamethasone", "subcutaneous", False)
    settings = study.rule("glucocorticoids", GlucocorticoidSettings)
    assert settings.systemic_routes == ("oral", "intravenous", "intramuscular")
    assert pred_eq_on([cm], dt.date(2024, 1, 12), settings).mg_per_day is None
    with_sc = settings.model_copy(update={"systemic_routes": (*settings.systemic_routes, "subcutaneous")})
    assert pred_eq_on([cm], dt.date(2024, 1, 12), with_sc).mg_per_day == 20.01   # 3 mg x 6.67


# -- result display names ------------------------------------------------------------------------------
def test_result_displays_are_the_codesystem_displays() -> None:
    cs = json.loads((PROFILES / "CodeSystem-results.json").read_text(encoding="utf-8"))
    assert cs["url"] == CS_RESULTS
    for concept in cs["concept"]:
        assert result_display(concept["code"]) == concept["display"]
    with pytest.raises(KeyError, match=r"CodeSystem-results\.json"):
        result_display("no-such-result")


def test_no_result_display_name_is_written_in_code() -> None:
    displays = set(codesystem_displays("results").values())
    hits = []
    for path in sorted((ROOT / "fhir_adapter").rglob("*.py")):
        for literal in re.findall(r'"([^"\n]{12,})"', path.read_text(encoding="utf-8")):
            if literal in displays:
                hits.append(f"{path.relative_to(ROOT)}: {literal}")
    assert hits == [], "read display names with result_display() instead"


# -- SLEDAI-2K descriptors -----------------------------------------------------------------------------
def test_sledai2k_descriptors_and_weights_agree_with_the_codesystem(study: Study) -> None:
    cs = json.loads((PROFILES / "CodeSystem-sledai-2k-descriptor.json").read_text(encoding="utf-8"))
    published = {c["code"]: next(p["valueInteger"] for p in c["property"] if p["code"] == "weight")
                 for c in cs["concept"]}
    configured = {d.code: d.weight for d in study.rule("sledai2k", Sledai2kSettings).descriptors}
    assert list(configured) == list(published) == list(SLEDAI2K_DESCRIPTOR_CODES)
    assert configured == published
