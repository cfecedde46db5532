"""results/study.json written from rows spilled to disk: the same bytes as from the rows in memory."""

from __future__ import annotations

from pathlib import Path

from fhir_adapter.engine.subject import json_file
from fhir_adapter.results.spill import SubjectRows, row_json, write_study_json
from fhir_adapter.results.study_json import study_json, subject_row
from fhir_adapter.results.subject import derive_subject
from fhir_adapter.study.load import Study
from tests.derive.test_safety_results import ae, subject


def test_study_json_from_spilled_rows_is_byte_identical(study: Study, tmp_path: Path) -> None:
    crfs = [subject("T-003", "DL2", [ae("Cytokine release syndrome", 2, 6, 3, crs=True, related=True)]),
            subject("T-001", "DL1", [ae("Nausea", -2, -1, 1)]),
            subject("T-009", "DL1", [], infused=False),
            subject("T-002", "DL1", [ae("Fatigue \u00e9\n", 3, None, 1)])]
    rows = [subject_row(derive_subject(c, study)) for c in crfs]
    spill = SubjectRows(tmp_path / "rows")
    for i, row in enumerate(rows):
        if i % 2:
            spill.add(row)
        else:  # as a worker sends it
            spill.add_json(row["subject_id"], row_json(row))
    assert len(spill) == 4 and spill[1] == rows[1] and list(spill) == rows and list(spill[2:]) == rows[2:]
    assert [r["subject_id"] for r in spill.by_subject_id()] == ["T-001", "T-002", "T-003", "T-009"]
    write_study_json(tmp_path / "study.json", study, spill)
    assert (tmp_path / "study.json").read_bytes() == json_file(study_json(study, rows))
    spill.close()
    assert not (tmp_path / "rows").exists()


def test_study_json_without_subjects(study: Study, tmp_path: Path) -> None:
    spill = SubjectRows(tmp_path / "rows")
    write_study_json(tmp_path / "study.json", study, spill)
    assert (tmp_path / "study.json").read_bytes() == json_file(study_json(study, []))
