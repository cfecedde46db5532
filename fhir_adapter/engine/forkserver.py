"""How worker processes start: forked by a forkserver that has imported the engine and built the R4 models once
(:mod:`fhir_adapter.engine.preload`), or spawned where the platform has no forkserver.

This module imports nothing of the engine, so the command line can start the forkserver (:func:`prepare`)
before it imports the pipeline: the forkserver's preload (about a second) then runs while the run's own
process imports, loads the study and reads the roster, and the workers can be forked as soon as the run
asks for them.
"""

from __future__ import annotations

import multiprocessing
from typing import Any

#: modules the forkserver imports before it forks any worker (:mod:`fhir_adapter.engine.preload`)
PRELOAD = ["fhir_adapter.engine.preload"]


def context() -> Any:
    """The start method of the workers: a forkserver preloaded with :data:`PRELOAD` where the platform has
    one, else spawn."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)  # for a forkserver started from now on
    return ctx


def prepare(workers: int) -> None:
    """Start the forkserver now (it preloads in the background) when ``workers`` processes will be needed."""
    if workers > 1 and "forkserver" in multiprocessing.get_all_start_methods():
        context()
        from multiprocessing import forkserver
        forkserver.ensure_running()
