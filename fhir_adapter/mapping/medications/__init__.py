"""Medication resources → CM (:class:`~fhir_adapter.crf.models.ConMed`), driven by ``medications.yaml``.

Reads the four R4 medication resources a server may offer (Vulcan RWD IG: at least one of them):
MedicationStatement, MedicationRequest, MedicationAdministration and MedicationDispense
(FHIR R4 Dosage/Timing; docs/clinical-rules.md#glucocorticoid-orders, docs/clinical-rules.md#dosage-arithmetic).
For each resource, in order (the module that holds each step in brackets):

1. **versions** — the latest version of each id wins (``meta.versionId``, then ``meta.lastUpdated``) [mapper].
2. **status** — statuses listed under ``used_statuses`` feed CM; a MedicationStatement with a status of
   ``evidence_statuses`` (``not-taken``) is kept in CM with its drug and dates only (no dose needed: it is the
   evidence that makes a glucocorticoid dose 0); any other (``entered-in-error``, ``cancelled``, ``draft``,
   ``not-done``…) is counted (``medications.not-used.<status>``). A MedicationRequest counts only with an
   ``intent`` of ``request_intents`` (orders; a ``plan`` or ``proposal`` is counted ``not-used.intent-<x>``)
   [mapper].
3. **drug** — codes of the concept or of a contained/referenced Medication and its ingredients, else the
   drug's ``names`` in the text; unknown drugs are kept with class ``other``; drugs of class
   ``lymphodepletion`` are study treatment (EX) and are counted, not mapped to CM; a resource naming no
   medication is quarantined (``no-medication``) [identify, clinical_drug].
4. **dosage lines** — ``dosage`` / ``dosageInstruction``: lines with the same ``sequence`` (or none) are
   concurrent, one record each; increasing ``sequence`` values are consecutive taper steps, one record each
   [dates]. A MedicationAdministration is one record on its date with the dose given that day
   (``frequency_per_day`` None, ``daily_dose_mg`` = the dose) [mapper].
5. **dose** — ``doseQuantity``, ``doseRange`` by ``range_choice`` (default ``high``), rates; mass units by
   UCUM, tablets (``tablet_units``, or no unit) by the identified strength [dose].
6. **frequency per day** — ``Timing.repeat`` or ``Timing.code`` via ``timing_codes``; ``daily_dose_mg`` = dose
   in mg × frequency per day (20 mg QOD = 10 mg/day); a fixed interval in hours (one administration per N h, or
   the code Q<N>H) is kept as ``interval_hours`` for CMDOSFRQ Q<N>H [timing].
7. **dates** — bounds of the line, else the resource's own dates; partial dates stay partial [dates].
8. **route** — ``route_codes``/``route_text``, else the route of the matched code or dose form; ``systemic``
   from the ``systemic_routes`` that ``glucocorticoids.yaml`` owns [routes].
9. **quarantine** — no start date at all, an unreadable date, a taper step without a start; and, for the
   ``dose_required_classes`` (glucocorticoids) on a systemic or unknown route, a dose that cannot be read in
   mg/day. Other classes keep such records with ``daily_dose_mg`` None (counted ``medications.dose-not-mg``)
   [mapper].

The settings (``medications.yaml``) are :mod:`.settings`; the study loader imports only that module.

Examples (tests/mapping/test_medications.py): prednisone 20 mg ``{frequency 1, period 2, periodUnit d}`` →
frequency 0.5, 10 mg/day; 2 ``{tbl}`` of RxNorm 312617 (prednisone 5 mg tablet) BID → 10 mg, 20 mg/day;
``doseRange`` 10–20 mg daily → 20 mg/day (``high``); four sequenced lines with ``boundsDuration`` 7 d →
four records of 7 days each, the second starting on day 8.
"""
