"""odm.xml assembled on close: the subjects stay where they were streamed (no reviewers) or are copied after a
longer head (reviewers' AdminData); either way one valid ODM document timed at the close, no side file left."""

from __future__ import annotations

import datetime as dt
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from fhir_adapter.export.odm import OdmWriter, validate
from fhir_adapter.study.load import Study

NS = "{http://www.cdisc.org/ns/odm/v1.3}"
SUBJECTS = ('<SubjectData SubjectKey="T-001"/>\n', '<SubjectData SubjectKey="T-002"/>\n')


def _written(path: Path, study: Study, reviewer: str | None) -> tuple[bytes, str, str]:
    """odm.xml of two subjects; the time before the close and the time after it."""
    w = OdmWriter(path, study)
    for xml in SUBJECTS:
        w.write(re.findall(r'SubjectKey="([^"]+)"', xml)[0], xml, 0)
    if reviewer is not None:  # as rendering a row with a reviewer's decision records it
        w.reviewers[reviewer] = "USR.REVIEW.1"
    before = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
    w.close()
    after = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
    return path.read_bytes(), before, after


@pytest.mark.parametrize("reviewer", [None, "D. Manager"])
def test_odm_xml_is_one_valid_document_timed_at_the_close(study: Study, tmp_path: Path, reviewer: str | None) -> None:
    data, before, after = _written(tmp_path / "odm.xml", study, reviewer)
    assert [p.name for p in tmp_path.iterdir()] == ["odm.xml"]  # the side file became odm.xml or was removed
    validate(tmp_path / "odm.xml")
    root = ET.fromstring(data)
    created = root.get("CreationDateTime")
    assert created is not None and before <= created <= after  # the provisional time was replaced
    assert root.get("FileOID") == f"FA.{study.info.id}.{created}"
    assert data.startswith(b"<?xml") and data.count(b"0001-01-01") == 0
    clinical = root.find(f"{NS}ClinicalData")
    assert clinical is not None
    assert [s.get("SubjectKey") for s in clinical.findall(f"{NS}SubjectData")] == ["T-001", "T-002"]
    users = [u.findtext(f"{NS}LoginName") for u in root.iter(f"{NS}User")]
    assert users == ([] if reviewer is None else [reviewer])


def test_the_two_assemblies_differ_only_by_the_admin_data(study: Study, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    plain, _, _ = _written(tmp_path / "a" / "odm.xml", study, None)
    reviewed, _, _ = _written(tmp_path / "b" / "odm.xml", study, "D. Manager")
    time = re.compile(rb'"(FA\.[^"]*\.)?\d{4}-\d\d-\d\dT[^"]*"')
    admin = re.compile(rb"<AdminData .*?</AdminData>\n", re.S)
    assert admin.search(reviewed) and not admin.search(plain)
    assert time.sub(b"T", admin.sub(b"", reviewed)) == time.sub(b"T", plain)
    assert plain.endswith(b'MetaDataVersionOID="MDV.1">\n' + "".join(SUBJECTS).encode() + b"</ClinicalData></ODM>")
