"""``OUT/export/``: the EDC exports of a run, written subject by subject.

* ``<DOMAIN>.csv`` for DM, EX, LB, VS, PC, QS, IS, CM, AE, MH, PR (CDISC columns, :mod:`.cdisc`; which IG
  variable each column serves: ``mappings/cdisc/variables.csv`` → docs/cdisc-mapping.md);
* ``<DOMAIN>.json`` — the same rows as CDISC Dataset-JSON v1.1, metadata as in odm.xml (:mod:`.dataset_json`);
* ``odm.xml`` — CDISC ODM 1.3.2 ClinicalData with its MetaDataVersion (:mod:`.odm`);
* ``coverage.csv`` and ``coverage-subjects.csv`` (:mod:`.coverage`).

Each subject's rows are written as soon as its CRF exists; nothing but counters is kept across subjects.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from fhir_adapter.crf.models import SubjectCRF
from fhir_adapter.export.cdisc import COLUMNS, DOMAINS, FINDINGS_DOMAINS, RowBuilder
from fhir_adapter.export.coverage import Coverage, SubjectCoverage
from fhir_adapter.export.dataset_json import DatasetJsonWriter, column_kinds, render_tables
from fhir_adapter.export.meddra import Meddra, MeddraError, meddra_folder
from fhir_adapter.export.odm import OdmSubjects, OdmWriter
from fhir_adapter.export.table import Table, table, table_of_cells
from fhir_adapter.job.runlog import Quarantined
from fhir_adapter.study.load import Study


def _row_builder(study: Study) -> RowBuilder:
    folder_setting = meddra_folder(study.meddra_dir)
    meddra: Meddra | None = None
    problem: str | None = None
    try:
        meddra = Meddra(folder_setting) if folder_setting else None
    except (MeddraError, OSError) as exc:  # FHIR_ADAPTER_MEDDRA_DIR wrong: no hierarchy, and say why
        problem = str(exc)
    rows = RowBuilder(study, meddra=meddra)
    rows.meddra_problem = problem
    return rows


def _rows(builder: RowBuilder, crf: SubjectCRF, review: dict[tuple[str, str], str] | None,
          decisions: dict[tuple[str, str], dict[str, Any]] | None) -> dict[str, Table]:
    """Every domain's :class:`Table` of ``crf``, in ``DOMAINS`` order."""
    rows = builder.rows(crf)
    findings = builder.findings(crf, review, decisions)
    return {d: table_of_cells(d, list(f.cells), f.visits, f.decisions) if (f := findings.get(d)) is not None
            else table(d, rows[d]) for d in DOMAINS}


@dataclass
class SubjectExport:
    """One subject's export rows rendered as the files' text where the subject was processed (a worker), and
    what the run's report counts from them; :meth:`ExportWriter.write` appends it."""

    subject_id: str
    #: domain → the rows' CSV text, and how many rows
    csv: dict[str, str]
    counts: dict[str, int]
    #: domain → each row's Dataset-JSON text
    dataset_json: dict[str, list[str]]
    #: SubjectData XML and the characters XML forbids removed from it; None when a row carries a reviewer's
    #: decision (reviewer OIDs are numbered by the run's ODM writer, which renders ``tables`` then)
    odm: str | None
    odm_removed: int = 0
    tables: dict[str, Table] | None = None
    #: the subject's share of the coverage (with the quarantine entries of its mapping)
    coverage: SubjectCoverage | None = None
    ct_missing: Counter[tuple[str, str]] = field(default_factory=Counter)
    meddra_missing: set[str] = field(default_factory=set)
    serious_without_criteria: int = 0
    #: after :meth:`to_piece`: the file holding the text, and each part of it in order — (``csv``, ``json``
    #: or ``odm``, the domain, its length in bytes)
    piece: Path | None = None
    segments: list[tuple[str, str, int]] = field(default_factory=list)

    def to_piece(self, path: Path) -> None:
        """Write the rendered text (CSV, Dataset-JSON rows, SubjectData) to ``path`` and keep only where each
        part of it is: the run's process then copies the parts into the export files inside the kernel
        (:meth:`ExportWriter.write`), and the text is neither pickled nor sent from the worker."""
        parts: list[bytes] = []

        def part(kind: str, domain: str, data: bytes) -> None:
            parts.append(data)
            self.segments.append((kind, domain, len(data)))

        for domain, text in self.csv.items():
            part("csv", domain, text.encode("utf-8"))
        for domain, texts in self.dataset_json.items():
            if texts:
                part("json", domain, ",\n".join(texts).encode("utf-8"))
        if self.odm is not None:
            part("odm", "", self.odm.encode("utf-8"))
        with path.open("wb") as fh:
            fh.writelines(parts)
        self.piece, self.csv, self.dataset_json, self.odm = path, {}, {}, None


