"""The subjects' rows of ``results/study.json`` on disk while a run goes on, and the file written from them.

A run keeps no subject row in memory: each row is appended to a spill file the moment its subject is done
(:class:`SubjectRows`), already as ``results/study.json`` lists it (:func:`row_json`, made where the subject was
processed); the study-level keys are computed reading the rows back one at a time, and ``results/study.json``
is written streaming (:func:`write_study_json`: the rows' bytes copied in subject ID order, not parsed again)
— the same bytes as ``json_file(study_json(study, rows))`` (:mod:`.study_json`), with memory flat in the
number of subjects.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO, overload

import orjson

from fhir_adapter.results.study_json import study_head, study_keys
from fhir_adapter.study.load import Study

_INDENT = orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS


def row_json(row: dict[str, Any]) -> bytes:
    """A subject row as JSON the way ``results/study.json`` lists it: keys sorted, indented two levels down."""
    return _nested(orjson.dumps(row, option=_INDENT), 2)


class SubjectRows(Sequence[dict[str, Any]]):
    """Subject rows appended to ``path`` (:func:`row_json`, one after another); read back in the order they
    came, one at a time. Only each row's subject ID and place in the file stay in memory."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._out: BinaryIO | None = self.path.open("wb")
        self._size = 0
        #: (subject ID, offset, length) of each row, in the order added
        self._entries: list[tuple[str, int, int]] = []

    def add(self, row: dict[str, Any]) -> None:
        self.add_json(row["subject_id"], row_json(row))

    def add_json(self, subject_id: str, data: bytes) -> None:
        """Append a row already serialised with :func:`row_json` (where the subject was processed)."""
        assert self._out is not None, "rows are read back: no more can be added"
        self._out.write(data)
        self._entries.append((subject_id, self._size, len(data)))
        self._size += len(data)

    def _read(self, entries: list[tuple[str, int, int]]) -> Iterator[dict[str, Any]]:
        for data in self._bytes(entries):
            row: dict[str, Any] = orjson.loads(data)
            yield row

    def _bytes(self, entries: list[tuple[str, int, int]]) -> Iterator[bytes]:
        """The rows' JSON as added (:func:`row_json`), each read back by one pread (not through a memory map:
        its pages would stay in the run's resident memory, 200 MB on 3,400 subjects)."""
        if self._out is not None:
            self._out.close()
            self._out = None
        with self.path.open("rb") as fh:
            fd = fh.fileno()
            for _sid, offset, length in entries:
                yield os.pread(fd, length, offset)

    def __len__(self) -> int:
        return len(self._entries)

    @overload
    def __getitem__(self, i: int) -> dict[str, Any]: ...

    @overload
    def __getitem__(self, i: slice) -> Sequence[dict[str, Any]]: ...

    def __getitem__(self, i: int | slice) -> dict[str, Any] | Sequence[dict[str, Any]]:
        if isinstance(i, slice):
            return list(self._read(self._entries[i]))
        return next(self._read([self._entries[i]]))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self._read(list(self._entries))

    def by_subject_id(self) -> Iterator[dict[str, Any]]:
        """The rows sorted by subject ID (as ``results/study.json`` lists them)."""
        return self._read(self._sorted())

    def json_by_subject_id(self) -> Iterator[bytes]:
        """:meth:`by_subject_id` as the rows' JSON (:func:`row_json`)."""
        return self._bytes(self._sorted())

    def _sorted(self) -> list[tuple[str, int, int]]:
        return sorted(self._entries, key=lambda x: x[0])

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None
        self.path.unlink(missing_ok=True)


def _nested(data: bytes, depth: int) -> bytes:
    """A value dumped with ``OPT_INDENT_2`` as it reads ``depth`` levels down in an indented document."""
    return data.replace(b"\n", b"\n" + b"  " * depth)


def write_study_json(path: Path, study: Study, rows: SubjectRows) -> None:
    """``results/study.json`` from the spilled rows: the study-level keys from the rows read back one at a time,
    the subjects' JSON copied one by one in subject ID order."""
    doc: dict[str, Any] = {**study_head(study), "subjects": None, **study_keys(study, rows)}  # subjects: below
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        out.write(b"{")
        for n, key in enumerate(sorted(doc)):
            out.write((b"," if n else b"") + b"\n  " + orjson.dumps(key) + b": ")
            if key != "subjects":
                out.write(_nested(orjson.dumps(doc[key], option=_INDENT), 1))
            elif not len(rows):
                out.write(b"[]")
            else:
                out.write(b"[")
                for i, data in enumerate(rows.json_by_subject_id()):
                    out.write((b"," if i else b"") + b"\n    " + data)
                out.write(b"\n  ]")
        out.write(b"\n}")
