"""Threshold tests on CRF findings that respect comparators and reference ranges."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from fhir_adapter.crf.models import Finding

Op = Literal[">", ">=", "<", "<=", "present", "below_range", "above_range"]


def exceeds(f: Finding, op: Literal[">", ">=", "<", "<="], threshold: float) -> bool:
    """True only when the result certainly satisfies ``value op threshold``.

    A censored result (``<20``, ``>1000``) satisfies the test only when its bound decides it: ``<20`` is
    ``< 100`` but is never ``> 0.5``-known unless the bound is below the threshold. An unknown outcome is False.
    """
    v, c = f.value, f.comparator
    if v is None:
        return False
    if op in (">", ">="):
        if c in ("<", "<="):  # upper-censored: never known to be above anything
            return False
        if c == ">":  # actual > v
            return v >= threshold
        return v > threshold if op == ">" else v >= threshold  # exact, or actual >= v
    if c in (">", ">="):  # lower-censored: never known to be below anything
        return False
    if c == "<":  # actual < v
        return v <= threshold
    return v < threshold if op == "<" else v <= threshold


def is_present(f: Finding, positive_texts: Iterable[str] = ("pos", "positive", "present", "detected")) -> bool:
    """A qualitative 'present': boolean true, a count above zero, or a positive coded/text result."""
    if f.value_bool is not None:
        return f.value_bool
    if f.value is not None:
        return f.comparator not in ("<", "<=") and f.value > 0
    return (f.value_text or "").strip().lower() in set(positive_texts)
