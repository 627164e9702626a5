"""Jittered exponential backoff for reconnecting clients ("full jitter").

Reconnect storms after a node dies are the classic way to take the next node
down; full jitter spreads them (AWS Architecture Blog, "Exponential Backoff
And Jitter").  The random source is injected so tests are deterministic.
"""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    def __init__(
        self,
        base: float = 0.25,
        cap: float = 20.0,
        rand: Callable[[], float] = random.random,
    ):
        self.base = base
        self.cap = cap
        self.rand = rand
        self.attempt = 0

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.base * (2**self.attempt))
        self.attempt = min(self.attempt + 1, 32)
        return ceiling * self.rand()

    def reset(self) -> None:
        self.attempt = 0
