"""Observations → findings (LB, VS, PC, QS, IS) in each item's CRF unit.

For each Observation, in order:

1. **versions** — when the source holds several versions of one Observation id, the latest
   (``meta.versionId``, then ``meta.lastUpdated``) wins; its status decides.
2. **status** — ``final``/``amended``/``corrected`` are used; ``preliminary`` is used and flagged;
   ``registered``, ``unknown``, ``cancelled`` and ``entered-in-error`` never feed a CRF (counted, not
   quarantined); a status that is no R4 ObservationStatus code is quarantined (``unknown-status``).
3. **code** — every coding of ``code`` (and of each ``component.code``) is looked up in the mapping;
   a panel (``hasMember``) is mapped through its members, which are Observations of their own. A code whose
   codings name two items is quarantined (``ambiguous-code``) and the other parts are read; a part without a
   value under an item another part gives a value heads it (a single-test order's code above its result).
4. **value** — valueQuantity (with comparator), valueString holding a number (``"45"``, ``"<0.2"``,
   ``"≤0.2"`` as ``<=``; a decimal point only: a comma or digit grouping — ``"1,200"``, ``"1,2"``,
   ``"1 200"`` — is quarantined as ``ambiguous-number``, never guessed), valueInteger, valueBoolean,
   valueCodeableConcept (positive/negative codes of the item).
5. **unit** — first a spelling that is not a UCUM code becomes its UCUM code (``µmol/L`` → ``umol/L``:
   ``mappings/units/synonyms.yaml`` and the overlay's ``unit_synonyms``; counted as
   ``units.synonym.<spelling>-><code>``, the finding keeps the unit as sent); then the item's unit as is; a
   unit under the item's ``factors`` times its factor; a unit under ``accept_units`` by UCUM conversion; a
   converted value keeps its precision (only binary floating-point noise is dropped), so a strict threshold
   sees what the lab measured whichever unit it sent; any other unit is quarantined (rule ``unknown-unit``).
6. **date** — ``effectiveDateTime``, ``effectivePeriod.start`` or ``effectiveInstant`` in the site time zone;
   missing or unreadable → quarantined; partial (year, year-month) → kept partial, placed in no visit,
   warned (``partial-date``).
7. **bounds** — a value outside the item's physiological bounds is quarantined (``out-of-bounds``).
8. **duplicates** — same item, same time, same value: counted once; one Observation giving an item two
   different values (its own value and a component's, or two components) quarantines that item
   (``ambiguous-code``), not the Observation's other items.

Any other element that cannot be read quarantines that Observation (``unreadable``), never the subject.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, NoReturn

from fhir_adapter.crf.models import Finding, SourceRef
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.mapping.cdisc_details import finding_details, specimen_details, specimen_id
from fhir_adapter.mapping.common import (
    Unusable,
    codings,
    decimal_text,
    indexed,
    indexed_all,
    latest,
    normal_range,
    quantity_unit,
    ucum_unit,
)
from fhir_adapter.numbers import round_half_up
from fhir_adapter.study.load import Study
from fhir_adapter.study.models import Item
from fhir_adapter.study.timeline import DateError, parse_fhir_date
from fhir_adapter.terminology import units

USED_STATUSES = {"final", "amended", "corrected", "preliminary"}
#: the R4 ObservationStatus codes; any other status is quarantined (``unknown-status``)
R4_STATUSES = {*USED_STATUSES, "registered", "cancelled", "entered-in-error", "unknown"}
#: a number sent as text: an optional comparator, digits with at most one decimal point
_NUMERIC = re.compile(r"^\s*(<=|>=|<|>)?\s*([-+]?\d+(?:\.\d+)?)\s*$")
#: digits with a comma, grouping (space, apostrophe, thin space) or several points: "1,200" may be 1200 or 1.2,
#: "1.200.000" is grouped; never read as a number (``ambiguous-number``)
_GROUPED = re.compile(r"^\s*(<=|>=|<|>)?\s*[-+]?\d[\d.,'\u2019\u00a0\u202f ]*\d\s*$")
#: comparator signs sent as one character
_SIGNS = {"\u2264": "<=", "\u2265": ">="}
_POSITIVE_WORDS = {"positive", "pos", "detected", "present", "reactive", "true", "yes"}
_NEGATIVE_WORDS = {"negative", "neg", "not detected", "absent", "non-reactive", "nonreactive", "false", "no"}


def _converted(value: float, item: Item) -> float:
    """A value converted into the CRF unit, at the item's declared precision (``decimals``: UPCR 10.2 mg/mmol is
    0.09 mg/mg, not 0.090169734; half up), else without binary floating-point noise (12 significant digits).
    The shipped items declare a digit more than their thresholds show, so what the lab measured stays on its
    side of a strict threshold — 504 mg/(24.h) is 0.504 g/(24.h), proteinuria > 0.5 as 0.504 sent as such — except
    a value within half a unit of the last declared digit above a threshold, which the rounding puts on it
    (56.6 mg/mmol = 0.50035 mg/mg is stored 0.500: no proteinuria; docs/clinical-rules.md#converted-precision)."""
    if item.decimals is not None:  # half up on the decimal number (0.00125 -> 0.0013), not the binary float's
        return round_half_up(value, item.decimals)
    return float(f"{value:.12g}")


#: the "system" under which an Observation coded by ``code.text`` alone is counted as unmapped
TEXT_ONLY = "(code.text only)"


def unmapped_code(obs: dict[str, Any], index: Mapping[tuple[str, str], str]) -> str | None:
    """How ``coverage.unmapped_codes`` names an Observation none of whose codes (its own, a component's) the
    study maps: ``system|code`` of its first coding, else ``(code.text only)|<its text>`` (one line, at most 80
    characters, no ``|``); None when the study maps one of its codes, or it names no code at all. The one rule
    of a run's counts and of ``fhir-adapter check --codes``."""
    if indexed(obs.get("code"), index) is not None or any(
            indexed(c.get("code"), index) is not None for c in obs.get("component") or [] if isinstance(c, dict)):
        return None
    return _code_name(obs.get("code"))


def _carries_value(part: dict[str, Any]) -> bool:
    return "dataAbsentReason" in part or any(k.startswith("value") for k in part)


def _value_of(f: Finding) -> tuple[Any, ...]:
    """What two results of one item must share to be one result."""
    return (f.value, f.value_bool, f.value_text, f.comparator)


def _shown(value: tuple[Any, ...]) -> str:
    number, flag, text, comparator = value
    if number is not None:
        return f"{comparator or ''}{number:g}"
    return str(text if text is not None else flag)


def _code_name(code: Any) -> str | None:
    """``system|code`` of the first coding of an Observation's code, else ``(code.text only)|<its text>``."""
    for system, value in codings(code)[:1]:
        return f"{system}|{value}"
    text = code.get("text") if isinstance(code, dict) else None
    if isinstance(text, str) and text.strip():  # a local test named in words only
        # one line, at most 80 characters, no "|" (the counter's separator of system and code)
        return f"{TEXT_ONLY}|{' '.join(text.replace('|', '/').split())[:80]}"
    return None


def _no_value(part: dict[str, Any], item_id: str, missing: str, fix: str) -> NoReturn:
    """A result without a value: not done when it says why (``dataAbsentReason``: a NOT DONE row), else
    unusable — whatever the item's kind of value."""
    reason = part.get("dataAbsentReason")
    if reason:
        raise Unusable("data-absent", f"{item_id}: no value ({codings(reason)[:1]})", "nothing to do")
    raise Unusable("no-value", f"{item_id}: {missing}", fix)


def _dimensionless(item: Item) -> bool:
    """A score or count without a unit of measure (``1``, ``{score}``): a number needs no unit to be read."""
    return item.unit is not None and (item.unit.startswith("{") or item.unit == "1")


def _range_unit(ranges: Any) -> str | None:
    """The unit of a result's normal reference range (its low, else its high), as the EHR spelt it."""
    rr = normal_range(ranges)
    for end in ("low", "high"):
        q = rr.get(end) if rr is not None else None
        if isinstance(q, dict) and (unit := quantity_unit(q)):
            return unit
    return None


class ObservationMapper:
    """Maps the Observations of one subject; holds no state between subjects but the study."""

    def __init__(self, study: Study, log: RunLog) -> None:
        self.study = study
        self.log = log
        self.tz = study.info.timezone
        self._positive = {k: {study.resolve_code(c) for c in it.positive_codes} for k, it in study.items.items()}
        self._negative = {k: {study.resolve_code(c) for c in it.negative_codes} for k, it in study.items.items()}
        self.specimens: dict[str, dict[str, Any]] = {}
        #: :func:`specimen_details` of the current subject's Specimens by id, as the findings name them
        self._specimen_details: dict[str, dict[str, Any]] = {}
        self.not_done_obs: list[tuple[dict[str, Any], str]] = []
        #: reference range limits of the finding being read that could not be used: (message, fix)
        self.range_dropped: list[tuple[str, str]] = []

    def map(self, observations: list[dict[str, Any]], subject_id: str,
            specimens: dict[str, dict[str, Any]] | None = None) -> list[Finding]:
        """The findings of one subject; the results not obtained (cancelled, or a dataAbsentReason and no
        value) are kept apart in :attr:`not_done_obs` as (Observation, item) for the NOT DONE rows."""
        out: list[Finding] = []
        seen: set[tuple[Any, ...]] = set()
        self.specimens = specimens or {}
        self._specimen_details = {}
        self.not_done_obs = []
        for obs in latest(observations, self.log, subject_id):
            status = obs.get("status")
            if status not in R4_STATUSES:
                self.log.reject("Observation", obs.get("id"), "unknown-status",
                                f"status '{status}' is not an R4 ObservationStatus code",
                                f"send one of {sorted(R4_STATUSES)}", subject_id=subject_id, raw=obs)
                continue
            if status not in USED_STATUSES:
                self.log.count(f"observations.not-used.{status}")
                if status == "cancelled":  # each item once, for its NOT DONE row
                    items = dict.fromkeys(item_id for item_id, _ in self._matches(obs, subject_id, report=False))
                    self.not_done_obs += [(obs, item_id) for item_id in items]
                continue
            parts_of: dict[str, list[dict[str, Any]]] = {}
            for item_id, part in self._valued(self._matches(obs, subject_id)):
                parts_of.setdefault(item_id, []).append(part)
            for item_id, parts in parts_of.items():
                results: list[tuple[Finding, list[tuple[str, str]]]] = []
                unread: str | None = None
                for part in parts:
                    self.range_dropped.clear()
                    try:
                        f = self._finding(obs, part, item_id)
                    except Unusable as rej:
                        unread = rej.reason
                        if len(parts) == 1:
                            self.log.reject("Observation", obs.get("id"), rej.rule, rej.reason, rej.fix,
                                            subject_id=subject_id, raw=obs)
                            if rej.rule == "data-absent":
                                self.not_done_obs.append((obs, item_id))
                        break
                    except (ValueError, TypeError, KeyError, AttributeError, ArithmeticError) as exc:  # this one only
                        unread = f"{item_id}: {exc}".splitlines()[0]
                        if len(parts) == 1:
                            self.log.reject("Observation", obs.get("id"), "unreadable", unread,
                                            "correct the Observation in the EHR (quarantine/ names its file and line)",
                                            subject_id=subject_id, raw=obs)
                        break
                    results.append((f, list(self.range_dropped)))
                values = {_value_of(f) for f, _ in results}
                if len(parts) > 1 and (unread is not None or len(values) > 1):
                    # the code's value and a component's, or two components: which one is the result?
                    why = (f"one of which cannot be read ({unread})" if unread is not None else
                           ", ".join(sorted(_shown(v) for v in values)))
                    self.log.reject("Observation", obs.get("id"), "ambiguous-code",
                                    f"{item_id}: the Observation gives it {len(parts)} values ({why}: its own value "
                                    "and a component's, or two components)",
                                    "send one value per item (or the item's result in an Observation of its own)",
                                    subject_id=subject_id, raw=obs)
                    continue
                if not results:
                    continue
                f, range_dropped = results[0]
                when = f.datetime or f.date or f.partial_date
                key = (f.item, when, f.value, f.value_bool, f.value_text, f.comparator)
                if key in seen:
                    self.log.count("observations.duplicates")
                    continue
                seen.add(key)
                if f.preliminary:
                    self.log.warn(f"preliminary result used for {item_id}", resource=f"Observation/{obs.get('id')}",
                                  subject_id=subject_id, rule="preliminary")
                if f.partial_date:
                    self.log.warn(f"{item_id}: partial date {f.partial_date} kept as is, placed in no visit",
                                  resource=f"Observation/{obs.get('id')}", subject_id=subject_id,
                                  rule="partial-date")
                if range_dropped:  # one warning per result, its limits together
                    self.log.warn("; ".join(m for m, _ in range_dropped), resource=f"Observation/{obs.get('id')}",
                                  subject_id=subject_id, rule="reference-range-unit", fix=range_dropped[0][1])
                out.append(f)
        out.sort(key=lambda f: (f.date is None, f.date, f.datetime is None, f.datetime, f.item))
        return out

    def _matches(self, obs: dict[str, Any], subject_id: str,
                 report: bool = True) -> list[tuple[str, dict[str, Any]]]:
        """(item, the element holding the value) for the Observation and each matching component. A code whose
        codings name two items cannot say whose its value is: that part is quarantined ``ambiguous-code`` (when
        ``report``; a cancelled Observation is never used), the other parts are read."""
        idx = self.study.code_index
        found: list[tuple[str, dict[str, Any]]] = []
        for part in (obs, *(c for c in obs.get("component") or [] if isinstance(c, dict))):
            items = indexed_all(part.get("code"), idx)
            if len(items) > 1:
                if report:
                    self.log.reject("Observation", obs.get("id"), "ambiguous-code",
                                    f"{' and '.join(items)}: one code of the Observation"
                                    f"{'' if part is obs else ' (a component)'} names both items",
                                    "code each result for one item", subject_id=subject_id, raw=obs)
                continue
            if items:
                found.append((items[0], part))
        if not found and (name := _code_name(obs.get("code"))) is not None:  # unmapped_code's name
            self.log.count(f"unmapped.{name}")
        return found

    @staticmethod
    def _valued(matches: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
        """``matches`` less the parts that only head an item another part gives a value (a single-test order's
        code above the component holding its result, as HL7 v2 feeds convert): a part carries a value when it has
        a ``value[x]`` or a ``dataAbsentReason``."""
        carried = {item for item, part in matches if _carries_value(part)}
        return [(item, part) for item, part in matches if _carries_value(part) or item not in carried]

    def _finding(self, obs: dict[str, Any], part: dict[str, Any], item_id: str) -> Finding:
        item = self.study.items[item_id]
        when = obs.get("effectiveDateTime") or (obs.get("effectivePeriod") or {}).get("start") or obs.get(
            "effectiveInstant")
        if not when:
            raise Unusable("missing-date", f"{item_id}: the Observation has no effective[x] date",
                           "the EHR must send effectiveDateTime (the time the sample was taken)")
        try:
            fd = parse_fhir_date(when, self.tz)
        except DateError as exc:
            raise Unusable("bad-date", f"{item_id}: {exc}", "send an ISO 8601 date or dateTime with offset") from None
        if part.get("dataAbsentReason") and any(k.startswith("value") for k in part):
            raise Unusable("value-and-data-absent",
                           f"{item_id}: a value and a dataAbsentReason together (R4 invariant obs-6): is it a "
                           "result or a stand-in value?", "send either the value or the reason it is missing")
        fields: dict[str, Any] = {}
        if item.value == "quantity":
            fields = self._quantity(part, item, item_id)
        elif item.value == "boolean":
            fields = self._boolean(part, item_id)
        elif item.value == "coded":
            fields = self._coded(part, item_id)
        else:
            text = part.get("valueString")
            if text is None:
                _no_value(part, item_id, "no valueString", "send the result as text")
            fields = {"value_text": str(text), "orig_value": str(text)}
        interp = tuple(c for cc in obs.get("interpretation") or [] for _, c in codings(cc))  # every element
        return Finding(
            domain=item.domain, item=item_id, datetime=fd.datetime, date=fd.date, partial_date=fd.partial,
            interpretation=interp, status=str(obs.get("status")), preliminary=obs.get("status") == "preliminary",
            **finding_details(obs, part, self._specimen(specimen_id(obs)), self.tz, timed=item.domain == "LB"),
            source=SourceRef(resource_type="Observation", id=str(obs.get("id")),
                             version=(obs.get("meta") or {}).get("versionId")),
            **fields,
        )

    def _specimen(self, sid: str) -> dict[str, Any] | None:
        """:func:`specimen_details` of the subject's Specimen ``sid`` (read once per subject), if it has it."""
        found = self._specimen_details.get(sid)
        if found is None and sid in self.specimens:
            found = self._specimen_details[sid] = specimen_details(self.specimens[sid], self.tz)
        return found

    # -- values ------------------------------------------------------------------------------------
    def _convert(self, value: float, unit: str | None, item: Item, item_id: str, sent: str | None = None) -> float:
        """``value`` in ``unit`` (a UCUM code: synonyms resolved; ``sent`` is the spelling the EHR used) in the
        item's CRF unit."""
        assert item.unit is not None
        if unit is None:
            if _dimensionless(item):
                return value
            raise Unusable("missing-unit", f"{item_id}: value {value} has no unit",
                           f"send the UCUM unit; the CRF stores {item_id} in {item.unit}")
        if unit == item.unit:
            return value
        if unit in item.factors or unit in item.accept_units:
            converted = value * item.factors[unit] if unit in item.factors else units.convert(value, unit, item.unit)
            if not math.isfinite(converted):
                raise Unusable("out-of-bounds", f"{item_id}: {value} {unit} is too large to convert into {item.unit}",
                               "check the unit and the value in the EHR")
            return _converted(converted, item)
        spelt = f"'{sent}' (UCUM '{unit}')" if sent is not None and sent != unit else f"'{unit}'"
        raise Unusable("unknown-unit", f"{item_id}: unit {spelt} is not accepted (CRF unit {item.unit})",
                       f"add '{unit}' to accept_units (UCUM-convertible) or factors of item {item_id} "
                       "in items.yaml or the site overlay; a spelling that means one UCUM unit but is not its "
                       "code goes under unit_synonyms of the site overlay")

    def _quantity(self, part: dict[str, Any], item: Item, item_id: str) -> dict[str, Any]:
        comparator: str | None = None
        if "valueQuantity" in part:
            q = part["valueQuantity"]
            if q.get("value") is None:
                raise Unusable("no-value", f"{item_id}: valueQuantity without value", "send the numeric value")
            raw = float(q["value"])
            sent = quantity_unit(q)
            unit = ucum_unit(self.study, sent, self.log)
            comparator = q.get("comparator")
            if comparator not in (None, "<", "<=", ">", ">="):
                raise Unusable("bad-comparator", f"{item_id}: comparator '{comparator}' is not an R4 code",
                               "send one of <, <=, >, >= (or none)")
            orig = f"{comparator or ''}{decimal_text(q['value'])}"
        elif "valueString" in part:
            text = str(part["valueString"])
            for sign, comparator_code in _SIGNS.items():
                text = text.replace(sign, comparator_code)
            m = _NUMERIC.match(text)
            if not m and _GROUPED.match(text):
                raise Unusable("ambiguous-number",
                               f"{item_id}: valueString '{part['valueString']}' has a comma or digit grouping: a "
                               "decimal comma cannot be told from a thousands separator ('1,200' may be 1200 or "
                               "1.2), so it is not read",
                               "send valueQuantity (a JSON number), or the number with a decimal point and no "
                               "grouping ('1200', '1.2')")
            if not m:
                raise Unusable("non-numeric", f"{item_id}: valueString '{part['valueString']}' is not a number",
                               "send valueQuantity, or a numeric string such as '45' or '<0.2'")
            comparator, raw = m.group(1), float(m.group(2))
            # a string has no unit: the one of its reference range is the lab's (a range is in the result's
            # unit); without one it is never assumed to be the CRF's ("25" may be mg/mmol: 0.221 mg/mg)
            sent = _range_unit(part.get("referenceRange"))
            unit = ucum_unit(self.study, sent, self.log)
            if unit is None and not _dimensionless(item):
                raise Unusable("missing-unit",
                               f"{item_id}: valueString '{part['valueString']}' carries no unit and its "
                               "referenceRange names none",
                               f"send valueQuantity with the UCUM unit (the CRF stores {item_id} in {item.unit}), "
                               "or a referenceRange low/high with the unit")
            orig = str(part["valueString"])
        elif "valueInteger" in part:
            raw, unit, sent, orig = float(part["valueInteger"]), None, None, str(part["valueInteger"])
        else:
            _no_value(part, item_id, "no numeric value (valueQuantity expected)",
                      "send the result as valueQuantity with a UCUM unit")
        try:
            value = self._convert(raw, unit, item, item_id, sent)
        except Unusable as rej:
            if "valueString" in part and sent is not None:  # say where the unit came from
                raise Unusable(rej.rule, f"{rej.reason} (the unit of its reference range: a valueString has none)",
                               rej.fix) from None
            raise
        if item.bounds and not item.bounds[0] <= value <= item.bounds[1]:
            raise Unusable("out-of-bounds", f"{item_id}: {value} {item.unit} is outside the physiological bounds "
                           f"{list(item.bounds)}", "check the unit and the value in the EHR")
        low = high = None
        if (rr := normal_range(part.get("referenceRange"))) is not None:
            if isinstance(rr.get("low"), dict) and rr["low"].get("value") is not None:
                low = self._range_value(rr["low"], unit, item, item_id)
            if isinstance(rr.get("high"), dict) and rr["high"].get("value") is not None:
                high = self._range_value(rr["high"], unit, item, item_id)
        return {"value": value, "comparator": comparator, "unit": item.unit, "orig_value": orig,
                "orig_unit": sent, "ref_low": low, "ref_high": high}

    def _range_value(self, q: dict[str, Any], value_unit: str | None, item: Item, item_id: str) -> float | None:
        sent = quantity_unit(q)
        try:
            return self._convert(float(q["value"]), self.study.ucum_unit(sent) if sent else value_unit, item, item_id)
        except Unusable as rej:
            # the derivations then fall back to the interpretation, else the study's default range: said, so
            # that the site can map the spelling (a result scored against another range than its lab's)
            self.range_dropped.append((f"{item_id}: reference range limit {q.get('value')} {sent or ''} not used "
                                       f"({rej.reason})", rej.fix))
            return None

    def _boolean(self, part: dict[str, Any], item_id: str) -> dict[str, Any]:
        if isinstance(part.get("valueBoolean"), bool):
            return {"value_bool": part["valueBoolean"], "orig_value": str(part["valueBoolean"]).lower()}
        return self._coded(part, item_id)

    def _coded(self, part: dict[str, Any], item_id: str) -> dict[str, Any]:
        if "valueCodeableConcept" in part:
            cc = part["valueCodeableConcept"]
            in_order = codings(cc)
            codes = set(in_order)
            # the first code in the order sent, not a set's (which differs from one process to the next)
            text = (cc.get("text") or next((c.get("display") for c in cc.get("coding") or [] if c.get("display")), "")
                    or next(iter(in_order), ("", ""))[1])
            positive, negative = codes & self._positive.get(item_id, set()), codes & self._negative.get(item_id, set())
            if positive and negative:
                pos, neg = ("|".join(min(codes_)) for codes_ in (positive, negative))
                raise Unusable("ambiguous-code", f"{item_id}: result '{text}' carries both a positive code ({pos}) "
                               f"and a negative one ({neg})", "send the result with the codes of one answer")
            if positive:
                return {"value_bool": True, "value_text": text, "orig_value": text}
            if negative:
                return {"value_bool": False, "value_text": text, "orig_value": text}
            word = str(text).strip().lower()
        elif "valueString" in part:
            word = str(part["valueString"]).strip().lower()
            text = str(part["valueString"])
        elif isinstance(part.get("valueBoolean"), bool):
            return {"value_bool": part["valueBoolean"], "orig_value": str(part["valueBoolean"]).lower()}
        else:
            _no_value(part, item_id, "no coded value", "send valueCodeableConcept positive/negative")
        if word in _POSITIVE_WORDS:
            return {"value_bool": True, "value_text": text, "orig_value": text}
        if word in _NEGATIVE_WORDS:
            return {"value_bool": False, "value_text": text, "orig_value": text}
        raise Unusable("unknown-code", f"{item_id}: result '{text}' is neither a positive nor a negative code",
                       f"add its code to positive_codes or negative_codes of item {item_id}")
