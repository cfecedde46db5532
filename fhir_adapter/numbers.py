"""Rounding a number as a person reads it: half up on its decimal value, never on the binary float.

``round(0.25, 1)`` is 0.2 (half to even) and ``f"{1.15:.1f}"`` is "1.1" (1.15 is stored just below it): a CRF
value, a derived score and a report cell would each round a half differently. Every rounding the adapter does
goes through :func:`half_up` — the mapping's declared precision (``decimals``), the derivations' stored values,
the report's table cells — so one half is rounded one way everywhere. It sits below every layer and imports
nothing of the adapter.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, localcontext


def exact(value: float) -> Decimal:
    """``value`` as the decimal number it stands for: binary noise dropped at 12 significant digits
    (0.85 × 21.1 = 17.935000000000002 is 17.935), so a comparison or a rounding sees the number as written."""
    return Decimal(f"{value:.12g}")


def half_up(value: float, decimals: int) -> Decimal:
    """``value`` rounded half away from zero to ``decimals`` places, as a :class:`~decimal.Decimal` (for
    formatting). Binary noise is dropped first (12 significant digits: 35 mm × 0.03 = 1.0499999999999998 is
    1.05, which rounds to 1.1), so a half is never lost to a representation just below it. Any finite value
    is rounded, however large (the precision follows its digits: 1e308 at three places has 312); an infinite
    one raises ``ValueError``."""
    number = exact(value)
    if not number.is_finite():
        raise ValueError(f"{value} is not a finite number")
    with localcontext() as ctx:
        ctx.prec = max(ctx.prec, number.adjusted() + decimals + 2)
        return number.quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_UP)


def round_half_up(value: float, decimals: int) -> float:
    """:func:`half_up` as a float (0.25 → 0.3, 1.05 → 1.1, 2.9995 → 3.0 at three places)."""
    return float(half_up(value, decimals))
