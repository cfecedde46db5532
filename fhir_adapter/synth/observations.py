"""Observation resources as a hospital lab / ward system writes them.

Observations are ~95% of the export, so they are rendered straight to compact JSON lines from
pre-encoded fragments (lab_catalog.SiteAnalyte) instead of building dicts and running ``json`` on each.
An ``ObservationFactory`` is bound to one patient at one site: it converts canonical values to the site's
unit, rounds them as the lab prints them, flags them against the lab's own reference range, stamps
``issued`` / ``meta`` and hands each line to the sink. Every method returns the new resource id.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from random import Random
from typing import Any

from fhir_adapter.terminology.codes import LOINC, NCIT, NCIT_CTCAE_GRADE, OBS_INTERPRETATION, SNOMED, UCUM

from .ids import new_id
from .lab_catalog import ANALYTES, SiteAnalyte, category, quantity, site_analyte, to_json
from .sites import SiteConventions
from .specimens import METHODS, specimen_details
from .timeline import LAST_INSTANT, fmt_local, fmt_utc

EmitLine = Callable[[str], None]

_INTERPRETATION_DISPLAY = {"LL": "Critical low", "L": "Low", "N": "Normal", "H": "High", "HH": "Critical high",
                           "POS": "Positive", "NEG": "Negative"}
INTERPRETATION_JSON: dict[str, str] = {
    code: ',"interpretation":' + to_json([{"coding": [{"system": OBS_INTERPRETATION, "code": code,
                                                      "display": display}]}])
    for code, display in _INTERPRETATION_DISPLAY.items()
}
#: R4 core extensions: the subject's position during the measurement; the BodyStructure of the body site
BODY_POSITION = "http://hl7.org/fhir/StructureDefinition/observation-bodyPosition"
RELATIVE_TIME = "http://hl7.org/fhir/StructureDefinition/cqf-relativeDateTime"
BODY_SITE = "http://hl7.org/fhir/StructureDefinition/bodySite"
SITTING = {"coding": [{"system": SNOMED, "code": "33586001", "display": "Sitting position"}], "text": "Sitting"}
#: the arm a site's ward measures blood pressure on (SNOMED CT laterality qualifiers)
BP_ARMS = ({"coding": [{"system": SNOMED, "code": "419161000", "display": "Unilateral left"}]},
           {"coding": [{"system": SNOMED, "code": "419465000", "display": "Unilateral right"}]})
UPPER = {"coding": [{"system": SNOMED, "code": "261183002", "display": "Upper"}]}
POSITIVE = {"coding": [{"system": SNOMED, "code": "10828004", "display": "Positive"}], "text": "Positive"}
NEGATIVE = {"coding": [{"system": SNOMED, "code": "260385009", "display": "Negative"}], "text": "Negative"}
_CODED_JSON = {True: ',"valueCodeableConcept":' + to_json(POSITIVE),
               False: ',"valueCodeableConcept":' + to_json(NEGATIVE)}
LAB_JSON = '"category":' + to_json(category("laboratory"))
VITALS_JSON = '"category":' + to_json(category("vital-signs"))
CBC_PANEL_HEAD = LAB_JSON + ',"code":' + to_json(
    {"coding": [{"system": LOINC, "code": "58410-2", "display": "CBC panel - Blood by Automated count"}],
     "text": "Complete blood count"})
BP_HEAD = VITALS_JSON + ',"code":' + to_json(
    {"coding": [{"system": LOINC, "code": "85354-9", "display": "Blood pressure panel with all children optional"}],
     "text": "Blood pressure"})
_SYSTOLIC = to_json({"coding": [{"system": LOINC, "code": "8480-6", "display": "Systolic blood pressure"}]})
_DIASTOLIC = to_json({"coding": [{"system": LOINC, "code": "8462-4", "display": "Diastolic blood pressure"}]})


#: CTCAE v5.0 lower bounds (10^9/L) of grades 2, 3 and 4 of "neutrophil count decreased" and "platelet count
#: decreased"; grade 1 is below the lower limit of normal
CTCAE_CYTOPENIA: dict[str, tuple[float, float, float]] = {"neutrophils": (1.5, 1.0, 0.5), "platelets": (75, 50, 25)}
CTCAE_GRADE_CODE = {g: c for c, g in NCIT_CTCAE_GRADE.items()}


def ctcae_grade(key: str, canonical: float, sa: SiteAnalyte) -> int | None:
    """CTCAE v5.0 grade of a decreased neutrophil or platelet count (canonical unit 10^9/L); None otherwise."""
    if key not in CTCAE_CYTOPENIA or sa.low is None:
        return None
    g2, g3, g4 = CTCAE_CYTOPENIA[key]
    lln = (sa.low - sa.offset) / sa.factor
    for grade, bound in ((4, g4), (3, g3), (2, g2)):
        if canonical < bound:
            return grade
    return 1 if canonical < lln else None


def _flag(sa: SiteAnalyte, v: float) -> str:
    if sa.crit_low is not None and v < sa.crit_low:
        return "LL"
    if sa.low is not None and v < sa.low:
        return "L"
    if sa.crit_high is not None and v > sa.crit_high:
        return "HH"
    if sa.high is not None and v > sa.high:
        return "H"
    return "N"


def head_json(cat: list[dict[str, Any]], code: Mapping[str, Any]) -> str:
    """The '"category":..,"code":..' fragment of an Observation."""
    return f'"category":{to_json(cat)},"code":{to_json(code)}'


class ObservationFactory:
    __slots__ = ("conv", "emit", "patient_id", "relative_to", "rng", "sex", "site", "specimen_emit", "specimens",
                 "subject_json")

    def __init__(self, rng: Random, conv: SiteConventions, patient_id: str, sex: str, emit: EmitLine) -> None:
        self.rng = rng
        self.conv = conv
        self.site = conv.site
        self.sex = sex
        self.subject_json = to_json({"reference": f"Patient/{patient_id}"})
        self.emit = emit
        self.patient_id = patient_id
        #: set for study subjects: lab results then reference a Specimen (emitted once per draw and type),
        #: name their method where the lab does, and carry the lab's result identifier
        self.specimen_emit: Callable[[dict[str, Any]], None] | None = None
        self.specimens: set[str] = set()
        #: (moment, reference, display) of the event that samples and vital signs taken the same day are planned
        #: relative to (the CAR-T infusion): they then carry a cqf-relativeDateTime extension (--TPT, --ELTM)
        self.relative_to: tuple[datetime, str, str] | None = None

    def relative_time(self, when: datetime) -> list[dict[str, Any]]:
        """The cqf-relativeDateTime extension of a sample or measurement taken on the day of ``relative_to``:
        the planned time point the ward works to (whole hours, or 15-minute steps within the first hour)."""
        if self.relative_to is None or when.date() != self.relative_to[0].date():
            return []
        moment, reference, display = self.relative_to
        minutes = abs(int((moment - when).total_seconds() // 60))
        steps = max(15, 15 * round(minutes / 15))
        value, unit = (steps, "min") if steps < 60 else (round(minutes / 60), "h")
        return [{"url": RELATIVE_TIME, "extension": [
            {"url": "target", "valueReference": {"reference": reference, "display": display}},
            {"url": "relationship", "valueCode": "before-start" if when < moment else "after-start"},
            {"url": "offset", "valueDuration": {"value": value, "unit": unit, "system": UCUM, "code": unit}}]}]

    def _lab_details(self, key: str, rid: str, when: datetime) -> str:
        """',"identifier":..,"specimen":..,"method":..' of a study subject's lab result (no random draws)."""
        assert self.specimen_emit is not None
        kind, snomed = specimen_details(key)
        sid = f"spec-{self.patient_id[:8]}-{when:%Y%m%d%H%M}-{kind.lower().replace(' ', '-')}"
        if key == "protein_24h":  # its own container
            sid += "-24h"
        if sid not in self.specimens:
            self.specimens.add(sid)
            spec: dict[str, Any] = {
                "resourceType": "Specimen", "id": sid, "meta": {"versionId": "1", "lastUpdated": fmt_utc(when)},
                "accessionIdentifier": {"system": f"https://hospital.example.org/site-{self.site}/accession",
                                        "value": sid[5:]},
                "status": "available",
                "type": {"coding": [{"system": SNOMED, "code": snomed, "display": kind}], "text": kind},
                "subject": {"reference": f"Patient/{self.patient_id}"},
                "collection": {"collectedDateTime": fmt_local(when)},
            }
            if key == "protein_24h":  # a timed collection: the 24 hours ending when the container is handed in
                spec["collection"] = {"collectedPeriod": {"start": fmt_local(when - timedelta(hours=24)),
                                                          "end": fmt_local(when)}}
            if kind != "Urine" and self.site == 101:  # this site's phlebotomy records the patient's position
                spec["collection"]["extension"] = [{"url": BODY_POSITION, "valueCodeableConcept": SITTING}]
            if kind != "Urine" and self.site == 102:  # and this one the venipuncture site
                spec["collection"]["bodySite"] = {"text": "Antecubital vein"}
            timing = self.relative_time(when)
            if timing:
                spec["extension"] = timing
            if kind != "Urine" and self.site != 103:  # site 103's lab does not record fasting status
                fasting = ("F", "Patient was fasting prior to the procedure.") if when.hour < 9 else \
                    ("NF", "The patient indicated they did not fast prior to the procedure.")
                spec["collection"]["fastingStatusCodeableConcept"] = {"coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/v2-0916", "code": fasting[0],
                     "display": fasting[1]}]}
            self.specimen_emit(spec)
        out = (f',"identifier":[{{"system":"https://hospital.example.org/site-{self.site}/lab-result",'
               f'"value":"{rid}"}}],"specimen":{{"reference":"Specimen/{sid}"}}')
        if key in METHODS:
            out += f',"method":{{"text":{to_json(METHODS[key])}}}'
        return out

    def spec(self, key: str) -> SiteAnalyte:
        return site_analyte(self.site, key, self.sex)

    def report(self, key: str, canonical: float) -> float:
        """The canonical value converted to the site's unit and rounded as the lab prints it."""
        sa = self.spec(key)
        v = canonical * sa.factor + sa.offset
        return round(v) if sa.decimals <= 0 else round(v, sa.decimals)

    def _write(self, rid: str | None, status: str, head: str, effective: str, issued: datetime | None,
               body: str, updated: datetime, version: str = "1") -> str:
        rid = rid or new_id(self.rng)
        issued_json = f',"issued":"{fmt_local(issued)}"' if issued is not None else ""
        self.emit(
            f'{{"resourceType":"Observation","id":"{rid}","meta":{{"versionId":"{version}",'
            f'"lastUpdated":"{fmt_utc(min(updated, LAST_INSTANT))}"}},"status":"{status}",{head},'
            f'"subject":{self.subject_json}{effective}{issued_json}{body}}}'
        )
        return rid

    @staticmethod
    def _issued(when: datetime, delay_min: int) -> datetime:
        issued = when + timedelta(minutes=delay_min)
        return issued if issued <= LAST_INSTANT else max(when, LAST_INSTANT)   # nothing after the cut

    def lab(self, key: str, canonical: float, when: datetime, delay_min: int, *, status: str = "final",
            rid: str | None = None, comparator: str | None = None, effective: bool = True,
            period: tuple[datetime, datetime] | None = None, version: str = "1", updated_after_min: int = 0,
            duplicate_id: str | None = None) -> str:
        sa = self.spec(key)
        v = canonical * sa.factor + sa.offset
        value = round(v) if sa.decimals <= 0 else round(v, sa.decimals)
        if period is not None:
            eff = f',"effectivePeriod":{{"start":"{fmt_local(period[0])}","end":"{fmt_local(period[1])}"}}'
            issued = self._issued(period[1], delay_min)
        else:
            eff = f',"effectiveDateTime":"{fmt_local(when)}"' if effective else ""
            issued = self._issued(when, delay_min)
        cmp = f'"comparator":"{comparator}",' if comparator else ""
        body = f',"valueQuantity":{{"value":{value!r},{cmp}{sa.unit_json[1:]}'
        if sa.range_json:
            flag = _flag(sa, value)
            grade = ctcae_grade(key, canonical, sa) if self.specimen_emit is not None and self.site != 103 else None
            if flag != "N" or self.conv.flags_normal or grade:
                interp: list[dict[str, Any]] = [{"coding": [{"system": OBS_INTERPRETATION, "code": flag,
                                       "display": _INTERPRETATION_DISPLAY[flag]}]}]
                if grade:  # the oncology lab system grades cytopenias (site 103's does not)
                    interp.append({"coding": [{"system": NCIT, "version": "5.0", "code": CTCAE_GRADE_CODE[grade],
                                               "display": f"Grade {grade}"}], "text": f"CTCAE v5.0 grade {grade}"})
                body += ',"interpretation":' + to_json(interp)
            body += sa.range_json
        updated = issued + timedelta(minutes=updated_after_min)
        if self.specimen_emit is not None:
            rid = rid or new_id(self.rng)
            body += self._lab_details(key, rid, period[0] if period is not None else when)
        rid = self._write(rid, status, sa.head_json, eff, issued, body, updated, version)
        if duplicate_id is not None:
            self._write(duplicate_id, status, sa.head_json, eff, issued, body, updated, version)
        return rid

    def lab_string(self, key: str, text: str, when: datetime, delay_min: int, rid: str | None = None) -> str:
        sa = self.spec(key)
        issued = self._issued(when, delay_min)
        body = f',"valueString":{to_json(text)}{sa.range_json}'
        return self._write(rid, "final", sa.head_json, f',"effectiveDateTime":"{fmt_local(when)}"', issued, body,
                           issued)

    def coded(self, key: str, positive: bool, when: datetime, delay_min: int) -> str:
        sa = self.spec(key)
        issued = self._issued(when, delay_min)
        body = _CODED_JSON[positive]
        if ANALYTES[key].system == LOINC and (positive or self.conv.flags_normal):
            body += INTERPRETATION_JSON["POS" if positive else "NEG"]
        return self._write(None, "final", sa.head_json, f',"effectiveDateTime":"{fmt_local(when)}"', issued,
                           body, issued)

    def vital(self, key: str, canonical: float, when: datetime) -> str:
        sa = self.spec(key)
        v = canonical * sa.factor + sa.offset
        value = round(v) if sa.decimals <= 0 else round(v, sa.decimals)
        timing = self.relative_time(when)
        return self._write(None, "final", sa.head_json, f',"effectiveDateTime":"{fmt_local(when)}"', None,
                           f',"valueQuantity":{{"value":{value!r},{sa.unit_json[1:]}'
                           + (f',"extension":{to_json(timing)}' if timing else ""),
                           when + timedelta(minutes=self.rng.randint(1, 20)))

    def blood_pressure(self, systolic: int, diastolic: int, when: datetime) -> str:
        """Blood pressure with where and how it was taken, as the ward's charting sends it: the hospital's
        identifier, the body site (an arm: a contained BodyStructure with its laterality) and the position."""
        updated = when + timedelta(minutes=self.rng.randint(1, 20))
        rid = new_id(self.rng)
        arm = BP_ARMS[self.site % len(BP_ARMS)]
        body = (f',"component":[{{"code":{_SYSTOLIC},"valueQuantity":{to_json(quantity(systolic, "mm[Hg]"))}}},'
                f'{{"code":{_DIASTOLIC},"valueQuantity":{to_json(quantity(diastolic, "mm[Hg]"))}}}]'
                f',"identifier":[{{"system":"https://hospital.example.org/site-{self.site}/vital-sign",'
                f'"value":"{rid}"}}],"bodySite":{{"text":"Arm"}}'
                f',"contained":[{{"resourceType":"BodyStructure","id":"arm","patient":{self.subject_json},'
                f'"location":{{"text":"Arm"}},"locationQualifier":[{to_json(arm)},{to_json(UPPER)}]}}]'
                f',"extension":[{{"url":"{BODY_POSITION}","valueCodeableConcept":{to_json(SITTING)}}},'
                f'{{"url":"{BODY_SITE}","valueReference":{{"reference":"#arm"}}}}]')
        return self._write(rid, "final", BP_HEAD, f',"effectiveDateTime":"{fmt_local(when)}"', None, body, updated)

    def panel(self, member_ids: list[str], when: datetime, delay_min: int) -> str:
        issued = self._issued(when, delay_min)
        members = ",".join(f'{{"reference":"Observation/{m}"}}' for m in member_ids)
        return self._write(None, "final", CBC_PANEL_HEAD, f',"effectiveDateTime":"{fmt_local(when)}"', issued,
                           f',"hasMember":[{members}]', issued)

    def clinical(self, head: str, when: datetime, body: str, saved: datetime, rid: str | None = None) -> str:
        """An observation recorded by a clinician on a form saved at ``saved`` (no issued: no lab release)."""
        return self._write(rid, "final", head, f',"effectiveDateTime":"{fmt_local(when)}"', None, body, saved)
