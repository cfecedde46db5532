"""fhir-adapter: connects a hospital EHR to a clinical trial over HL7 FHIR R4.

Data flow (one direction, every stage testable alone)::

    source -> roster -> mapping -> crf -> derive -> results -> writeback / exports / report

From Python: ``fhir_adapter.run(source, out)`` → :class:`fhir_adapter.api.RunResult` (docs/python-api.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fhir_adapter.version import __version__ as __version__

if TYPE_CHECKING:
    from fhir_adapter.api import RunResult as RunResult
    from fhir_adapter.api import run as run


def __getattr__(name: str) -> Any:
    """``fhir_adapter.run`` / ``RunResult`` are imported on first use, so ``import fhir_adapter`` stays light."""
    if name in ("run", "RunResult"):
        from fhir_adapter import api

        return getattr(api, name)
    raise AttributeError(f"module 'fhir_adapter' has no attribute {name!r}")


__all__ = ["RunResult", "__version__", "run"]
