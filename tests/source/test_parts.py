"""The subjects pass split into parts (source/parts.py): the parts of a file cover each of its lines once, with
its line number; read back chunk by chunk from the part files, each subject gets the records the one-process
pass keeps for it, in the same order, with the same counts and quarantined lines."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import orjson
import pytest

from fhir_adapter.job.runlog import RunLog
from fhir_adapter.roster.enrollees import build_roster
from fhir_adapter.source import parts
from fhir_adapter.source.base import Resource
from fhir_adapter.source.files import FileSource
from fhir_adapter.source.layout import read_lines
from fhir_adapter.study.load import Study
from tests.bad_input import build


def _bytes(record: bytes | Resource) -> bytes:
    """A record as a part file holds it (a routed line with its file and line number, a line, a Bundle entry)."""
    return record if isinstance(record, bytes) else orjson.dumps(record)


def test_the_parts_of_a_file_hold_each_line_once_with_its_number(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "feed"
    folder.mkdir()
    lines = [orjson.dumps({"resourceType": "Observation", "id": f"o{i}", "note": "x" * (i * 7 % 50)})
             for i in range(60)]
    lines[10] = lines[25] = b""  # blank lines: skipped, but counted in the line numbers
    (folder / "Observation.ndjson").write_bytes(b"\n".join(lines))  # the last line without a line end
    monkeypatch.setattr(parts, "PART_BYTES", 200)
    source = FileSource(folder, RunLog())
    split = [p for p in parts.plan(source) if p.file.rtype == "Observation"]
    assert len(split) > 5
    whole = list(read_lines(split[0].file))
    assert [line for p in split for line in parts._lines(p)] == whole
    assert [n for n, _ in whole][-1] == 60


def test_chunks_shrink_towards_the_end() -> None:
    sizes = parts.chunks(340, 2)
    assert sum(sizes) == 340 and max(sizes) == parts.CHUNK_SUBJECTS
    assert sizes == sorted(sizes, reverse=True) and sizes[-3:] == [1, 1, 1]
    assert parts.chunks(0, 2) == [] and parts.chunks(1, 4) == [1]


def test_subjects_read_in_parts_get_the_records_and_log_of_the_one_process_pass(
        tmp_path: Path, study: Study, monkeypatch: pytest.MonkeyPatch) -> None:
    build(tmp_path / "feed")  # valid and bad lines of the same subjects, in NDJSON and Bundle files
    serial_log = RunLog()
    serial = FileSource(tmp_path / "feed", serial_log)
    enrolled = build_roster(serial.roster(), study, serial_log).patient_ids
    expected = {pid: [_bytes(r) for r in records] for pid, records in serial.subject_records(enrolled)}

    monkeypatch.setattr(parts, "PART_BYTES", 300)
    monkeypatch.setattr(parts, "BUFFER_BYTES", 500)  # part files written in several sections
    log = RunLog()
    source = FileSource(tmp_path / "feed", log)
    build_roster(source.roster(), study, log)
    order = sorted(enrolled)
    sizes = parts.chunks(len(order), 2)
    chunk_of = [c for c, size in enumerate(sizes) for _ in range(size)]
    given = parts.PartInput(order, chunk_of, source.roster().base, source.known_patients(), tmp_path)
    planned = list(parts.plan(source))
    assert len(planned) > len(source.subject_files())
    results = [parts.route(p, given) for p in planned]
    counts: Counter[str] = Counter()
    for r in results:
        for key, n in r.log_counts.items():
            log.count(key, n)
        log.quarantine.extend(r.quarantine)
        counts.update(r.counts)
    for key, n in counts.items():
        log.count(key, n)
    refs = set().union(*(found for r in results for found in r.refs.values()))
    shared = source.shared_records(refs)
    got: dict[str, list[bytes]] = {}
    first = 0
    for c, size in enumerate(sizes):
        records = parts.chunk_records([(r.path, r.sections[c]) for r in results if c in r.sections], first, size)
        for pid, mine in zip(order[first:first + size], records, strict=True):
            mine_refs = sorted(k for r in results for k in r.refs.get(pid, ()))
            got[pid] = [_bytes(x) for x in mine] + [shared[k] for k in dict.fromkeys(mine_refs) if k in shared]
        first += size
    assert got == expected
    assert log.counts == serial_log.counts and log.quarantine == serial_log.quarantine
    assert len(log.quarantine) > 10
