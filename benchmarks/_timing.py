"""Small timing helpers shared by the benchmarks: medians over repeated batches."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def per_call_us(fn: Callable[[], object], *, number: int, repeat: int) -> float:
    """Median over *repeat* batches of the time of one call, in microseconds."""
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        for _ in range(number):
            fn()
        samples.append((time.perf_counter() - started) / number * 1e6)
    return statistics.median(samples)


def interleaved_us(
    fns: dict[str, Callable[[], object]], *, number: int, repeat: int
) -> dict[str, float]:
    """Like :func:`per_call_us` for several functions, their batches interleaved so
    that the machine's noise falls on all of them alike."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            started = time.perf_counter()
            for _ in range(number):
                fn()
            samples[name].append((time.perf_counter() - started) / number * 1e6)
    return {name: statistics.median(values) for name, values in samples.items()}
