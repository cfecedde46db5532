"""CAR-T cellular kinetics: non-compartmental analysis (NCA) of the blood levels after the infusion.

Definitions: non-compartmental parameters as used for CAR-T products (Mueller KT et al., Blood
2017;130:2317–2325; Awasthi R et al., Blood Adv 2020;4:560–572): Cmax ("expansion"), Tmax, Clast, Tlast,
AUC0–28d; trapezoid rules as in Phoenix WinNonlin / PKNCA ("linear" and "linear-up/log-down": a segment
whose level falls, both levels > 0, has the area Δt·(C1 − C2)/ln(C1/C2); every other segment is a linear
trapezoid). Study choices (docs/clinical-rules.md#kinetics) are settings in
``mappings/<study>/kinetics.yaml``.

Time axis: actual sampling times in fractional days after time 0 (docs/clinical-rules.md#kinetics): time 0
is the infusion's date-time when the EHR records one (the Day-1 Procedure's performed dateTime), else Day 1
00:00 in the site time zone; a sample is taken at its effective date-time, a date-only sample at 00:00 of
that date. A sample 6 h after the infusion is at 0.25, one at 30 h at 1.25.

How a series is prepared from the CRF (PC findings of the series item); the first case that applies
defines what happens to a sample:

1. no full date, or taken before the infusion (time < 0, including a Day-1 sample drawn before the infusion's
   time) → not used (pre-infusion samples are baseline); a quantifiable one is listed in ``notes`` (the product
   cannot be in the blood before it is given: the sample's subject, date or assay is wrong);
2. below the limit of quantification — comparator ``<``/``<=``, or value < LLOQ (the item's ``lloq`` in
   items.yaml) — **before** the first quantifiable sample → level 0;
3. below LLOQ **after** the first quantifiable sample → excluded (neither 0 nor LLOQ/2);
4. otherwise the value as reported. Several samples on one day are all kept (each at its own time); two
   samples at exactly the same time: the later in the input is used and the other is listed in ``notes``.

When no sample is at time 0, the level at time 0 is taken as 0 (``zero_at_infusion``: there are no CAR-T
cells in the blood before the infusion).

Parameters:

* Cmax, Tmax — the highest level and its time (the first one when tied, as WinNonlin and PKNCA);
* Clast, Tlast — the last quantifiable level and its time; ``persistence_day`` = Tlast (the last day with
  a quantifiable value, same axis);
* AUC0–28d — area from 0 to ``auc_end_day``: up to the sample at day 28 when there is one; when day 28 lies
  between two used samples it is interpolated in that segment (linear when rising or flat, logarithmic
  when falling under linear-up/log-down; always linear under ``linear``); when no used sample is at or
  after day 28 (the last quantifiable sample is earlier) AUC0–28d is None and ``auc_reason`` says why.

Worked example (constructed CAR-T-like profile): days 0, 1, 4, 7, 10, 14, 21, 28, 56, 90 with copies/µg
BLQ, 50, 2 000, 15 000, 30 000, 12 000, 3 000, 800, 100, BLQ (LLOQ 20) → Cmax 30 000 at day 10, Clast 100
at day 56, AUC0–28d 231 773.7 (linear-up/log-down) and 245 900 (linear); the day-90 BLQ is excluded.
The engine (:func:`nca`) is checked against Phoenix WinNonlin on R's ``Theoph`` (Han S., Transl Clin
Pharmacol 2018;26:10–17).
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from fhir_adapter.crf.models import Finding, SubjectCRF
from fhir_adapter.study.timeline import zone

AucMethod = Literal["lin-up/log-down", "linear"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SeriesSettings(_Strict):
    item: str = Field(description="PC item id of items.yaml")
    lloq: float | None = Field(None, description="overrides the item's lloq of items.yaml when set")


class KineticsSettings(_Strict):
    primary: SeriesSettings = Field(
        SeriesSettings(item="car_transgene"),
        description="the main series (CAR transgene copies): `kinetics` in results/study.json, and written back (Cmax, "
        "Tmax, AUC0-28d)")
    secondary: SeriesSettings | None = Field(
        SeriesSettings(item="car_cells"),
        description="a second series reported alongside (CAR+ cells: kinetics.car_cells); null for none")
    auc_end_day: float = Field(28, gt=0, description="days after the infusion the AUC runs to (reported as auc0_28); "
                               "interpolated between two samples, else not evaluable")
    auc_method: AucMethod = Field(
        "lin-up/log-down", description="trapezoid rule: lin-up/log-down (log trapezoid where the level falls) or "
        "linear (docs/clinical-rules.md#kinetics)")
    zero_at_infusion: bool = Field(
        True, description="with no sample at time 0, the level at time 0 is 0 (no CAR-T cells before the infusion); "
        "false: AUC0-28d not evaluable")


# --- the NCA engine on plain arrays -------------------------------------------------------------------


def _segment(t1: float, t2: float, c1: float, c2: float, method: AucMethod) -> float:
    """Area of one segment: log trapezoid when falling (both > 0) under lin-up/log-down, else linear."""
    if method == "lin-up/log-down" and c2 < c1 and c2 > 0:
        return (t2 - t1) * (c1 - c2) / math.log(c1 / c2)
    return (t2 - t1) * (c1 + c2) / 2


def _interpolate(t1: float, t2: float, c1: float, c2: float, t: float, method: AucMethod) -> float:
    """Level at ``t`` inside [t1, t2]: logarithmic when falling (both > 0) under lin-up/log-down."""
    f = (t - t1) / (t2 - t1)
    if method == "lin-up/log-down" and c2 < c1 and c2 > 0:
        return c1 * math.exp(f * math.log(c2 / c1))
    return c1 + f * (c2 - c1)


def auc(times: Sequence[float], concs: Sequence[float], method: AucMethod = "lin-up/log-down",
        end: float | None = None) -> float | None:
    """Area under the curve from the first time to ``end`` (default: the last time).

    ``end`` between two samples is reached by interpolation in that segment; ``end`` after the last
    sample gives None (not bracketed). Times must be strictly increasing.
    """
    if len(times) != len(concs) or not times:
        raise ValueError("times and concentrations must be non-empty and of the same length")
    if any(b <= a for a, b in itertools.pairwise(times)):
        raise ValueError("times must be strictly increasing")
    stop = times[-1] if end is None else end
    if stop > times[-1] or stop < times[0]:
        return None
    total = 0.0
    for i in range(len(times) - 1):
        t1, t2, c1, c2 = times[i], times[i + 1], concs[i], concs[i + 1]
        if t1 >= stop:
            break
        if t2 > stop:
            c_end = _interpolate(t1, t2, c1, c2, stop, method)
            total += _segment(t1, stop, c1, c_end, method)
            break
        total += _segment(t1, t2, c1, c2, method)
    return total


@dataclass(frozen=True)
class Nca:
    cmax: float | None
    tmax: float | None
    clast: float | None
    tlast: float | None
    auclast: float | None
    auc_end: float | None


def nca(times: Sequence[float], concs: Sequence[float], method: AucMethod = "lin-up/log-down",
        auc_end: float | None = None) -> Nca:
    """Cmax/Tmax (first maximum), Clast/Tlast (last level > 0), AUC0–tlast and AUC0–``auc_end``.

    The arrays are taken as they are (BLQ already handled): a level of 0 is "not quantifiable".
    """
    if not times:
        return Nca(None, None, None, None, None, None)
    cmax = max(concs)
    tmax = times[list(concs).index(cmax)]
    quant = [i for i, c in enumerate(concs) if c > 0]
    if not quant:
        return Nca(cmax, tmax, None, None, None, None)
    last = quant[-1]
    auclast = auc(times[: last + 1], concs[: last + 1], method) if last > 0 else 0.0
    end_auc = auc(times, concs, method, auc_end) if auc_end is not None else None
    return Nca(cmax, tmax, concs[last], times[last], auclast, end_auc)


# --- from the CRF ------------------------------------------------------------------------------------


class KineticsSeries(BaseModel):
    item: str
    unit: str | None
    lloq: float | None
    cmax: float | None = None
    tmax_day: float | None = None
    clast: float | None = None
    tlast_day: float | None = None
    auc0_28: float | None = None
    auc_method: AucMethod = "lin-up/log-down"
    auc_reason: str | None = Field(None, description="why AUC0-28d is None")
    persistence_day: float | None = None
    tmax_date: dt.date | None = Field(None, description="calendar date of the Cmax sample")
    time0: dt.datetime | None = Field(None, description="time 0: the infusion's date-time, else Day 1 00:00")
    times: list[float] = Field(default_factory=list, description="days after infusion of the used samples")
    levels: list[float] = Field(default_factory=list, description="levels used (BLQ before the first = 0)")
    excluded_blq: list[float] = Field(default_factory=list, description="times of BLQ after the first")
    sources: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)


class Kinetics(BaseModel):
    primary: KineticsSeries | None
    secondary: KineticsSeries | None


def _is_blq(f: Finding, lloq: float | None) -> bool:
    if f.comparator in ("<", "<="):
        return True
    return f.value is not None and lloq is not None and f.value < lloq


def time_zero(crf: SubjectCRF) -> dt.datetime | None:
    """The infusion's date-time when the EHR recorded one, else Day 1 00:00 (site clock); None if not infused."""
    if crf.day1 is None:
        return None
    return crf.infusion_time or dt.datetime.combine(crf.day1, dt.time())


