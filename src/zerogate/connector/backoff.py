"""Redial delays: jittered exponential backoff (AWS "full jitter"), no I/O.

The n-th consecutive failure waits a uniformly random time between ``floor`` and
``min(cap, base * factor**n)``. Random spreading keeps a fleet of connectors that lost the same
edge from dialling back in lock step; the small floor keeps an unlucky draw from turning into a
hot loop. ``reset`` after a connection was healthy for a while starts again from ``base``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(slots=True)
class Backoff:
    """Delays for consecutive failures; ``next()`` returns the one to wait now."""

    base: float = 0.5
    factor: float = 2.0
    cap: float = 30.0
    floor: float = 0.05
    rng: random.Random = field(default_factory=random.Random, repr=False)
    failures: int = 0

    def ceiling(self) -> float:
        """The upper bound of the next delay."""
        exponent = min(self.failures, 64)  # 2**64 * base is past any cap; no float overflow
        return min(self.cap, self.base * self.factor**exponent)

    def next(self) -> float:
        """The delay before the next attempt; counts one more failure."""
        high = self.ceiling()
        self.failures += 1
        return self.rng.uniform(min(self.floor, high), high)

    def reset(self) -> None:
        self.failures = 0
