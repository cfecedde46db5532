"""Python's cycle collector during a run.

A run allocates millions of short-lived dicts and lists (parsed resources, CRF rows, export cells) that
reference counting frees; with CPython's default thresholds (a young collection every 700 allocations) the
collector still scans them thousands of times, and every full collection walks what was loaded before the
run (modules, the study, the R4 models and their element tables) again — a fifth of an offline run's CPU.
During a run, what existed before it is frozen (never scanned) and young collections come every
:data:`THRESHOLDS` ``[0]`` allocations; both are restored afterwards.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

#: (young, middle, old) collection thresholds during a run (CPython's default: 700, 10, 10)
THRESHOLDS = (50_000, 20, 100)


def run_settings() -> None:
    """Freeze what exists now and raise the thresholds, for the rest of this process (a worker)."""
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)


@contextmanager
def fewer_collections() -> Iterator[None]:
    """:func:`run_settings` for the duration of the ``with`` block (a run), then the previous settings."""
    old = gc.get_threshold()
    run_settings()
    try:
        yield
    finally:
        gc.set_threshold(*old)
        gc.unfreeze()
