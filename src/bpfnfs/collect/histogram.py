"""The in-kernel log2 latency histogram, in user space.

Bucket k holds latencies in (2^k µs, 2^(k+1) µs]; bucket 0 holds [0, 2 µs].
Upper bounds are inclusive, so bucket k is exactly Prometheus' `le` bucket
with bound 2^(k+1) µs: cumulative counts map over without loss, and the sum
is carried separately in exact nanoseconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bpfnfs.collect.records import HIST_SLOTS


def upper_bound_us(slot: int) -> int:
    return 2 ** (slot + 1)


def slot_for_ns(ns: int) -> int:
    """Same bucketing as hist_slot() in bpfnfs.bpf.c (used by tests)."""
    us = (ns + 999) // 1000
    if us <= 2:
        return 0
    return min((us - 1).bit_length() - 1, HIST_SLOTS - 1)


@dataclass
class Log2Hist:
    counts: list[int] = field(default_factory=lambda: [0] * HIST_SLOTS)
    sum_ns: int = 0

    @property
    def count(self) -> int:
        return sum(self.counts)

    def __add__(self, other: Log2Hist) -> Log2Hist:
        return Log2Hist(
            [a + b for a, b in zip(self.counts, other.counts, strict=True)], self.sum_ns + other.sum_ns
        )

    def __sub__(self, other: Log2Hist) -> Log2Hist:
        return Log2Hist(
            [a - b for a, b in zip(self.counts, other.counts, strict=True)], self.sum_ns - other.sum_ns
        )

    def cumulative_buckets(self) -> list[tuple[float, int]]:
        """(upper bound in seconds, cumulative count) pairs, for Prometheus `le`."""
        out: list[tuple[float, int]] = []
        acc = 0
        for slot, c in enumerate(self.counts):
            acc += c
            out.append((upper_bound_us(slot) / 1e6, acc))
        return out

    def quantile(self, q: float) -> float | None:
        """Upper bound (seconds) of the bucket holding quantile q; None when empty."""
        total = self.count
        if total == 0:
            return None
        rank = q * total
        acc = 0
        for slot, c in enumerate(self.counts):
            acc += c
            if acc >= rank and c:
                return upper_bound_us(slot) / 1e6
        return upper_bound_us(HIST_SLOTS - 1) / 1e6