def elapsed_days(when: dt.datetime, time0: dt.datetime, site_tz: dt.tzinfo = dt.UTC) -> float:
    """Fractional days of elapsed time from ``time0`` to ``when`` (a daylight-saving change in between is an
    hour more or less, not the wall clock's difference: two times of one zone object subtract on the wall clock
    in Python); a naive value (a date-only sample, Day 1 00:00) is on the site clock."""
    def instant(t: dt.datetime) -> dt.datetime:
        return (t if t.tzinfo is not None else t.replace(tzinfo=site_tz)).astimezone(dt.UTC)

    return round((instant(when) - instant(time0)).total_seconds() / 86400, 6)


def _usable(findings: list[Finding], time0: dt.datetime, notes: list[str],
            site_tz: dt.tzinfo, lloq: float | None) -> list[tuple[float, Finding]]:
    by_time: dict[float, Finding] = {}
    for f in findings:
        if f.date is None or (f.value is None and f.comparator is None):
            continue
        t = elapsed_days(f.datetime or dt.datetime.combine(f.date, dt.time()), time0, site_tz)
        if t < 0:
            quantifiable = not _is_blq(f, lloq) and f.value is not None and f.value > 0
            if quantifiable and f.datetime is None and f.date == time0.date():
                notes.append(f"level {f.value:g} on the infusion's day with a date only ({f.date}, "
                             f"{f.source.reference}): not known to be after the infusion, not used — record the "
                             "sample's time")
            elif quantifiable:
                notes.append(f"quantifiable level {f.value:g} before the infusion ({f.date}, "
                             f"{f.source.reference}): not used; no CAR-T cells can be in the blood before they "
                             "are given — check the sample's subject, date and assay")
            continue
        if t in by_time:
            notes.append(f"two samples at day {t:g}: {by_time[t].source.reference} replaced by the later "
                         f"{f.source.reference}")
        by_time[t] = f
    return sorted(by_time.items())


