"""Credits for a spec, and what credits cost.

Amounts are kept as integer milli-credits so that sums are exact::

    >>> Pricing().millicredits("1080p", 10), Pricing().cost(4000)
    (4000, 0.4)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from omniflash.contract import GenerationSpec

__all__ = ["MILLI", "Pricing", "credits", "to_millicredits"]

MILLI = 1000


def to_millicredits(value: float) -> int:
    return round(value * MILLI)


def credits(millicredits: int) -> float:
    return round(millicredits / MILLI, 3)


@dataclasses.dataclass(frozen=True)
class Pricing:
    """Credits per second of output by resolution, and the price of one credit."""

    per_second: Mapping[str, float] = dataclasses.field(
        default_factory=lambda: {"720p": 0.25, "1080p": 0.4, "4k": 1.0}
    )
    credit_price: float = 0.1

    def millicredits(self, resolution: str, seconds: int) -> int:
        return to_millicredits(self.per_second[resolution] * seconds)

    def hold(self, spec: GenerationSpec) -> int:
        """What submit charges: a reference video is held at its longest output, then settled."""
        return self.millicredits(spec.resolution, spec.billed_seconds)

    def cost(self, millicredits: int) -> float:
        return round(millicredits / MILLI * self.credit_price, 4)
