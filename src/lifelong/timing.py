"""Where the time goes: wall-clock seconds per named part of the work, each second counted once.

Parts nest: a retry samples and distils, so its seconds are split into `retries`,
`retries/sample` and `retries/distill`; a part's own entry holds only what none of its inner parts
took. The keys are paths, so the same work is told apart by what it served (`sample` for the step's
episodes, `evaluation/sample` for the probes). The clock is process-wide and always on: a part costs
two `perf_counter` calls, nothing next to the forward passes it surrounds. Each thread nests its own
parts (the server answers while its engine swaps adapters).

The runtime logs each step's parts (`time/parts` in its update records); `benchmarks/throughput.py
--breakdown` sums them.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass


@dataclass
class _Open:
    path: str
    inner: float = 0.0  # seconds its nested parts took


class PartClock:
    """Seconds per part path, exclusive of the parts nested inside."""

    def __init__(self) -> None:
        self._seconds: defaultdict[str, float] = defaultdict(float)
        self._lock = threading.Lock()
        self._local = threading.local()

    @contextmanager
    def part(self, name: str) -> Iterator[None]:
        stack: list[_Open] = self._local.__dict__.setdefault("open", [])
        opened = _Open(f"{stack[-1].path}/{name}" if stack else name)
        start = time.perf_counter()
        stack.append(opened)
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            stack.pop()
            with self._lock:
                self._seconds[opened.path] += elapsed - opened.inner
            if stack:
                stack[-1].inner += elapsed

    def seconds(self) -> dict[str, float]:
        """Seconds so far per part path (a copy)."""
        with self._lock:
            return dict(self._seconds)


CLOCK = PartClock()


def part(name: str) -> AbstractContextManager[None]:
    """Time the block as `name`, inside whatever part is open (the process-wide clock)."""
    return CLOCK.part(name)


def since(before: dict[str, float]) -> dict[str, float]:
    """Seconds per part path spent since `before`, a reading of `CLOCK.seconds()`."""
    return {k: v - before.get(k, 0.0) for k, v in CLOCK.seconds().items() if v - before.get(k, 0.0) > 0}


@dataclass(frozen=True)
class Mark:
    """A point to measure a step or a round from: the wall clock and the part clock then."""

    wall: float
    clock: dict[str, float]

    @classmethod
    def now(cls) -> Mark:
        return cls(time.time(), CLOCK.seconds())

    def seconds(self) -> float:
        """Wall-clock seconds since the mark."""
        return time.time() - self.wall

    def parts(self) -> dict[str, float]:
        """Seconds per part path since the mark."""
        return since(self.clock)


__all__ = ["CLOCK", "Mark", "PartClock", "part", "since"]