def derive_series(crf: SubjectCRF, series: SeriesSettings, lloq: float | None, unit: str | None,
                  settings: KineticsSettings, site_tz: str = "UTC") -> KineticsSeries | None:
    """NCA of one series of ``crf``; None when the subject was not infused or has no sample of the item.
    ``site_tz``: the site time zone (IANA name), the clock of a date-only sample and of Day 1 00:00."""
    time0 = time_zero(crf)
    if time0 is None:
        return None
    lloq = series.lloq if series.lloq is not None else lloq
    out = KineticsSeries(item=series.item, unit=unit, lloq=lloq, auc_method=settings.auc_method, time0=time0)
    samples = _usable(crf.findings_for(series.item), time0, out.notes, zone(site_tz), lloq)
    date_at = {t: f.date for t, f in samples}
    if not samples:
        return None
    seen_quantifiable = False
    for t, f in samples:
        if _is_blq(f, lloq):
            if seen_quantifiable:
                out.excluded_blq.append(t)
                continue
            level = 0.0
        else:
            assert f.value is not None
            level = f.value
            seen_quantifiable = seen_quantifiable or level > 0
        out.times.append(t)
        out.levels.append(level)
        out.sources.append(f.source.reference)
    if settings.zero_at_infusion and out.times[0] > 0:
        out.times.insert(0, 0.0)
        out.levels.insert(0, 0.0)
        out.notes.append("no sample at the infusion: level 0 at time 0 assumed")
    res = nca(out.times, out.levels, settings.auc_method, settings.auc_end_day)
    if not seen_quantifiable:
        out.auc_reason = "no quantifiable sample"
        return out
    out.cmax, out.tmax_day, out.clast, out.tlast_day = res.cmax, res.tmax, res.clast, res.tlast
    out.tmax_date = date_at.get(res.tmax) if res.tmax is not None else None
    out.persistence_day = res.tlast
    end = settings.auc_end_day
    if out.times[0] > 0:
        out.auc_reason = f"no level at time 0 (first sample day {out.times[0]:g})"
    elif res.auc_end is None:
        out.auc_reason = (f"not evaluable: no quantifiable sample on or after day {end:g} "
                          f"(last quantifiable on day {res.tlast:g})")
    else:
        out.auc0_28 = res.auc_end
    return out


def derive_kinetics(crf: SubjectCRF, settings: KineticsSettings,
                    items: dict[str, tuple[float | None, str | None]], site_tz: str = "UTC") -> Kinetics:
    """Primary (transgene) and secondary (CAR+ cells) series; ``items`` gives each item's (lloq, unit);
    ``site_tz`` the site time zone (``study.yaml`` ``timezone``)."""
    def one(s: SeriesSettings | None) -> KineticsSeries | None:
        if s is None:
            return None
        lloq, unit = items.get(s.item, (None, None))
        return derive_series(crf, s, lloq, unit, settings, site_tz)

    return Kinetics(primary=one(settings.primary), secondary=one(settings.secondary))
