"""A two-subject feed whose C3 at week 24 has three candidates (the rule picks the one closest to day 169),
plus one result of each flag: unit converted, amended, out of window, below LLOQ."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from fhir_adapter.job.pipeline import RunSummary, run
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.source.files import FileSource
from fhir_adapter.study.load import Study
from tests.feedkit import CLIN, Feed, at

DAY1 = dt.date(2024, 3, 1)
SUBJECT = "101-001"
C3 = "4485-9"
ANTI_DSDNA = "5130-0"
TEMPERATURE = "8310-5"


def feed(*, amend_chosen: bool = False, retract_w12: bool = False, fever: bool = False, sledai: bool = False,
         low_in_lookback: bool = False, day1_shift: int = 0) -> Feed:
    """``amend_chosen``: the EHR later corrects the day-176 C3 (version 2, another value);
    ``retract_w12``: the week-12 C3 is entered-in-error (version 3); ``fever``: body temperatures on day 15
    (week 2) and twice on day 11, outside every window (an unscheduled visit, which keeps the higher);
    ``sledai``: a SLEDAI-2K assessment at week 24 (rash absent, day 169) with an anti-dsDNA above range that day
    and a third in-window C3 below range on day 178 (after the visit date: outside the 10-day look-back), and a
    second baseline C3 in range (day −9; the rule keeps the day −7 one, below range); ``low_in_lookback``: a C3
    below range on day 165, in week 24's window and SLEDAI-2K look-back but not the rule's pick (day 169);
    ``day1_shift``: subject 101-001's infusion recorded that many days later (a corrected infusion date), the
    results on the same dates (+4: the week-24 C3s on study days 165 and 172, so the rule picks the second)."""
    f = Feed()
    f.subject("p1", SUBJECT, name="Carol Testperson", mrn="MRN-1", birth="1980-01-01",
              day1=DAY1 + dt.timedelta(days=day1_shift))
    f.subject("p2", "101-002", name="Dana Testperson", mrn="MRN-2", birth="1979-05-05", day1=DAY1)
    f.obs("p1", C3, at(DAY1, -7), value=0.5, unit="g/L", id_="c3-bl", meta={"versionId": "1"})
    f.obs("p1", C3, at(DAY1, 85), value=0.8, unit="g/L", id_="c3-w12", meta={"versionId": "2"},
          status="entered-in-error" if retract_w12 else "amended")
    f.obs("p1", C3, at(DAY1, 169), value=0.9, unit="g/L", id_="c3-w24a", meta={"versionId": "1"})
    if amend_chosen:
        f.obs("p1", C3, at(DAY1, 176), value=130, unit="mg/dL", id_="c3-w24b", status="corrected",
              meta={"versionId": "2"})
    else:
        f.obs("p1", C3, at(DAY1, 176), value=120, unit="mg/dL", id_="c3-w24b", meta={"versionId": "1"})
    f.obs("p1", C3, at(DAY1, 188), value=1.4, unit="g/L", id_="c3-late", meta={"versionId": "1"})
    f.obs("p1", "car-transgene-copies", at(DAY1, 15), system=CLIN, valueString="<20", id_="cart-15",
          meta={"versionId": "1"})
    f.descriptor("p1", "rash", at(DAY1, -7, "11:00:00+00:00"), True, id_="rash-bl", meta={"versionId": "1"})
    if sledai:
        f.descriptor("p1", "rash", at(DAY1, 169, "11:00:00+00:00"), False, id_="rash-w24", meta={"versionId": "1"})
        f.obs("p1", ANTI_DSDNA, at(DAY1, 169), value=50, unit="[IU]/mL", id_="dsdna-w24", meta={"versionId": "1"})
        f.obs("p1", C3, at(DAY1, 178), value=0.7, unit="g/L", id_="c3-w24low", meta={"versionId": "1"})
        f.obs("p1", C3, at(DAY1, -9), value=1.1, unit="g/L", id_="c3-bl-rpt", meta={"versionId": "1"})
    if low_in_lookback:
        f.obs("p1", C3, at(DAY1, 165), value=0.6, unit="g/L", id_="c3-w24-165", meta={"versionId": "1"})
    f.obs("p2", C3, at(DAY1, -7), value=0.7, unit="g/L", id_="c3-p2-bl", meta={"versionId": "1"})
    if fever:
        f.obs("p1", TEMPERATURE, at(DAY1, 15), value=37.0, unit="Cel", id_="temp-15", meta={"versionId": "1"})
        f.obs("p1", TEMPERATURE, at(DAY1, 11, "08:00:00+00:00"), value=38.5, unit="Cel", id_="temp-11a",
              meta={"versionId": "1"})
        f.obs("p1", TEMPERATURE, at(DAY1, 11, "14:00:00+00:00"), value=38.0, unit="Cel", id_="temp-11b",
              meta={"versionId": "1"})
    return f


def run_feed(tmp: Path, study: Study, out: Path | None = None, **kw: Any) -> tuple[Path, RunSummary]:
    src = feed(amend_chosen=kw.pop("amend_chosen", False), retract_w12=kw.pop("retract_w12", False),
               fever=kw.pop("fever", False), sledai=kw.pop("sledai", False),
               low_in_lookback=kw.pop("low_in_lookback", False),
               day1_shift=kw.pop("day1_shift", 0)).write(tmp / "feed")
    out = out or tmp / "out"
    log = RunLog()
    return out, run(FileSource(src, log), study, out, log, **kw)
