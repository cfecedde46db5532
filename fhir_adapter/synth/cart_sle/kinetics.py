"""CAR-T cellular kinetics: CAR transgene copies/ug genomic DNA (qPCR) and CAR+ T cells/uL (flow).

Log-linear expansion from the infusion to a peak at day 7-14 (the W1/W2 visits), a fast contraction to
day 28, then slow persistence decline; both series share the shape, cells contract faster.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from random import Random

TRANSGENE_LLOQ = 20.0    # copies/ug DNA
CELLS_LLOQ = 1.0         # cells/uL
_DOSE_EFFECT = {1.0: -0.3, 2.0: 0.0, 4.0: 0.2}   # log10 shift of the peak by dose level


@dataclass(frozen=True, slots=True)
class Kinetics:
    log_cmax: float       # log10 copies/ug at the peak
    tmax: float           # days after infusion
    k_fast: float         # log10 per day, peak to day 28
    k_slow: float         # log10 per day after day 28
    log_cells_max: float  # log10 cells/uL at the peak
    cells_extra: float    # extra log10/day decline of cells

    def _log_shape(self, t: float, log_peak: float, extra: float) -> float:
        if t <= self.tmax:
            start = log_peak - 2.5
            return start + (log_peak - start) * max(t, 0.0) / self.tmax
        fast_end = max(self.tmax, 28.0)
        if t <= fast_end:
            return log_peak - (self.k_fast + extra) * (t - self.tmax)
        return (log_peak - (self.k_fast + extra) * (fast_end - self.tmax)
                - (self.k_slow + extra) * (t - fast_end))

    def transgene(self, t: float, noise: float) -> float:
        """copies/ug at ``t`` days after the infusion (t < 0: before it, nothing to find)."""
        if t < 0:
            return 0.0
        return float(10 ** (self._log_shape(t, self.log_cmax, 0.0) + noise))

    def cells(self, t: float, noise: float) -> float:
        if t < 0:
            return 0.0
        return float(10 ** (self._log_shape(t, self.log_cells_max, self.cells_extra) + noise))


def draw_kinetics(rng: Random, dose_per_kg: float) -> Kinetics:
    log_cmax = 4.0 + rng.random() + _DOSE_EFFECT.get(dose_per_kg, 0.0)
    return Kinetics(
        log_cmax=log_cmax,
        tmax=7.0 + 7.0 * rng.random(),
        k_fast=0.07 + 0.05 * rng.random(),
        k_slow=0.004 + 0.010 * rng.random(),
        log_cells_max=math.log10(20.0) + 1.3 * rng.random() + _DOSE_EFFECT.get(dose_per_kg, 0.0),
        cells_extra=0.002 + 0.004 * rng.random(),
    )
