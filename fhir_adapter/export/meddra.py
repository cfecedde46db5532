"""MedDRA hierarchy from the site's own licensed MedDRA release (MSSO ASCII files; none ship with the project).

The site points ``meddra_dir`` in its overlay (or ``FHIR_ADAPTER_MEDDRA_DIR``) at the ``MedAscii`` folder of
its MedDRA release. Two of its ``$``-separated files are read:

* ``llt.asc`` — ``llt_code$llt_name$pt_code$…$llt_currency$…``: every LLT and the PT it belongs to (a PT is
  also an LLT of itself);
* ``mdhier.asc`` — ``pt_code$hlt_code$hlgt_code$soc_code$pt_name$hlt_name$hlgt_name$soc_name$soc_abbrev$
  null_field$pt_soc_code$primary_soc_fg$``: the PT's paths up to each SOC; the row flagged ``Y`` is the primary
  path, the one SDTM reports.

An AE's MedDRA coding (``http://terminology.hl7.org/CodeSystem/mdr`` or ``http://www.meddra.org``) is read as an
LLT code (what a coder selects); :meth:`Meddra.hierarchy` gives its PT, HLT, HLGT and primary SOC.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ENV_DIR = "FHIR_ADAPTER_MEDDRA_DIR"
FILES = ("llt.asc", "mdhier.asc")


@dataclass(frozen=True)
class Hierarchy:
    llt_code: str
    llt: str
    pt_code: str
    pt: str
    hlt_code: str
    hlt: str
    hlgt_code: str
    hlgt: str
    soc_code: str
    soc: str


class MeddraError(ValueError):
    """The MedDRA folder is not a readable MedDRA ASCII release."""


def _rows(path: Path) -> list[list[str]]:
    text = path.read_bytes().decode("utf-8", errors="replace")
    return [line.rstrip("\r").split("$") for line in text.split("\n") if line.strip()]


class Meddra:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        missing = [f for f in FILES if not (folder / f).is_file()]
        if missing:
            raise MeddraError(f"MedDRA folder {folder} lacks {', '.join(missing)} (the MedAscii files of the "
                              "site's MedDRA release)")
        self.llt: dict[str, tuple[str, str]] = {}
        for row in _rows(folder / "llt.asc"):
            if len(row) < 3:
                raise MeddraError(f"{folder / 'llt.asc'}: line {'$'.join(row)!r} is not llt_code$llt_name$pt_code$…")
            self.llt[row[0]] = (row[1], row[2])
        self.primary: dict[str, list[str]] = {}
        for row in _rows(folder / "mdhier.asc"):
            if len(row) < 12:
                raise MeddraError(f"{folder / 'mdhier.asc'}: line {'$'.join(row)!r} has fewer than 12 fields")
            if row[11] == "Y" or row[0] not in self.primary:
                self.primary[row[0]] = row
        self.version = (folder / "meddra_release.asc").read_text(errors="replace").split("$")[0] \
            if (folder / "meddra_release.asc").is_file() else ""

    def hierarchy(self, code: str) -> Hierarchy | None:
        """The primary path of the LLT (or PT) ``code``; None when the release does not hold it."""
        if code in self.llt:
            llt_name, pt_code = self.llt[code]
        elif code in self.primary:
            llt_name, pt_code = self.primary[code][4], code
        else:
            return None
        h = self.primary.get(pt_code)
        if h is None:
            return None
        return Hierarchy(llt_code=code, llt=llt_name, pt_code=pt_code, pt=h[4], hlt_code=h[1], hlt=h[5],
                         hlgt_code=h[2], hlgt=h[6], soc_code=h[3], soc=h[7])


def meddra_folder(setting: Path | None) -> Path | None:
    """The configured folder: the site overlay's ``meddra_dir``, else ``FHIR_ADAPTER_MEDDRA_DIR``."""
    if setting is not None:
        return setting
    env = os.environ.get(ENV_DIR)
    return Path(env) if env else None
