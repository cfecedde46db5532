"""The route of a dosage line and whether it is systemic.

SNOMED route codes and route text via ``route_codes``/``route_text`` (the caller falls back to the route of
the identified drug's code or dose form). ``systemic`` is True for the systemic routes of
``glucocorticoids.yaml`` (the one list; the study loader fills it in as ``systemic_routes``), False for any
other known route, None when the route is unknown.
"""

from __future__ import annotations

import re
from typing import Any

from fhir_adapter.mapping.common import codings, texts
from fhir_adapter.mapping.medications.settings import MedicationSettings


class RouteReader:
    def __init__(self, settings: MedicationSettings) -> None:
        self.s = settings
        self._routes = {settings.resolve(k): v for k, v in settings.route_codes.items()}
        self._route_words = sorted(((k.lower(), v) for k, v in settings.route_text.items()), key=lambda x: -len(x[0]))

    def route(self, cc: Any) -> str | None:
        """The route name of a route CodeableConcept: a listed code, else a listed word in its text."""
        for key in codings(cc):
            if key in self._routes:
                return self._routes[key]
        for text in texts(cc):
            low = text.strip().lower()
            for word, name in self._route_words:
                if low == word or re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", low):
                    return name
        return None

    def systemic(self, route: str | None) -> bool | None:
        if route is None:
            return None
        return route in self.s.systemic_routes
