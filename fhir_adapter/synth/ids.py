"""Resource ids drawn from the generator's random stream (never from the OS or the clock)."""

from __future__ import annotations

from random import Random

_HEX = "0123456789abcdef"


def new_id(rng: Random) -> str:
    """A version-4-shaped UUID string drawn from ``rng``."""
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_HEX[8 | (int(h[16], 16) & 3)]}{h[17:20]}-{h[20:]}"


def ref(resource_type: str, resource_id: str) -> dict[str, str]:
    """A literal relative reference."""
    return {"reference": f"{resource_type}/{resource_id}"}