class ExportRenderer:
    """Renders subjects' exports (:class:`SubjectExport`) away from the files: in a worker process."""

    def __init__(self, study: Study) -> None:
        self.rows = _row_builder(study)
        self.odm = OdmSubjects(study)
        self.kinds = column_kinds()
        self.coverage = Coverage(study, None)

    def render(self, crf: SubjectCRF, review: dict[tuple[str, str], str] | None = None,
               decisions: dict[tuple[str, str], dict[str, Any]] | None = None,
               quarantined: list[Quarantined] | None = None) -> SubjectExport:
        """The subject's export text; with ``quarantined`` (the quarantine entries of its mapping) its share of
        the coverage too."""
        b = self.rows
        ct_before, meddra_before, serious_before = Counter(b.ct.missing), set(b.meddra_missing), \
            b.serious_without_criteria
        domains = _rows(b, crf, review, decisions)
        texts = {domain: t.csv_text() for domain, t in domains.items()}
        reviewed = any(any(domains[d].decisions) for d in FINDINGS_DOMAINS)
        xml, removed = (None, 0) if reviewed else self.odm.render(crf.subject_id, domains)
        return SubjectExport(
            subject_id=crf.subject_id, csv=texts, counts={d: len(t.cells) for d, t in domains.items()},
            dataset_json=render_tables(domains, self.kinds), odm=xml, odm_removed=removed,
            tables=domains if reviewed else None,
            coverage=self.coverage.subject(crf, quarantined) if quarantined is not None else None,
            ct_missing=Counter(b.ct.missing) - ct_before,
            meddra_missing=b.meddra_missing - meddra_before,
            serious_without_criteria=b.serious_without_criteria - serious_before)


def _copy_range(src: int, offset: int, dst: int, length: int) -> None:
    """Append ``length`` bytes of file ``src`` from ``offset`` at the position of file ``dst``, inside the
    kernel (``copy_file_range``); where the file system cannot (another device, an old kernel), by reading
    and writing."""
    while length > 0:
        try:
            n = os.copy_file_range(src, dst, length, offset)
        except OSError:  # EXDEV, ENOSYS, EOPNOTSUPP, EINVAL: the portable way
            n = 0
        if n == 0:
            data = os.pread(src, length, offset)
            if not data:
                raise OSError(f"export piece ends {length} bytes early (offset {offset})")
            view = memoryview(data)
            while view:
                view = view[os.write(dst, view):]
            n = len(data)
        offset += n
        length -= n


class ExportWriter:
    def __init__(self, folder: Path, study: Study) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.rows = _row_builder(study)
        self._files: dict[str, IO[str]] = {}
        self._csv: dict[str, Any] = {}  # domain → its csv.writer
        for domain in DOMAINS:
            fh = (self.folder / f"{domain}.csv").open("w", newline="", encoding="utf-8")
            w = csv.writer(fh)
            w.writerow(COLUMNS[domain])
            self._files[domain], self._csv[domain] = fh, w
        self.odm = OdmWriter(self.folder / "odm.xml", study)
        self.dataset_json = DatasetJsonWriter(self.folder, study)
        self.coverage = Coverage(study, self.folder)
        self.counts: dict[str, int] = dict.fromkeys(DOMAINS, 0)

    def add(self, crf: SubjectCRF, quarantined: list[Quarantined],
            review: dict[tuple[str, str], str] | None = None,
            decisions: dict[tuple[str, str], dict[str, Any]] | None = None) -> None:
        """Export one subject's CRF; ``quarantined`` = the quarantine entries added while mapping it;
        ``review`` = the review status per (visit, item) (column REVSTAT); ``decisions`` = the reviewer's
        decision per (visit, item) (ODM AuditRecord and Annotation)."""
        domains = _rows(self.rows, crf, review, decisions)
        for domain, t in domains.items():
            self._files[domain].write(t.csv_text())
            self.counts[domain] += len(t.cells)
        self.odm.add(crf.subject_id, domains)
        self.dataset_json.add(domains)
        self.coverage.add(crf, quarantined)

    def write(self, export: SubjectExport, crf: SubjectCRF | None = None,
              quarantined: list[Quarantined] | None = None) -> None:
        """:meth:`add` for a subject whose export a worker rendered (:class:`ExportRenderer`): the same bytes;
        ``crf`` and ``quarantined`` for the coverage when the export carries no share of it."""
        for domain, n in export.counts.items():
            self.counts[domain] += n
        if export.piece is not None:
            self._copy_piece(export)
        for domain, text in export.csv.items():
            self._files[domain].write(text)
        if export.odm is not None:
            self.odm.write(export.subject_id, export.odm, export.odm_removed)
        elif export.tables is not None:
            self.odm.add(export.subject_id, export.tables)
        self.dataset_json.write(export.dataset_json)
        self.rows.ct.missing.update(export.ct_missing)
        self.rows.meddra_missing |= export.meddra_missing
        self.rows.serious_without_criteria += export.serious_without_criteria
        if export.coverage is not None:
            self.coverage.merge(export.coverage)
        else:
            assert crf is not None and quarantined is not None
            self.coverage.add(crf, quarantined)

    def _copy_piece(self, export: SubjectExport) -> None:
        """Append the parts of ``export``'s piece file (:meth:`SubjectExport.to_piece`) to the export files,
        copied from file to file by the kernel, then remove the piece."""
        assert export.piece is not None
        with export.piece.open("rb") as src:
            offset = 0
            for kind, domain, length in export.segments:
                if kind == "csv":
                    dst: IO[Any] = self._files[domain]
                elif kind == "json":
                    dst = self.dataset_json.rows_file(domain, export.counts[domain])
                else:
                    dst = self.odm.subject_file(export.subject_id, export.odm_removed)
                dst.flush()  # what the file object holds goes first
                _copy_range(src.fileno(), offset, dst.fileno(), length)
                offset += length
        export.piece.unlink()

    def close(self, run_counts: dict[str, int]) -> dict[str, Any]:
        """Finish every file; return the report's ``coverage`` section (with the export row counts)."""
        for fh in self._files.values():
            fh.close()
        self.odm.close()
        self.dataset_json.close()
        report = self.coverage.close(run_counts)
        report["export_rows"] = dict(self.counts)
        return report

    def cdisc_report(self) -> dict[str, Any]:
        """The run report's ``cdisc`` section (CT package, values without a CT term, MedDRA)."""
        return self.rows.cdisc_report()
