"""Every file name the adapter writes under OUT, built from a closed set of names or from a subject ID.

Input decides file names in two places only, and neither can leave OUT:

* **subject IDs** (``crf/<subject>.json``, ``writeback/<subject>.json``, ``writeback-diff/<subject>.diff``) go
  through :func:`subject_file_name`, an injective encoding: ``[A-Za-z0-9-.]`` is kept, every other character
  (``_`` included) becomes ``_XX`` (its UTF-8 bytes in hex), so ``a/b`` → ``a_2Fb`` and ``a_b`` → ``a_5Fb``.
  A name longer than :data:`MAX_NAME` keeps a prefix and a hash of the whole ID. :class:`SubjectFileNames`
  refuses a second subject whose name equals an earlier one's on a case-insensitive file system (or after
  shortening), naming both subjects.
* **quarantine files** (``quarantine/<Type>.ndjson``) are named by :func:`quarantine_file_name` from the
  FHIR R4 resource types, anything else ``unknown``.

:func:`inside` is the last guard: a path that would resolve outside OUT raises :class:`UnsafePath`.
:class:`OutFolders` gives the same answer for a run's many files in a few folders, resolving each folder once.
Nothing is written through a symbolic link below OUT: the guards (:func:`inside`, :func:`without_links`,
:func:`real_folder`, :func:`replaced_output`) live in ``fhir_adapter/safe_paths.py``, below every layer, as the
report, the review decision file and the server state use them too.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from fhir_adapter.fhir.r4 import is_r4_type
from fhir_adapter.safe_paths import UnsafePath, inside, real_folder, replaced_output, without_links

__all__ = ["UnsafePath", "inside", "real_folder", "replaced_output", "without_links"]

#: longest file name stem built from a subject ID (file systems allow 255 bytes; suffixes are added)
MAX_NAME = 120
UNKNOWN_TYPE = "unknown"
_KEEP = re.compile(r"[A-Za-z0-9.-]")
_TYPE_NAME = re.compile(r"[A-Z][A-Za-z]{1,63}")


def subject_file_name(subject_id: str) -> str:
    """The file name stem of a subject's files: injective, no separators, NUL or control characters."""
    parts = []
    for i, c in enumerate(subject_id):
        if _KEEP.fullmatch(c) and not (i == 0 and c == "."):
            parts.append(c)
        else:
            parts.append("".join(f"_{b:02X}" for b in c.encode("utf-8", "surrogatepass")))
    name = "".join(parts) or "_"
    if len(name) > MAX_NAME:
        digest = hashlib.sha256(subject_id.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        name = f"{name[:MAX_NAME - 18]}~~{digest}"
    return name


def quarantine_file_name(resource_type: str) -> str:
    """``<Type>.ndjson`` for a FHIR R4 resource type, ``unknown.ndjson`` for anything else."""
    ok = isinstance(resource_type, str) and _TYPE_NAME.fullmatch(resource_type) and is_r4_type(resource_type)
    return f"{resource_type if ok else UNKNOWN_TYPE}.ndjson"


class OutFolders:
    """:func:`inside` for the files one run writes, their folders made: a folder is resolved (and checked to
    be inside ``out``) once, the first time a file goes into it; after that a file in it is resolved only when
    it is itself a symbolic link. Resolving every path costs a ``stat`` per path component and file (3,400
    subjects: 5 s of the run's own process)."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self._checked: set[Path] = set()

    def file(self, path: Path) -> Path:
        """``path`` (a file's path), its folder made; :class:`UnsafePath` when it would resolve outside OUT."""
        path = Path(path)
        folder = path.parent
        if folder in self._checked and path.name not in ("", ".", "..") and "\x00" not in path.name \
                and not os.path.islink(path):
            return path
        inside(self.out, path)
        folder.mkdir(parents=True, exist_ok=True)
        self._checked.add(inside(self.out, folder))
        return path


class SubjectFileNames:
    """The subject file names handed out in one run; a clash is an error naming both subjects."""

    def __init__(self) -> None:
        self._by_key: dict[str, str] = {}

    def name(self, subject_id: str) -> str:
        name = subject_file_name(subject_id)
        key = name.casefold()
        other = self._by_key.setdefault(key, subject_id)
        if other != subject_id:
            raise UnsafePath(f"subject {subject_id!r} would share the file name '{name}' with subject {other!r} "
                             "(file names are case-insensitive on some systems): give the subjects distinct IDs")
        return name

    def held_by(self, subject_id: str) -> str | None:
        """The file name handed out to ``subject_id`` in this run (None: none, or another subject holds it)."""
        name = subject_file_name(subject_id)
        return name if self._by_key.get(name.casefold()) == subject_id else None
